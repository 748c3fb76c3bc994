//! Collaborators read the catalogue with nothing but `docs/catalog.md`: this test lets Ferry
//! write runs (copies verified, one removed) into MongoDB with authentication on, as the
//! agent's user with the role the docs give it (`readWrite` on the database), then runs the
//! documentation's pymongo one-liners (`catalog_pymongo.py` extracts and evaluates them)
//! connected as the docs' read-only user (`read`, URI with `authSource=admin`, the password
//! from the variable the docs name) and checks the answers, and that this user cannot write.
//! A second test runs `ferry --once` with the agent's role alone. Needs python3 with
//! pymongo; fails with an install hint otherwise. (mongosh is not tested: it is not packaged
//! for Debian.)

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bson::doc;
use catalog_common::{claim, key, manifest, seed_run, with_database};
use ferry::catalog::mongo::{MongoCatalog, MongoConfig, Password};
use ferry::catalog::{
    Cas, Catalog, CatalogUri, CopyRef, CopyStatus, Failure, FailureClass, Transition,
};
use ferry_tests::{unique_db_name, MongoServer};

const AGENT_PASSWORD: &str = "Agent-Pass-1";
const READER_PASSWORD: &str = "Reader-Pass-2";

/// A server with authentication on and the users of docs/catalog.md, "Roles", created in
/// `admin` as the page's mongosh lines do: `ferry` (readWrite on `db`), `analyst` (read).
async fn server_with_documented_users(db: &str) -> MongoServer {
    let server = MongoServer::start_with_auth("admin_user", "Admin-Pass-1").unwrap();
    let admin = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
    for (user, pwd, role) in [
        ("ferry", AGENT_PASSWORD, "readWrite"),
        ("analyst", READER_PASSWORD, "read"),
    ] {
        admin
            .database("admin")
            .run_command(doc! {"createUser": user, "pwd": pwd,
            "roles": [{"role": role, "db": db}]})
            .await
            .unwrap();
    }
    server
}

/// `mongodb://USER@127.0.0.1:PORT/DB?directConnection=true&authSource=admin`.
fn user_uri(server: &MongoServer, user: &str, db: &str) -> String {
    with_database(
        &format!(
            "mongodb://{user}@127.0.0.1:{}/?directConnection=true&authSource=admin",
            server.port()
        ),
        db,
    )
}

/// The agent's catalogue, logged in as `ferry` with its password.
async fn agent_catalog(server: &MongoServer, db: &str) -> MongoCatalog {
    let mut config = MongoConfig::new(CatalogUri::parse(&user_uri(server, "ferry", db)).unwrap());
    config.password = Some(Password::new(AGENT_PASSWORD));
    MongoCatalog::connect(config).await.unwrap()
}

/// Copies run N to `site` the way an agent does: claim, verify, transferred.
async fn copy_to(c: &MongoCatalog, n: i64, site: &str) {
    let owner = format!("agent@{site}");
    let _ = c
        .claim_copy(&claim(n, site, &owner, Duration::from_secs(60)))
        .await
        .unwrap();
    let dest = CopyRef::new(key(n), site, "raw");
    let t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        Some(&owner),
        &owner,
    );
    assert_eq!(c.transition(&dest, &t).await.unwrap(), Cas::Done);
    let mut t = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        Some(&owner),
        &owner,
    );
    t.checksum = Some(manifest(&n.to_string()).digest);
    assert_eq!(c.transition(&dest, &t).await.unwrap(), Cas::Done);
}

