//! Collaborators read the catalogue with nothing but `docs/catalog.md`: this test lets Ferry
//! write runs (copies verified, one removed) into MongoDB, then runs the documentation's
//! pymongo one-liners (`catalog_pymongo.py` extracts and evaluates them) and checks the
//! answers. Needs python3 with pymongo; fails with an install hint otherwise.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use catalog_common::{claim, key, manifest, seed_run, Backend, Fixture};
use ferry::catalog::{Cas, CopyRef, CopyStatus, Failure, FailureClass, Transition};

/// Copies run N to `site` the way an agent does: claim, verify, transferred.
async fn copy_to(f: &Fixture, n: i64, site: &str) {
    let c = &*f.catalog;
    let owner = format!("agent@{site}");
    let _ = c
        .claim_copy(&claim(n, site, &owner, Duration::from_secs(60)))
        .await
        .unwrap();
    let dest = CopyRef::new(key(n), site, "raw");
    let t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        Some(&owner),
        &owner,
    );
    assert_eq!(c.transition(&dest, &t).await.unwrap(), Cas::Done);
    let mut t = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        Some(&owner),
        &owner,
    );
    t.checksum = Some(manifest(&n.to_string()).digest);
    assert_eq!(c.transition(&dest, &t).await.unwrap(), Cas::Done);
}

#[tokio::test]
async fn documented_pymongo_queries_answer_correctly() {
    let f = Fixture::new(Backend::Mongo, "pymongo").await;
    for n in [4711, 4712, 4713] {
        seed_run(&*f.catalog, n, "daq").await;
    }
    copy_to(&f, 4711, "lngs").await;
    copy_to(&f, 4713, "lngs").await;
    // A copy of 4712 at lngs failed for want of space: it waits for an operator.
    let owner = "agent@lngs";
    let _ = f
        .catalog
        .claim_copy(&claim(4712, "lngs", owner, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        Some(owner),
        owner,
    );
    t.record_failure(&Failure::new(
        FailureClass::Fatal,
        "lngs: /data: no space left on device".into(),
    ));
    assert_eq!(
        f.catalog
            .transition(&CopyRef::new(key(4712), "lngs", "raw"), &t)
            .await
            .unwrap(),
        Cas::Done
    );
    let daq = CopyRef::new(key(4713), "daq", "raw");
    let c = &*f.catalog;
    assert_eq!(
        c.mark_removing(
            &daq,
            CopyStatus::Transferred,
            &[],
            "purge@daq",
            "disk over 90%"
        )
        .await
        .unwrap(),
        Cas::Done
    );
    assert_eq!(
        c.remove_copy(&daq, "purge@daq", "disk over 90%")
            .await
            .unwrap(),
        Cas::Done
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (head, db) = {
        let (before, after) = f.uri.split_once("?").unwrap();
        let (h, d) = before.rsplit_once('/').unwrap();
        (format!("{h}/?{after}"), d.to_string())
    };
    let out = Command::new("python3")
        .arg(root.join("tests/tests/catalog_pymongo.py"))
        .arg(root.join("docs/catalog.md"))
        .arg(&head)
        .arg(&db)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 not runnable ({e}): install python3 and `pip install pymongo`")
        });
    assert!(
        out.status.success(),
        "pymongo script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{answers:#}");

    let copies = &answers["Where are the copies of run 4711?"];
    let hosts: Vec<(&str, &str)> = copies
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap(), c[1].as_str().unwrap()))
        .collect();
    assert_eq!(hosts, vec![("daq", "transferred"), ("lngs", "transferred")]);

    let few = &answers["Which runs have fewer than 2 verified copies?"];
    assert_eq!(few, &serde_json::json!([4712, 4713]));

    let mut bytes: Vec<(String, i64, i64)> = answers["Bytes per site (transferred copies)"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["_id"].as_str().unwrap().to_string(),
                g["bytes"].as_i64().unwrap(),
                g["runs"].as_i64().unwrap(),
            )
        })
        .collect();
    bytes.sort();
    assert_eq!(
        bytes,
        vec![("daq".into(), 2048, 2), ("lngs".into(), 2048, 2)]
    );

    let waiting =
        &answers["Which copies failed and wait for an operator (class fatal or refused)?"];
    assert_eq!(
        waiting,
        &serde_json::json!([[4712, "lngs", "[fatal] lngs: /data: no space left on device"]])
    );

    let deleted = answers["What was deleted in the last week, by whom and why?"]
        .as_array()
        .unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["number"], 4713);
    assert_eq!(deleted[0]["host"], "daq");
    assert_eq!(deleted[0]["who"], "purge@daq");
    assert_eq!(deleted[0]["why"], "disk over 90%");
}
