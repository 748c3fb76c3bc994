//! The site map's `catalog` settings, as a collaboration sets them, against the real
//! MongoDB-wire server with authentication on ([`MongoServer::start_with_auth`], one for
//! this file): the password from `catalog.password_env` (a variable of the site's own name,
//! set only in the child's environment), from `catalog.password_file` (a 0600 file), and a
//! `catalog.database` + `catalog.collection` other than the defaults.
//!
//! The site map's `catalog.uri` carries the user name only, so the password can come from
//! nowhere but the setting under test. Each case runs the real `ferry` binary as operators
//! do: `ferry --once` (a local origin site registering one run and writing it to a
//! `directory` tape backend), `ferry check`, `ferry runs list`, and, once the site's copy is
//! gone, `ferry recall`. What a user would check is read back with pymongo: the run is in
//! the database and collection the site map names, and not in the default `run.runs`.
//!
//! Refusals: a wrong password is exit 3 and no message shows it; a `password_env` naming an
//! unset variable, or a `password_file` that cannot be read, is exit 2 naming the variable
//! or the path. In each, nothing is written.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ferry::catalog::{
    open_target, Cas, CatalogTarget, CatalogUri, CopyRef, CopyStatus, PasswordOrigin, RunKey,
};
use ferry_tests::{unique_db_name, MongoServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const USER: &str = "xenon-ops";
/// The server's password: characters a URI would need encoded, so that a password handed
/// over outside the URI is shown to work as it is.
const PASSWORD: &str = "Tr0ub4dor/&:3@lngs";

/// The one authenticating server of this file.
fn server() -> &'static MongoServer {
    static SERVER: OnceLock<MongoServer> = OnceLock::new();
    SERVER.get_or_init(|| MongoServer::start_with_auth(USER, PASSWORD).unwrap())
}

/// The URI a site map gives: the user name, no password.
fn user_only_uri() -> String {
    format!(
        "mongodb://{USER}@127.0.0.1:{}/?directConnection=true&authSource=admin",
        server().port()
    )
}

/// One collaboration: a temp HOME with the site map, one origin site `daq` with run 7 on
/// its disk, a directory tape backend, and the catalogue settings under test.
struct Case {
    dir: tempfile::TempDir,
    database: String,
    collection: String,
    /// Extra environment of the child (the variable `password_env` names, …).
    env: Vec<(String, String)>,
    /// Manifest path → SHA-256 of run 7's files.
    files: Vec<(String, String)>,
}

