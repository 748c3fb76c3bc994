//! What the crash trials share (issue 5, "Crashes"): `agent_crash.rs` (both sites `local`)
//! and `agent_crash_sftp.rs` (both sites behind real OpenSSH sshd servers).
//!
//! A [`World`] is one trial's collaboration: the origin `daq` and the destination `mirror`,
//! each with a `raw` data directory the test reads directly, a site map, a state directory,
//! a catalogue, and two runs of several files (an empty one, a small one, a few MiB ones)
//! whose bytes come from the trial's seeded generator. The caller supplies the sites'
//! settings (method, links, `verify`, purge, limits), so both test files build the same
//! world around a different transport.
//!
//! [`trials`] runs one phase: it measures how long the cycle to kill lasts when nobody kills
//! it, then per trial builds a world, prepares it, SIGKILLs the cycle after a seeded delay
//! spread over that length — 1 to 3 times in a row, the restarted cycle of the same site
//! killed again — checks [`World::check_always`] after each kill, restarts both agents until
//! everything is done ([`World::recover`]) and checks [`World::check_end`]. It prints one
//! `crash-summary` line (trials, kills, kills that left work in flight, kills that left a
//! `.part`, recoveries, restarts, dead-holder reclaims, violations; summed by
//! `deploy/crash-trials.sh`) and fails with every
//! violation found. `FERRY_CRASH_SEED=N` replays a seed, `FERRY_CRASH_TRIALS=N` sets the
//! trials per phase (default 7).
//!
//! Invariants, checked with code independent of the agent (files hashed with the `sha2`
//! crate against the hashes recorded when the test wrote them; the catalogue read with
//! `ferry runs list --json`): every `transferred` copy's files hash to what was written and
//! its checksum is the run digest; an origin file is gone only when the mirror holds a
//! `transferred` copy whose files hash right. At the end also: every run's mirror copy is
//! `transferred`, the origin copies are purged, no copy is left in another status, and no
//! `*.part` file exists anywhere (catalogue directory and both data directories).

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The binary under test: the same `ferry::cli::main` as `ferry`.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// Runs per trial, and their files: (path, size).
pub const RUNS: [u32; 2] = [1, 2];
pub const FILES: [(&str, usize); 4] = [
    ("empty.evio", 0),
    ("small.evio", 1000),
    ("a.evio", 2 << 20),
    ("sub/b.evio", 1 << 20),
];
/// Restarts allowed before a trial counts as "did not complete".
pub const MAX_RESTARTS: usize = 12;

/// Purge at the origin: every run may go once the mirror holds a verified copy.
pub fn origin_purge() -> Value {
    serde_json::json!({ "enabled": true, "min_copies": 1, "retention": "200ms",
                        "high_water_mark": 1 })
}

/// One trial's collaboration of `daq` and `mirror`.
pub struct World {
    /// Site map, state directory, embedded catalogue (if any), HOME of the agents.
    pub dir: tempfile::TempDir,
    /// Each site's `raw` data directory.
    roots: BTreeMap<String, PathBuf>,
    /// The catalogue's URI (also in the site map).
    pub catalog: String,
    /// Expected sha256 per (run, file), recorded when the test wrote the bytes.
    expected: BTreeMap<(u32, String), String>,
}

