//! The `local` method (shared file system) under the same contract as SFTP: resume of a
//! `.part`, a bad resumed prefix copied again, a full destination, symlinked sources refused,
//! a destination data directory that is never created and never written through a link.

mod transport_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ferry::transport::limits::{Gates, Limits};
use ferry::transport::local::{copy, part_path};
use ferry::transport::run::{copy_run, FileJob, RunCopy};
use ferry::transport::{CopyOptions, CopyReport, TransportError};
use transport_common::{exists, mode_of, random_file, snapshot, SmallTmpfs};

/// Copy `files` of the run at `src` to `dst` below the data directory `base`.
async fn local_run(
    src: &Path,
    dst: &Path,
    base: &Path,
    files: &[FileJob],
    gates: &Gates,
) -> Vec<Result<CopyReport, TransportError>> {
    let method = RunCopy::Local {
        src_root: src.to_path_buf(),
        dst_root: dst.to_path_buf(),
        dst_base: base.to_path_buf(),
    };
    copy_run(&method, files, &CopyOptions::default(), gates, |_| {}).await
}

fn job(path: &str, sha256: Option<String>) -> FileJob {
    FileJob {
        path: path.into(),
        size: 0,
        sha256,
    }
}

fn unsafe_path(r: &Result<CopyReport, TransportError>) -> bool {
    matches!(r, Err(TransportError::UnsafePath { reason, .. }) if reason.contains("symbolic link"))
}

/// Found in issue 12: a forged manifest digest made the copy fail but left the `.part` (mode
/// 644 for a 600 source) in the destination: a copy of any readable file.
#[tokio::test]
async fn a_part_that_does_not_match_is_removed_after_a_local_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/run");
    random_file(&src.join("secret key"), 100_000);
    std::fs::set_permissions(
        src.join("secret key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let base = dir.path().join("data");
    std::fs::create_dir(&base).unwrap();
    let dst = base.join("run");
    let forged = Some("00".repeat(32));
    let results = local_run(
        &src,
        &dst,
        &base,
        &[job("secret key", forged.clone())],
        &Gates::new(Limits::default()),
    )
    .await;
    assert!(
        matches!(results[0], Err(TransportError::ChecksumMismatch { .. })),
        "{:?}",
        results[0]
    );
    assert!(!exists(&dst.join("secret key")));
    assert!(
        !exists(&part_path(&dst.join("secret key"))),
        "the .part stayed"
    );

    // The single-file copy too, and after a resumed prefix (copied again from zero, then
    // removed as well).
    let one = dir.path().join("one/f");
    std::fs::create_dir_all(one.parent().unwrap()).unwrap();
    std::fs::write(part_path(&one), b"left over").unwrap();
    let opts = CopyOptions {
        expected_sha256: forged,
        ..CopyOptions::default()
    };
    // `copy` blocks (its hash threads are fed with blocking sends): off the runtime.
    let err = std::thread::scope(|t| {
        t.spawn(|| copy(&src.join("secret key"), &one, &opts))
            .join()
            .unwrap()
    })
    .unwrap_err();
    assert!(
        matches!(err, TransportError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(!exists(&one) && !exists(&part_path(&one)));
}

/// Found in issue 12: the `.part` was created 644 and narrowed only at the end, so a 600
/// source could be read by anyone while it was being copied (or after a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_created_with_the_source_mode_never_wider() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_file(&src.join("f"), 4 << 20);
    std::fs::set_permissions(src.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = dir.path().join("data");
    std::fs::create_dir(&base).unwrap();
    let dst = base.join("run");
    let part = part_path(&dst.join("f"));
    // 4 MiB at 4 MB/s: about a second with the `.part` in place.
    let gates = Gates::new(Limits {
        bandwidth_per_link: Some(4_000_000),
        ..Limits::default()
    });
    let watch = {
        let part = part.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(5) {
                if let Ok(m) = std::fs::symlink_metadata(&part) {
                    seen.push(m.permissions().mode() & 0o777);
                }
                if seen.len() > 20 && !exists(&part) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen
        })
    };
    let results = local_run(&src, &dst, &base, &[job("f", None)], &gates).await;
    results[0].as_ref().unwrap();
    let seen = watch.join().unwrap();
    assert!(!seen.is_empty(), "the .part was never seen");
    let octal: Vec<String> = seen.iter().map(|m| format!("{m:o}")).collect();
    assert!(seen.iter().all(|&m| m == 0o600), "modes seen: {octal:?}");
    assert_eq!(mode_of(&dst.join("f")), 0o600);
}

/// Found in issue 12: writing at a destination followed links planted in its data directory
/// (a run directory or a subdirectory that is a link) and wrote outside it.
#[tokio::test]
async fn a_planted_symlink_run_directory_at_the_destination_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_file(&src.join("sub/f"), 1000);
    random_file(&src.join("g"), 1000);
    let outside = dir.path().join("outside");
    random_file(&outside.join("f"), 10);
    random_file(&outside.join("sub/f"), 10);
    let before = snapshot(&outside);
    let base = dir.path().join("data");
    std::fs::create_dir(&base).unwrap();
    let gates = Gates::new(Limits::default());
    let files = [job("sub/f", None), job("g", None)];

    // The run directory itself is a link.
    let dst = base.join("run1");
    std::os::unix::fs::symlink(&outside, &dst).unwrap();
    let results = local_run(&src, &dst, &base, &files, &gates).await;
    assert!(results.iter().all(unsafe_path), "{results:?}");

    // A subdirectory is a link: the whole run is refused before a byte is written, the
    // file beside it too.
    let dst = base.join("run2");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), dst.join("sub")).unwrap();
    let results = local_run(&src, &dst, &base, &files, &gates).await;
    assert!(results.iter().all(unsafe_path), "{results:?}");
    assert!(!dst.join("g").exists());

    // The `.part` and the final name are links out.
    let dst = base.join("run3");
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("f"), dst.join("sub/f.part")).unwrap();
    std::os::unix::fs::symlink(outside.join("f"), dst.join("g")).unwrap();
    let results = local_run(&src, &dst, &base, &files, &gates).await;
    assert!(results.iter().all(unsafe_path), "{results:?}");

    // A level between the data directory and the run directory is a link.
    std::os::unix::fs::symlink(&outside, base.join("2024")).unwrap();
    let results = local_run(&src, &base.join("2024/run4"), &base, &files, &gates).await;
    assert!(results.iter().all(unsafe_path), "{results:?}");

    assert_eq!(snapshot(&outside), before, "something was written outside");
}

