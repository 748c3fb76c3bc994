//! One behaviour suite, run unchanged against every tape backend: `directory`, `command`
//! (JLab jput stubs, TSM dsmc, HPSS hsi — the fake tools of `tests/fixtures/tape-tools`)
//! and `tar` (two file-backed drives behind `mt`/`dd` shims, alone and in a tape library
//! behind the `mtx` shim).
//!
//! The suite branches on [`Capabilities`], never on a backend's name.

use std::collections::HashSet;

use ferry::tape::{Batch, TapeBackend, TapeError, TapeFile, VerifyKind, VerifyLevel};

mod tape_common;
use tape_common::{
    backend, directory_entry, dsmc_entry, hsi_entry, jlab_entry, make_library, make_run,
    tar_changer_entry, tar_entry, Lab, SlotTape,
};

const FILES: &[(&str, usize)] = &[
    ("raw/000.evio", 300_000),
    ("raw/001.evio", 1),
    ("raw/sub dir/002 ünï.evio", 700_000),
    ("run.log", 0),
];

/// The contract every backend keeps.
async fn behaves(lab: &Lab, tape: &dyn TapeBackend) {
    let caps = tape.capabilities();
    let health = tape.health().await.expect("health");
    assert!(health.ok, "{}: {}", tape.name(), health.detail);
    let batch = make_run(&lab.path().join("data"), "170330_1234", 4711, FILES);

    // Nothing is stored yet.
    for f in &batch.files {
        assert_eq!(tape.stat(&batch.run, &f.path).await.expect("stat"), None);
    }

    // put → receipt with every file as the tape side reports it.
    let receipt = tape.put(&batch).await.expect("put");
    assert_eq!(receipt.backend, tape.name());
    assert_eq!(receipt.written, FILES.len());
    assert_eq!(receipt.files.len(), FILES.len());
    assert!(!receipt.reference.is_empty());
    assert!(
        receipt.volumes.is_empty() || receipt.volumes.len() == caps.copies as usize,
        "{:?}",
        receipt.volumes
    );
    for (f, s) in batch.files.iter().zip(&receipt.files) {
        assert_eq!(s.key, batch.key(f));
        assert_eq!(s.same_digest(f), Some(true), "{}: {s:?}", tape.name());
        let stat = tape
            .stat(&batch.run, &f.path)
            .await
            .expect("stat")
            .expect("stored");
        assert_eq!(stat.key, s.key);
        assert_ne!(stat.same_digest(f), Some(false));
    }

    // verify at every level offered; a sample records its seed.
    if caps.verify.contains(&VerifyKind::Metadata) {
        let r = tape
            .verify(&receipt, VerifyLevel::Metadata)
            .await
            .expect("metadata");
        assert_eq!(r.bytes_read, 0);
    }
    if caps.verify.contains(&VerifyKind::Sample) {
        let r = tape
            .verify(
                &receipt,
                VerifyLevel::Sample {
                    fraction: 0.25,
                    seed: None,
                },
            )
            .await
            .expect("sample");
        let VerifyLevel::Sample {
            seed: Some(seed), ..
        } = r.level
        else {
            panic!("sample without a recorded seed: {:?}", r.level)
        };
        assert!(!r.checked.is_empty());
        let again = tape
            .verify(
                &receipt,
                VerifyLevel::Sample {
                    fraction: 0.25,
                    seed: Some(seed),
                },
            )
            .await
            .expect("sample again");
        assert_eq!(
            again.checked, r.checked,
            "the recorded seed repeats the sample"
        );
    }
    if caps.verify.contains(&VerifyKind::Full) {
        let r = tape
            .verify(&receipt, VerifyLevel::Full)
            .await
            .expect("full");
        let keys: HashSet<&String> = r.checked.iter().collect();
        assert_eq!(keys.len(), FILES.len());
        assert_eq!(r.copies, caps.copies);
        let total: u64 = FILES.iter().map(|(_, s)| *s as u64).sum();
        assert_eq!(r.bytes_read, total * u64::from(caps.copies));
    }

    // retrieve → the same bytes.
    if caps.retrieve {
        let out = lab.path().join("retrieved");
        let paths = tape.retrieve(&receipt, &out).await.expect("retrieve");
        assert_eq!(paths.len(), FILES.len());
        for f in &batch.files {
            let got = std::fs::read(out.join(&f.path)).expect("retrieved file");
            assert_eq!(got, std::fs::read(&f.local).expect("source"), "{}", f.path);
        }
    }

    // Idempotent: the same batch again writes nothing and returns the same files.
    let again = tape.put(&batch).await.expect("re-put");
    assert_eq!(again.written, 0);
    assert_eq!(
        again
            .files
            .iter()
            .map(|f| (&f.key, &f.md5, &f.sha256))
            .collect::<Vec<_>>(),
        receipt
            .files
            .iter()
            .map(|f| (&f.key, &f.md5, &f.sha256))
            .collect::<Vec<_>>()
    );

    // Conflict: same key, other bytes → refused, nothing written, not retryable.
    let other = make_run(
        &lab.path().join("other"),
        "170330_1234",
        4711,
        &[("raw/000.evio", 1000)],
    );
    let e = tape.put(&other).await.expect_err("conflict");
    assert!(
        matches!(e, TapeError::Conflict { .. }),
        "{}: {e}",
        tape.name()
    );
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("170330_1234/raw/000.evio"), "{e}");
    let still = tape
        .stat(&batch.run, "raw/000.evio")
        .await
        .expect("stat")
        .expect("stored");
    assert_ne!(still.same_digest(&batch.files[0]), Some(false));

    // A batch mixing a conflict with new files writes none of them.
    let mut mixed = make_run(
        &lab.path().join("mixed"),
        "170330_1234",
        4711,
        &[("new.evio", 10)],
    );
    mixed.files.push(other.files[0].clone());
    assert!(matches!(
        tape.put(&mixed).await,
        Err(TapeError::Conflict { .. })
    ));
    assert_eq!(tape.stat(&mixed.run, "new.evio").await.expect("stat"), None);

    // Bad input.
    let mut bad = batch.clone();
    bad.files = vec![TapeFile {
        path: "../escape".into(),
        ..batch.files[0].clone()
    }];
    assert!(matches!(
        tape.put(&bad).await,
        Err(TapeError::BadInput { .. })
    ));
    let empty = Batch {
        run: batch.run.clone(),
        files: Vec::new(),
    };
    assert!(matches!(
        tape.put(&empty).await,
        Err(TapeError::BadInput { .. })
    ));

    if caps.catalogue {
        let all = tape.catalogue().await.expect("catalogue");
        for f in &batch.files {
            assert!(
                all.iter().any(|s| s.key == batch.key(f)),
                "{} not listed",
                f.path
            );
        }
    } else {
        assert!(matches!(
            tape.catalogue().await,
            Err(TapeError::Unsupported { .. })
        ));
    }
}

