//! The `tar` backend on file-backed tapes (the `mt` / `tape-dd` shims of
//! `tests/fixtures/tape-tools`): layout, absolute positioning, failures mid-write.

use std::io::Read;

use ferry::tape::tar::{LabelStore, TapeFileKind, CATALOGUE_MEMBER};
use ferry::tape::{TapeError, VerifyLevel};

mod tape_common;
use tape_common::{backend, make_run, tar_entry, Lab};

fn labels(lab: &Lab) -> LabelStore {
    LabelStore::load("lto", &lab.path().join("labels.json")).expect("label store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_is_tape_file_0_appends_end_with_a_catalogue_and_positioning_is_absolute() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 2), None);
    let one = make_run(
        &lab.path().join("data"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000)],
    );
    let r1 = tape.put(&one).await.unwrap();
    assert_eq!(r1.volumes.len(), 2);
    // 1 MiB archives: a and b go to tape files 1 and 2, after the catalogue.
    for dev in ["nst0", "nst1"] {
        let f0 = std::fs::File::open(lab.path().join(format!("dev/{dev}/file.0"))).unwrap();
        let mut ar = tar::Archive::new(f0);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some(CATALOGUE_MEMBER));
        let mut json = String::new();
        e.read_to_string(&mut json).unwrap();
        assert!(json.contains("run1/a") && json.contains("run1/b"), "{json}");
    }
    let two = make_run(&lab.path().join("data"), "run2", 2, &[("c", 10)]);
    // The drive is left anywhere: every operation positions from the beginning.
    std::fs::write(lab.path().join("dev/nst0/position"), "2\n").unwrap();
    tape.put(&two).await.unwrap();
    let store = labels(&lab);
    let t = &store.tapes[&r1.volumes[0]];
    let kinds: Vec<(u64, TapeFileKind)> = t.files.iter().map(|f| (f.file_no, f.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, TapeFileKind::Catalogue),
            (1, TapeFileKind::Archive),
            (2, TapeFileKind::Archive),
            (3, TapeFileKind::Archive),
            (4, TapeFileKind::Catalogue)
        ]
    );
    let last = std::fs::read(lab.path().join("dev/nst0/file.4")).unwrap();
    let text = String::from_utf8_lossy(&last);
    assert!(text.contains("run1/a") && text.contains("run2/c"));
    std::fs::write(lab.path().join("dev/nst1/position"), "4\n").unwrap();
    tape.verify(&r1, VerifyLevel::Full)
        .await
        .expect("run 1 intact after the append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tape_full_mid_batch_fails_the_put_and_records_nothing() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 2), None);
    std::fs::write(lab.path().join("dev/nst1/capacity"), "900000").unwrap();
    let batch = make_run(
        &lab.path().join("data"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000)],
    );
    let e = tape.put(&batch).await.expect_err("tape full");
    let TapeError::TapeFull {
        run,
        device,
        command,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(run, "run1");
    assert!(device.ends_with("nst1"));
    assert!(command.stderr_tail.contains("No space left"), "{command}");
    assert!(e.is_retryable());
    assert_eq!(tape.stat(&batch.run, "a").await.unwrap(), None);
    assert!(labels(&lab).find("run1/a").is_empty());
    // A new tape (here: the same one with room): the partial data is overwritten.
    std::fs::remove_file(lab.path().join("dev/nst1/capacity")).unwrap();
    let r = tape
        .put(&batch)
        .await
        .expect("put after the tape was changed");
    tape.verify(&r, VerifyLevel::Full).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_that_fails_to_load_fails_the_put_with_the_mt_error() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 2), None);
    std::fs::write(lab.path().join("dev/nst1/no-tape"), "").unwrap();
    assert!(!tape.health().await.unwrap().ok);
    let batch = make_run(&lab.path().join("data"), "run1", 1, &[("a", 1000)]);
    let e = tape.put(&batch).await.expect_err("no medium");
    let TapeError::Drive {
        device, command, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(device.ends_with("nst1"));
    assert_eq!(command.status, Some(2));
    assert!(command.stderr_tail.contains("No medium found"), "{command}");
    assert!(
        command.argv.iter().any(|a| a == "status"),
        "{:?}",
        command.argv
    );
    assert_eq!(tape.stat(&batch.run, "a").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_on_the_second_copy_is_found_by_sampled_md5() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 2), None);
    let batch = make_run(&lab.path().join("data"), "run1", 1, &[("a", 100_000)]);
    let receipt = tape.put(&batch).await.unwrap();
    // Flip a byte inside the member's data on copy 2 (after the 512-byte header).
    let f1 = lab.path().join("dev/nst1/file.1");
    let mut bytes = std::fs::read(&f1).unwrap();
    bytes[512 + 5000] ^= 1;
    std::fs::write(&f1, bytes).unwrap();
    tape.verify(&receipt, VerifyLevel::Metadata)
        .await
        .expect("label store unchanged");
    let e = tape
        .verify(
            &receipt,
            VerifyLevel::Sample {
                fraction: 0.01,
                seed: Some(7),
            },
        )
        .await
        .expect_err("one member per tape file is always checked");
    let TapeError::Mismatch { key, what, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*what, "md5");
    assert!(key.contains(&receipt.volumes[1]), "{key}");
    // Retrieval still works from the good copy.
    let out = lab.path().join("back");
    tape.retrieve(&receipt, &out).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("a")).unwrap(),
        std::fs::read(&batch.files[0].local).unwrap()
    );
}

#[tokio::test]
async fn a_tape_not_in_the_label_store_is_never_overwritten() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 1), None);
    std::fs::write(lab.path().join("dev/nst0/file.0"), b"someone else's data").unwrap();
    let batch = make_run(&lab.path().join("data"), "run1", 1, &[("a", 10)]);
    let e = tape.put(&batch).await.expect_err("unknown tape");
    assert!(matches!(e, TapeError::Labels { .. }), "{e:?}");
    assert_eq!(
        std::fs::read(lab.path().join("dev/nst0/file.0")).unwrap(),
        b"someone else's data"
    );
}
