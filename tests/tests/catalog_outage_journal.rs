//! A finished copy survives a catalogue outage (issue 14, "Build" 3): the catalogue (the
//! MongoDB-wire server) is stopped while a push over SFTP is in flight, so the bytes are
//! verified at the destination when the record cannot be written. The record goes to the
//! journal in the state directory; once the server is back the next cycle replays it, the
//! copy reads back `transferred` with the run's digest, and the bytes crossed the wire once
//! (counted by the mirror's sshd: its `LogLevel VERBOSE` log ends every connection with
//! `Transferred: sent N, received M bytes`).
//!
//! The kill trials SIGKILL the replaying agent at seeded random moments, with the journaled
//! copy's file left as it was or damaged behind the agent's back (same size, newer mtime),
//! then restart it until the run is done: there must never be a `transferred` record whose
//! bytes at the mirror are not the manifest's. `FERRY_CRASH_SEED` replays a seed,
//! `FERRY_CRASH_TRIALS` sets the number of trials (default 4).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{unique_db_name, MongoServer, Sshd, SshdOptions};
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
/// The run's one file: at 10 MB/s a copy lasts about two seconds.
const SIZE: usize = 20 << 20;

struct World {
    home: tempfile::TempDir,
    mirror: Sshd,
    mongo: MongoServer,
    uri: String,
}

impl World {
    fn new(test: &str) -> World {
        let home = tempfile::tempdir().unwrap();
        // sftp-server logs every close with the bytes written, whatever way the connection
        // ends (sshd's "Transferred:" line is missing when a connection is reset).
        let mirror = Sshd::start_with(SshdOptions {
            sftp_command: Some(format!(
                "/usr/lib/openssh/sftp-server -e -l INFO 2>>{}",
                home.path().join("sftp.log").display()
            )),
            ..SshdOptions::default()
        })
        .unwrap();
        let mongo = MongoServer::start().unwrap();
        let db = unique_db_name(test);
        let uri = mongo.uri().replace("/?", &format!("/{db}?")) + "&serverSelectionTimeoutMS=300";
        let raw = home.path().join("daq/raw/Run000001");
        std::fs::create_dir_all(&raw).unwrap();
        let mut data = vec![0u8; SIZE];
        rand::rngs::StdRng::seed_from_u64(1).fill(&mut data[..]);
        std::fs::write(raw.join("a.evio"), &data).unwrap();
        std::fs::write(raw.join("RUN_COMPLETE"), b"").unwrap();
        std::fs::create_dir_all(mirror.root().join("raw")).unwrap();
        let map = serde_json::json!({
            "version": 1,
            "sites": [
                { "name": "daq", "method": "local", "origin": true,
                  "data_dirs": { "raw": home.path().join("daq/raw") },
                  "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
                  "push_to": ["mirror"],
                  "limits": { "bandwidth_per_link": "10MB/s", "lease": "10m" } },
                { "name": "mirror", "method": "sftp",
                  "hostname": mirror.host(), "port": mirror.port(),
                  "username": mirror.user(), "identity_file": mirror.user_key_path(),
                  "known_hosts": mirror.known_hosts_path(),
                  "strict_host_key_checking": "yes",
                  "data_dirs": { "raw": mirror.root().join("raw") },
                  "layout": "Run{number:06}" }
            ]
        });
        std::fs::write(home.path().join("map.json"), map.to_string()).unwrap();
        World {
            home,
            mirror,
            mongo,
            uri,
        }
    }