impl World {
    /// A world with the data directories `roots(world_dir)` of `daq` and `mirror` (created
    /// here) and the settings `sites` of `daq` and `mirror` (their `name`, `data_dirs` and
    /// `layout` are set here). `catalog`: the catalogue URI, `None` for an embedded one in
    /// the world's directory. The runs are written at `daq` from `rng`.
    pub fn new(
        rng: &mut StdRng,
        roots: impl FnOnce(&Path) -> (PathBuf, PathBuf),
        catalog: Option<String>,
        sites: [Value; 2],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (daq, mirror) = roots(dir.path());
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let catalog = catalog
            .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("catalog.sqlite").display()));
        let roots: BTreeMap<String, PathBuf> =
            [("daq".to_string(), daq), ("mirror".to_string(), mirror)].into();
        let mut json = Vec::new();
        for (name, mut site) in ["daq", "mirror"].into_iter().zip(sites) {
            std::fs::create_dir_all(&roots[name]).unwrap();
            site["name"] = name.into();
            site["data_dirs"] = serde_json::json!({ "raw": roots[name] });
            site["layout"] = "Run{number:06}".into();
            json.push(site);
        }
        let map = serde_json::json!({
            "version": 1,
            "catalog": { "uri": catalog },
            "sites": json,
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        let mut expected = BTreeMap::new();
        for n in RUNS {
            let run = roots["daq"].join(format!("Run{n:06}"));
            for (rel, size) in FILES {
                let p = run.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let mut bytes = vec![0u8; size];
                rng.fill_bytes(&mut bytes);
                std::fs::write(&p, &bytes).unwrap();
                expected.insert((n, rel.to_string()), hex(&Sha256::digest(&bytes)));
            }
            std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
        }
        World {
            dir,
            roots,
            catalog,
            expected,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `site`'s `raw` data directory.
    pub fn root(&self, site: &str) -> &Path {
        &self.roots[site]
    }

    /// `ferry --once --host SITE ARGS` with a clean environment (no `FERRY_*`; HOME in the
    /// world's directory, so no `~/.ssh/config` applies).
    pub fn ferry(&self, site: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env("FERRY_STATE_DIR", self.path("state"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.path("map.json"))
            .args(["--host", site, "--once"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// One cycle to its end.
    pub fn cycle(&self, site: &str, args: &[&str]) -> Output {
        self.ferry(site, args).output().unwrap()
    }

    /// One cycle that must succeed.
    pub fn cycle_ok(&self, site: &str, args: &[&str]) {
        let out = self.cycle(site, args);
        assert!(out.status.success(), "{site} {args:?}: {}", text(&out));
    }

    /// One cycle, SIGKILLed after `delay` if still running: `Ok(())` when killed, else
    /// `Err(how long it ran)`.
    pub fn killed_cycle(&self, site: &str, args: &[&str], delay: Duration) -> Result<(), Duration> {
        let started = Instant::now();
        let mut child = self.ferry(site, args).spawn().unwrap();
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                return Err(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_some() {
            return Err(started.elapsed());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        Ok(())
    }

    /// Copies taken back from a dead holder before its lease expired (audit events).
    pub fn dead_holder_reclaims(&self) -> usize {
        self.runs()
            .iter()
            .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| {
                e["action"] == "reclaimed"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("process exited"))
            })
            .count()
    }

    /// Every run document, read with `ferry runs list --json`.
    pub fn runs(&self) -> Vec<Value> {
        let out = Command::new(FERRY)
            .args(["runs", "list", "--json", "--catalog", &self.catalog])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        match serde_json::from_slice(&out.stdout).unwrap() {
            Value::Array(a) => a,
            other => vec![other],
        }
    }

    /// Whether run `n`'s files at `site` all exist and hash to what the test wrote.
    pub fn files_hash_right(&self, site: &str, n: u32) -> Result<(), String> {
        for (rel, _) in FILES {
            let p = self.root(site).join(format!("Run{n:06}/{rel}"));
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let got = hex(&Sha256::digest(&bytes));
            if got != self.expected[&(n, rel.to_string())] {
                return Err(format!(
                    "{}: sha256 {got} is not what was written",
                    p.display()
                ));
            }
        }
        Ok(())
    }

    /// The invariants that hold at every moment; problems listed.
    pub fn check_always(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let runs = self.runs();
        let number = |r: &Value| r["number"].as_i64().unwrap_or(-1);
        for run in &runs {
            let n = u32::try_from(number(run)).unwrap();
            // The manifest is what the test wrote.
            for f in run["files"].as_array().into_iter().flatten() {
                let rel = f["path"].as_str().unwrap_or("");
                if self.expected.get(&(n, rel.to_string())).map(String::as_str)
                    != f["sha256"].as_str()
                {
                    bad.push(format!(
                        "run {n}: manifest entry {rel} differs from the bytes"
                    ));
                }
            }
            for c in run["data"].as_array().into_iter().flatten() {
                let host = c["host"].as_str().unwrap_or("");
                if c["status"] == "transferred" {
                    if c["checksum"] != run["digest"] {
                        bad.push(format!("run {n}@{host}: transferred with another checksum"));
                    }
                    if let Err(e) = self.files_hash_right(host, n) {
                        bad.push(format!("run {n}@{host}: transferred but {e}"));
                    }
                }
            }
        }
        // Origin data deleted only where the mirror holds a verified copy.
        for n in RUNS {
            let gone = FILES
                .iter()
                .any(|(rel, _)| !self.root("daq").join(format!("Run{n:06}/{rel}")).exists());
            if !gone {
                continue;
            }
            let mirror_ok = runs.iter().any(|r| {
                number(r) == i64::from(n)
                    && r["data"].as_array().into_iter().flatten().any(|c| {
                        c["host"] == "mirror"
                            && c["status"] == "transferred"
                            && c["checksum"] == r["digest"]
                    })
            });
            if !mirror_ok || self.files_hash_right("mirror", n).is_err() {
                bad.push(format!(
                    "run {n}: origin files deleted without a verified mirror copy"
                ));
            }
        }
        bad
    }

    /// Whether every run is done: mirror `transferred`, origin purged, nothing in flight.
    pub fn all_done(&self) -> bool {
        let runs = self.runs();
        runs.len() == RUNS.len()
            && runs.iter().all(|r| {
                let data = r["data"].as_array().cloned().unwrap_or_default();
                data.len() == 1
                    && data[0]["host"] == "mirror"
                    && data[0]["status"] == "transferred"
                    && data[0]["checksum"] == r["digest"]
            })
    }

    /// `*.part` files in the world's directory and both data directories.
    pub fn parts(&self) -> Vec<PathBuf> {
        let mut out = find_parts(self.dir.path());
        for root in self.roots.values() {
            out.extend(find_parts(root));
        }
        out
    }

    /// The final invariants; problems listed.
    pub fn check_end(&self) -> Vec<String> {
        let mut bad = self.check_always();
        for run in self.runs() {
            for c in run["data"].as_array().into_iter().flatten() {
                let st = c["status"].as_str().unwrap_or("");
                if st != "transferred" {
                    bad.push(format!(
                        "run {}: copy at {} left {st}",
                        run["number"], c["host"]
                    ));
                }
            }
        }
        if !self.all_done() {
            bad.push("not every run ended with only its mirror copy transferred".into());
        }
        for n in RUNS {
            if self.root("daq").join(format!("Run{n:06}")).exists() {
                bad.push(format!("run {n}: origin directory not purged"));
            }
        }
        let parts = self.parts();
        if !parts.is_empty() {
            bad.push(format!(".part files left: {parts:?}"));
        }
        bad
    }

    /// Whether work was in flight (a copy mid-state, a `.part`, origin files half gone).
    pub fn in_flight(&self) -> bool {
        let mid = self.runs().iter().any(|r| {
            r["data"].as_array().into_iter().flatten().any(|c| {
                matches!(
                    c["status"].as_str(),
                    Some("transferring" | "verifying" | "removing")
                )
            })
        });
        mid || !self.parts().is_empty()
    }

    /// Restarts both agents (`daq`, then `mirror`, one `--once` cycle each) until
    /// everything is done; returns the restarts used.
    pub fn recover(&self) -> Option<usize> {
        for i in 1..=MAX_RESTARTS {
            let daq = self.cycle("daq", &[]);
            let mirror = self.cycle("mirror", &[]);
            if self.all_done() && self.parts().is_empty() {
                return Some(i);
            }
            if i == MAX_RESTARTS {
                eprintln!(
                    "last daq cycle: {}\nlast mirror cycle: {}",
                    text(&daq),
                    text(&mirror)
                );
            }
            // Purge waits for the run to pass its 200 ms retention.
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    }

    /// Both runs copied with `site`'s `--task register --task push`, and `status` at the mirror.
    pub fn copied(&self, status: &str) {
        self.cycle_ok("daq", &["--task", "register", "--task", "push"]);
        let runs = self.runs();
        assert!(
            runs.iter().all(|r| r["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["host"] == "mirror" && c["status"] == status)),
            "{runs:#?}"
        );
    }
}

/// The data directories go with the world (they may lie outside its directory, below an
/// sshd's root that lives for a whole phase).
impl Drop for World {
    fn drop(&mut self) {
        for root in self.roots.values() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn find_parts(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".part") {
                out.push(p);
            }
        }
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// One phase of trials: `name` (the summary's `phase=`), a number mixed into the seed so
/// phases differ, `world(rng, trial)` builds a trial's world (trial `None`: the measuring
/// run), and `prepare(world)` sets it up and names the cycle to kill (site, arguments).
pub struct Phase<'a> {
    pub name: &'a str,
    pub salt: u64,
    pub world: &'a dyn Fn(&mut StdRng, Option<u64>) -> World,
    pub prepare: &'a dyn Fn(&World) -> (&'static str, &'static [&'static str]),
}

/// Runs the trials of one phase; panics with every violation found.
pub fn trials(phase: &Phase<'_>) {
    let name = phase.name;
    let seed = env_u64("FERRY_CRASH_SEED").unwrap_or_else(rand::random);
    let count = env_u64("FERRY_CRASH_TRIALS").unwrap_or(7);
    eprintln!("crash trials {name}: seed {seed} (replay with FERRY_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed ^ phase.salt);
    let (mut kills, mut mid_work, mut recovered, mut restarts) = (0u64, 0u64, 0u64, 0usize);
    // Kills that left a `.part` file behind for the restarts to resume or remove.
    let mut left_part = 0u64;
    let mut violations: Vec<String> = Vec::new();
    let started = Instant::now();
    // How long the phase's cycle lasts when nobody kills it: kills are spread over it.
    let span = {
        let w = (phase.world)(&mut rng, None);
        let (site, args) = (phase.prepare)(&w);
        let t = Instant::now();
        let out = w.cycle(site, args);
        assert!(out.status.success(), "{}", text(&out));
        t.elapsed()
    };
    let mut span_ms = u64::try_from(span.as_millis()).unwrap_or(1000).max(2);
    let mut reclaims = 0;
    for trial in 0..count {
        let w = (phase.world)(&mut rng, Some(trial));
        let (site, args) = (phase.prepare)(&w);
        // 1 to 3 kills in a row: the restarted cycle of the same site is killed again,
        // so a resume can itself be cut (a `.part` resumed twice, a reclaim cut short).
        let in_a_row = rng.random_range(1..=3);
        for k in 0..in_a_row {
            let delay = Duration::from_millis(rng.random_range(1..span_ms));
            match w.killed_cycle(site, args, delay) {
                Ok(()) => {
                    kills += 1;
                    if w.in_flight() {
                        mid_work += 1;
                    }
                    if !w.parts().is_empty() {
                        left_part += 1;
                    }
                }
                // Finished before the kill. The first cycle: it is shorter than measured,
                // aim earlier. A later one had less left to do.
                Err(ran) => {
                    if k == 0 {
                        span_ms = u64::try_from(ran.as_millis()).unwrap_or(span_ms).max(2);
                    }
                    break;
                }
            }
            for v in w.check_always() {
                violations.push(format!("{name} trial {trial} after kill {}: {v}", k + 1));
            }
        }
        match w.recover() {
            Some(n) => {
                recovered += 1;
                restarts += n;
            }
            None => violations.push(format!("{name} trial {trial}: did not complete")),
        }
        reclaims += w.dead_holder_reclaims();
        for v in w.check_end() {
            violations.push(format!("{name} trial {trial} at the end: {v}"));
        }
    }
    eprintln!(
        "crash-summary phase={name} seed={seed} trials={count} span_ms={span_ms} \
         kills={kills} kills_mid_work={mid_work} kills_left_part={left_part} \
         recovered={recovered} restarts={restarts} \
         dead_holder_reclaims={reclaims} violations={} secs={:.1}",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
}
