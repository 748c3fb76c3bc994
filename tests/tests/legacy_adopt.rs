//! A cax collaboration taken over as it stands: run documents the DAQ wrote (`checksum`
//! null, `end` set) and copies cax recorded (SHA-512 dirhashes, `location: "n/a"`,
//! `creation_time` as a list, a dead cax's `transferring` entry without a lease), at sites
//! none of which is an origin. The real `ferry` binary, `--once` per site, `local` sites in
//! one temporary directory, real files; the catalogue is the embedded store and the
//! MongoDB-wire server, documents inserted as the DAQ and cax wrote them. Hashes are
//! computed by the test with `sha2`, and read back with pymongo in the Mongo variant.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bson::{doc, Bson, Document};
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry_tests::{unique_db_name, MongoServer};
use sha2::{Digest, Sha256, Sha512};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const SITES: [&str; 3] = ["daq", "mirror", "far"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Embedded,
    Mongo,
}

struct World {
    dir: tempfile::TempDir,
    store: Store,
    uri: String,
    db: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// checksumdir.dirhash(dir, 'sha512'), computed here independently of Ferry.
fn dirhash(dir: &Path) -> String {
    let mut sums: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| hex(&Sha512::digest(std::fs::read(e.unwrap().path()).unwrap())))
        .collect();
    sums.sort();
    hex(&Sha512::digest(sums.concat().as_bytes()))
}

fn sha256s(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex(&Sha256::digest(std::fs::read(e.path()).unwrap())),
            )
        })
        .collect()
}

/// (inode, mtime in ns) of every file: unchanged means no byte was written again.
fn stamps(dir: &Path) -> BTreeMap<String, (u64, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()),
            )
        })
        .collect()
}

impl World {
    /// `daq` pushes to `mirror`, `far` pulls from `mirror` (cax's `upload_options` and
    /// `download_options`); no site is an origin.
    fn new(test: &str, store: Store) -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = unique_db_name(test);
        let uri = match store {
            Store::Embedded => format!("sqlite:{}", dir.path().join("catalog.sqlite").display()),
            Store::Mongo => {
                let mongo = MongoServer::shared().unwrap();
                match mongo.uri().split_once("/?") {
                    Some((head, opts)) => format!("{head}/{db}?{opts}"),
                    None => format!("{}/{db}", mongo.uri()),
                }
            }
        };
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let mut sites = Vec::new();
        for name in SITES {
            let root = dir.path().join(name);
            std::fs::create_dir_all(root.join("raw")).unwrap();
            std::fs::create_dir_all(root.join("untriggered")).unwrap();
            let mut site = serde_json::json!({
                "name": name,
                "method": "local",
                "data_dirs": { "raw": root.join("raw"), "untriggered": root.join("untriggered") },
                "layout": "{name}",
                "completion": { "marker": "DONE" },
            });
            match name {
                "daq" => site["push_to"] = serde_json::json!(["mirror"]),
                "far" => site["pull_from"] = serde_json::json!(["mirror"]),
                _ => {}
            }
            sites.push(site);
        }
        let map = serde_json::json!({ "version": 1, "catalog": { "uri": uri }, "sites": sites });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        World {
            dir,
            store,
            uri,
            db,
        }
    }

    fn run_dir(&self, site: &str, ty: &str, name: &str) -> PathBuf {
        self.dir.path().join(site).join(ty).join(name)
    }

    /// Writes a run's files at `site`; returns the directory.
    fn write_run(&self, site: &str, ty: &str, name: &str, seed: u8) -> PathBuf {
        let d = self.run_dir(site, ty, name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..3u8 {
            let bytes: Vec<u8> = (0..20_000u32)
                .map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i))
                .collect();
            std::fs::write(d.join(format!("XENON1T-{name}-{i:09}.zip")), bytes).unwrap();
        }
        d
    }

    fn insert(&self, docs: Vec<Document>) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            match self.store {
                Store::Embedded => {
                    let path = self.dir.path().join("catalog.sqlite");
                    let cat = EmbeddedCatalog::open(&path).await.unwrap();
                    cat.import_documents(docs).await.unwrap();
                }
                Store::Mongo => {
                    let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
                    client
                        .database(&self.db)
                        .collection::<Document>("runs")
                        .insert_many(docs)
                        .await
                        .unwrap();
                }
            }
        });
    }

    fn once(&self, site: &str, args: &[&str]) -> Output {
        let out = self.cycle(site, args);
        assert_eq!(out.status.code(), Some(0), "{site}: {}", text(&out));
        out
    }

    /// One `--once` cycle, whatever it reports.
    fn cycle(&self, site: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .env("HOME", self.dir.path())
            .env("FERRY_STATE_DIR", self.dir.path().join("state"))
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.dir.path().join("map.json"))
            .args(["--host", site, "--once"])
            .args(args)
            .output()
            .unwrap();
        out
    }

    /// Every run document through `ferry runs list --json` (both stores).
    fn runs(&self) -> Vec<serde_json::Value> {
        let out = Command::new(FERRY)
            .args(["runs", "list", "--json", "--catalog", &self.uri])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        match serde_json::from_slice(&out.stdout).unwrap() {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        }
    }

    fn copy(&self, number: i64, site: &str, ty: &str) -> Option<serde_json::Value> {
        let run = self
            .runs()
            .into_iter()
            .find(|r| r["number"].as_i64() == Some(number))?;
        run["data"]
            .as_array()?
            .iter()
            .find(|c| c["host"] == site && c["type"] == ty)
            .cloned()
    }

    fn run_doc(&self, number: i64) -> serde_json::Value {
        self.runs()
            .into_iter()
            .find(|r| r["number"].as_i64() == Some(number))
            .unwrap()
    }
}