    fn ferry(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.home.path())
            .env("FERRY_STATE_DIR", self.home.path().join("state"))
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.home.path().join("map.json"))
            .args(["--host", "daq", "--catalog", &self.uri])
            .args(args);
        cmd
    }

    fn once(&self, args: &[&str]) -> Output {
        let mut all = vec!["--once"];
        all.extend_from_slice(args);
        self.ferry(&all).output().unwrap()
    }

    fn journal(&self) -> PathBuf {
        self.home.path().join("state/journal-daq")
    }

    fn entries(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.journal()) {
            Ok(d) => d
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The run as `ferry runs list --json` reads it.
    fn run(&self) -> Value {
        let out = Command::new(FERRY)
            .env("HOME", self.home.path())
            .args(["runs", "list", "--json", "--catalog", &self.uri])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs.into_iter().next().unwrap()
    }

    fn mirror_copy(&self) -> Option<Value> {
        self.run()["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["host"] == "mirror")
            .cloned()
    }

    fn mirror_file(&self) -> PathBuf {
        self.mirror.root().join("raw/Run000001/a.evio")
    }

    /// Bytes the mirror's sshd received over all its connections so far.
    /// File bytes the mirror's sftp-server wrote, from its close lines
    /// (`close "…" bytes read R written W`).
    fn received_at_mirror(&self) -> u64 {
        std::fs::read_to_string(self.home.path().join("sftp.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(" written ").nth(1))
            .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Registers the run, then pushes it and stops the catalogue while the bytes are in
    /// flight: the push verifies them and finds no catalogue to record them in.
    fn push_through_an_outage(&mut self) {
        let out = self.once(&["--task", "register"]);
        assert!(out.status.success(), "{out:?}");
        let log = self.home.path().join("push.log");
        let mut push = self
            .ferry(&["--once", "--task", "push"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap()
            .contains("copy started")
        {
            assert!(t0.elapsed() < Duration::from_secs(30), "no copy started");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.mongo.stop();
        let status = push.wait().unwrap();
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{err}");
        assert!(err.contains("kept in the journal"), "{err}");
        assert!(
            err.contains("file copied"),
            "the bytes were not copied: {err}"
        );
        assert_eq!(self.entries().len(), 1, "{err}");
        self.mongo.restart().unwrap();
    }
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_copy_verified_while_the_catalogue_is_down_is_recorded_when_it_is_back_and_sent_once() {
    let mut w = World::new("journal_outage");
    w.push_through_an_outage();
    // Back up, but not recorded yet: the copy is still leased by the process that is gone.
    let before = w.mirror_copy().unwrap();
    assert_eq!(before["status"], "transferring", "{before}");

    let out = w.once(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("recorded from the journal"), "{err}");
    let copy = w.mirror_copy().unwrap();
    let run = w.run();
    assert_eq!(copy["status"], "transferred", "{copy}");
    assert_eq!(copy["checksum"], run["digest"], "{copy} {run}");
    assert!(w.entries().is_empty(), "{:?}", w.entries());
    // The bytes crossed the wire once: the mirror's sftp-server wrote the file once, not a
    // second copy.
    let received = w.received_at_mirror();
    let size = SIZE as u64;
    assert!(
        received == size,
        "the mirror received {received} bytes for a {size}-byte run"
    );
    assert_eq!(
        sha256_hex(&w.mirror_file()),
        run["files"][0]["sha256"].as_str().unwrap()
    );
}

#[test]
fn a_malformed_journal_entry_is_named_with_its_line_and_left_alone() {
    let w = World::new("journal_malformed");
    let out = w.once(&["--task", "register"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::create_dir_all(w.journal()).unwrap();
    let bad = w
        .journal()
        .join("000001-tpc-raw@mirror-0123456789abcdef.json");
    std::fs::File::create(&bad)
        .unwrap()
        .write_all(b"{\n  \"version\": 1,\n  \"site\": \"daq\",\n  \"numb")
        .unwrap();
    let out = w.once(&["--task", "push"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("line 4"), "{err}");
    // Left as it was; the run was pushed all the same (the entry names no copy).
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        b"{\n  \"version\": 1,\n  \"site\": \"daq\",\n  \"numb"
    );
    assert_eq!(w.mirror_copy().unwrap()["status"], "transferred");
}

#[test]
fn kill_9_during_journal_replay_never_records_a_false_copy() {
    let trials: u64 = std::env::var("FERRY_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>().into());
    eprintln!("FERRY_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut false_records = 0;
    let (mut kills_total, mut mid_replay, mut restarts) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    for trial in 0..trials {
        let mut w = World::new(&format!("journal_kill{trial}"));
        w.push_through_an_outage();
        // Every other trial, the journaled file is damaged behind the agent's back: the
        // replay must hash it again and refuse to record it.
        let damaged = trial % 2 == 1;
        if damaged {
            let path = w.mirror_file();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[SIZE / 2] ^= 0xff;
            std::thread::sleep(Duration::from_millis(1100));
            std::fs::write(&path, &bytes).unwrap();
        }
        let kills = rng.random_range(1..=3);
        for _ in 0..kills {
            let delay = Duration::from_millis(rng.random_range(50..1500));
            let mut child: Child = w
                .ferry(&["--once"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let _ = child.kill();
            child.wait().unwrap();
            kills_total += 1;
            // Killed before the replay finished: the entry is still there.
            if !w.entries().is_empty() {
                mid_replay += 1;
            }
            if let Some(c) = w.mirror_copy() {
                if c["status"] == "transferred"
                    && sha256_hex(&w.mirror_file()) != w.run()["files"][0]["sha256"]
                {
                    false_records += 1;
                }
            }
        }
        // Then cycles until the run is done (`--run 1`: a damaged copy marked `error` is
        // copied again at once, past the retry backoff).
        let t0 = Instant::now();
        loop {
            let _ = w.once(&["--run", "1"]);
            restarts += 1;
            let c = w.mirror_copy().unwrap();
            if c["status"] == "transferred" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "trial {trial}: not done: {c}"
            );
        }
        let run = w.run();
        let copy = w.mirror_copy().unwrap();
        if sha256_hex(&w.mirror_file()) != run["files"][0]["sha256"]
            || copy["checksum"] != run["digest"]
        {
            false_records += 1;
        }
        assert!(w.entries().is_empty(), "trial {trial}: {:?}", w.entries());
        if !damaged {
            // Recorded from the journal, not copied again.
            let received = w.received_at_mirror();
            assert!(
                received < (SIZE + SIZE / 2) as u64,
                "trial {trial}: the mirror received {received} bytes"
            );
        }
    }
    // Summed by deploy/crash-trials.sh with the other phases.
    eprintln!(
        "crash-summary phase=journal-replay seed={seed} trials={trials} kills={kills_total} \
         kills_mid_work={mid_replay} kills_left_part=0 recovered={trials} restarts={restarts} \
         dead_holder_reclaims=0 violations={false_records} secs={:.1}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(false_records, 0, "seed {seed}");
}
