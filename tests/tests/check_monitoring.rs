//! `ferry check` on a monitoring host, against the real MongoDB-wire server and the real
//! binary: two local sites, `daq` (the origin, pushing to `mirror`) and `mirror` (it sends
//! nowhere, it only receives), each of whose agents has run one cycle (`--once`).
//!
//! What broke: `ferry check --config` on a monitoring host answered UNKNOWN, because it ran
//! the site's host-local checks (its data directories) on a machine that does not have
//! them; `--max-since-transfer` always warned on `mirror`, whose own agent never makes a
//! copy (the DAQ pushes to it); and every note was joined into the first line. Now
//! `--site SITE` judges a site from its heartbeat alone, a site that only receives is
//! judged on the last copy it received, and the first line is one short status with
//! perfdata, the detail on the lines after it.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use ferry_tests::{unique_db_name, MongoServer};
use serde_json::json;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// Disk thresholds of 0 %: the shared test machine's own free space does not count.
const ANY_DISK: [&str; 4] = ["--warn-free", "0", "--critical-free", "0"];

struct World {
    dir: tempfile::TempDir,
    /// The catalogue as `--catalog` takes it (the test's own database).
    uri: String,
}

impl World {
    fn new(test: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        for d in ["daq/raw", "mirror/raw", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let server = MongoServer::shared().unwrap().uri();
        let db = unique_db_name(test);
        // `mongodb://127.0.0.1:PORT/?opts` → `mongodb://127.0.0.1:PORT/DB?opts`.
        let uri = server.replacen("/?", &format!("/{db}?"), 1);
        let map = json!({
            "version": 1,
            "catalog": { "uri": uri },
            "sites": [
                { "name": "daq", "method": "local", "origin": true,
                  "data_dirs": { "raw": dir.path().join("daq/raw") },
                  "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
                  "push_to": ["mirror"] },
                { "name": "mirror", "method": "local",
                  "data_dirs": { "raw": dir.path().join("mirror/raw") },
                  "layout": "Run{number:06}" }
            ]
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        World { dir, uri }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn map(&self) -> String {
        self.path("map.json").display().to_string()
    }

    /// A complete run at the DAQ site.
    fn run_files(&self, number: u32) {
        let run = self.path(&format!("daq/raw/Run{number:06}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("a.evio"), vec![7_u8; 5000]).unwrap();
        std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    }

    /// The real binary, with nothing of the caller's environment that names a site, a
    /// catalogue or a site map.
    fn ferry(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .env("FERRY_STATE_DIR", self.path("state"))
            .args(args)
            .output()
            .unwrap()
    }

    /// One cycle of `site`'s agent, which must succeed.
    fn cycle(&self, site: &str) {
        let out = self.ferry(&["--config", &self.map(), "--host", site, "--once"]);
        assert_eq!(out.status.code(), Some(0), "{site}: {}", text(&out));
    }

    /// `ferry <how> check <extra>`: the exit code and stdout.
    fn check(&self, how: &[&str], extra: &[&str]) -> (Option<i32>, String) {
        let args: Vec<&str> = how
            .iter()
            .copied()
            .chain(["check"])
            .chain(extra.iter().copied())
            .collect();
        let out = self.ferry(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Moves `site`'s data directory away: this machine is no longer that site's.
    fn leave(&self, site: &str) {
        let raw = self.path(&format!("{site}/raw"));
        std::fs::rename(&raw, raw.with_extension("elsewhere")).unwrap();
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first line as Nagios reads it: `FERRY <STATE> - <short status> | <perfdata>`, with no
/// detail of its own (the details are on the lines after it).
fn first_line_is_short(out: &str) -> &str {
    let first = out.lines().next().unwrap_or_default();
    let (status, perf) = first
        .split_once(" | ")
        .unwrap_or_else(|| panic!("no perfdata on the first line: {out}"));
    assert!(status.chars().count() <= 80, "{first}");
    assert!(
        perf.starts_with("age=") && perf.contains(" failed="),
        "{first}"
    );
    for detail in ["raw (", "judged", "(ferry ", "pid ", "check that", ";"] {
        assert!(
            !status.contains(detail),
            "{detail:?} on the first line: {out}"
        );
    }
    assert!(out.lines().count() >= 4, "no detail lines: {out}");
    first
}

#[test]
fn check_on_a_monitoring_host_judges_the_site_from_its_heartbeat_alone() {
    let w = World::new("check_monitoring");
    w.run_files(1);
    w.cycle("daq");
    w.cycle("mirror");
    // This machine is now the monitoring host: neither site's data directory is here.
    w.leave("mirror");
    w.leave("daq");
    let map = w.map();
    let by_map: &[&str] = &["--config", &map];
    let by_uri: &[&str] = &["--catalog", &w.uri];

    // Run as on the site's own machine, the host-local checks fail here (what `--config`
    // alone did on a monitoring host): the message says what to pass instead.
    let (code, out) = w.check(&["--config", &map, "--host", "mirror"], &ANY_DISK);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("FERRY UNKNOWN - the site map fails on this host as site mirror")
            && out.lines().next().unwrap().contains("pass --site SITE"),
        "{out}"
    );

    for how in [by_map, by_uri] {
        for site in ["mirror", "daq"] {
            // OK: a fresh heartbeat, by the figures the site's agent reported.
            let (code, out) = w.check(how, &[&["--site", site][..], &ANY_DISK].concat());
            assert_eq!(code, Some(0), "{how:?} {site}: {out}");
            let first = first_line_is_short(&out);
            assert!(
                first.starts_with(&format!("FERRY OK - {site}: last cycle ")),
                "{out}"
            );
            let details = out.split_once('\n').unwrap().1;
            for said in [
                "last cycle ended ",
                "(ferry ",
                "last cycle: ",
                "raw (",
                "judged from the catalogue alone",
            ] {
                assert!(details.contains(said), "{said:?}: {out}");
            }
            assert!(
                details.lines().last().unwrap().contains("| cycle=")
                    && details.contains("raw_used="),
                "{out}"
            );

            // WARNING: a data directory under the threshold, by the heartbeat's figures.
            let (code, out) = w.check(
                how,
                &["--site", site, "--warn-free", "100", "--critical-free", "0"],
            );
            assert_eq!(code, Some(1), "{how:?} {site}: {out}");
            first_line_is_short(&out);
            assert!(
                out.starts_with(&format!("FERRY WARNING - {site}: raw has ")),
                "{out}"
            );

            // CRITICAL: the heartbeat is older than twice --max-age.
            std::thread::sleep(Duration::from_millis(20));
            let (code, out) = w.check(
                how,
                &[&["--site", site, "--max-age", "5ms"][..], &ANY_DISK].concat(),
            );
            assert_eq!(code, Some(2), "{how:?} {site}: {out}");
            first_line_is_short(&out);
            assert!(
                out.starts_with(&format!("FERRY CRITICAL - {site}: last cycle ")),
                "{out}"
            );
            assert!(out.contains("check that its agent runs"), "{out}");
        }
    }

    // A site the site map does not have is named as such, with the ones it has.
    let (code, out) = w.check(by_map, &["--site", "mirorr"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("FERRY UNKNOWN - --site mirorr is not a site of this site map")
            && out.contains("daq, mirror"),
        "{out}"
    );
    // A site with no heartbeat is CRITICAL, and says what to check.
    let (code, out) = w.check(by_uri, &["--site", "tape"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.starts_with("FERRY CRITICAL - tape: no heartbeat\n")
            && out.contains("systemctl status ferry@tape"),
        "{out}"
    );
}

#[test]
fn check_judges_a_site_that_only_receives_on_the_copies_it_received() {
    let w = World::new("check_receive_only");
    // The mirror's agent runs before any copy came: it has received nothing.
    w.cycle("mirror");
    let map = w.map();
    let by_map: &[&str] = &["--config", &map];
    let by_uri: &[&str] = &["--catalog", &w.uri];
    let within = |max: &'static str| [&["--max-since-transfer", max][..], &ANY_DISK].concat();
    for how in [by_map, by_uri] {
        let (code, out) = w.check(how, &[&["--site", "mirror"][..], &within("1h")].concat());
        assert_eq!(code, Some(1), "{how:?}: {out}");
        first_line_is_short(&out);
        assert!(
            out.starts_with("FERRY WARNING - mirror: no copy received yet |"),
            "{out}"
        );
        assert!(out.contains("it sends to no site"), "{out}");
    }

    // The DAQ pushes a run; the mirror's next cycle records that it arrived. Its own agent
    // made no copy, and it is still OK.
    w.run_files(1);
    w.cycle("daq");
    w.cycle("mirror");
    for how in [by_map, by_uri] {
        let (code, out) = w.check(how, &[&["--site", "mirror"][..], &within("1h")].concat());
        assert_eq!(code, Some(0), "{how:?}: {out}");
        let first = first_line_is_short(&out);
        assert!(first.contains(" failed=0"), "{out}");
        assert!(out.contains("\nlast copy received "), "{out}");
        assert!(
            out.lines().last().unwrap().contains(" since_transfer="),
            "{out}"
        );
        // The DAQ sends, and is judged on the copies its agent made.
        let (code, out) = w.check(how, &[&["--site", "daq"][..], &within("1h")].concat());
        assert_eq!(code, Some(0), "{how:?}: {out}");
        assert!(out.contains("\nlast copy made "), "{out}");
    }

    // Nothing received for longer than allowed: WARNING, said on the first line.
    std::thread::sleep(Duration::from_millis(2100));
    for how in [by_map, by_uri] {
        let (code, out) = w.check(how, &[&["--site", "mirror"][..], &within("1s")].concat());
        assert_eq!(code, Some(1), "{how:?}: {out}");
        first_line_is_short(&out);
        assert!(
            out.starts_with("FERRY WARNING - mirror: no copy received for "),
            "{out}"
        );
        assert!(out.contains("more than --max-since-transfer 1s"), "{out}");
    }
}