fn date(y: i32, m: u8, d: u8) -> bson::DateTime {
    bson::DateTime::builder()
        .year(y)
        .month(m)
        .day(d)
        .build()
        .unwrap()
}

/// A run document as XENON1T's DAQ wrote it: its own entry, `checksum` null, `end` set.
fn daq_doc(number: i64, name: &str, location: &Path, extra: Vec<Document>) -> Document {
    let mut data = vec![Bson::Document(doc! {
        "type": "raw", "host": "daq", "status": "transferred",
        "location": location.display().to_string(), "checksum": Bson::Null,
        "creation_time": [date(2017, 3, 30)],
    })];
    data.extend(extra.into_iter().map(Bson::Document));
    doc! {
        "number": number, "name": name, "detector": "tpc",
        "start": date(2017, 3, 30), "end": date(2017, 3, 30),
        "data": data,
    }
}

fn assert_verified_like(w: &World, number: i64, site: &str, ty: &str, name: &str, want: &str) {
    let c = w
        .copy(number, site, ty)
        .unwrap_or_else(|| panic!("no copy at {site}"));
    assert_eq!(c["status"], "transferred", "{site}: {c}");
    let run = w.run_doc(number);
    assert_eq!(c["checksum"], run["digest"], "{site}: {c}");
    assert_eq!(
        sha256s(&w.run_dir(site, ty, name)),
        sha256s(&w.run_dir(want, ty, name)),
        "{site}'s bytes"
    );
}

fn daq_written_run_is_copied(store: Store) {
    let w = World::new("legacy_daq_written", store);
    let name = "170330_1234";
    let src = w.write_run("daq", "raw", name, 7);
    w.insert(vec![daq_doc(4000, name, &src, vec![])]);
    w.once("daq", &[]);
    let run = w.run_doc(4000);
    assert!(run["digest"].is_string(), "no manifest: {run}");
    assert_eq!(run["files"].as_array().unwrap().len(), 3, "{run}");
    let daq = w.copy(4000, "daq", "raw").unwrap();
    assert_eq!(daq["checksum"], run["digest"], "{daq}");
    // Pushed in the same cycle; `far` wanted too (reached through mirror).
    assert_verified_like(&w, 4000, "mirror", "raw", name, "daq");
    w.once("far", &[]);
    assert_verified_like(&w, 4000, "far", "raw", name, "daq");
}

