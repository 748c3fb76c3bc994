//! The agent as operators run it: `ferry --once --task register` at an origin site on the
//! embedded catalogue, a second instance refused, a daemon stopped by SIGTERM. Digests are
//! checked against coreutils `sha256sum`, which shares no code with Ferry.

// Helpers outside #[test] functions may unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self::with_layout("Run{number:06}")
    }

    /// The DAQ site's run directories laid out as `layout`.
    fn with_layout(layout: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["daq/raw", "mirror/raw", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let map = serde_json::json!({
            "version": 1,
            "catalog": { "uri": format!("sqlite:{}", dir.path().join("catalog.sqlite").display()) },
            "sites": [
                { "name": "daq", "method": "local", "origin": true,
                  "data_dirs": { "raw": dir.path().join("daq/raw") },
                  "layout": layout, "completion": { "marker": "RUN_COMPLETE" },
                  "push_to": ["mirror"] },
                { "name": "mirror", "method": "local",
                  "data_dirs": { "raw": dir.path().join("mirror/raw") },
                  "layout": "Run{number:06}" }
            ]
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        Sandbox { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A run at the DAQ site: files of the given sizes, complete or not.
    fn run(&self, number: u32, sizes: &[usize], complete: bool) -> PathBuf {
        self.run_dir(&format!("Run{number:06}"), number, sizes, complete)
    }

    /// [`Sandbox::run`] in a directory of this name.
    fn run_dir(&self, dir: &str, number: u32, sizes: &[usize], complete: bool) -> PathBuf {
        let run = self.path(&format!("daq/raw/{dir}"));
        for (i, size) in sizes.iter().enumerate() {
            let file = run.join(format!("sub dir/{i:03} ü.evio"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let bytes: Vec<u8> = (0..*size)
                .map(|j| (j * 31 + i * 7 + number as usize) as u8)
                .collect();
            std::fs::write(file, bytes).unwrap();
        }
        if complete {
            std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
        }
        run
    }

    fn ferry(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.env_remove("FERRY_CATALOG")
            .env("FERRY_STATE_DIR", self.path("state"))
            .arg("--config")
            .arg(self.path("map.json"))
            .args(["--host", "daq"]);
        cmd
    }

    /// One cycle (`--once`) with these extra arguments.
    fn once(&self, args: &[&str]) -> Output {
        self.ferry().arg("--once").args(args).output().unwrap()
    }

    fn runs_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["runs", "list", "--json", "--catalog"])
            .arg(format!("sqlite:{}", self.path("catalog.sqlite").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
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

/// The run digest computed with coreutils: `sha256sum` per file, then SHA-256 over the
/// sorted lines `path \0 size \0 sha256 \n` (DESIGN §3.2).
fn digest_with_coreutils(run: &Path, skip: &str) -> String {
    let mut lines: Vec<(String, u64, String)> = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(run).unwrap().to_str().unwrap().to_string();
            if rel == skip {
                continue;
            }
            let out = Command::new("sha256sum").arg(&p).output().unwrap();
            assert!(out.status.success());
            let hash = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches('\\')
                .to_string();
            lines.push((rel, std::fs::metadata(&p).unwrap().len(), hash));
        }
    }
    lines.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut manifest = Vec::new();
    for (path, size, hash) in lines {
        manifest.extend_from_slice(format!("{path}\0{size}\0{hash}\n").as_bytes());
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &manifest).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn register_records_complete_runs_with_independently_checked_digests() {
    let sb = Sandbox::new();
    let run1 = sb.run(1, &[0, 1, 1 << 20 | 1], true);
    let run2 = sb.run(2, &[4096], true);
    sb.run(3, &[10], false); // still being written: no marker

    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("register: 2 done, 1 skipped, 0 failed"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("no completion marker RUN_COMPLETE"),
        "{stdout}"
    );

    let runs = sb.runs_json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for (doc, dir) in runs.iter().zip([&run1, &run2]) {
        let expected = digest_with_coreutils(dir, "RUN_COMPLETE");
        assert_eq!(doc["digest"].as_str(), Some(expected.as_str()), "{doc:#}");
        let origin = &doc["data"][0];
        assert_eq!(origin["host"], "daq");
        assert_eq!(origin["status"], "transferred");
        assert_eq!(origin["checksum"].as_str(), Some(expected.as_str()));
    }

    // Idempotent: a second cycle changes nothing and reads no file again.
    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("register: 0 done, 3 skipped"));
    assert_eq!(sb.runs_json().as_array().unwrap().len(), 2);
}

#[test]
fn run_filter_registers_only_that_run() {
    let sb = Sandbox::new();
    sb.run(1, &[10], true);
    sb.run(2, &[10], true);
    let out = sb.once(&["--task", "register", "--run", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs = sb.runs_json();
    let numbers: Vec<_> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].clone())
        .collect();
    assert_eq!(numbers, [serde_json::json!(2)]);
}

#[test]
fn second_agent_for_a_site_exits_naming_the_holder_and_sigterm_stops_the_daemon() {
    let sb = Sandbox::new();
    let mut daemon = sb
        .ferry()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the daemon holds its lock (the lock file names its pid).
    let lock = sb.path("state/ferry-daq.lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&lock)
        .map(|s| s.trim().to_string())
        .ok()
        != Some(daemon.id().to_string())
    {
        assert!(Instant::now() < deadline, "daemon never took its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pid {}", daemon.id())), "{stderr}");

    // SIGTERM: the daemon stops promptly and cleanly (exit 0), releasing the lock.
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn push_local_copies_verify_and_record_the_mirror() {
    let sb = Sandbox::new();
    let run1 = sb.run(1, &[0, 1, 1 << 20 | 1], true);
    let out = sb.once(&["--task", "register", "--task", "push"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("push: 1 done"),
        "{}",
        text(&out)
    );

    let mirror = sb.path("mirror/raw/Run000001");
    let expected = digest_with_coreutils(&run1, "RUN_COMPLETE");
    assert_eq!(digest_with_coreutils(&mirror, "RUN_COMPLETE"), expected);
    let runs = sb.runs_json();
    let copies = runs[0]["data"].as_array().unwrap();
    let at_mirror = copies.iter().find(|c| c["host"] == "mirror").unwrap();
    assert_eq!(at_mirror["status"], "transferred", "{at_mirror:#}");
    assert_eq!(at_mirror["checksum"].as_str(), Some(expected.as_str()));
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(mirror.join("sub dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn source_corrupted_after_registration_is_never_recorded_as_transferred() {
    let sb = Sandbox::new();
    let run1 = sb.run(1, &[4096], true);
    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Bit rot at the origin after the manifest was taken.
    let file = run1.join("sub dir/000 ü.evio");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let out = sb.once(&["--task", "push"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let runs = sb.runs_json();
    let at_mirror = runs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "mirror")
        .cloned()
        .unwrap();
    assert_eq!(at_mirror["status"], "error", "{at_mirror:#}");
    assert!(at_mirror["last_error"]
        .as_str()
        .unwrap()
        .contains("000 ü.evio"));
    assert!(!sb.path("mirror/raw/Run000001/sub dir/000 ü.evio").exists());
}

/// Run documents a DAQ wrote (XENON1T style: `number`, `name`, `end`, its own `data[]` entry
/// with `checksum: null`) get their manifest, digest and wanted copies from the origin agent,
/// found by name with a `{name}` layout; `end` unset waits for the completion rule; a
/// directory without a document is left alone; and the run is then pushed like any other.
#[test]
fn daq_written_runs_get_manifest_digest_and_copies() {
    use bson::{doc, Bson, DateTime};
    let sb = Sandbox::with_layout("{name}");
    let ended = sb.run_dir("170330_1234", 4711, &[0, 5000], false);
    let verifying = sb.run_dir("170330_1400", 4713, &[77], false);
    sb.run_dir("170330_1300", 4712, &[10], false);
    sb.run_dir("170330_9999", 9999, &[10], true);
    let daq_doc = |number: i32, name: &str, status: &str, end: bool, dir: &Path| {
        let mut d = doc! {
            "number": number, "name": name,
            "start": DateTime::from_millis(1_490_870_000_000),
            "trigger": { "mode": "background_stable" },
            "data": [{ "type": "raw", "host": "daq", "location": dir.display().to_string(),
                       "status": status, "checksum": Bson::Null, "creator": "daq" }],
        };
        if end {
            d.insert("end", DateTime::from_millis(1_490_873_600_000));
        }
        d
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cat = ferry::catalog::embedded::EmbeddedCatalog::open(&sb.path("catalog.sqlite"))
            .await
            .unwrap();
        cat.import_documents(vec![
            daq_doc(4711, "170330_1234", "transferred", true, &ended),
            daq_doc(4712, "170330_1300", "transferred", false, &sb.path("x")),
            daq_doc(4713, "170330_1400", "verifying", true, &verifying),
        ])
        .await
        .unwrap();
    });

    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        // The holder's adoption pass computes both manifests (and reports the DAQ run still
        // without `end`); discovery then finds their directories already registered.
        stdout.contains("register: 2 done, 5 skipped, 0 failed")
            && stdout.contains("run 4711 raw@daq: manifest computed where the copy is"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("no completion marker RUN_COMPLETE"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no run document named \"170330_9999\""),
        "{stdout}"
    );

    let runs = sb.runs_json();
    let by_number = |n: i64| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["number"] == n)
            .unwrap()
            .clone()
    };
    for (n, dir) in [(4711, &ended), (4713, &verifying)] {
        let doc = by_number(n);
        let expected = digest_with_coreutils(dir, "");
        assert_eq!(doc["digest"].as_str(), Some(expected.as_str()), "{doc:#}");
        assert_eq!(
            doc["data"].as_array().unwrap().len(),
            1,
            "a second origin copy: {doc:#}"
        );
        let entry = &doc["data"][0];
        assert_eq!(entry["status"], "transferred", "{doc:#}");
        assert_eq!(
            entry["checksum"].as_str(),
            Some(expected.as_str()),
            "{doc:#}"
        );
        assert_eq!(entry["creator"], "daq", "{doc:#}");
        assert_eq!(doc["trigger"]["mode"], "background_stable", "{doc:#}");
        assert_eq!(doc["want"], serde_json::json!(["mirror/raw"]), "{doc:#}");
    }
    let waiting = by_number(4712);
    assert!(waiting["digest"].is_null(), "{waiting:#}");
    assert!(waiting["data"][0]["checksum"].is_null(), "{waiting:#}");

    let out = sb.once(&["--task", "push"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(sb.path("mirror/raw/Run004711/sub dir/001 ü.evio").is_file());
    let doc = sb.runs_json();
    let mirrored = doc
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["host"] == "mirror" && c["status"] == "transferred")
        })
        .count();
    assert_eq!(mirrored, 2, "{doc:#}");
}

/// Sets a file's modification time.
fn set_mtime(file: &Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// The millisecond time of a run document's `start` or `end` (relaxed extended JSON).
fn millis(doc: &serde_json::Value, field: &str) -> i64 {
    let shown = doc[field]["$date"]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {doc:#}"));
    chrono::DateTime::parse_from_rfc3339(shown)
        .unwrap()
        .timestamp_millis()
}

/// A run registered from disk had `start: None`, so `ferry runs list --since` never found
/// it: it now takes its files' earliest modification time as `start` and the completion
/// marker's as `end`.
#[test]
fn a_run_found_on_disk_gets_start_and_end_from_its_files_and_is_listed_since() {
    let sb = Sandbox::new();
    let run = sb.run(1, &[10, 20], true);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000); // 2026-05-28
    let at = |s: u64| t0 + Duration::from_secs(s);
    set_mtime(&run.join("sub dir/001 ü.evio"), at(0));
    set_mtime(&run.join("sub dir/000 ü.evio"), at(1800));
    set_mtime(&run.join("RUN_COMPLETE"), at(3600));

    let out = sb.once(&["--task", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs = sb.runs_json();
    let doc = &runs[0];
    let t0_ms = 1_780_000_000_000;
    assert_eq!(millis(doc, "start"), t0_ms, "{doc:#}");
    assert_eq!(millis(doc, "end"), t0_ms + 3_600_000, "{doc:#}");

    let list_since = |day: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["runs", "list", "--since", day, "--catalog"])
            .arg(format!("sqlite:{}", sb.path("catalog.sqlite").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let found = list_since("2026-05-01");
    assert!(
        found.contains("Run000001") && found.contains("2026-05-28"),
        "{found}"
    );
    assert!(!list_since("2026-06-01").contains("Run000001"));
}

/// `--once --dry-run --run N` on a run not registered yet said it would register it, then
/// failed the cycle because the run was not in the catalogue: the later tasks now say what
/// they would do with it once registered, and nothing fails or is written.
#[test]
fn a_dry_run_on_a_new_run_says_what_it_would_do_and_fails_nothing() {
    let sb = Sandbox::new();
    sb.run(1, &[10], true);
    let out = sb.once(&["--dry-run", "--run", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dry run: would register 1 files"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("run 1 (Run000001) raw: dry run: not registered yet; would push to mirror after registering"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("FAILED"), "{}", text(&out));
    assert!(!stdout.contains("not in the catalogue"), "{}", text(&out));
    // The whole cycle, dry: the audit does not call the run dark data either.
    let out = sb.once(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("dark data"), "{}", text(&out));
    assert!(
        !sb.path("catalog.sqlite").exists() || sb.runs_json().as_array().unwrap().is_empty(),
        "a dry run wrote a run"
    );
}
