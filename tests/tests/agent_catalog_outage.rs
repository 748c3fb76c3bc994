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

/// A daemon killed when the test ends, passed or not (a failed assertion must not leave it
/// running after the test).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The mirror copy of run 1 as `ferry runs list --json` reports it: its status, if any.
fn mirror_status(dir: &Path, uri: &str) -> Option<String> {
    let out = Command::new(FERRY)
        .env("HOME", dir)
        .args(["runs", "list", "--json", "--catalog", uri])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    runs.as_array()?.iter().find_map(|run| {
        run["data"].as_array()?.iter().find_map(|c| {
            (c["host"] == "mirror").then(|| c["status"].as_str().unwrap_or("").to_string())
        })
    })
}

#[test]
fn a_catalogue_lost_in_the_middle_of_a_copy_costs_time_not_the_copy_nor_a_false_record() {
    // Back while the bytes still flow (the lease cannot be renewed meanwhile).
    catalogue_lost_mid_copy(Duration::from_secs(2));
}

#[test]
fn a_copy_whose_end_could_not_be_recorded_is_recorded_from_the_journal_not_copied_again() {
    // Away until after the copy's bytes were verified: its record goes to the journal and
    // the copy stays `transferring` under the daemon's own lease; the first cycle that
    // reaches the catalogue again replays the record instead of copying the run again.
    let log = catalogue_lost_mid_copy(Duration::from_secs(14));
    assert!(log.contains("kept in the journal"), "{log}");
    assert!(log.contains("recorded from the journal"), "{log}");
    assert!(
        !log.contains("left by an earlier cycle of this agent"),
        "{log}"
    );
}

/// A daemon copies a 6 MiB run at 2 MB/s; the MongoDB-wire server is stopped once the copy
/// is `transferring` and restarted after `outage`. The copy must end `transferred` with the
/// right bytes, the daemon alive throughout. Returns the daemon's log.
fn catalogue_lost_mid_copy(outage: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // 6 MiB at 2 MB/s: the copy takes about 3 s, time to lose the catalogue under it.
    let run = dir.join("daq/raw/Run000001");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(dir.join("mirror/raw")).unwrap();
    let bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(run.join("big.evio"), &bytes).unwrap();
    std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    let map = serde_json::json!({
        "version": 1,
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.join("daq/raw") },
              "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
              "push_to": ["mirror"],
              "limits": { "bandwidth_per_link": "2MB/s" } },
            { "name": "mirror", "method": "local",
              "data_dirs": { "raw": dir.join("mirror/raw") }, "layout": "Run{number:06}" }
        ]
    });
    std::fs::write(dir.join("map.json"), map.to_string()).unwrap();
    let mut server = MongoServer::start().unwrap();
    let db = unique_db_name("outage_mid");
    let uri = server.uri().replace("/?", &format!("/{db}?")) + "&serverSelectionTimeoutMS=300";
    let log = dir.join("ferry.log");
    let mut daemon = KillOnDrop(
        ferry(dir, &uri, &["--interval", "1s", "--log-file"])
            .arg(&log)
            .stdout(std::fs::File::create(dir.join("report.txt")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while mirror_status(dir, &uri).as_deref() != Some("transferring") {
        assert!(t0.elapsed() < Duration::from_secs(30), "no copy started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The catalogue goes away while the bytes flow, and stays away past the copy's end.
    server.stop();
    std::thread::sleep(outage);
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon died during the outage"
    );
    server.restart().unwrap();
    let t0 = Instant::now();
    loop {
        let status = mirror_status(dir, &uri);
        // Never a false record: `transferred` only with the right bytes (checked below).
        if status.as_deref() == Some("transferred") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the copy was not recorded after the catalogue came back (status {status:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let copied = std::fs::read(dir.join("mirror/raw/Run000001/big.evio")).unwrap();
    assert!(
        copied == bytes,
        "the mirror's bytes differ from the origin's"
    );
    sigterm(&daemon.0);
    let status = daemon.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    // The cycles' reports (stdout) follow the log.
    log + &std::fs::read_to_string(dir.join("report.txt")).unwrap()
}
