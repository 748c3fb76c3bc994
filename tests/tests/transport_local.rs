//! The `local` method (shared file system) under the same contract as SFTP: resume of a
//! `.part`, a bad resumed prefix copied again, a full destination, symlinked sources refused.

mod transport_common;

use ferry::transport::local::{copy, part_path};
use ferry::transport::{CopyOptions, TransportError};
use transport_common::{random_file, SmallTmpfs};

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
