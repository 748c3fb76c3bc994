//! Finding the server programs, with environment overrides and install hints.
//!
//! Each program is looked up as: explicit option → environment variable → default location
//! (or `PATH`). A program that is not there is an error saying how to install it; the tests
//! then fail, they never skip.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// Environment variable naming the `sshd` binary (default [`DEFAULT_SSHD`]).
pub const SSHD_ENV: &str = "FERRY_TEST_SSHD";
/// Environment variable naming a `mongod` binary; when set, it is used instead of `PATH`.
pub const MONGOD_ENV: &str = "FERRY_TEST_MONGOD";
/// Environment variable naming a `secantusd-rs` binary; when set, it is used instead of `PATH`.
pub const SECANTUSD_ENV: &str = "FERRY_TEST_SECANTUSD";

/// Debian's OpenSSH server.
pub const DEFAULT_SSHD: &str = "/usr/sbin/sshd";

/// What to run to install everything the tests need.
pub const INSTALL_SCRIPT: &str = "deploy/install-test-deps.sh";

/// The `sshd` to run: `explicit`, else `$FERRY_TEST_SSHD`, else `/usr/sbin/sshd`.
///
/// The path must be absolute (sshd re-executes itself by path) and exist.
pub fn sshd_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| env::var_os(SSHD_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SSHD));
    if !path.is_file() {
        bail!(
            "sshd not found at {}: run {INSTALL_SCRIPT} (installs openssh-server)",
            path.display()
        );
    }
    if !path.is_absolute() {
        bail!(
            "sshd must be given by absolute path (it re-executes itself), got {}",
            path.display()
        );
    }
    Ok(path)
}

/// Which MongoDB-wire server program a [`crate::MongoServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// MongoDB's own `mongod`.
    Mongod,
    /// SecantusDB's `secantusd-rs` (MongoDB wire protocol over WiredTiger).
    Secantus,
}

/// The MongoDB-wire server to run: `$FERRY_TEST_MONGOD`, else `$FERRY_TEST_SECANTUSD`, else
/// `mongod` on `PATH`, else `secantusd-rs` on `PATH` or in cargo's bin directory.
pub fn mongo_binary() -> anyhow::Result<(ServerKind, PathBuf)> {
    for (var, kind) in [
        (MONGOD_ENV, ServerKind::Mongod),
        (SECANTUSD_ENV, ServerKind::Secantus),
    ] {
        if let Some(path) = env::var_os(var) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "{var}={} does not exist: unset it, or run {INSTALL_SCRIPT} \
                     (installs secantusd-rs with `cargo install secantus-mdb`)",
                    path.display()
                );
            }
            return Ok((kind, path));
        }
    }
    if let Some(path) = find_on_path("mongod") {
        return Ok((ServerKind::Mongod, path));
    }
    if let Some(path) = find_on_path("secantusd-rs").or_else(|| find_in_cargo_bin("secantusd-rs")) {
        return Ok((ServerKind::Secantus, path));
    }
    bail!(
        "no MongoDB-wire server found (neither `mongod` nor `secantusd-rs` on PATH or in \
         ~/.cargo/bin): run {INSTALL_SCRIPT} (installs secantusd-rs with \
         `cargo install secantus-mdb`, about 7 minutes)"
    )
}

/// The `ssh-keygen` to run: the one on `PATH`, else Debian's.
pub fn ssh_keygen_binary() -> PathBuf {
    find_on_path("ssh-keygen").unwrap_or_else(|| PathBuf::from("/usr/bin/ssh-keygen"))
}

/// The first executable file called `name` in the directories of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn find_in_cargo_bin(name: &str) -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let candidate = cargo_home.join("bin").join(name);
    is_executable(&candidate).then_some(candidate)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_sshd_names_path_and_package() {
        let err = sshd_binary(Some(Path::new("/nonexistent/sshd")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "sshd not found at /nonexistent/sshd: run deploy/install-test-deps.sh (installs openssh-server)"
        );
    }

    #[test]
    fn relative_sshd_is_refused() {
        // A relative path that exists: the crate's own manifest, relative to the test's cwd.
        let err = sshd_binary(Some(Path::new("Cargo.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute path"), "{err}");
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-ferry").is_none());
    }
}
