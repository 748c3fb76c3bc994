//! SFTP push and pull against a real OpenSSH sshd (the harness's [`ferry_tests::Sshd`]).
//!
//! The server runs on this machine, so the test reads the remote side's files directly from
//! `sshd.root()` to check what arrived — independently of Ferry's own digests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::transport::limits::{Gates, Limits};
use ferry::transport::run::{copy_run, FileJob, RunCopy};
use ferry::transport::{CopyOptions, HostKeyPolicy, SshSession, TransportError, Verify};
use ferry_tests::{KeyPair, KeyType, SshAgent, Sshd, SshdOptions};
mod transport_common;

use transport_common::{digest, random_file, target, SmallTmpfs};

fn set_mtime(path: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("test setup")
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("test setup");
}

/// Sizes and names of issue 4: 0 bytes, 1 byte, 1 MiB + 1, 64 MiB; unicode and spaces.
const FILES: &[(&str, usize)] = &[
    ("empty file", 0),
    ("one byte.bin", 1),
    ("ünïcödé dir/файл 1.evio", (1 << 20) + 1),
    ("raw/big 64MiB.evio", 64 << 20),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_many_sizes_and_names_round_trip_with_mode_and_mtime() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("run 4711");
    for (i, (name, size)) in FILES.iter().enumerate() {
        let p = src.join(name);
        random_file(&p, *size);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640 + i as u32)).unwrap();
        set_mtime(&p, 1_600_000_000 + i as u64);
    }
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    let remote_root = format!("{}/site b/run 4711", sshd.root().display());
    let files: Vec<FileJob> = FILES
        .iter()
        .map(|(name, size)| FileJob {
            path: name.to_string(),
            size: *size as u64,
            sha256: Some(digest(&src.join(name)).sha256_hex()),
        })
        .collect();
    let gates = Gates::new(Limits::default());
    let push = RunCopy::Push {
        session: session.clone(),
        local_root: src.clone(),
        remote_root: remote_root.clone(),
        remote_base: sshd.root().display().to_string(),
    };
    let results = copy_run(&push, &files, &CopyOptions::default(), &gates, |_| {}).await;
    for ((name, size), r) in FILES.iter().zip(&results) {
        let report = r.as_ref().unwrap_or_else(|e| panic!("push {name}: {e}"));
        assert!(report.verified);
        assert_eq!(report.digest.size, *size as u64);
        let remote_file = PathBuf::from(&remote_root).join(name);
        // Independent check: hash what sshd wrote.
        assert_eq!(digest(&remote_file), report.digest, "{name}");
        let (s, d) = (
            std::fs::metadata(src.join(name)).unwrap(),
            std::fs::metadata(&remote_file).unwrap(),
        );
        assert_eq!(
            s.permissions().mode() & 0o777,
            d.permissions().mode() & 0o777
        );
        assert_eq!(s.modified().unwrap(), d.modified().unwrap());
        assert!(!PathBuf::from(format!("{}.part", remote_file.display())).exists());
    }

    let back = work.path().join("pulled");
    let pull = RunCopy::Pull {
        session: session.clone(),
        remote_root: remote_root.clone(),
        local_root: back.clone(),
        local_base: work.path().to_path_buf(),
    };
    let results = copy_run(&pull, &files, &CopyOptions::default(), &gates, |_| {}).await;
    for ((name, _), r) in FILES.iter().zip(&results) {
        let report = r.as_ref().unwrap_or_else(|e| panic!("pull {name}: {e}"));
        assert_eq!(digest(&back.join(name)), report.digest);
        assert_eq!(
            std::fs::read(back.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap()
        );
        assert_eq!(
            std::fs::metadata(back.join(name))
                .unwrap()
                .modified()
                .unwrap(),
            std::fs::metadata(src.join(name))
                .unwrap()
                .modified()
                .unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_part_with_a_corrupt_prefix_is_copied_again_from_zero() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.bin");
    random_file(&src, 3 << 20);
    let remote = format!("{}/f.bin", sshd.root().display());
    // A .part of the right length but the wrong bytes.
    std::fs::write(format!("{remote}.part"), vec![0xAAu8; 1 << 20]).unwrap();
    let session = SshSession::connect(&target(&sshd)).await.unwrap();
    let report = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap();
    assert_eq!(report.resumed_from, 0, "second attempt starts from zero");
    assert_eq!(
        std::fs::read(&remote).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resumes_only_when_the_manifest_digest_can_check_it() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let remote = sshd.root().join("r.bin");
    random_file(&remote, 2 << 20);
    let data = std::fs::read(&remote).unwrap();
    let local = work.path().join("r.bin");
    std::fs::write(work.path().join("r.bin.part"), &data[..1 << 20]).unwrap();
    let session = SshSession::connect(&target(&sshd)).await.unwrap();
    let remote = remote.display().to_string();

    let report = session
        .pull(&remote, &local, &CopyOptions::default())
        .await
        .unwrap();
    assert_eq!(report.resumed_from, 0, "no manifest digest: no resume");

    std::fs::remove_file(&local).unwrap();
    std::fs::write(work.path().join("r.bin.part"), &data[..1 << 20]).unwrap();
    let opts = CopyOptions {
        expected_sha256: Some(digest(Path::new(&remote)).sha256_hex()),
        ..CopyOptions::default()
    };
    let report = session.pull(&remote, &local, &opts).await.unwrap();
    assert_eq!(report.resumed_from, 1 << 20);
    assert_eq!(std::fs::read(&local).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_naming_host_and_both_fingerprints() {
    let sshd = Sshd::start().unwrap();
    let other = Sshd::start_with(SshdOptions {
        host_key_type: KeyType::Ed25519,
        ..SshdOptions::default()
    })
    .unwrap();
    // known_hosts says sshd's port has `other`'s key.
    let kh = tempfile::NamedTempFile::new().unwrap();
    let other_line = std::fs::read_to_string(other.known_hosts_path()).unwrap();
    let key_part = other_line.split_once(' ').unwrap().1;
    std::fs::write(
        kh.path(),
        format!("[{}]:{} {key_part}", sshd.host(), sshd.port()),
    )
    .unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let mut t = target(&sshd);
        t.known_hosts_files = vec![kh.path().to_path_buf()];
        t.host_key_policy = policy;
        let err = SshSession::connect(&t).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TransportError::HostKeyChanged { .. }),
            "{msg}"
        );
        assert!(!err.is_retryable());
        assert!(msg.contains(&sshd.host_key_fingerprint()), "{msg}");
        assert!(msg.contains(&other.host_key_fingerprint()), "{msg}");
        assert!(
            msg.contains(&format!("{}:{}", sshd.host(), sshd.port())),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_refused_when_strict_and_recorded_with_accept_new() {
    let sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let mut t = target(&sshd);
    t.known_hosts_files = vec![kh.clone()];
    let err = SshSession::connect(&t).await.unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyUnknown { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&sshd.host_key_fingerprint()));

    t.host_key_policy = HostKeyPolicy::AcceptNew;
    SshSession::connect(&t).await.unwrap();
    t.host_key_policy = HostKeyPolicy::Strict;
    SshSession::connect(&t).await.unwrap();
    assert!(std::fs::read_to_string(&kh).unwrap().contains(&format!(
        "[{}]:{}",
        sshd.host(),
        sshd.port()
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_user_keys_authenticate_and_a_wrong_key_is_refused() {
    for key in [KeyType::Rsa, KeyType::Ecdsa] {
        let sshd = Sshd::start_with(SshdOptions {
            user_key_type: key,
            ..SshdOptions::default()
        })
        .unwrap();
        let session = SshSession::connect(&target(&sshd)).await.unwrap();
        let out = session
            .exec(&["echo".into(), "it's ok".into()])
            .await
            .unwrap();
        assert_eq!(out.stdout, b"it's ok\n", "{key:?}");
    }
    let a = Sshd::start().unwrap();
    let b = Sshd::start().unwrap();
    let mut t = target(&a);
    t.identity_files = vec![b.user_key_path().to_path_buf()];
    let err = SshSession::connect(&t).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    assert!(!err.is_retryable());
}

/// An encrypted key cannot be unlocked by a daemon with no one at the keyboard: it is
/// skipped and named in the refusal, with what to do. Loaded into an ssh-agent (passphrase
/// typed once, here through `SSH_ASKPASS`), the same key logs in through the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_key_logs_in_through_ssh_agent_and_alone_is_named_in_the_refusal() {
    let sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("id_encrypted");
    let phrase = "it's a passphrase";
    let key =
        KeyPair::generate_encrypted(KeyType::Ed25519, &key_path, "encrypted", phrase).unwrap();
    sshd.authorize_key(&key).unwrap();
    let mut t = target(&sshd);
    t.identity_files = vec![key_path.clone()];

    t.use_agent = false;
    let err = SshSession::connect(&t).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("id_encrypted (encrypted: skipped, load it into ssh-agent)"),
        "{text}"
    );

    // An agent that holds no key yet: still refused, and the agent is named.
    let agent = SshAgent::start().unwrap();
    t.use_agent = true;
    t.agent_socket = Some(agent.socket().to_path_buf());
    let err = SshSession::connect(&t).await.unwrap_err();
    assert!(err.to_string().contains("holds no key"), "{err}");

    agent.add(&key_path, phrase).unwrap();
    let session = SshSession::connect(&t).await.unwrap();
    let out = session
        .exec(&["echo".into(), "agent".into()])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"agent\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_server_gives_permission_denied_and_missing_file_not_found() {
    let sshd = Sshd::start_with(SshdOptions {
        // The server runs as root, which file modes do not stop: make SFTP read-only instead.
        extra_config: vec!["Match all".into(), "ForceCommand internal-sftp -R".into()],
        ..SshdOptions::default()
    })
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f");
    random_file(&src, 1000);
    let session = SshSession::connect(&target(&sshd)).await.unwrap();
    let remote = format!("{}/f", sshd.root().display());
    let err = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(!Path::new(&remote).exists());

    let err = session
        .pull(
            &format!("{}/missing", sshd.root().display()),
            &work.path().join("m"),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_full_is_a_clear_error_and_leaves_nothing_behind() {
    let sshd = Sshd::start().unwrap();
    let full = SmallTmpfs::mount(sshd.root().join("small"), "2m");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("four MiB.bin");
    random_file(&src, 4 << 20);
    let session = SshSession::connect(&target(&sshd)).await.unwrap();
    let remote = format!("{}/four MiB.bin", full.0.display());
    let err = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::NoSpace { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(!Path::new(&remote).exists());
    assert!(!Path::new(&format!("{remote}.part")).exists());

    // Pull into a full local file system: same.
    let local_full = SmallTmpfs::mount(work.path().join("small"), "2m");
    let remote_src = sshd.root().join("src.bin");
    random_file(&remote_src, 4 << 20);
    let dst = local_full.0.join("src.bin");
    let err = session
        .pull(
            &remote_src.display().to_string(),
            &dst,
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::NoSpace { .. }), "{err}");
    assert!(!dst.exists() && !local_full.0.join("src.bin.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_command_verification_and_exec_errors() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("it's a file");
    random_file(&src, 300_000);
    let session = SshSession::connect(&target(&sshd)).await.unwrap();
    let remote = format!("{}/v/it's a file", sshd.root().display());
    let opts = CopyOptions {
        verify: Verify::sha256sum(),
        ..CopyOptions::default()
    };
    let report = session.push(&src, &remote, &opts).await.unwrap();
    assert!(report.verified);
    assert_eq!(digest(Path::new(&remote)), report.digest);

    // A "hasher" that reports another file's digest first: the copy must be refused.
    std::fs::remove_file(&remote).unwrap();
    let lying = CopyOptions {
        verify: Verify::RemoteCommand {
            argv: vec!["sha256sum".into(), "--".into(), "/dev/null".into()],
        },
        ..CopyOptions::default()
    };
    let err = session.push(&src, &remote, &lying).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::ChecksumMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains(&report.digest.sha256_hex()), "{msg}");
    assert!(msg.contains("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    assert!(!Path::new(&remote).exists());
    assert!(!Path::new(&format!("{remote}.part")).exists());

    let err = session
        .exec(&["ls".into(), "/no such dir".into()])
        .await
        .unwrap_err();
    match err {
        TransportError::Exec {
            status,
            stderr_tail,
            argv,
            ..
        } => {
            assert_eq!(status, Some(2));
            assert!(stderr_tail.contains("No such file"), "{stderr_tail}");
            assert_eq!(argv[1], "/no such dir");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_a_symlink_leading_out_of_the_run_directory() {
    let sshd = Sshd::start().unwrap();
    let run = sshd.root().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(sshd.root().join("secret"), b"not part of the run").unwrap();
    std::os::unix::fs::symlink(sshd.root().join("secret"), run.join("link")).unwrap();
    std::fs::write(run.join("ok"), b"data").unwrap();
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    let work = tempfile::tempdir().unwrap();
    let pull = RunCopy::Pull {
        session,
        remote_root: run.display().to_string(),
        local_root: work.path().join("run"),
        local_base: work.path().to_path_buf(),
    };
    let files = ["link", "ok"].map(|p| FileJob {
        path: p.into(),
        size: 0,
        sha256: None,
    });
    let results = copy_run(
        &pull,
        &files,
        &CopyOptions::default(),
        &Gates::new(Limits::default()),
        |_| {},
    )
    .await;
    assert!(
        matches!(results[0], Err(TransportError::UnsafePath { .. })),
        "{:?}",
        results[0]
    );
    assert!(!work.path().join("run/link").exists());
    assert_eq!(std::fs::read(work.path().join("run/ok")).unwrap(), b"data");
}

/// Push (or pull, `pull: true`) `files` of the run `src` to `dst` below `base` on a session
/// to `sshd`; for a push `dst` and `base` are on the server, for a pull `src` is.
async fn sftp_run(
    session: &Arc<SshSession>,
    pull: bool,
    src: &Path,
    dst: &Path,
    base: &Path,
    files: &[FileJob],
) -> Vec<Result<ferry::transport::CopyReport, TransportError>> {
    let method = if pull {
        RunCopy::Pull {
            session: session.clone(),
            remote_root: src.display().to_string(),
            local_root: dst.to_path_buf(),
            local_base: base.to_path_buf(),
        }
    } else {
        RunCopy::Push {
            session: session.clone(),
            local_root: src.to_path_buf(),
            remote_root: dst.display().to_string(),
            remote_base: base.display().to_string(),
        }
    };
    let gates = Gates::new(Limits::default());
    copy_run(&method, files, &CopyOptions::default(), &gates, |_| {}).await
}

fn file_job(path: &str, sha256: Option<String>) -> FileJob {
    FileJob {
        path: path.into(),
        size: 0,
        sha256,
    }
}

fn refused_as_link(r: &Result<ferry::transport::CopyReport, TransportError>) -> bool {
    matches!(r, Err(TransportError::UnsafePath { reason, .. }) if reason.contains("symbolic link"))
}

/// Found in issue 12: when the bytes did not hash to the manifest, the `.part` stayed at the
/// destination (mode 644 for a 600 file), so one forged catalogue document could copy any
/// file the agent can read into a peer's data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_does_not_match_is_removed_after_a_push() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    let forged = Some("00".repeat(32));
    for pull in [false, true] {
        let (src, base) = if pull {
            (sshd.root().join("pull src"), work.path().join("data"))
        } else {
            (work.path().join("push src"), sshd.root().join("data"))
        };
        random_file(&src.join("raw/id_ed25519"), 300_000);
        std::fs::set_permissions(
            src.join("raw/id_ed25519"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let dst = base.join("run");
        let results = sftp_run(
            &session,
            pull,
            &src,
            &dst,
            &base,
            &[file_job("raw/id_ed25519", forged.clone())],
        )
        .await;
        assert!(
            matches!(results[0], Err(TransportError::ChecksumMismatch { .. })),
            "pull {pull}: {:?}",
            results[0]
        );
        let landed = dst.join("raw/id_ed25519");
        assert!(!transport_common::exists(&landed), "pull {pull}");
        assert!(
            !transport_common::exists(&PathBuf::from(format!("{}.part", landed.display()))),
            "pull {pull}: the .part stayed"
        );
    }
}

/// Found in issue 12: writing at a destination followed links planted in its data directory
/// and wrote outside it. Push and pull; the link at the run directory, at a subdirectory,
/// at the `.part` and at the final name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_run_directory_at_the_destination_is_refused() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    for pull in [false, true] {
        let (src, base, outside) = if pull {
            let s = sshd.root().join("pull src");
            (s, work.path().join("data"), work.path().join("outside"))
        } else {
            let s = work.path().join("push src");
            (s, sshd.root().join("data"), sshd.root().join("outside"))
        };
        random_file(&src.join("sub/f"), 70_000);
        random_file(&src.join("g"), 70_000);
        random_file(&outside.join("f"), 10);
        random_file(&outside.join("sub/f"), 10);
        std::fs::create_dir_all(&base).unwrap();
        let before = transport_common::snapshot(&outside);
        let files = [file_job("sub/f", None), file_job("g", None)];

        let dst = base.join("run1");
        std::os::unix::fs::symlink(&outside, &dst).unwrap();
        let results = sftp_run(&session, pull, &src, &dst, &base, &files).await;
        assert!(
            results.iter().all(refused_as_link),
            "pull {pull}: {results:?}"
        );

        let dst = base.join("run2");
        std::fs::create_dir(&dst).unwrap();
        std::os::unix::fs::symlink(outside.join("sub"), dst.join("sub")).unwrap();
        // The whole run is refused before a byte is sent: the file beside it is not written.
        let results = sftp_run(&session, pull, &src, &dst, &base, &files).await;
        assert!(
            results.iter().all(refused_as_link),
            "pull {pull}: {results:?}"
        );
        assert!(!dst.join("g").exists(), "pull {pull}");

        let dst = base.join("run3");
        std::fs::create_dir_all(dst.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), dst.join("sub/f.part")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), dst.join("g")).unwrap();
        let results = sftp_run(&session, pull, &src, &dst, &base, &files).await;
        assert!(
            results.iter().all(refused_as_link),
            "pull {pull}: {results:?}"
        );
        assert!(std::fs::symlink_metadata(dst.join("g"))
            .unwrap()
            .is_symlink());

        std::os::unix::fs::symlink(&outside, base.join("2024")).unwrap();
        let dst = base.join("2024/run4");
        let results = sftp_run(&session, pull, &src, &dst, &base, &files).await;
        assert!(
            results.iter().all(refused_as_link),
            "pull {pull}: {results:?}"
        );

        assert_eq!(
            transport_common::snapshot(&outside),
            before,
            "pull {pull}: something was written outside"
        );
    }
}

/// Found in issue 12: a missing destination data directory was created silently (an
/// unmounted file system means the data lands on the root disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_destination_data_directory_is_not_created() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    for pull in [false, true] {
        let (src, mnt) = if pull {
            (sshd.root().join("pull src"), work.path().join("mnt"))
        } else {
            (work.path().join("push src"), sshd.root().join("mnt"))
        };
        random_file(&src.join("f"), 10);
        let base = mnt.join("data");
        let results = sftp_run(
            &session,
            pull,
            &src,
            &base.join("run"),
            &base,
            &[file_job("f", None)],
        )
        .await;
        let err = results[0].as_ref().unwrap_err();
        assert!(
            matches!(err, TransportError::DataDir { .. }),
            "pull {pull}: {err}"
        );
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains(&base.display().to_string()) && msg.contains("not created"),
            "{msg}"
        );
        assert!(!transport_common::exists(&mnt), "pull {pull}: created");
    }
}

/// Found in issue 12: sources were resolved with `canonicalize` / `realpath`, which follow
/// links that stay inside the run directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_file_behind_a_symlink_inside_the_run_is_refused() {
    let sshd = Sshd::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let session = Arc::new(SshSession::connect(&target(&sshd)).await.unwrap());
    for pull in [false, true] {
        let (src, base) = if pull {
            (sshd.root().join("pull src"), work.path().join("data"))
        } else {
            (work.path().join("push src"), sshd.root().join("data"))
        };
        random_file(&src.join("real/f"), 10);
        std::os::unix::fs::symlink(src.join("real"), src.join("alias")).unwrap();
        std::os::unix::fs::symlink(src.join("real/f"), src.join("f link")).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let dst = base.join("run");
        let files = [
            file_job("alias/f", None),
            file_job("f link", None),
            file_job("real/f", None),
        ];
        let results = sftp_run(&session, pull, &src, &dst, &base, &files).await;
        assert!(
            refused_as_link(&results[0]),
            "pull {pull}: {:?}",
            results[0]
        );
        assert!(
            refused_as_link(&results[1]),
            "pull {pull}: {:?}",
            results[1]
        );
        results[2].as_ref().unwrap();
        assert!(!transport_common::exists(&dst.join("alias")));
        assert!(!transport_common::exists(&dst.join("f link")));
    }
}