impl Case {
    /// `catalog` is merged into `{ "uri": <user-only URI>, "database": <unique> }`.
    fn new(test: &str, catalog: Value, env: &[(&str, &str)]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "tape", "daq/raw"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let database = unique_db_name(test);
        let mut section = json!({ "uri": user_only_uri(), "database": database });
        for (k, v) in catalog.as_object().unwrap() {
            section[k] = v.clone();
        }
        let collection = section
            .get("collection")
            .and_then(Value::as_str)
            .unwrap_or("runs")
            .to_string();
        let raw = dir.path().join("daq/raw");
        let files = write_run(&raw.join("Run000007"));
        let map = json!({
            "version": 1,
            "catalog": section,
            "sites": [{
                "name": "daq", "method": "local", "origin": true,
                "data_dirs": { "raw": raw },
                "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
                "tape": [{ "name": "dir-tape", "kind": "directory", "path": dir.path().join("tape") }]
            }]
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        Case {
            dir,
            database,
            collection,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn raw(&self) -> PathBuf {
        self.path().join("daq/raw")
    }

    /// `ferry --config MAP --host daq ARGS` with a clean environment: no FERRY_* and no
    /// MONGO_PASSWORD from the test's, HOME in the temp dir, and the case's variables.
    fn ferry(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") || k == "MONGO_PASSWORD" {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.path())
            .env("FERRY_STATE_DIR", self.path().join("state"))
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(self.path().join("map.json"))
            .args(["--host", "daq"])
            .args(args);
        cmd.output().expect("run ferry")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.ferry(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        out
    }

    /// What a user reads with pymongo (as the server's admin).
    fn look(&self) -> Value {
        pymongo(&self.database, &self.collection)
    }

    /// Run 7's copies, by host, as pymongo reads them from the configured collection.
    fn copies(&self) -> Value {
        let seen = self.look();
        let runs = seen["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "one run document: {seen:#}");
        assert_eq!(runs[0]["number"], 7, "{seen:#}");
        runs[0]["copies"].clone()
    }

    /// Removes the site's copy of run 7 as purge would (`removing`, files, entry), through
    /// the library with the server's admin credentials.
    fn drop_site_copy(&self, detector: &str) {
        let target = CatalogTarget {
            uri: CatalogUri::parse(&server().uri()).unwrap(),
            password: None,
            password_origin: PasswordOrigin::Uri,
            database: Some(self.database.clone()),
            collection: self.collection.clone(),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = open_target(&target).await.unwrap();
            let copy = CopyRef::new(RunKey::new(detector, 7), "daq", "raw");
            let done = c
                .mark_removing(&copy, CopyStatus::Transferred, &[], "test", "make room")
                .await
                .unwrap();
            assert_eq!(done, Cas::Done);
            std::fs::remove_dir_all(self.raw().join("Run000007")).unwrap();
            let done = c.remove_copy(&copy, "test", "make room").await.unwrap();
            assert_eq!(done, Cas::Done);
        });
    }

    fn assert_restored(&self) {
        let dir = self.raw().join("Run000007");
        for (path, sha) in &self.files {
            let bytes = std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(&hex(&Sha256::digest(&bytes)), sha, "{path}");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run 7: two files and the completion marker.
fn write_run(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, size) in [200_000usize, 17].iter().enumerate() {
        let path = format!("{i:03}.evio");
        let bytes: Vec<u8> = (0..*size).map(|j| (j * 13 + i * 5 + 7) as u8).collect();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(&path), &bytes).unwrap();
        out.push((path, hex(&Sha256::digest(&bytes))));
    }
    std::fs::write(dir.join("RUN_COMPLETE"), b"").unwrap();
    out
}

const PYMONGO: &str = r#"
import json, sys
import pymongo
uri, db, coll = sys.argv[1:4]
c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
runs = [
    {"number": d.get("number"), "detector": d.get("detector"),
     "copies": {e["host"]: e.get("status") for e in d.get("data", [])}}
    for d in c[db][coll].find({}).sort("number", 1)
]
print(json.dumps({
    "runs": runs,
    "default_run_runs": c["run"]["runs"].count_documents({}),
    "default_collection_of_db": c[db]["runs"].count_documents({}) if coll != "runs" else None,
}))
"#;

/// pymongo's view of `db.coll` and of the defaults, as the server's admin.
fn pymongo(db: &str, coll: &str) -> Value {
    let out = Command::new("python3")
        .args(["-c", PYMONGO, &server().uri(), db, coll])
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 not runnable ({e}): install python3 and `pip install pymongo`")
        });
    assert!(
        out.status.success(),
        "pymongo failed (install python3 and `pip install pymongo`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The agent, `check`, `runs list` and `recall` all reach the catalogue the site map
/// describes; the run is found where the site map says.
fn works_everywhere(c: &Case) {
    // The agent: registers run 7 and writes it to the tape backend.
    c.ok(&["--once"]);
    let mut copies = c.copies();
    if copies.get("dir-tape").is_none() {
        c.ok(&["--once", "--task", "tape"]);
        copies = c.copies();
    }
    assert_eq!(copies["daq"], "transferred", "{copies:#}");
    assert_eq!(copies["dir-tape"], "transferred", "{copies:#}");
    let seen = c.look();
    assert_eq!(seen["default_run_runs"], 0, "nothing in run.runs: {seen:#}");
    if c.collection != "runs" {
        assert_eq!(
            seen["default_collection_of_db"], 0,
            "nothing in {}.runs: {seen:#}",
            c.database
        );
    }

    // The plugin reads the heartbeat the agent wrote.
    let out = c.ferry(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("FERRY OK"),
        "{}",
        text(&out)
    );

    // The run list.
    let out = c.ok(&["runs", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let numbers: Vec<i64> = listed
        .as_array()
        .unwrap_or_else(|| panic!("{listed:#}"))
        .iter()
        .filter_map(|r| r["number"].as_i64())
        .collect();
    assert_eq!(numbers, vec![7], "{listed:#}");

    // The recall, once the site's copy is gone.
    let detector = seen["runs"][0]["detector"].as_str().unwrap().to_owned();
    c.drop_site_copy(&detector);
    assert!(c.copies().get("daq").is_none());
    let out = c.ok(&["recall", "--run", "7"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored from tape dir-tape"),
        "{}",
        text(&out)
    );
    c.assert_restored();
    assert_eq!(c.copies()["daq"], "transferred");
    assert_eq!(c.look()["default_run_runs"], 0);
}

#[test]
fn the_password_from_the_site_maps_password_env_is_used_everywhere() {
    let c = Case::new(
        "settings_pw_env",
        json!({ "password_env": "XENON_RUNDB_PW" }),
        &[("XENON_RUNDB_PW", PASSWORD)],
    );
    works_everywhere(&c);
}

#[test]
fn the_password_from_the_site_maps_password_file_is_used_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rundb.pw");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Case::new("settings_pw_file", json!({ "password_file": file }), &[]);
    works_everywhere(&c);
}

#[test]
fn the_site_maps_database_and_collection_are_used_everywhere() {
    let c = Case::new(
        "settings_db_coll",
        json!({ "collection": "runs_xenonnt", "password_env": "XENON_RUNDB_PW" }),
        &[("XENON_RUNDB_PW", PASSWORD)],
    );
    assert_ne!(c.database, "run");
    works_everywhere(&c);
}

/// Every command refuses with `code` (`check`: the plugin's UNKNOWN, 3), says `says`, never
/// shows `secret`, and nothing is written.
fn refused(c: &Case, code: i32, says: &str, secret: Option<&str>) {
    for (args, want) in [
        (&["--once"][..], code),
        (&["check"], 3),
        (&["runs", "list"], code),
        (&["recall", "--run", "7"], code),
    ] {
        let out = c.ferry(args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(want), "{args:?}: {all}");
        assert!(all.contains(says), "{args:?} should say {says:?}: {all}");
        if let Some(secret) = secret {
            assert!(!all.contains(secret), "{args:?} shows the password: {all}");
        }
    }
    let seen = c.look();
    assert_eq!(seen["runs"], json!([]), "nothing written: {seen:#}");
    assert_eq!(seen["default_run_runs"], 0, "{seen:#}");
}

#[test]
fn a_wrong_password_is_exit_3_and_never_shown() {
    let wrong = "Wr0ng-Passw0rd-4711";
    let c = Case::new(
        "settings_wrong_pw",
        json!({ "password_env": "XENON_RUNDB_PW" }),
        &[("XENON_RUNDB_PW", wrong)],
    );
    refused(&c, 3, "127.0.0.1", Some(wrong));
    // The message says who was refused and what to check, with no driver text.
    let out = c.ferry(&["runs", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!("authentication failed for user {USER}"))
            && first.contains("check the password"),
        "{stderr}"
    );
    assert!(
        !first.contains("Kind:"),
        "driver text on the first line: {first}"
    );
}

#[test]
fn a_password_env_naming_an_unset_variable_is_exit_2_and_named() {
    let c = Case::new(
        "settings_unset_env",
        json!({ "password_env": "XENON_RUNDB_PW_UNSET" }),
        &[],
    );
    refused(
        &c,
        2,
        "catalog.password_env names XENON_RUNDB_PW_UNSET, which is not set (or empty)",
        None,
    );
}

#[test]
fn an_unreadable_password_file_is_exit_2_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-such-rundb.pw");
    let c = Case::new("settings_bad_file", json!({ "password_file": file }), &[]);
    refused(&c, 2, &file.display().to_string(), None);
}