#[test]
fn a_legacy_site_computes_the_manifest_of_a_daq_written_run() {
    daq_written_run_is_copied(Store::Embedded);
}

#[test]
fn a_legacy_site_computes_the_manifest_of_a_daq_written_run_in_mongodb() {
    daq_written_run_is_copied(Store::Mongo);
}

/// Copies cax recorded: a good one at `mirror` (adopted, no byte written), a rotted one at
/// `far` (marked bad and re-copied), both with cax's dirhash and `creation_time` as a list;
/// an `untriggered` run at `daq` with its dirhash and a dead cax's `transferring` entry at
/// `mirror` with `location: "n/a"` and no lease (cleared, then copied).
fn cax_copies_are_adopted_or_recopied(store: Store) {
    let w = World::new("legacy_cax_copies", store);
    let name = "170331_0001";
    let daq = w.write_run("daq", "raw", name, 3);
    let good = dirhash(&daq);
    let mirror = w.write_run("mirror", "raw", name, 3);
    let far = w.write_run("far", "raw", name, 3);
    // One byte of one file at `far` rotted after cax checksummed it.
    let victim = std::fs::read_dir(&far)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let untriggered = w.write_run("daq", "untriggered", name, 9);
    let entry = |host: &str, ty: &str, dir: &Path, sum: &str| {
        doc! {
            "type": ty, "host": host, "status": "transferred",
            "location": dir.display().to_string(), "checksum": sum,
            "creation_time": [date(2017, 4, 1), date(2017, 4, 2)],
        }
    };
    let mut doc = daq_doc(
        4001,
        name,
        &daq,
        vec![
            entry("mirror", "raw", &mirror, &good),
            entry("far", "raw", &far, &good),
        ],
    );
    doc.get_array_mut("data").unwrap()[0]
        .as_document_mut()
        .unwrap()
        .insert("checksum", good.clone());
    // A run of cax's `untriggered` type (a manifest is per run: a run document of its own),
    // with a pending entry at `mirror` that a cax which died left behind.
    let untriggered_doc = doc! {
        "number": 4003_i64, "name": name, "detector": "muon_veto",
        "start": date(2017, 3, 31), "end": date(2017, 3, 31),
        "data": [
            entry("daq", "untriggered", &untriggered, &dirhash(&untriggered)),
            { "type": "untriggered", "host": "mirror", "status": "transferring",
              "location": "n/a", "checksum": Bson::Null,
              "creation_time": [date(2017, 4, 1)] },
        ],
    };
    w.insert(vec![doc, untriggered_doc]);
    let before = stamps(&mirror);

    w.once("mirror", &[]);
    let m = w.copy(4001, "mirror", "raw").unwrap();
    let run = w.run_doc(4001);
    assert_eq!(m["status"], "transferred", "{m}");
    assert_eq!(
        m["checksum"], run["digest"],
        "adopted with Ferry's digest: {m}"
    );
    assert_eq!(
        stamps(&mirror),
        before,
        "the good cax copy was written again"
    );

    // The rotted copy is a failure of far's adoption (listed, exit code not 0); only
    // register runs here, so the catalogue shows the copy marked bad before retry acts.
    let out = w.cycle("far", &["--task", "register"]);
    assert!(text(&out).contains("[checksum] adopt"), "{}", text(&out));
    let f = w.copy(4001, "far", "raw").unwrap();
    assert_eq!(f["status"], "error", "{f}");
    let err = f["last_error"].as_str().unwrap();
    assert!(err.starts_with("[checksum]"), "{err}");
    assert!(err.contains(&good), "names cax's digest: {err}");
    assert!(
        err.contains(&dirhash(&far)),
        "names the measured digest: {err}"
    );

    // daq adopts its own copies and clears the dead cax's entry (idle since 2017, far past
    // the grace, `limits.lease`); the cleared entry is wanted again and pushed by daq (next
    // cycle at the latest), with its real location.
    w.once("daq", &[]);
    let d = w.copy(4003, "daq", "untriggered").unwrap();
    assert_eq!(d["status"], "transferred", "untriggered: {d}");
    assert_eq!(d["checksum"], w.run_doc(4003)["digest"], "{d}");
    w.once("daq", &[]);
    let u = w.copy(4003, "mirror", "untriggered").unwrap();
    assert_eq!(u["status"], "transferred", "{u}");
    assert_eq!(
        u["location"],
        w.run_dir("mirror", "untriggered", name)
            .display()
            .to_string()
    );
    assert_eq!(
        sha256s(&w.run_dir("mirror", "untriggered", name)),
        sha256s(&untriggered)
    );
    assert_eq!(
        stamps(&mirror),
        before,
        "the good cax copy was written again"
    );

    // far re-copies its rotted copy from mirror at its next cycle: no backoff, since no
    // attempt of Ferry's failed (the copy was cax's).
    w.once("far", &[]);
    assert_verified_like(&w, 4001, "far", "raw", name, "daq");

    if store == Store::Mongo {
        read_back_with_pymongo(&w, 4001);
    }
}

