//! Per-server temp dirs, and sweeping the ones a killed test process left behind.
//!
//! `Drop` removes a server's temp dir, but a test binary killed with SIGKILL runs no
//! destructors: its servers die with it (see `process.rs`), its temp dirs stay. So every dir
//! made here holds an `owner` file naming the creating process as `"<pid> <start time>"`
//! (start time from `/proc/<pid>/stat`, so a reused pid does not count as the owner), and
//! creating a new dir first removes the dirs with the same prefix whose owner is gone. Dirs
//! without a readable `owner` file are left alone.

use std::env;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use tempfile::TempDir;

const OWNER_FILE: &str = "owner";

/// Creates `$TMPDIR/<prefix>XXXXXX` owned by this process, after removing stale dirs with the
/// same prefix.
pub(crate) fn server_temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    sweep_stale(&env::temp_dir(), prefix);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| {
            format!(
                "creating a {prefix}* temp dir in {}",
                env::temp_dir().display()
            )
        })?;
    let owner = owner_token(std::process::id())
        .context("reading this process's start time from /proc/self/stat")?;
    let owner_path = dir.path().join(OWNER_FILE);
    fs::write(&owner_path, owner).with_context(|| format!("writing {}", owner_path.display()))?;
    Ok(dir)
}

/// `"<pid> <start time in clock ticks since boot>"` for a live process, else `None`.
fn owner_token(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and ')', so split after the last
    // ')'. starttime is field 22 overall, the 20th after comm.
    let (_, rest) = stat.rsplit_once(')')?;
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Removes `<parent>/<prefix>*` dirs whose owner process no longer exists. Best effort: a dir
/// that cannot be read or removed is skipped.
fn sweep_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let Some(pid) = owner.split_whitespace().next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if owner_token(pid).as_deref() != Some(owner.trim()) {
            // Another process may sweep the same dir at the same time; either wins.
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_token_is_stable_and_dead_pid_has_none() {
        let me = std::process::id();
        assert_eq!(owner_token(me), owner_token(me));
        assert!(owner_token(me).unwrap().starts_with(&format!("{me} ")));
        assert_eq!(owner_token(u32::MAX), None);
    }

    #[test]
    fn sweep_removes_dead_owners_only() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str, owner: Option<String>| {
            let dir = parent.path().join(name);
            fs::create_dir(&dir).unwrap();
            if let Some(owner) = owner {
                fs::write(dir.join(OWNER_FILE), owner).unwrap();
            }
            dir
        };
        let me = owner_token(std::process::id()).unwrap();
        let pid = std::process::id();
        let alive = make("ferry-x-alive", Some(me));
        let dead = make("ferry-x-dead", Some(format!("{} 1", u32::MAX)));
        let reused = make("ferry-x-reused", Some(format!("{pid} 0")));
        let unowned = make("ferry-x-unowned", None);
        let other_prefix = make("other-dead", Some(format!("{} 1", u32::MAX)));

        sweep_stale(parent.path(), "ferry-x-");

        assert!(alive.exists());
        assert!(!dead.exists());
        assert!(
            !reused.exists(),
            "a reused pid with another start time is not the owner"
        );
        assert!(unowned.exists());
        assert!(other_prefix.exists());
    }
}
