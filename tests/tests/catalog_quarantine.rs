//! Unreadable run documents next to good ones, with the real agent and the MongoDB-wire
//! server: documents of every malformed field type are written with the driver as raw BSON
//! (as another tool would), then `ferry --once` registers and copies the good runs, and
//! `ferry runs list` lists them. Each malformed document is named once in a warning (its
//! `_id` and field), counted, and is byte for byte what it was afterwards.
//!
//! The binary is `ferry_under_test` (`src/bin/ferry_under_test.rs`): `ferry::cli::main`,
//! exactly what the `ferry` binary runs.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use ferry_tests::{unique_db_name, MongoServer};
use futures::TryStreamExt;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// A DAQ site with runs 1 and 2 complete on disk, pushing to a mirror on the same machine.
fn sites(dir: &Path) {
    for n in 1..=2 {
        let run = dir.join(format!("daq/raw/Run{n:06}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("a.evio"), format!("bytes of run {n}")).unwrap();
        std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    }
    std::fs::create_dir_all(dir.join("mirror/raw")).unwrap();
    let map = serde_json::json!({
        "version": 1,
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.join("daq/raw") },
              "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
              "push_to": ["mirror"] },
            { "name": "mirror", "method": "local",
              "data_dirs": { "raw": dir.join("mirror/raw") },
              "layout": "Run{number:06}" }
        ]
    });
    std::fs::write(dir.join("map.json"), map.to_string()).unwrap();
}