/// The documents read with pymongo, as collaborators do.
fn read_back_with_pymongo(w: &World, number: i64) {
    let script = format!(
        "import pymongo,sys\n\
         c=pymongo.MongoClient(sys.argv[1])[sys.argv[2]]['runs']\n\
         r=c.find_one({{'number':{number}}})\n\
         for d in sorted(r['data'], key=lambda d:(d['host'],d['type'])):\n\
         \x20   print(d['host'], d['type'], d['status'], d['checksum']==r['digest'])\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script, &w.uri, &w.db])
        .output()
        .expect("python3 with pymongo (pip install pymongo)");
    assert!(out.status.success(), "{}", text(&out));
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    for host in ["daq raw", "mirror raw", "far raw"] {
        assert!(
            seen.contains(&format!("{host} transferred True")),
            "{host}: {seen}"
        );
    }
}

#[test]
fn cax_copies_are_adopted_without_copying_and_a_rotted_one_is_recopied() {
    cax_copies_are_adopted_or_recopied(Store::Embedded);
}

#[test]
fn cax_copies_are_adopted_without_copying_and_a_rotted_one_is_recopied_in_mongodb() {
    cax_copies_are_adopted_or_recopied(Store::Mongo);
}

/// cax's statuses (`failed`, `RSEquota`) are read as failed copies, not quarantined.
#[test]
fn a_run_with_cax_statuses_is_read_not_quarantined() {
    for store in [Store::Embedded, Store::Mongo] {
        let w = World::new("legacy_cax_statuses", store);
        let name = "170401_0002";
        let src = w.write_run("daq", "raw", name, 5);
        w.insert(vec![daq_doc(
            4002,
            name,
            &src,
            vec![
                doc! { "type": "raw", "host": "rucio-catalogue", "status": "RSEquota",
                "location": "x1t_SR001:raw", "checksum": Bson::Null, "rse": [] },
                doc! { "type": "raw", "host": "far", "status": "failed",
                "location": "n/a", "checksum": Bson::Null },
            ],
        )]);
        w.once("daq", &[]);
        let far = w
            .copy(4002, "far", "raw")
            .unwrap_or_else(|| panic!("{store:?}"));
        assert_eq!(far["status"], "error", "{store:?}: {far}");
        assert!(
            far["last_error"].as_str().unwrap().contains("failed"),
            "{store:?}: {far}"
        );
        assert!(w.run_doc(4002)["digest"].is_string(), "{store:?}");
    }
}
