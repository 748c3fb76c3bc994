//! The `local` method: copies between directories of one file system (or a shared mount),
//! with the same contract as SFTP (see [`crate::transport`]): `.part`, hashing in the same
//! read on two threads, resume, fsync, verification, mtime and mode, atomic rename.
//!
//! [`copy`] is blocking (a copy thread reads and writes; the hash threads hash);
//! [`copy_async`] runs it on tokio's blocking pool.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::checksum::{read_full, StreamHasher, READ_CHUNK};
use crate::transport::limits::ThrottledRead;
use crate::transport::{check_expected, verify, with_restart_blocking, Attempt};
use crate::transport::{CopyOptions, CopyReport, TransportError, Verify};
use crate::transport::{LOCAL, PART_SUFFIX};

/// `dst` with `.part` appended.
pub fn part_path(dst: &Path) -> PathBuf {
    let mut name = OsString::from(dst.as_os_str());
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// Copy `src` to `dst` (blocking). See the module docs for the contract.
pub fn copy(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyReport, TransportError> {
    with_restart_blocking(&dst.display().to_string(), |resume| {
        copy_once(src, dst, opts, opts.resume && resume)
    })
}

/// [`copy`] on tokio's blocking pool.
pub async fn copy_async(
    src: PathBuf,
    dst: PathBuf,
    opts: CopyOptions,
) -> Result<CopyReport, TransportError> {
    let where_ = dst.clone();
    tokio::task::spawn_blocking(move || copy(&src, &dst, &opts))
        .await
        .map_err(|e| TransportError::Local {
            path: where_,
            op: "copy task",
            source: std::io::Error::other(e.to_string()),
        })?
}

fn copy_once(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    allow_resume: bool,
) -> Result<Attempt, TransportError> {
    let io = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |e| TransportError::local(path, op, e)
    };
    // O_NOFOLLOW: a symlink as the last component is refused, never followed.
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => TransportError::UnsafePath {
                host: LOCAL.into(),
                path: src.display().to_string(),
                reason: "is a symbolic link".into(),
            },
            _ => TransportError::local(src, "open", e),
        })?;
    let meta = source.metadata().map_err(io(src, "stat"))?;
    if !meta.is_file() {
        return Err(TransportError::UnsafePath {
            host: LOCAL.into(),
            path: src.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let size = meta.len();
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent, "create directory"))?;
    }
    let part = part_path(dst);
    let resumed_from = match std::fs::symlink_metadata(&part) {
        Ok(m) if allow_resume && m.is_file() && m.len() <= size => m.len(),
        _ => 0,
    };
    let mut out = if resumed_from > 0 {
        let mut f = OpenOptions::new()
            .write(true)
            .open(&part)
            .map_err(io(&part, "open"))?;
        f.seek(SeekFrom::Start(resumed_from))
            .map_err(io(&part, "seek"))?;
        f
    } else {
        // Remove first: the .part could be a symlink planted by someone else.
        match std::fs::remove_file(&part) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TransportError::local(&part, "remove", e)),
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(io(&part, "create"))?
    };

    let mut hasher = StreamHasher::new()?;
    // The kept prefix is hashed from the source; verification catches a .part that differs.
    let mut remaining = resumed_from;
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = read_full(&mut source, &mut buf).map_err(io(src, "read"))?;
        if n < want {
            return Err(changed(src, size, resumed_from - remaining + n as u64));
        }
        hasher.blocking_update(Bytes::from(buf))?;
        remaining -= want as u64;
    }
    if let Some(m) = &opts.meter {
        m.restart(resumed_from);
    }
    let mut reader =
        ThrottledRead::new(&mut source, opts.bandwidth.clone()).metered(opts.meter.clone());
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = read_full(&mut reader, &mut buf).map_err(io(src, "read"))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if let Err(e) = out.write_all(&buf) {
            let err = TransportError::local(&part, "write", e);
            if let TransportError::NoSpace { .. } = err {
                // Resuming cannot help a full disk; give the space back.
                let _ = std::fs::remove_file(&part);
            }
            return Err(err);
        }
        sent += n as u64;
        hasher.blocking_update(Bytes::from(buf))?;
    }
    if resumed_from + sent != size {
        return Err(changed(src, size, resumed_from + sent));
    }
    let digest = hasher.blocking_finish()?;
    check_expected(
        LOCAL,
        &src.display().to_string(),
        &digest,
        opts.expected_sha256.as_deref(),
    )?;
    if opts.preserve {
        preserve(&out, &part, &meta)?;
    }
    if opts.fsync {
        out.sync_all().map_err(io(&part, "fsync"))?;
    }
    drop(out);

    let verified = !matches!(opts.verify, Verify::Deferred);
    if verified {
        if let Err(err) = verify::local_file(&part, &digest) {
            let _ = std::fs::remove_file(&part);
            return match err {
                TransportError::ChecksumMismatch { .. } if resumed_from > 0 => {
                    Ok(Attempt::BadPrefix(err))
                }
                other => Err(other),
            };
        }
    }
    std::fs::rename(&part, dst).map_err(io(dst, "rename"))?;
    if opts.fsync {
        sync_parent(dst)?;
    }
    Ok(Attempt::done(sent, digest, resumed_from, verified))
}

fn changed(src: &Path, before: u64, after: u64) -> TransportError {
    TransportError::SourceChanged {
        host: LOCAL.into(),
        path: src.display().to_string(),
        before,
        after,
    }
}

/// Give `file` the source's permission bits and modification time.
fn preserve(file: &File, path: &Path, meta: &std::fs::Metadata) -> Result<(), TransportError> {
    let mode = meta.permissions().mode() & 0o7777;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| TransportError::local(path, "chmod", e))?;
    let mtime = meta
        .modified()
        .map_err(|e| TransportError::local(path, "read mtime", e))?;
    file.set_modified(mtime)
        .map_err(|e| TransportError::local(path, "set mtime", e))
}

/// fsync the directory holding `path`, so the rename itself is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), TransportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| TransportError::local(parent, "fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hash_file;
    use std::time::{Duration, SystemTime};

    #[test]
    fn part_path_appends_suffix() {
        assert_eq!(
            part_path(Path::new("/a/b c.evio")),
            PathBuf::from("/a/b c.evio.part")
        );
    }

    #[test]
    fn copy_keeps_mode_and_mtime_and_reports_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, vec![7u8; 3 * READ_CHUNK + 1]).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let dst = dir.path().join("deep/er/dst.bin");
        let report = copy(&src, &dst, &CopyOptions::default()).unwrap();
        assert_eq!(report.digest, hash_file(&src).unwrap());
        assert_eq!(report.bytes, 3 * READ_CHUNK as u64 + 1);
        assert!(report.verified);
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(m.modified().unwrap(), mtime);
        assert!(!part_path(&dst).exists());
    }
}