#[tokio::test]
async fn directory_backend_behaves() {
    let lab = Lab::new();
    behaves(&lab, backend(directory_entry(&lab), None).as_ref()).await;
}

#[tokio::test]
async fn command_backend_jlab_jput_behaves() {
    let lab = Lab::new();
    behaves(&lab, backend(jlab_entry(&lab), None).as_ref()).await;
}

#[tokio::test]
async fn command_backend_tsm_dsmc_behaves() {
    let lab = Lab::new();
    behaves(&lab, backend(dsmc_entry(&lab), None).as_ref()).await;
}

#[tokio::test]
async fn command_backend_hpss_hsi_behaves() {
    let lab = Lab::new();
    behaves(&lab, backend(hsi_entry(&lab), None).as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_backend_on_two_drives_behaves() {
    let lab = Lab::new();
    behaves(&lab, backend(tar_entry(&lab, 2), None).as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_backend_with_a_changer_behaves() {
    let lab = Lab::new();
    let tapes: Vec<SlotTape> = (1..=3)
        .map(|slot| SlotTape {
            slot,
            barcode: None,
            capacity: None,
        })
        .collect();
    make_library(&lab, 2, 4, &tapes);
    behaves(&lab, backend(tar_changer_entry(&lab, 2, 4), None).as_ref()).await;
}
