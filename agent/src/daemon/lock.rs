//! One agent per site: an exclusive lock on `ferry-SITE.lock` in the state directory.
//!
//! The lock is an OS file lock (`flock`), so it disappears with the process however it
//! dies — a `kill -9` leaves no stale lock to clean up by hand. The file holds the
//! holder's pid and start time, so a second instance can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent for this site is running.
    #[error(
        "site {site}: another ferry agent is already running (pid {holder}, lock {})",
        path.display()
    )]
    Held {
        /// The site.
        site: String,
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote into the lock file (its pid), or `unknown`.
        holder: String,
    },
    /// The lock file could not be created or written.
    #[error("site {site}: cannot use lock file {}: {source}", path.display())]
    Io {
        /// The site.
        site: String,
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl LockError {
    /// Waiting can help only when another agent holds the lock and may exit.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Held { .. })
    }
}

/// Held for as long as the agent runs; dropping it releases the lock.
#[derive(Debug)]
pub struct SiteLock {
    path: PathBuf,
    _file: File,
}

impl SiteLock {
    /// Takes the lock for `site` in `dir` (created if missing), without waiting.
    pub fn acquire(dir: &Path, site: &str) -> Result<Self, LockError> {
        Self::acquire_in(dir, &format!("ferry-{site}.lock"), site)
    }

    /// Takes the lock for `site` on the file `name` in `dir` (created if missing), without
    /// waiting: the state directory's `ferry-SITE.lock`, and `.ferry-SITE.lock` in each of
    /// the site's data directories ([`crate::datadir::roots`]).
    pub fn acquire_in(dir: &Path, name: &str, site: &str) -> Result<Self, LockError> {
        let path = dir.join(name);
        let io = |source| LockError::Io {
            site: site.to_string(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.lines().next().unwrap_or("").trim().to_string();
                return Err(LockError::Held {
                    site: site.to_string(),
                    path,
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The default directory for lock files: `$FERRY_STATE_DIR`, else `$FERRY_HOME`, else
    /// `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`.
    pub fn default_dir() -> PathBuf {
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("FERRY_STATE_DIR")
            .or_else(|| env("FERRY_HOME"))
            .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("ferry")))
            .or_else(|| env("HOME").map(|h| h.join(".local/state/ferry")))
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = SiteLock::acquire(dir.path(), "daq").unwrap();
        let err = SiteLock::acquire(dir.path(), "daq").unwrap_err();
        assert!(err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("site daq"), "{msg}");
        // Another site on the same machine is independent.
        let _other = SiteLock::acquire(dir.path(), "mirror").unwrap();
        drop(first);
        let _again = SiteLock::acquire(dir.path(), "daq").unwrap();
    }

    #[test]
    fn unwritable_dir_is_io_error_naming_path() {
        let err = SiteLock::acquire(Path::new("/proc/ferry-no-such"), "daq").unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("/proc/ferry-no-such"), "{err}");
    }
}
