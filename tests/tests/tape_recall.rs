//! `ferry recall` as operators run it, with real parts: the `ferry` binary, the embedded
//! catalogue and the MongoDB-wire server, a `directory` backend and a two-drive `tar`
//! backend on file-backed tapes (the fake `mt`/`tape-dd` shims).
//!
//! Each case: `--task register`, `--task tape` (the tape copy records `tape: { backend,
//! reference, volumes, verified }`), the site's own copy removed (files and entry), then
//! `ferry recall --run 7`: the files are back and hash to what was written, the copy is
//! `transferred` with the run's digest. Refusals: a copy still present, `--to` another
//! site, a run without a tape copy, an unknown run. A byte flipped in the directory
//! backend's store makes the recall fail: the copy is `error` with a `[checksum]` cause,
//! and no file is left in the data directory; run again once the tape is good, the recall
//! takes its failed copy over and restores the run; so it does for a copy whose files were
//! lost, once the audit task has recorded the loss.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry::catalog::{CatalogUri, CopyRef, CopyStatus, RunKey};
use ferry_tests::{unique_db_name, MongoServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod tape_common;
use tape_common::{tar_entry, Lab};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cat {
    Embedded,
    Mongo,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Directory,
    Tar,
    /// `directory` first, then `tar`.
    Both,
}

struct Setup {
    lab: Lab,
    uri: String,
    tape: &'static str,
    /// Manifest path → SHA-256 of the bytes written.
    files: BTreeMap<String, String>,
}

impl Setup {
    fn new(cat: Cat, kind: Kind, test: &str) -> Setup {
        let lab = Lab::new();
        for d in ["state", "tape", "mirror/raw"] {
            std::fs::create_dir_all(lab.path().join(d)).unwrap();
        }
        let uri = match cat {
            Cat::Embedded => format!("sqlite:{}", lab.path().join("catalog.sqlite").display()),
            Cat::Mongo => {
                let mongo = MongoServer::shared().unwrap();
                let db = unique_db_name(test);
                match mongo.uri().split_once("/?") {
                    Some((head, opts)) => format!("{head}/{db}?{opts}"),
                    None => format!("{}/{db}", mongo.uri()),
                }
            }
        };
        let (tape, entry) = match kind {
            Kind::Directory => (
                "dir-tape",
                json!({ "name": "dir-tape", "kind": "directory", "path": lab.path().join("tape") }),
            ),
            Kind::Tar => ("lto", tar_entry(&lab, 2)),
            Kind::Both => ("dir-tape", Value::Null),
        };
        let entries = match kind {
            Kind::Both => json!([
                { "name": "dir-tape", "kind": "directory", "path": lab.path().join("tape") },
                tar_entry(&lab, 2)
            ]),
            _ => json!([entry]),
        };
        let raw = lab.path().join("daq/raw");
        let files = write_run(&raw.join("Run000007"), 7);
        write_run(&raw.join("Run000008"), 8);
        let map = json!({
            "version": 1,
            "sites": [{
                "name": "daq", "method": "local", "origin": true,
                "data_dirs": { "raw": raw },
                "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
                "tape": entries
            }, {
                "name": "mirror", "method": "local",
                "data_dirs": { "raw": lab.path().join("mirror/raw") },
                "layout": "Run{number:06}"
            }]
        });
        std::fs::write(lab.path().join("map.json"), map.to_string()).unwrap();
        Setup {
            lab,
            uri,
            tape,
            files,
        }
    }

    fn raw(&self) -> PathBuf {
        self.lab.path().join("daq/raw")
    }

    fn ferry(&self, args: &[&str]) -> Output {
        Command::new(FERRY)
            .env_remove("FERRY_CATALOG")
            .env("FERRY_STATE_DIR", self.lab.path().join("state"))
            .arg("--config")
            .arg(self.lab.path().join("map.json"))
            .args(["--host", "daq", "--catalog", &self.uri])
            .args(args)
            .output()
            .expect("run ferry")
    }

    fn run_doc(&self, n: i64) -> Value {
        let out = self.ferry(&["runs", "show", &n.to_string(), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn catalog<T>(&self, f: impl AsyncFnOnce(&dyn ferry::catalog::Catalog) -> T) -> T {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = ferry::catalog::open(&CatalogUri::parse(&self.uri).unwrap())
                .await
                .unwrap();
            f(&*c).await
        })
    }

    /// Removes the site's copy of run 7 as purge would: `removing`, files, entry.
    fn drop_site_copy(&self, from: CopyStatus) {
        let detector = self.run_doc(7)["detector"].as_str().unwrap().to_owned();
        let copy = CopyRef::new(RunKey::new(&detector, 7), "daq", "raw");
        self.catalog(async |c| {
            let done = c
                .mark_removing(&copy, from, &[], "test", "make room")
                .await
                .unwrap();
            assert_eq!(done, ferry::catalog::Cas::Done);
            let dir = self.raw().join("Run000007");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            let done = c.remove_copy(&copy, "test", "make room").await.unwrap();
            assert_eq!(done, ferry::catalog::Cas::Done);
        });
    }

    /// Files left under the data directory's run 7 directory, and scratch directories.
    fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.raw()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with(".ferry-recall") {
                    out.push(p.clone());
                }
                if p.is_dir() {
                    if name != "Run000008" {
                        stack.push(p);
                    }
                } else if p.starts_with(self.raw().join("Run000007")) {
                    out.push(p);
                }
            }
        }
        out
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

/// What people read carries no Rust debug text: `verified Sample { fraction: 0.1, seed:
/// Some(…) }` and `request=Request { run: Number(7), … }` were printed.
fn assert_no_rust_debug(o: &Output) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for debug in ["Some(", "None", "Sample {", "Request {", "Number(", "{ "] {
        assert!(
            !all.contains(debug),
            "{debug:?} in what ferry printed: {all}"
        );
    }
}

