//! The `command` backend against the fake `jput`, `dsmc` and `hsi` (and through a real
//! OpenSSH gateway): the failures real tape tools produce, each a clear error.

use ferry::tape::{TapeError, VerifyLevel};
use ferry_tests::Sshd;
use serde_json::json;

mod tape_common;
use tape_common::{backend, dsmc_entry, jlab_entry, make_run, Lab};

#[tokio::test]
async fn jput_failure_is_a_command_error_with_argv_exit_status_and_stderr() {
    let lab = Lab::new();
    let tape = backend(jlab_entry(&lab), None);
    std::fs::write(
        lab.store().join("jput-fail"),
        "jput: MSS is in scheduled maintenance\n",
    )
    .unwrap();
    let batch = make_run(&lab.path().join("data"), "r1", 1, &[("a.evio", 1000)]);
    let e = tape.put(&batch).await.expect_err("jput fails");
    let TapeError::Command {
        argv,
        status,
        stderr_tail,
        context,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(argv[0].ends_with("/jput"), "{argv:?}");
    assert_eq!(*status, Some(1));
    assert!(
        stderr_tail.contains("scheduled maintenance"),
        "{stderr_tail}"
    );
    assert!(context.contains("r1/a.evio"), "{context}");
    assert!(e.to_string().contains("jlab-mss"), "{e}");
    assert!(e.is_retryable());
    assert_eq!(tape.stat(&batch.run, "a.evio").await.unwrap(), None);
}

#[tokio::test]
async fn a_program_that_is_not_installed_is_named() {
    let lab = Lab::new();
    let mut entry = jlab_entry(&lab);
    entry["put"] = json!(["/nonexistent/bin/jput", "{file}", "{tape_dir}/"]);
    let tape = backend(entry, None);
    let batch = make_run(&lab.path().join("data"), "r1", 1, &[("a.evio", 10)]);
    let e = tape.put(&batch).await.expect_err("not installed");
    assert!(
        matches!(&e, TapeError::NotInstalled { program, .. } if program == "/nonexistent/bin/jput"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    assert!(!tape.health().await.unwrap().ok);
}

#[tokio::test]
async fn a_stub_file_that_does_not_parse_is_a_parse_error_and_nothing_is_recorded() {
    let lab = Lab::new();
    let tape = backend(jlab_entry(&lab), None);
    std::fs::write(lab.store().join("jput-bad-stub"), "").unwrap();
    let batch = make_run(&lab.path().join("data"), "r1", 1, &[("a.evio", 10)]);
    let e = tape.put(&batch).await.expect_err("bad stub");
    let TapeError::Parse {
        what, argv, reason, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*what, "stub file");
    assert_eq!(argv[0], "cat");
    assert!(reason.contains("503"), "{reason}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn dsmc_exit_12_is_an_error_and_exit_4_with_a_failed_object_too_even_when_allowed() {
    let lab = Lab::new();
    let tape = backend(dsmc_entry(&lab), None);
    let batch = make_run(&lab.path().join("data"), "r1", 1, &[("a.evio", 10)]);
    std::fs::write(
        lab.store().join("dsmc-exit"),
        "12 ANS1017E Session rejected: TCP/IP connection failure\n",
    )
    .unwrap();
    let e = tape.put(&batch).await.expect_err("dsmc 12");
    assert!(
        matches!(&e, TapeError::Command { status: Some(12), stderr_tail, .. } if stderr_tail.contains("ANS1017E")),
        "{e:?}"
    );
    std::fs::remove_file(lab.store().join("dsmc-exit")).unwrap();

    // Exit 4 (skipped objects) configured as success: the summary still says 1 failed.
    std::fs::write(lab.store().join("dsmc-skip"), "").unwrap();
    let mut entry = dsmc_entry(&lab);
    entry["ok_exit_codes"] = json!([0, 4]);
    let lenient = backend(entry, None);
    let e = lenient.put(&batch).await.expect_err("skipped object");
    let TapeError::Command {
        context,
        stderr_tail,
        status,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*status, Some(4));
    assert!(context.contains("1 failed"), "{context}");
    assert!(stderr_tail.contains("ANS1228E"), "{stderr_tail}");
    // And with the default ([0]) the exit status alone refuses it.
    let e = tape.put(&batch).await.expect_err("exit 4");
    assert!(
        matches!(
            e,
            TapeError::Command {
                status: Some(4),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(tape.stat(&batch.run, "a.evio").await.unwrap(), None);
}

/// Regression: JLab stubs drop leading zeros of the CRC-32, other tools print all eight
/// digits; the same CRC must compare equal.
#[tokio::test]
async fn jlab_crc32_compares_as_a_number_not_as_text() {
    let lab = Lab::new();
    let tape = backend(jlab_entry(&lab), None);
    // Find a file whose CRC-32 has a leading zero (1 in 16), as the stub shows it.
    for i in 0..200 {
        let batch = make_run(
            &lab.path().join("data"),
            &format!("r{i}"),
            i,
            &[("a.evio", 64)],
        );
        let receipt = tape.put(&batch).await.unwrap();
        let stub_path = &receipt.files[0].location;
        let stub = std::fs::read_to_string(stub_path).unwrap();
        let crc = stub
            .lines()
            .find_map(|l| l.strip_prefix("crc32="))
            .unwrap()
            .to_string();
        if crc.len() == 8 {
            continue;
        }
        let padded = format!("{:08x}", u32::from_str_radix(&crc, 16).unwrap());
        std::fs::write(
            stub_path,
            stub.replace(&format!("crc32={crc}"), &format!("crc32={padded}")),
        )
        .unwrap();
        tape.verify(&receipt, VerifyLevel::Metadata)
            .await
            .expect("zero-padded CRC equals the stub's");
        std::fs::write(stub_path, stub.replace(&format!("crc32={crc}"), "crc32=1")).unwrap();
        let e = tape
            .verify(&receipt, VerifyLevel::Metadata)
            .await
            .expect_err("other CRC");
        assert!(
            matches!(e, TapeError::Mismatch { what: "crc32", .. }),
            "{e:?}"
        );
        return;
    }
    panic!("no CRC-32 with a leading zero in 200 random files");
}

#[tokio::test]
async fn bit_rot_on_tape_is_found_by_read_back_not_by_metadata() {
    let lab = Lab::new();
    let tape = backend(jlab_entry(&lab), None);
    let batch = make_run(
        &lab.path().join("data"),
        "r1",
        1,
        &[("a.evio", 4096), ("b.evio", 10)],
    );
    let receipt = tape.put(&batch).await.unwrap();
    let stub = std::path::Path::new(&receipt.files[0].location);
    let data = stub.parent().unwrap().join(".tape").join("a.evio");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    tape.verify(&receipt, VerifyLevel::Metadata)
        .await
        .expect("stub unchanged");
    let e = tape
        .verify(&receipt, VerifyLevel::Full)
        .await
        .expect_err("rot");
    assert!(
        matches!(&e, TapeError::Mismatch { key, .. } if key == "r1/a.evio"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_hanging_tool_times_out() {
    let lab = Lab::new();
    let mut entry = jlab_entry(&lab);
    entry["put"] = json!(["sleep", "30"]);
    entry["timeout"] = json!("300ms");
    let tape = backend(entry, None);
    let batch = make_run(&lab.path().join("data"), "r1", 1, &[("a.evio", 10)]);
    let started = std::time::Instant::now();
    let e = tape.put(&batch).await.expect_err("timeout");
    assert!(matches!(e, TapeError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// JLab's flow: stage on the gateway's cache over SFTP, `jput` there over SSH exec, read
/// the stub there; retrieve with `jget` there and pull the file back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jput_through_an_ssh_gateway_with_sftp_staging_round_trips() {
    let sshd = Sshd::start().unwrap();
    let lab = Lab::new();
    let mut entry = jlab_entry(&lab);
    entry["gateway"] = json!("gw");
    entry["stage"] = json!(lab.path().join("gateway-cache"));
    let mut target = ferry::transport::SshTarget::new(sshd.host(), sshd.port(), sshd.user());
    target.identity_files = vec![sshd.user_key_path().to_path_buf()];
    target.known_hosts_files = vec![sshd.known_hosts_path().to_path_buf()];
    target.use_agent = false;
    let tape = backend(entry, Some(target));
    assert!(tape.health().await.unwrap().ok);
    let batch = make_run(
        &lab.path().join("data"),
        "r1",
        71234,
        &[("raw/a b.evio", 200_000), ("raw/c.evio", 1)],
    );
    let receipt = tape.put(&batch).await.expect("put via gateway");
    assert_eq!(receipt.written, 2);
    assert!(
        receipt
            .reference
            .ends_with("/halld/RunPeriod-2019-11/Run071234/raw"),
        "{}",
        receipt.reference
    );
    // The staged copies were removed once jput had its own.
    assert!(!lab.path().join("gateway-cache/r1/raw/c.evio").exists());
    let r = tape
        .verify(&receipt, VerifyLevel::Full)
        .await
        .expect("verify");
    assert_eq!(r.bytes_read, 200_001);
    let out = lab.path().join("back");
    tape.retrieve(&receipt, &out).await.expect("retrieve");
    assert_eq!(
        std::fs::read(out.join("raw/a b.evio")).unwrap(),
        std::fs::read(&batch.files[0].local).unwrap()
    );
    assert_eq!(tape.put(&batch).await.unwrap().written, 0);
}
