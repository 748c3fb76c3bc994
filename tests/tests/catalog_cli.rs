//! `ferry runs list|show` as a process, against both back ends, plus the bad-input cases:
//! a URI that does not parse, an unreachable server, wrong credentials, a document of the
//! wrong shape. Each is a clear message naming the catalogue (password redacted) and an exit
//! code, never a panic.
//!
//! The binary is `ferry_under_test` (`src/bin/ferry_under_test.rs`): `ferry::cli::main`,
//! exactly what the `ferry` binary runs.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bson::{doc, Bson, DateTime};
use catalog_common::{claim, key, seed_run, with_database, Backend, Fixture};
use ferry_tests::{unique_db_name, MongoServer};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// Runs `ferry ARGS` with a clean environment: no FERRY_* variables, FERRY_HOME = `home`.
fn ferry(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(FERRY);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FERRY_HOME", home).env("NO_COLOR", "1").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn new_machine_lists_nothing_and_creates_nothing() {
    let home = tempfile::tempdir().unwrap();
    let o = ferry(home.path(), &["runs", "list"], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "NUMBER  NAME  DETECTOR  START  SIZE  COPIES"
    );
    let o = ferry(home.path(), &["runs", "list", "--json"], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap(),
        serde_json::json!([])
    );
    assert!(!home.path().join("catalog.sqlite").exists());
    let o = ferry(home.path(), &["runs", "show", "4711"], &[]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no run 4711"), "{}", stderr(&o));
}

/// Fills a catalogue: runs 1-3 registered by Ferry at `daq` (run 2 also claimed at lngs),
/// and run 4711 written by a DAQ, with fields Ferry does not know.
async fn fill(f: &Fixture) -> bson::Document {
    for n in 1..=3 {
        seed_run(&*f.catalog, n, "daq").await;
    }
    let _ = f
        .catalog
        .claim_copy(&claim(
            2,
            "lngs",
            "agent@lngs/1/x",
            Duration::from_secs(600),
        ))
        .await
        .unwrap();
    let daq = doc! {
        "number": 4711_i32, "name": "170330_1234",
        "start": DateTime::from_millis(1_490_877_240_000),
        "end": DateTime::from_millis(1_490_880_840_000),
        "trigger": {"mode": "background"},
        "data": [{"type": "raw", "host": "eb0", "location": "/data/raw/170330_1234",
                  "status": "transferred", "checksum": Bson::Null}],
    };
    f.insert_raw(daq.clone()).await;
    daq
}

async fn runs_commands_against(backend: Backend) {
    let f = Fixture::new(backend, "cli").await;
    let daq = fill(&f).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // The URI through FERRY_CATALOG for one back end and --catalog for the other.
    let (flag, env): (Vec<&str>, Vec<(&str, &str)>) = match backend {
        Backend::Embedded => (vec![], vec![("FERRY_CATALOG", f.uri.as_str())]),
        Backend::Mongo => (vec!["--catalog", f.uri.as_str()], vec![]),
    };
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(&flag);
        let o = ferry(h, &all, &env);
        assert_eq!(code(&o), 0, "ferry {all:?}: {}", stderr(&o));
        stdout(&o)
    };

    let table = run(&["runs", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("NUMBER  NAME"), "{table}");
    let copies_col = lines[0].find("COPIES").unwrap();
    assert_eq!(
        &lines[2][copies_col..],
        "daq:transferred lngs:transferring",
        "{table}"
    );
    assert!(
        lines[4].starts_with("4711    170330_1234  tpc       2017-03-30 12:34:00Z"),
        "{table}"
    );

    let numbers = |out: &str| -> Vec<i64> {
        serde_json::from_str::<Vec<serde_json::Value>>(out)
            .unwrap()
            .iter()
            .map(|v| v["number"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        numbers(&run(&["runs", "list", "--json"])),
        vec![1, 2, 3, 4711]
    );
    assert_eq!(
        numbers(&run(&["runs", "list", "--host", "lngs", "--json"])),
        vec![2]
    );
    assert_eq!(
        numbers(&run(&[
            "runs",
            "list",
            "--status",
            "transferring",
            "--json"
        ])),
        vec![2]
    );
    assert_eq!(
        numbers(&run(&["runs", "list", "--missing-at", "daq", "--json"])),
        vec![4711]
    );
    assert_eq!(
        numbers(&run(&[
            "runs",
            "list",
            "--fewer-copies-than",
            "1",
            "--json"
        ])),
        Vec::<i64>::new()
    );
    assert_eq!(
        numbers(&run(&["runs", "list", "--since", "2020-01-01", "--json"])),
        vec![1, 2, 3]
    );

    let shown = run(&["runs", "show", "2"]);
    assert!(shown.contains("run        2 (tpc)"), "{shown}");
    assert!(shown.contains("lngs  raw   transferring"), "{shown}");
    assert!(shown.contains("agent@lngs/1/x until"), "{shown}");
    assert!(shown.contains("claimed"), "{shown}");
    let by_name: serde_json::Value =
        serde_json::from_str(&run(&["runs", "show", "170330_1234", "--json"])).unwrap();
    assert_eq!(by_name["number"], 4711);
    assert_eq!(by_name["trigger"]["mode"], "background");
    assert_eq!(by_name["start"]["$date"], "2017-03-30T12:34:00Z");

    // Reading changed nothing in the DAQ's document.
    let after = f.read_raw(&key(4711)).await;
    let mut before = daq;
    if let Some(id) = after.get("_id") {
        before.insert("_id", id.clone()); // MongoDB's, added on insert
    }
    assert_eq!(after, before);

    let bad = ferry(
        h,
        &[&["runs", "list", "--status", "purging"][..], &flag].concat(),
        &env,
    );
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("unknown copy status `purging`"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn runs_commands_on_embedded() {
    runs_commands_against(Backend::Embedded).await;
}

#[tokio::test]
async fn runs_commands_on_mongo() {
    runs_commands_against(Backend::Mongo).await;
}

#[test]
fn unparseable_uri_is_usage_error_without_password() {
    let home = tempfile::tempdir().unwrap();
    let o = ferry(
        home.path(),
        &[
            "runs",
            "list",
            "--catalog",
            "postgres://ferry:hunter2@db/run",
        ],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("postgres://ferry:****@db/run"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = ferry(
        home.path(),
        &["runs", "list"],
        &[("FERRY_CATALOG", "mongodb://u:hunter2@/x")],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains("hunter2"));
}

#[test]
fn unreachable_server_fails_within_the_timeout() {
    let home = tempfile::tempdir().unwrap();
    let port = ferry_tests::ports::free_port().unwrap();
    let uri = format!("mongodb://ferry:hunter2@127.0.0.1:{port}/run?serverSelectionTimeoutMS=1500");
    let t0 = Instant::now();
    let o = ferry(home.path(), &["runs", "list", "--catalog", &uri], &[]);
    let took = t0.elapsed();
    let err = stderr(&o);
    assert_eq!(code(&o), 3, "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        err.contains(&format!("mongodb://ferry:****@127.0.0.1:{port}/run")),
        "{err}"
    );
    assert!(err.contains("unreachable"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn wrong_credentials_are_refused_and_right_ones_work() {
    let server = MongoServer::start_with_auth("ferry", "Right-Pass-42").unwrap();
    let home = tempfile::tempdir().unwrap();
    let db = unique_db_name("cli_auth");
    let uri = with_database(
        &format!(
            "mongodb://ferry@127.0.0.1:{}/?directConnection=true&authSource=admin",
            server.port()
        ),
        &db,
    );
    let o = ferry(
        home.path(),
        &["runs", "list", "--catalog", &uri],
        &[("FERRY_CATALOG_PASSWORD", "Bad-Pass-17")],
    );
    let err = stderr(&o);
    assert_eq!(code(&o), 3, "{err}");
    assert!(err.to_lowercase().contains("authentication"), "{err}");
    assert!(!err.contains("Bad-Pass-17"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let pw_file = home.path().join("catalog.password");
    std::fs::write(&pw_file, "Right-Pass-42\n").unwrap();
    let o = ferry(
        home.path(),
        &["runs", "list", "--json", "--catalog", &uri],
        &[("FERRY_CATALOG_PASSWORD_FILE", pw_file.to_str().unwrap())],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");

    let o = ferry(
        home.path(),
        &["runs", "list", "--catalog", &uri],
        &[("FERRY_CATALOG_PASSWORD_FILE", "/nonexistent/pw")],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/pw"), "{}", stderr(&o));
}

/// A document of the wrong shape: `runs list` lists the rest (exit 0) with a warning naming
/// the document and the field; `runs show` of it exits 1 with the reason. It is not changed.
async fn wrong_shape_is_reported(backend: Backend) {
    let f = Fixture::new(backend, "cli_shape").await;
    f.insert_raw(doc! {"number": 99_i64, "name": "odd", "data": [{"host": "eb0", "status": 7}]})
        .await;
    seed_run(&*f.catalog, 1, "daq").await;
    let home = tempfile::tempdir().unwrap();
    let list = ferry(home.path(), &["runs", "list", "--catalog", &f.uri], &[]);
    let err = stderr(&list);
    assert_eq!(code(&list), 0, "{err}");
    assert!(stdout(&list).contains("run1"), "{}", stdout(&list));
    assert!(!stdout(&list).contains("odd"), "{}", stdout(&list));
    assert!(
        err.contains("warning: run document") && err.contains("(run 99 \"odd\")"),
        "{err}"
    );
    assert!(
        err.contains("field data[0].status: expected a string, found int32 7"),
        "{err}"
    );
    assert!(
        err.contains("1 run document could not be read and was skipped"),
        "{err}"
    );
    let show = ferry(
        home.path(),
        &["runs", "show", "99", "--catalog", &f.uri],
        &[],
    );
    let err = stderr(&show);
    assert_eq!(code(&show), 1, "{err}");
    assert!(err.contains("run 99: cannot read its document"), "{err}");
    assert!(err.contains("field data[0].status"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let raw = f.read_raw(&key(99)).await;
    assert_eq!(raw.get_array("data").unwrap().len(), 1, "untouched");
}

#[tokio::test]
async fn wrong_shape_is_reported_on_embedded() {
    wrong_shape_is_reported(Backend::Embedded).await;
}

#[tokio::test]
async fn wrong_shape_is_reported_on_mongo() {
    wrong_shape_is_reported(Backend::Mongo).await;
}

/// Regression: `ferry runs` created indexes on connect, which a collaborator's read-only
/// user may not do; it must read with the `read` role alone.
#[tokio::test]
async fn read_only_user_can_list_runs() {
    let server = MongoServer::start_with_auth("admin_user", "Admin-Pass-1").unwrap();
    let db = unique_db_name("cli_reader");
    let admin_uri = with_database(&server.uri(), &db);
    // The agent (root) writes a run and the indexes.
    let agent = ferry::catalog::open(&ferry::catalog::CatalogUri::parse(&admin_uri).unwrap())
        .await
        .unwrap();
    seed_run(&*agent, 7, "daq").await;
    let client = mongodb::Client::with_uri_str(&admin_uri).await.unwrap();
    client
        .database(&db)
        .run_command(doc! {"createUser": "reader", "pwd": "Reader-Pass-2",
        "roles": [{"role": "read", "db": &db}]})
        .await
        .unwrap();
    let reader_uri = with_database(
        &format!(
            "mongodb://reader@127.0.0.1:{}/?directConnection=true&authSource={db}",
            server.port()
        ),
        &db,
    );
    // The read-only user really cannot create indexes here (else this test proves nothing).
    let denied = ferry::catalog::mongo::MongoCatalog::connect({
        let mut c = ferry::catalog::mongo::MongoConfig::new(
            ferry::catalog::CatalogUri::parse(&reader_uri).unwrap(),
        );
        c.password = Some(ferry::catalog::mongo::Password::new("Reader-Pass-2"));
        c
    })
    .await;
    assert!(
        denied.is_err(),
        "read role may create indexes on this server"
    );
    let home = tempfile::tempdir().unwrap();
    let o = ferry(
        home.path(),
        &["runs", "list", "--json", "--catalog", &reader_uri],
        &[("FERRY_CATALOG_PASSWORD", "Reader-Pass-2")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("\"number\": 7"), "{}", stdout(&o));
}