#[tokio::test]
async fn documented_pymongo_queries_answer_correctly_as_the_read_only_user() {
    let db = unique_db_name("pymongo");
    let server = server_with_documented_users(&db).await;
    let c = &agent_catalog(&server, &db).await;
    for n in [4711, 4712, 4713] {
        seed_run(c, n, "daq").await;
    }
    copy_to(c, 4711, "lngs").await;
    copy_to(c, 4713, "lngs").await;
    // A copy of 4712 at lngs failed for want of space: it waits for an operator.
    let owner = "agent@lngs";
    let _ = c
        .claim_copy(&claim(4712, "lngs", owner, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        Some(owner),
        owner,
    );
    t.record_failure(&Failure::new(
        FailureClass::Fatal,
        "lngs: /data: no space left on device".into(),
    ));
    assert_eq!(
        c.transition(&CopyRef::new(key(4712), "lngs", "raw"), &t)
            .await
            .unwrap(),
        Cas::Done
    );
    let daq = CopyRef::new(key(4713), "daq", "raw");
    assert_eq!(
        c.mark_removing(
            &daq,
            CopyStatus::Transferred,
            &[],
            "purge@daq",
            "disk over 90%"
        )
        .await
        .unwrap(),
        Cas::Done
    );
    assert_eq!(
        c.remove_copy(&daq, "purge@daq", "disk over 90%")
            .await
            .unwrap(),
        Cas::Done
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/tests/catalog_pymongo.py"))
        .arg(root.join("docs/catalog.md"))
        .arg(format!("127.0.0.1:{}", server.port()))
        .arg(&db)
        .env("RUNDB_PASSWORD", READER_PASSWORD)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 not runnable ({e}): install python3 and `pip install pymongo`")
        });
    assert!(
        out.status.success(),
        "pymongo script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{answers:#}");

    let copies = &answers["Where are the copies of run 4711?"];
    let hosts: Vec<(&str, &str)> = copies
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap(), c[1].as_str().unwrap()))
        .collect();
    assert_eq!(hosts, vec![("daq", "transferred"), ("lngs", "transferred")]);

    let few = &answers["Which runs have fewer than 2 verified copies?"];
    assert_eq!(few, &serde_json::json!([4712, 4713]));

    let mut bytes: Vec<(String, i64, i64)> = answers["Bytes per site (transferred copies)"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["_id"].as_str().unwrap().to_string(),
                g["bytes"].as_i64().unwrap(),
                g["runs"].as_i64().unwrap(),
            )
        })
        .collect();
    bytes.sort();
    assert_eq!(
        bytes,
        vec![("daq".into(), 2048, 2), ("lngs".into(), 2048, 2)]
    );

    let waiting =
        &answers["Which copies failed and wait for an operator (class fatal or refused)?"];
    assert_eq!(
        waiting,
        &serde_json::json!([[4712, "lngs", "[fatal] lngs: /data: no space left on device"]])
    );

    let deleted = answers["What was deleted in the last week, by whom and why?"]
        .as_array()
        .unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["number"], 4713);
    assert_eq!(deleted[0]["host"], "daq");
    assert_eq!(deleted[0]["who"], "purge@daq");
    assert_eq!(deleted[0]["why"], "disk over 90%");

    // The read-only role really is read-only (code 13: Unauthorized).
    assert_eq!(answers["reader insert"], "refused (code 13)");
}

/// The role docs/catalog.md gives the agent (`readWrite` on the database, nothing more) is
/// enough for a whole `ferry --once` at an origin: indexes, registering, the audit, the
/// heartbeat.
#[tokio::test]
async fn the_documented_agent_role_suffices_for_ferry_once() {
    let db = unique_db_name("agent_role");
    let server = server_with_documented_users(&db).await;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("raw");
    let run = data.join("Run004800");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("a.bin"), vec![7u8; 10_000]).unwrap();
    std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    let map = serde_json::json!({"version": 1, "sites": [{
        "name": "daq", "origin": true, "method": "local",
        "data_dirs": {"raw": data}, "layout": "Run{number:06}",
        "completion": {"marker": "RUN_COMPLETE"},
    }]});
    let map_path = home.path().join("map.json");
    std::fs::write(&map_path, map.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry_under_test"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .env("FERRY_CATALOG_PASSWORD", AGENT_PASSWORD)
        .arg("--config")
        .arg(&map_path)
        .args(["--host", "daq", "--once", "--catalog"])
        .arg(user_uri(&server, "ferry", &db))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("register: 1 done"), "{stdout}");
    assert!(stdout.contains("heartbeat: 1 done"), "{stdout}");
    // What it wrote, read back as the read-only user.
    let client = mongodb::Client::with_uri_str(format!(
        "mongodb://analyst:{READER_PASSWORD}@127.0.0.1:{}/{db}?directConnection=true&authSource=admin",
        server.port()
    ))
    .await
    .unwrap();
    let found = client
        .database(&db)
        .collection::<bson::Document>("runs")
        .find_one(doc! {"number": 4800})
        .await
        .unwrap()
        .expect("run 4800 registered");
    let copies = found.get_array("data").unwrap();
    assert_eq!(copies.len(), 1, "{found}");
}