fn ferry(dir: &Path, uri: &str, args: &[&str]) -> Output {
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
        .args(["--catalog", uri])
        .args(args);
    cmd.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A copy at the DAQ as a DAQ would write it; `indexed` also gives it the index field the
/// MongoDB back end keeps, as if Ferry had adopted it before another tool broke the run.
fn daq_copy(n: i64, indexed: bool) -> Document {
    let mut c = doc! {
        "type": "raw", "host": "daq", "status": "transferred", "checksum": "c",
        "location": format!("/nowhere/Run{n:06}"), "creation_time": DateTime::now(),
    };
    if indexed {
        c.insert("host_status", "daq/transferred");
    }
    c
}

/// One malformed document per field type: (what, the field the warning must name, the
/// document). All want a copy at the mirror and have a `transferred` copy at the DAQ, so
/// the push would take them if they were read.
fn malformed() -> Vec<(&'static str, &'static str, Document)> {
    let run = |n: i64, indexed: bool| {
        doc! {
            "_id": ObjectId::new(), "number": n, "name": format!("bad{n}"),
            "want": ["mirror/raw"], "data": [daq_copy(n, indexed)],
        }
    };
    let with = |n: i64, indexed: bool, k: &str, v: Bson| {
        let mut d = run(n, indexed);
        d.insert(k, v);
        d
    };
    let copy_with = |n: i64, indexed: bool, k: &str, v: Bson| {
        let mut c = daq_copy(n, indexed);
        c.insert(k, v);
        let mut d = run(n, indexed);
        d.insert("data", vec![c]);
        d
    };
    let extra_copy = |n: i64, indexed: bool, c: Bson| {
        let mut d = run(n, indexed);
        d.insert("data", vec![Bson::Document(daq_copy(n, indexed)), c]);
        d
    };
    vec![
        (
            "number as a string",
            "number",
            with(10, true, "number", Bson::String("4711".into())),
        ),
        ("number missing", "number", {
            let mut d = run(11, true);
            d.remove("number");
            d
        }),
        (
            "unknown copy status",
            "data[1].status",
            extra_copy(
                12,
                true,
                Bson::Document(doc! {"type": "raw", "host": "x", "status": "done"}),
            ),
        ),
        (
            "unknown status, not adopted yet",
            "data[1].status",
            extra_copy(
                13,
                false,
                Bson::Document(doc! {"type": "raw", "host": "x", "status": "done"}),
            ),
        ),
        (
            "files not an array",
            "files",
            with(14, true, "files", Bson::String("a.evio".into())),
        ),
        (
            "data not an array",
            "data",
            with(15, true, "data", Bson::Document(daq_copy(15, true))),
        ),
        (
            "a copy that is not a document",
            "data[1]",
            extra_copy(16, true, Bson::String("daq".into())),
        ),
        (
            "checksum of the wrong type",
            "data[0].checksum",
            copy_with(17, true, "checksum", Bson::Int32(5)),
        ),
        (
            "creation_time a string",
            "data[0].creation_time",
            copy_with(
                18,
                false,
                "creation_time",
                Bson::String("2017-03-30".into()),
            ),
        ),
        (
            "creation_time a list of strings",
            "data[0].creation_time[0]",
            copy_with(19, true, "creation_time", bson::bson!(["2017-03-30"])),
        ),
        (
            "size negative",
            "size",
            with(20, true, "size", Bson::Int64(-5)),
        ),
        (
            "size a string",
            "size",
            with(21, true, "size", Bson::String("5 GB".into())),
        ),
        (
            "a file size a string",
            "files[0].size",
            with(
                22,
                true,
                "files",
                bson::bson!([{"path": "a.evio", "size": "14", "sha256": "00"}]),
            ),
        ),
    ]
}

/// Every stored run document whose `_id` is in `ids`, as bytes, by `_id`.
async fn raw_by_id(runs: &mongodb::Collection<Document>, ids: &[Bson]) -> Vec<(String, Vec<u8>)> {
    let docs: Vec<Document> = runs
        .find(doc! {"_id": {"$in": ids.to_vec()}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: Vec<(String, Vec<u8>)> = docs
        .into_iter()
        .map(|d| {
            let mut b = Vec::new();
            d.to_writer(&mut b).unwrap();
            (d.get_object_id("_id").unwrap().to_hex(), b)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn malformed_documents_are_skipped_named_and_left_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    sites(dir.path());
    let server = MongoServer::start().unwrap();
    let db = unique_db_name("quarantine");
    let uri = server.uri().replace("/?", &format!("/{db}?"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(mongodb::Client::with_uri_str(&uri)).unwrap();
    let runs = client.database(&db).collection::<Document>("runs");
    let cases = malformed();
    let ids: Vec<Bson> = cases
        .iter()
        .map(|(_, _, d)| d.get("_id").unwrap().clone())
        .collect();
    rt.block_on(async {
        runs.insert_many(cases.iter().map(|(_, _, d)| d.clone()))
            .await
    })
    .unwrap();
    let before = rt.block_on(raw_by_id(&runs, &ids));
    assert_eq!(before.len(), cases.len());

    // The agent registers and copies the good runs; the malformed ones are skipped.
    let out = ferry(dir.path(), &uri, &["--host", "daq", "--once"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for n in 1..=2 {
        let copied = dir.path().join(format!("mirror/raw/Run{n:06}/a.evio"));
        assert_eq!(
            std::fs::read_to_string(&copied).unwrap(),
            format!("bytes of run {n}"),
            "{stdout}\n{stderr}"
        );
    }
    for ((what, field, doc), _) in cases.iter().zip(&ids) {
        let id = doc.get_object_id("_id").unwrap().to_hex();
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("run document {id}")))
            .collect();
        // Adoption and the work lists read most of them more than once: one warning each.
        if *what != "data not an array"
            && *what != "number as a string"
            && *what != "number missing"
        {
            assert_eq!(lines.len(), 1, "{what}: {stderr}");
        }
        assert!(lines.len() <= 1, "{what}: warned more than once: {stderr}");
        for l in &lines {
            assert!(l.contains(&format!("field {field}:")), "{what}: {l}");
            assert!(l.contains("skipped, not changed"), "{what}: {l}");
        }
    }
    assert!(
        stdout.contains("unreadable run documents skipped"),
        "{stdout}"
    );

    // `runs list` lists the good runs, warns about every malformed one, says how many.
    let out = ferry(dir.path(), &uri, &["runs", "list"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["1", "2"], "{stdout}");
    for (what, field, doc) in &cases {
        let id = doc.get_object_id("_id").unwrap().to_hex();
        let line = stderr
            .lines()
            .find(|l| l.starts_with("warning: ") && l.contains(&format!("run document {id}")))
            .unwrap_or_else(|| panic!("{what}: no warning in {stderr}"));
        assert!(line.contains(&format!("field {field}:")), "{what}: {line}");
    }
    assert!(
        stderr.contains(&format!(
            "{} run documents could not be read and were skipped",
            cases.len()
        )),
        "{stderr}"
    );
    let out = ferry(dir.path(), &uri, &["runs", "list", "--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let runs_json = json.as_array().unwrap();
    assert_eq!(runs_json.len(), 2);
    for r in runs_json {
        let data = r["data"].as_array().unwrap();
        assert!(
            data.iter()
                .any(|c| c["host"] == "mirror" && c["status"] == "transferred"),
            "{r}"
        );
    }

    // `runs show` of a malformed run says why and exits 1.
    let out = ferry(dir.path(), &uri, &["runs", "show", "12"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("field data[1].status"), "{stderr}");
    assert!(stderr.contains("unknown copy status \"done\""), "{stderr}");

    // A second cycle changes nothing either; every malformed document is as it was.
    let out = ferry(dir.path(), &uri, &["--host", "daq", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let after = rt.block_on(raw_by_id(&runs, &ids));
    for ((b, a), (what, _, _)) in before.iter().zip(&after).zip(&cases) {
        assert_eq!(b, a, "{what}: the document was changed");
    }
}