/// Found in issue 12: a missing destination data directory was created silently, so an
/// unmounted file system put the data on the root disk.
#[tokio::test]
async fn a_missing_destination_data_directory_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_file(&src.join("f"), 10);
    let base = dir.path().join("mnt/data");
    let results = local_run(
        &src,
        &base.join("run"),
        &base,
        &[job("f", None)],
        &Gates::new(Limits::default()),
    )
    .await;
    let err = results[0].as_ref().unwrap_err();
    assert!(matches!(err, TransportError::DataDir { .. }), "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&base.display().to_string()) && msg.contains("not created"),
        "{msg}"
    );
    assert!(!exists(&dir.path().join("mnt")));

    // A run directory not strictly below the data directory is refused as well.
    std::fs::create_dir_all(&base).unwrap();
    for root in [
        base.clone(),
        base.join("../elsewhere"),
        dir.path().join("x"),
    ] {
        let results = local_run(
            &src,
            &root,
            &base,
            &[job("f", None)],
            &Gates::new(Limits::default()),
        )
        .await;
        assert!(
            matches!(results[0], Err(TransportError::UnsafePath { .. })),
            "{}: {:?}",
            root.display(),
            results[0]
        );
    }
    assert!(!exists(&dir.path().join("mnt/elsewhere")) && !exists(&dir.path().join("x")));
}

/// Found in issue 12: a source path was resolved with `canonicalize`, which follows links
/// that stay inside the run directory.
#[tokio::test]
async fn a_source_file_behind_a_symlink_inside_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_file(&src.join("real/f"), 10);
    std::os::unix::fs::symlink(src.join("real"), src.join("alias")).unwrap();
    std::os::unix::fs::symlink(src.join("real/f"), src.join("f link")).unwrap();
    let base = dir.path().join("data");
    std::fs::create_dir(&base).unwrap();
    let dst: PathBuf = base.join("run");
    let results = local_run(
        &src,
        &dst,
        &base,
        &[
            job("alias/f", None),
            job("f link", None),
            job("real/f", None),
        ],
        &Gates::new(Limits::default()),
    )
    .await;
    assert!(unsafe_path(&results[0]), "{:?}", results[0]);
    assert!(unsafe_path(&results[1]), "{:?}", results[1]);
    results[2].as_ref().unwrap();
    assert!(!exists(&dst.join("alias")) && !exists(&dst.join("f link")));
}

#[test]
fn local_copy_resumes_a_good_part_and_recopies_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/a file.evio");
    random_file(&src, 5 << 20);
    let data = std::fs::read(&src).unwrap();
    let dst = dir.path().join("dst/a file.evio");
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();

    std::fs::write(part_path(&dst), &data[..2 << 20]).unwrap();
    let report = copy(&src, &dst, &CopyOptions::default()).unwrap();
    assert_eq!(report.resumed_from, 2 << 20);
    assert_eq!(report.bytes, 3 << 20);
    assert_eq!(std::fs::read(&dst).unwrap(), data);

    std::fs::remove_file(&dst).unwrap();
    std::fs::write(part_path(&dst), vec![0u8; 2 << 20]).unwrap();
    let report = copy(&src, &dst, &CopyOptions::default()).unwrap();
    assert_eq!(
        report.resumed_from, 0,
        "bad prefix: second attempt from zero"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    assert!(!part_path(&dst).exists());
}

#[test]
fn local_copy_to_a_full_file_system_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    random_file(&src, 4 << 20);
    let full = SmallTmpfs::mount(dir.path().join("small"), "2m");
    let dst = full.0.join("big");
    let err = copy(&src, &dst, &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, TransportError::NoSpace { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!dst.exists() && !part_path(&dst).exists());
}

#[test]
fn local_copy_refuses_a_symlinked_source() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    random_file(&real, 10);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = copy(&link, &dir.path().join("out"), &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, TransportError::UnsafePath { .. }), "{err}");
    assert!(!dir.path().join("out").exists());
}
