//! The daemon and a catalogue outage: started while the MongoDB-wire server is down, the
//! agent stays alive, says why it waits, and does its work once the server is back; SIGTERM
//! while it waits stops it cleanly. By hand (`--once`) the same outage is an answer: exit 3.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{unique_db_name, MongoServer};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// A DAQ site with one complete run, its site map in `dir`.
fn site(dir: &Path) {
    let run = dir.join("daq/raw/Run000001");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("a.evio"), b"bytes of run 1").unwrap();
    std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    let map = serde_json::json!({
        "version": 1,
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.join("daq/raw") },
              "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" } }
        ]
    });
    std::fs::write(dir.join("map.json"), map.to_string()).unwrap();
}

fn ferry(dir: &Path, uri: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(FERRY);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", dir)
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env("NO_COLOR", "1")
        .arg("--config")
        .arg(dir.join("map.json"))
        .args(["--host", "daq", "--catalog", uri])
        .args(args);
    cmd
}

fn registered(dir: &Path, uri: &str) -> bool {
    let out = Command::new(FERRY)
        .env("HOME", dir)
        .args(["runs", "list", "--json", "--catalog", uri])
        .output()
        .unwrap();
    out.status.success()
        && serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len() == 1))
            .unwrap_or(false)
}

fn stderr_of(mut child: Child) -> (Option<i32>, String) {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

#[test]
fn daemon_started_during_an_outage_waits_then_works_when_the_catalogue_is_back() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let mut server = MongoServer::start().unwrap();
    let db = unique_db_name("outage");
    let uri = server.uri().replace("/?", &format!("/{db}?")) + "&serverSelectionTimeoutMS=300";
    server.stop();

    // By hand: the outage is the answer.
    let out = ferry(dir.path(), &uri, &["--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let mut daemon = ferry(dir.path(), &uri, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died during the outage"
    );

    server.restart().unwrap();
    let t0 = Instant::now();
    while !registered(dir.path(), &uri) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run was not registered after the catalogue came back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    sigterm(&daemon);
    let (code, err) = stderr_of(daemon);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("catalogue unreachable, retrying"), "{err}");
}

#[test]
fn sigterm_while_waiting_for_the_catalogue_stops_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let mut server = MongoServer::start().unwrap();
    let uri = server.uri().replace("/?", "/outage_stop?") + "&serverSelectionTimeoutMS=300";
    server.stop();
    let daemon = ferry(dir.path(), &uri, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    sigterm(&daemon);
    let (code, err) = stderr_of(daemon);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "slow to stop: {err}"
    );
    assert!(err.contains("SIGTERM"), "{err}");
}
