//! The `local` method: copies between directories of one file system (or a shared mount),
//! with the same contract as SFTP (see [`crate::transport`]): `.part`, hashing in the same
//! read on two threads, resume, fsync, verification, mtime and mode, atomic rename.
//!
//! The `.part` is created exclusively with `O_NOFOLLOW` and the source's permission bits
//! ([`create_part`]); a kept one is reopened with `O_NOFOLLOW` and narrowed to them
//! ([`open_part`]). A link at the `.part` or at the final name is refused. A `.part` whose
//! bytes turn out wrong (manifest, verification, a source that changed size) is removed.
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
use crate::transport::dest::{refuse_local_link, LINK_REFUSED};
use crate::transport::limits::ThrottledRead;
use crate::transport::{check_expected, verify, with_restart_blocking, Attempt, Parents};
use crate::transport::{CopyOptions, CopyReport, TransportError, Verify};
use crate::transport::{LOCAL, PART_SUFFIX};

/// `dst` with `.part` appended.
pub fn part_path(dst: &Path) -> PathBuf {
    let mut name = OsString::from(dst.as_os_str());
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// Open a kept `.part` to go on writing it, never through a link; its permission bits are
/// narrowed to `mode` (the source's) if they were wider.
pub(crate) fn open_part(part: &Path, mode: u32) -> Result<File, TransportError> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(part)
        .map_err(|e| no_follow_err(part, "open", e))?;
    let had = f
        .metadata()
        .map_err(|e| TransportError::local(part, "stat", e))?
        .permissions()
        .mode()
        & 0o7777;
    if had & !mode != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(had & mode))
            .map_err(|e| TransportError::local(part, "chmod", e))?;
    }
    Ok(f)
}

/// Create a fresh `.part` with `mode` (the source's permission bits; the umask may narrow
/// them, nothing widens them), exclusively and never through a link. A file left there by an
/// earlier copy is removed first; a symbolic link there is refused.
pub(crate) fn create_part(part: &Path, mode: u32) -> Result<File, TransportError> {
    match std::fs::symlink_metadata(part) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(TransportError::UnsafePath {
                host: LOCAL.into(),
                path: part.display().to_string(),
                reason: LINK_REFUSED.into(),
            })
        }
        Ok(_) => {
            std::fs::remove_file(part).map_err(|e| TransportError::local(part, "remove", e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TransportError::local(part, "lstat", e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(part)
        .map_err(|e| no_follow_err(part, "create", e))
}

/// An open error; `ELOOP` (the last component is a link) becomes a refusal.
fn no_follow_err(path: &Path, op: &'static str, e: std::io::Error) -> TransportError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => TransportError::UnsafePath {
            host: LOCAL.into(),
            path: path.display().to_string(),
            reason: LINK_REFUSED.into(),
        },
        _ => TransportError::local(path, op, e),
    }
}

/// Remove a `.part` whose bytes are not the file's (best effort: the copy fails anyway).
fn discard(part: &Path) {
    if let Err(e) = std::fs::remove_file(part) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %part.display(), "cannot remove a bad .part: {e}");
        }
    }
}

/// Copy `src` to `dst` (blocking), creating missing parents of `dst`. See the module docs
/// for the contract.
pub fn copy(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyReport, TransportError> {
    copy_with(src, dst, opts, Parents::Create)
}

/// [`copy`], with `dst`'s parents seen to as `parents` says.
pub(crate) fn copy_with(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    parents: Parents,
) -> Result<CopyReport, TransportError> {
    with_restart_blocking(&dst.display().to_string(), |resume| {
        copy_once(src, dst, opts, opts.resume && resume, parents)
    })
}

/// [`copy`] on tokio's blocking pool.
pub async fn copy_async(
    src: PathBuf,
    dst: PathBuf,
    opts: CopyOptions,
) -> Result<CopyReport, TransportError> {
    blocking(dst.clone(), move || copy(&src, &dst, &opts)).await
}

/// Run `f` on tokio's blocking pool; `at` names the copy if the task itself fails.
pub(crate) async fn blocking<T: Send + 'static>(
    at: PathBuf,
    f: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
) -> Result<T, TransportError> {
    let where_ = at;
    tokio::task::spawn_blocking(f)
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
    parents: Parents,
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
        .map_err(|e| no_follow_err(src, "open", e))?;
    let meta = source.metadata().map_err(io(src, "stat"))?;
    if !meta.is_file() {
        return Err(TransportError::UnsafePath {
            host: LOCAL.into(),
            path: src.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let size = meta.len();
    let mode = meta.permissions().mode() & 0o777;
    if let (Some(parent), Parents::Create) = (dst.parent(), parents) {
        std::fs::create_dir_all(parent).map_err(io(parent, "create directory"))?;
    }
    refuse_local_link(dst)?;
    let part = part_path(dst);
    let resumed_from = match std::fs::symlink_metadata(&part) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(TransportError::UnsafePath {
                host: LOCAL.into(),
                path: part.display().to_string(),
                reason: LINK_REFUSED.into(),
            })
        }
        Ok(m) if allow_resume && m.is_file() && m.len() <= size => m.len(),
        _ => 0,
    };
    let mut out = if resumed_from > 0 {
        let mut f = open_part(&part, mode)?;
        f.seek(SeekFrom::Start(resumed_from))
            .map_err(io(&part, "seek"))?;
        f
    } else {
        create_part(&part, mode)?
    };

    let mut hasher = StreamHasher::new()?;
    // The kept prefix is hashed from the source; verification catches a .part that differs.
    let mut remaining = resumed_from;
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = read_full(&mut source, &mut buf).map_err(io(src, "read"))?;
        if n < want {
            discard(&part);
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
        drop(out);
        discard(&part);
        return Err(changed(src, size, resumed_from + sent));
    }
    let digest = hasher.blocking_finish()?;
    if let Err(err) = check_expected(
        LOCAL,
        &src.display().to_string(),
        &digest,
        opts.expected_sha256.as_deref(),
    ) {
        // Bytes that do not hash to the manifest never stay at the destination; a resumed
        // `.part` may have had a bad prefix, so that one is copied again from zero.
        drop(out);
        discard(&part);
        if resumed_from > 0 {
            return Ok(Attempt::BadPrefix(err));
        }
        return Err(err);
    }
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
    // Renaming onto a link would replace the link, not write through it; one planted since
    // the start is still refused.
    if let Err(err) = refuse_local_link(dst) {
        discard(&part);
        return Err(err);
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
