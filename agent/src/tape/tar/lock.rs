//! The cross-process lock of a label store: an exclusive `flock` on `<labels>.lock`, held
//! for a whole put, verify or retrieve, so two processes (two agents, an agent and
//! `ferry recall`) neither corrupt the store nor write the same drive at once. The lock
//! is per open file, so two backends in one process exclude each other too; it goes away
//! with the process however that ends. The file holds the holder's pid, operation and
//! start time, for the error a waiter gives up with.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::tape::TapeError;

/// Pause between attempts while another process holds the lock.
const POLL: Duration = Duration::from_millis(50);

/// Held while the operation runs; dropping it releases the lock.
#[derive(Debug)]
pub(super) struct LabelsLock {
    _file: File,
}

/// `<labels>.lock` next to the label store.
pub(super) fn lock_path(labels: &Path) -> PathBuf {
    let mut name = labels.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the lock, waiting up to `timeout`; `op` (such as `put of run 170330_1234`) is
/// recorded for whoever waits next.
pub(super) fn lock_labels(
    backend: &str,
    labels: &Path,
    timeout: Duration,
    op: &str,
) -> Result<LabelsLock, TapeError> {
    let path = lock_path(labels);
    let io = |what: &'static str, e| TapeError::io(backend, what, &path, e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if start.elapsed() < timeout => {
                std::thread::sleep(POLL);
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TapeError::Locked {
                    backend: backend.to_owned(),
                    path: path.clone(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_owned()
                    },
                    waited: timeout,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
    }
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    let text = format!("pid {} ({op}) since {since}\n", std::process::id());
    let write = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())?;
        file.flush()
    };
    // Only informative: a failure to write it does not matter.
    let _ = write(&mut file);
    Ok(LabelsLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_waits_then_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels.json");
        let held = lock_labels("t", &labels, Duration::from_secs(1), "put of run r1").unwrap();
        let e = lock_labels("t", &labels, Duration::from_millis(200), "verify").unwrap_err();
        let TapeError::Locked { holder, path, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(holder.contains("put of run r1"), "{holder}");
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        assert!(path.ends_with("labels.json.lock"));
        assert!(e.is_retryable());
        drop(held);
        lock_labels("t", &labels, Duration::from_millis(200), "verify").unwrap();
    }
}