fn copy<'a>(run: &'a Value, host: &str) -> Option<&'a Value> {
    run["data"].as_array()?.iter().find(|c| c["host"] == host)
}

/// A run of three files (one in a sub directory with a space, one empty) and the marker.
fn write_run(dir: &Path, seed: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, size) in [300_000usize, 10, 0].iter().enumerate() {
        let path = format!("sub dir/{i:03}.evio");
        let f = dir.join(&path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..*size).map(|j| (j * 31 + i * 7 + seed) as u8).collect();
        std::fs::write(&f, &bytes).unwrap();
        out.insert(path, hex(&Sha256::digest(&bytes)));
    }
    std::fs::write(dir.join("RUN_COMPLETE"), b"").unwrap();
    out
}

fn scenario(cat: Cat, kind: Kind, test: &str) {
    let s = Setup::new(cat, kind, test);
    let out = s.ferry(&["--once", "--task", "register"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = s.ferry(&["--once", "--task", "tape", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_rust_debug(&out);

    // The tape copy carries where the receipt put the run and how it was verified.
    let run = s.run_doc(7);
    let digest = run["digest"].as_str().unwrap().to_owned();
    let t = copy(&run, s.tape).unwrap_or_else(|| panic!("no tape copy: {run:#}"));
    assert_eq!(t["status"], "transferred", "{t:#}");
    assert_eq!(t["tape"]["backend"], s.tape, "{t:#}");
    assert!(
        t["tape"]["reference"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{t:#}"
    );
    assert_eq!(t["tape"]["verified"]["level"], "sample", "{t:#}");
    assert!(t["tape"]["verified"]["seed"].as_str().is_some(), "{t:#}");
    assert!(
        t["tape"]["verified"]["files"].as_i64().unwrap() >= 1,
        "{t:#}"
    );
    let volumes = t["tape"]["volumes"].as_array().unwrap();
    match kind {
        Kind::Directory | Kind::Both => assert!(volumes.is_empty(), "{t:#}"),
        Kind::Tar => assert_eq!(volumes.len(), 2, "one per drive: {t:#}"),
    }
    let out = s.ferry(&["runs", "show", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_rust_debug(&out);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("tape {}: reference ", s.tape))
            && shown.contains("verified sample"),
        "{shown}"
    );

    // The copy is still here: recall refuses, and says why.
    let out = s.ferry(&["recall", "--run", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has that copy (status transferred)"),
        "{}",
        text(&out)
    );

    s.drop_site_copy(CopyStatus::Transferred);
    if cat == Cat::Mongo && kind == Kind::Tar {
        // A copy recorded before the `tape` field existed: no volumes to read from, the
        // tar backend's label store says which tapes hold the run.
        unset_tape_field(&s.uri, 7);
        assert!(copy(&s.run_doc(7), s.tape).unwrap().get("tape").is_none());
    }

    // Refusals that change nothing.
    let out = s.ferry(&["recall", "--run", "7", "--to", "mirror"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--to mirror")
            && err.contains("this machine's disk")
            && err.contains("runs as daq"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["recall", "--run", "8"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run 8: no transferred tape copy"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["recall", "--run", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no run 99"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["recall", "--run", "7", "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = s.ferry(&["recall", "--run", "7", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_rust_debug(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run=run 7"),
        "the recall names its run in words: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dry run: would restore"),
        "{}",
        text(&out)
    );
    assert!(
        copy(&s.run_doc(7), "daq").is_none(),
        "a dry run records nothing"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // The recall.
    let out = s.ferry(&["recall", "--run", "7", "--to", "daq"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored from tape {}", s.tape)),
        "{}",
        text(&out)
    );
    s.assert_restored();
    let run = s.run_doc(7);
    let c = copy(&run, "daq").expect("restored copy");
    assert_eq!(c["status"], "transferred", "{c:#}");
    assert_eq!(c["checksum"], digest, "{c:#}");
    assert_eq!(
        c["location"],
        s.raw().join("Run000007").display().to_string(),
        "{c:#}"
    );
    assert!(c.get("lease").is_none(), "{c:#}");
    assert!(
        !s.leftovers()
            .iter()
            .any(|p| p.to_string_lossy().contains(".ferry-recall")),
        "scratch removed: {:?}",
        s.leftovers()
    );

    if kind == Kind::Directory {
        corrupted_tape_fails(&s);
    }
}

/// A byte flipped in the directory backend's store: the recall fails, records `error` with
/// a checksum cause, and leaves no file in the data directory.
fn corrupted_tape_fails(s: &Setup) {
    s.drop_site_copy(CopyStatus::Transferred);
    let stored = s.lab.path().join("tape/Run000007/sub dir/000.evio");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let out = s.ferry(&["recall", "--run", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256") && err.contains(s.files["sub dir/000.evio"].as_str()),
        "{}",
        text(&out)
    );
    let run = s.run_doc(7);
    let c = copy(&run, "daq").expect("failed copy recorded");
    assert_eq!(c["status"], "error", "{c:#}");
    assert!(
        c["last_error"].as_str().unwrap().starts_with("[checksum]"),
        "{c:#}"
    );
    assert!(
        s.leftovers().is_empty(),
        "nothing left: {:?}",
        s.leftovers()
    );
    assert!(
        !s.raw().join("Run000007").exists()
            || std::fs::read_dir(s.raw().join("Run000007"))
                .unwrap()
                .next()
                .is_none()
    );
    // Run again, the recall takes its failed copy over; once the tape is good again
    // (the byte flipped back) it restores the run.
    let out = s.ferry(&["recall", "--run", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(copy(&s.run_doc(7), "daq").unwrap()["status"], "error");
    assert!(
        s.leftovers().is_empty(),
        "nothing left: {:?}",
        s.leftovers()
    );
    bytes[1234] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    let out = s.ferry(&["recall", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    s.assert_restored();
    let run = s.run_doc(7);
    let c = copy(&run, "daq").unwrap();
    assert_eq!(c["status"], "transferred", "{c:#}");
    assert_eq!(c["checksum"], run["digest"], "{c:#}");
    assert_eq!(c["attempts"].as_i64(), Some(3), "{c:#}");

    // Files lost behind the catalogue's back: refused while the copy says `transferred`;
    // once the audit has recorded the loss, the recall takes the copy over.
    std::fs::remove_dir_all(s.raw().join("Run000007")).unwrap();
    let out = s.ferry(&["recall", "--run", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("task audit"),
        "{}",
        text(&out)
    );
    let out = s.ferry(&["--once", "--task", "audit"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the audit reports the loss: {}",
        text(&out)
    );
    let c = copy(&s.run_doc(7), "daq").unwrap().clone();
    assert_eq!(c["status"], "error", "{c:#}");
    assert!(c["last_error"].as_str().unwrap().contains("lost"), "{c:#}");
    let out = s.ferry(&["recall", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    s.assert_restored();
    assert_eq!(copy(&s.run_doc(7), "daq").unwrap()["status"], "transferred");
}

/// Removes every copy's `tape` field of run `n`, straight in MongoDB (as an older Ferry
/// left the document).
fn unset_tape_field(uri: &str, n: i64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.default_database().unwrap();
        let runs = db.collection::<bson::Document>("runs");
        let mut doc = runs
            .find_one(bson::doc! { "number": n })
            .await
            .unwrap()
            .expect("run document");
        let id = doc.get("_id").cloned().unwrap();
        let data = doc.get_array_mut("data").unwrap();
        for entry in data.iter_mut() {
            if let bson::Bson::Document(d) = entry {
                d.remove("tape");
            }
        }
        let r = runs
            .replace_one(bson::doc! { "_id": id }, doc)
            .await
            .unwrap();
        assert_eq!(r.modified_count, 1);
    });
}

/// Two tape copies; the first (directory) is corrupt: the recall falls back to the second
/// (tar) under the same claim. Named with `--from`, the corrupt one alone fails.
#[test]
fn recall_falls_back_to_the_next_tape_copy() {
    let s = Setup::new(Cat::Embedded, Kind::Both, "recall_fallback");
    for args in [
        &["--once", "--task", "register"][..],
        &["--once", "--task", "tape"],
    ] {
        let out = s.ferry(args);
        assert!(out.status.success(), "{}", text(&out));
    }
    let run = s.run_doc(7);
    for host in ["dir-tape", "lto"] {
        assert_eq!(
            copy(&run, host).unwrap()["status"],
            "transferred",
            "{run:#}"
        );
    }
    s.drop_site_copy(CopyStatus::Transferred);
    let stored = s.lab.path().join("tape/Run000007/sub dir/000.evio");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[99] ^= 0x80;
    std::fs::write(&stored, &bytes).unwrap();

    let out = s.ferry(&["recall", "--run", "7", "--from", "dir-tape"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(copy(&s.run_doc(7), "daq").unwrap()["status"], "error");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    let out = s.ferry(&["recall", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored from tape lto"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "the directory copy's failure is logged: {}",
        text(&out)
    );
    s.assert_restored();
    assert_eq!(copy(&s.run_doc(7), "daq").unwrap()["status"], "transferred");
}

#[test]
fn recall_from_directory_embedded() {
    scenario(Cat::Embedded, Kind::Directory, "recall_dir_embedded");
}

#[test]
fn recall_from_tar_embedded() {
    scenario(Cat::Embedded, Kind::Tar, "recall_tar_embedded");
}

#[test]
fn recall_from_directory_mongo() {
    scenario(Cat::Mongo, Kind::Directory, "recall_dir_mongo");
}

#[test]
fn recall_from_tar_mongo() {
    scenario(Cat::Mongo, Kind::Tar, "recall_tar_mongo");
}

#[test]
fn a_recall_killed_midway_is_taken_over_by_the_next_recall_and_its_scratch_removed() {
    let s = Setup::new(Cat::Embedded, Kind::Directory, "recall_killed");
    for args in [
        &["--once", "--task", "register"][..],
        &["--once", "--task", "tape"],
    ] {
        let out = s.ferry(args);
        assert!(out.status.success(), "{}", text(&out));
    }
    s.drop_site_copy(CopyStatus::Transferred);
    // What `kill -9` of a recall leaves: the copy `transferring` under the lease of a process
    // of this site on this host that is gone, and its scratch directory.
    let detector = s.run_doc(7)["detector"].as_str().unwrap().to_owned();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let dead = format!("daq@{host}:4194305/1/ff");
    let dir = s.raw().join("Run000007");
    s.catalog(async |c| {
        let claim = ferry::catalog::ClaimRequest {
            copy: CopyRef::new(RunKey::new(&detector, 7), "daq", "raw"),
            location: dir.display().to_string(),
            protocol: "local".into(),
            owner: dead.clone(),
            lease_for: std::time::Duration::from_secs(3600),
        };
        let won = c.claim_copy(&claim).await.unwrap();
        assert!(matches!(won, ferry::catalog::Claim::Won(_)));
    });
    let scratch = s.raw().join(".ferry-recall-7-4194305-1");
    std::fs::create_dir_all(scratch.join("sub dir")).unwrap();
    std::fs::write(scratch.join("sub dir/000.evio"), b"half").unwrap();

    let out = s.ferry(&["recall", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    s.assert_restored();
    assert_eq!(copy(&s.run_doc(7), "daq").unwrap()["status"], "transferred");
    assert!(
        !scratch.exists(),
        "the killed recall's scratch is still there"
    );
    assert!(
        s.leftovers().iter().all(|p| p.starts_with(&dir)),
        "{:?}",
        s.leftovers()
    );
}
