//! The `tar` backend on file-backed tapes (the `mt` / `tape-dd` / `mtx` shims of
//! `tests/fixtures/tape-tools`): layout, absolute positioning, failures mid-write, tape
//! changers, the label store's cross-process lock.

use std::io::Read;

use ferry::tape::tar::{LabelStore, TapeFileKind, CATALOGUE_MEMBER};
use ferry::tape::{TapeError, VerifyLevel};

mod tape_common;
use tape_common::{backend, make_library, make_run, tar_changer_entry, tar_entry, Lab, SlotTape};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_changer_a_tape_full_mid_batch_continues_on_the_next_tape() {
    let lab = Lab::new();
    // Slots 1 and 2: tapes with room for the catalogue and one 700 kB archive; 3 and 4:
    // big blank tapes. Both drives start empty.
    let small = |slot, barcode| SlotTape {
        slot,
        barcode: Some(barcode),
        capacity: Some(900_000),
    };
    let big = |slot, barcode| SlotTape {
        slot,
        barcode: Some(barcode),
        capacity: None,
    };
    let ch = make_library(
        &lab,
        2,
        5,
        &[
            small(1, "A00001L6"),
            small(2, "A00002L6"),
            big(3, "A00003L6"),
            big(4, "A00004L6"),
        ],
    );
    let tape = backend(tar_changer_entry(&lab, 2, 5), None);
    let batch = make_run(
        &lab.path().join("data"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000)],
    );
    let receipt = tape.put(&batch).await.expect("put across tapes");
    let mut volumes = receipt.volumes.clone();
    volumes.sort();
    assert_eq!(volumes, ["A00001L6", "A00002L6", "A00003L6", "A00004L6"]);
    let store = labels(&lab);
    for (first, next) in [("A00001L6", "A00003L6"), ("A00002L6", "A00004L6")] {
        let full = &store.tapes[first];
        assert!(full.full, "{first} is marked full");
        let keys: Vec<&str> = full
            .files
            .iter()
            .flat_map(|f| f.members.iter().map(|m| m.key.as_str()))
            .collect();
        assert_eq!(keys, ["run1/a"], "{first}");
        let cont = &store.tapes[next];
        assert!(!cont.full);
        // The archive that did not fit, rewritten on the next tape after its catalogue.
        let kinds: Vec<(u64, TapeFileKind)> =
            cont.files.iter().map(|f| (f.file_no, f.kind)).collect();
        assert_eq!(
            kinds,
            [(0, TapeFileKind::Catalogue), (1, TapeFileKind::Archive)]
        );
        assert_eq!(cont.files[1].members[0].key, "run1/b");
    }
    assert_eq!(store.slots[&1], "A00001L6");
    assert_eq!(store.slots[&3], "A00003L6");
    // The full tapes went back to their slots; the new ones are in the drives.
    assert!(ch.join("slot.1/file.1").exists());
    assert!(!ch.join("slot.3").exists());
    // Verify loads the volumes it needs (the full ones are in their slots now).
    let report = tape
        .verify(&receipt, VerifyLevel::Full)
        .await
        .expect("verify");
    assert_eq!(report.copies, 2);
    assert_eq!(report.checked.len(), 4);
    assert_eq!(report.bytes_read, 4 * 700_000);
    let back = lab.path().join("back");
    let got = tape.retrieve(&receipt, &back).await.expect("retrieve");
    assert_eq!(got.len(), 2);
    for f in &batch.files {
        assert_eq!(
            std::fs::read(back.join(&f.path)).unwrap(),
            std::fs::read(&f.local).unwrap()
        );
    }
    // A second batch goes to the tapes with room, not to the full ones.
    let two = make_run(&lab.path().join("data"), "run2", 2, &[("c", 1000)]);
    let r2 = tape.put(&two).await.expect("second put");
    for v in &r2.volumes {
        assert!(v == "A00003L6" || v == "A00004L6", "{v}");
    }
    tape.verify(&r2, VerifyLevel::Full)
        .await
        .expect("verify run2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_changer_and_no_tape_left_the_put_fails_tape_full_and_records_nothing() {
    let lab = Lab::new();
    make_library(
        &lab,
        1,
        2,
        &[SlotTape {
            slot: 1,
            barcode: Some("A00001L6"),
            capacity: Some(900_000),
        }],
    );
    let mut entry = tar_changer_entry(&lab, 1, 2);
    entry["copies"] = 1.into();
    let tape = backend(entry, None);
    let batch = make_run(
        &lab.path().join("data"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000)],
    );
    let e = tape.put(&batch).await.expect_err("nowhere to go");
    assert!(matches!(e, TapeError::TapeFull { .. }), "{e:?}");
    assert!(labels(&lab).find("run1/a").is_empty());
    assert_eq!(tape.stat(&batch.run, "a").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changer_that_fails_to_load_fails_the_put_with_the_mtx_error() {
    let lab = Lab::new();
    let ch = make_library(
        &lab,
        2,
        2,
        &[
            SlotTape {
                slot: 1,
                barcode: None,
                capacity: None,
            },
            SlotTape {
                slot: 2,
                barcode: None,
                capacity: None,
            },
        ],
    );
    std::fs::write(
        ch.join("load-fail"),
        "mtx: Unable to load: Medium Removal Prevented\n",
    )
    .unwrap();
    let tape = backend(tar_changer_entry(&lab, 2, 2), None);
    let batch = make_run(&lab.path().join("data"), "run1", 1, &[("a", 1000)]);
    let e = tape.put(&batch).await.expect_err("load fails");
    let TapeError::Drive {
        backend,
        device,
        what,
        command,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(backend, "lto");
    assert!(device.ends_with("nst0"), "{device:?}");
    assert!(what.contains("loading slot 1 into drive 0"), "{what}");
    assert!(what.contains("run1"), "{what}");
    assert_eq!(command.status, Some(1));
    assert!(
        command.argv.iter().any(|a| a == "load"),
        "{:?}",
        command.argv
    );
    assert!(
        command.stderr_tail.contains("Medium Removal Prevented"),
        "{command}"
    );
    assert!(e.to_string().contains("Medium Removal Prevented"), "{e}");
    assert_eq!(tape.stat(&batch.run, "a").await.unwrap(), None);
    // Once the robot works again, the same put goes through.
    std::fs::remove_file(ch.join("load-fail")).unwrap();
    let r = tape
        .put(&batch)
        .await
        .expect("put after the robot recovered");
    tape.verify(&r, VerifyLevel::Full).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backends_on_one_label_store_take_turns() {
    let lab = Lab::new();
    let entry = tar_entry(&lab, 2);
    let a = backend(entry.clone(), None);
    let b = backend(entry.clone(), None);
    // Slow drives: a put takes long enough for the other to have to wait.
    for d in ["nst0", "nst1"] {
        std::fs::write(lab.path().join(format!("dev/{d}/rate")), "1000000").unwrap();
    }
    let one = make_run(&lab.path().join("data"), "run1", 1, &[("a", 600_000)]);
    let two = make_run(&lab.path().join("data"), "run2", 2, &[("b", 600_000)]);
    let (r1, r2) = tokio::join!(a.put(&one), b.put(&two));
    let (r1, r2) = (r1.expect("put 1"), r2.expect("put 2"));
    // Both landed, on the same two tapes, one after the other; the store has both.
    assert_eq!(r1.volumes.len(), 2);
    let mut v1 = r1.volumes.clone();
    let mut v2 = r2.volumes.clone();
    v1.sort();
    v2.sort();
    assert_eq!(v1, v2);
    let store = labels(&lab);
    assert_eq!(store.find("run1/a").len(), 2);
    assert_eq!(store.find("run2/b").len(), 2);
    assert_eq!(store.tapes.len(), 2);
    for t in store.tapes.values() {
        // catalogue, the first put's archive, the second's, its catalogue.
        assert_eq!(t.files.len(), 4, "{t:?}");
    }
    b.verify(&r1, VerifyLevel::Full)
        .await
        .expect("run 1 intact");
    a.verify(&r2, VerifyLevel::Full)
        .await
        .expect("run 2 intact");

    // A waiter that gives up names the holder.
    let mut impatient = entry;
    impatient["lock_timeout"] = "100ms".into();
    let c = backend(impatient, None);
    let three = make_run(&lab.path().join("data"), "run3", 3, &[("c", 600_000)]);
    let four = make_run(&lab.path().join("data"), "run4", 4, &[("d", 10)]);
    let slow = a.put(&three);
    let quick = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        c.put(&four).await
    };
    let (slow, quick) = tokio::join!(slow, quick);
    slow.expect("the holder finishes");
    let e = quick.expect_err("lock held");
    let TapeError::Locked { holder, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(holder.contains("put of run run3"), "{holder}");
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_since_its_manifest_fails_the_put_and_records_nothing() {
    let lab = Lab::new();
    let tape = backend(tar_entry(&lab, 2), None);
    let batch = make_run(
        &lab.path().join("data"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000), ("c", 10)],
    );
    // Same size, one byte different: only the hash read while writing can tell.
    let mut bytes = std::fs::read(&batch.files[1].local).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&batch.files[1].local, bytes).unwrap();
    let e = tape.put(&batch).await.expect_err("changed source");
    let TapeError::Mismatch { key, what, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(key, "run1/b");
    assert_eq!(*what, "source file while writing to tape");
    let store = labels(&lab);
    assert!(store.find("run1/a").is_empty() && store.find("run1/c").is_empty());
    // Put right again (the file restored to what the manifest says), the batch goes
    // through on both drives, and each copy reads back intact.
    let fixed = make_run(
        &lab.path().join("data2"),
        "run1",
        1,
        &[("a", 700_000), ("b", 700_000), ("c", 10)],
    );
    let r = tape.put(&fixed).await.expect("put");
    let report = tape.verify(&r, VerifyLevel::Full).await.expect("verify");
    assert_eq!(report.copies, 2);
    assert_eq!(report.bytes_read, 2 * (700_000 + 700_000 + 10));
}
