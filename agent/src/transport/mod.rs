//! Moving bytes: SSH sessions, SFTP copies, local copies, remote commands.
//!
//! Every copy follows the same contract, whatever the method:
//!
//! 1. the bytes go to `NAME.part` next to the destination, created exclusively, never
//!    through a symbolic link (`O_NOFOLLOW` locally, exclusive create over SFTP), and with
//!    the source's permission bits from the start (the umask may narrow them; nothing ever
//!    makes them wider than the source's). A link at the `.part` or at the final name is
//!    refused ([`TransportError::UnsafePath`]);
//! 2. where the parents come from: a run copy ([`run::copy_run`]) names the destination's
//!    data directory, which must exist and is never created ([`TransportError::DataDir`]),
//!    and checks or creates every directory below it by `lstat`, refusing links, once per
//!    run ([`dest`]); the single-file copies (`push`, `pull`, `local::copy`) create missing
//!    parents. Sources below a run directory are resolved by `lstat` per component, and a
//!    link anywhere below the run directory is refused;
//! 3. SHA-256 and MD5 are computed from the bytes read for sending, on their own threads
//!    ([`crate::checksum::StreamHasher`]);
//! 4. a `.part` left by an interrupted copy is resumed: its length is taken as done, the
//!    source prefix is hashed locally, and only the rest is sent;
//! 5. the `.part` is flushed to disk (`fsync`), optionally verified independently of the
//!    sending stream ([`Verify`]), given the source's mtime and mode, then atomically renamed;
//! 6. a `.part` whose bytes do not match — the manifest's SHA-256, the verification, or a
//!    source that changed size — is removed at the destination, never left behind (a forged
//!    manifest must not leave a copy of some readable file in a peer's data directory); the
//!    error reports both digests. A mismatch after a resume is retried once from zero (the
//!    resumed prefix was bad). Only an interrupted copy (connection, timeout, I/O error)
//!    keeps its `.part`, for resume.
//!
//! ## Layout
//!
//! | module     | what it holds                                                            |
//! |------------|--------------------------------------------------------------------------|
//! | [`ssh`]    | [`SshTarget`], host-key policy, [`SshSession`]: one connection, N channels |
//! | [`sftp`]   | push/pull over SFTP with pipelined requests, `.part`, resume, rename      |
//! | [`sftp_wire`] | SFTP data packets framed by hand; the channel shared with russh-sftp |
//! | [`local`]  | the same contract on a shared file system                                |
//! | [`dest`]   | the destination's data directory and the run's directories, without links |
//! | [`exec`]   | remote commands as argv (quoted for the remote shell), exit status       |
//! | [`verify`] | the verification methods (read-back, remote command, deferred)           |
//! | [`limits`] | files in flight per run / per link / global; bandwidth token bucket       |
//! | [`run`]    | copy a run's manifest with bounded concurrency and progress events        |
//!
//! Nothing here reads the site map: callers build [`SshTarget`], [`CopyOptions`] and
//! [`limits::Limits`] from it.

pub mod dest;
pub mod exec;
pub mod limits;
pub mod local;
pub mod run;
pub mod sftp;
pub mod sftp_wire;
pub mod ssh;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::checksum::{ChecksumError, FileDigest};

pub use exec::ExecOutput;
pub use limits::{ByteMeter, Limits, RateLimiter};
pub use ssh::{HostKeyPolicy, SshSession, SshTarget};
pub use verify::Verify;

/// Who sees to the parent directories of a copy's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parents {
    /// The copy creates missing ones (the single-file copies: `push`, `pull`, `local::copy`).
    Create,
    /// The caller checked or created them below the data directory ([`dest`]); a missing
    /// one is an error, never created here.
    Checked,
}

/// Suffix of files being written.
pub const PART_SUFFIX: &str = ".part";

/// How one file is copied.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Resume a `.part` left by an interrupted copy (default `true`).
    pub resume: bool,
    /// Give the destination the source's mtime and permission bits (default `true`).
    pub preserve: bool,
    /// Flush the `.part` to stable storage before the rename (default `true`).
    pub fsync: bool,
    /// Independent check of the destination bytes before the rename.
    pub verify: Verify,
    /// SHA-256 (hex) the source must have, e.g. from the run's manifest. A copy whose stream
    /// digest differs fails with [`TransportError::ChecksumMismatch`].
    pub expected_sha256: Option<String>,
    /// SFTP requests kept in flight per file (default 64).
    pub requests_in_flight: usize,
    /// Bandwidth limiter shared by every copy on the same link.
    pub bandwidth: Option<Arc<RateLimiter>>,
    /// Bytes of this file done so far (a kept `.part` prefix counts), updated as the data
    /// passes, for progress displays. [`run::copy_run`] sets one per file.
    pub meter: Option<ByteMeter>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            resume: true,
            preserve: true,
            fsync: true,
            verify: Verify::ReadBack,
            expected_sha256: None,
            requests_in_flight: 64,
            bandwidth: None,
            meter: None,
        }
    }
}

/// What a finished copy did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Bytes sent by this copy (the file size minus the resumed prefix).
    pub bytes: u64,
    /// Size, SHA-256 and MD5 of the whole file, computed while sending.
    pub digest: FileDigest,
    /// Length of the `.part` prefix that was kept (0: copied from the start).
    pub resumed_from: u64,
    /// Wall time of the copy, verification included.
    pub elapsed: Duration,
    /// Whether the destination was verified by this copy (false for [`Verify::Deferred`]).
    pub verified: bool,
}

/// Where a transport error happened, for messages: a site's host or `local`.
pub(crate) const LOCAL: &str = "local";

/// Errors of the transport. Each names where it happened; [`is_retryable`](Self::is_retryable)
/// says whether the same copy may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connection to the SSH server failed.
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// Something did not answer in time.
    #[error("{host}: timed out after {after:?} while {what}")]
    Timeout {
        host: String,
        what: String,
        after: Duration,
    },
    /// The SSH protocol layer failed (handshake, channel, key exchange).
    #[error("{host}: SSH error while {what}: {message}")]
    Ssh {
        host: String,
        what: String,
        message: String,
    },
    /// The connection dropped in the middle of an operation.
    #[error("{host}: connection lost while {what} {path}")]
    ConnectionLost {
        host: String,
        path: String,
        what: String,
    },
    /// The server's host key is not in known_hosts and the policy is strict.
    #[error("host key for {host}:{port} ({fingerprint}) is not in {}; add it, or use host-key policy accept-new", paths_text(.known_hosts))]
    HostKeyUnknown {
        host: String,
        port: u16,
        fingerprint: String,
        known_hosts: Vec<PathBuf>,
    },
    /// The server presented a key different from the one recorded: possible MITM. Never retried.
    #[error("HOST KEY CHANGED for {host}:{port}: known_hosts {file:?} line {line} has {known}, server presented {presented}")]
    HostKeyChanged {
        host: String,
        port: u16,
        known: String,
        presented: String,
        file: PathBuf,
        line: usize,
    },
    /// known_hosts could not be read or written.
    #[error("known_hosts {path:?}: {reason}")]
    KnownHosts { path: PathBuf, reason: String },
    /// A private key could not be loaded.
    #[error("identity {path:?}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// The server refused every key offered.
    #[error("{host}: authentication failed for user {user}; tried {}", list_text(.tried))]
    AuthFailed {
        host: String,
        user: String,
        tried: Vec<String>,
    },
    /// The path does not exist.
    #[error("{host}: {path}: no such file or directory (while {op})")]
    NotFound {
        host: String,
        path: String,
        op: &'static str,
    },
    /// The server or file system refused access.
    #[error("{host}: {path}: permission denied (while {op})")]
    PermissionDenied {
        host: String,
        path: String,
        op: &'static str,
    },
    /// The destination file system is full.
    #[error("{host}: {path}: no space left on device (need {needed} more bytes, {} available)", .available.map_or_else(|| "unknown".to_owned(), |a| a.to_string()))]
    NoSpace {
        host: String,
        path: String,
        needed: u64,
        available: Option<u64>,
    },
    /// Any other failure reported by the SFTP server.
    #[error("{host}: {path}: SFTP {op} failed: {message}")]
    Sftp {
        host: String,
        path: String,
        op: &'static str,
        message: String,
    },
    /// A local file-system operation failed.
    #[error("local {op} {path:?}: {source}")]
    Local {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A remote command failed; `stderr_tail` holds the last lines it printed.
    #[error("{host}: command `{}` failed ({}): {stderr_tail}", command_line(.argv), exit_text(*.status))]
    Exec {
        host: String,
        argv: Vec<String>,
        status: Option<u32>,
        stderr_tail: String,
    },
    /// The destination bytes do not hash to what was sent (or to the manifest).
    #[error("{host}: {path}: checksum mismatch: expected {expected}, found {actual}")]
    ChecksumMismatch {
        host: String,
        path: String,
        expected: String,
        actual: String,
    },
    /// The source changed size while it was being copied.
    #[error("{host}: {path}: source changed during the copy (size {before} → {after})")]
    SourceChanged {
        host: String,
        path: String,
        before: u64,
        after: u64,
    },
    /// A path escapes the run directory (symlink, `..`, absolute) or is not a regular file.
    #[error("{host}: {path}: refused: {reason}")]
    UnsafePath {
        host: String,
        path: String,
        reason: String,
    },
    /// The destination's data directory is missing or not a directory. It is never
    /// created by a copy: a missing one is most often a file system that is not mounted.
    #[error("{host}: destination data directory {path} {problem}; not created")]
    DataDir {
        host: String,
        path: String,
        problem: DataDirProblem,
    },
    /// Hashing failed.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
}

/// What is wrong with a destination data directory ([`TransportError::DataDir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirProblem {
    /// Nothing at that path.
    Missing,
    /// Something that is not a directory.
    NotADirectory,
}

impl std::fmt::Display for DataDirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataDirProblem::Missing => "does not exist (not mounted?)",
            DataDirProblem::NotADirectory => "is not a directory",
        })
    }
}

impl TransportError {
    /// Whether the same operation may succeed if tried again later (after reconnecting).
    pub fn is_retryable(&self) -> bool {
        use TransportError::*;
        match self {
            Connect { .. } | Timeout { .. } | Ssh { .. } | ConnectionLost { .. } => true,
            ChecksumMismatch { .. } | SourceChanged { .. } => true,
            Sftp { .. } => true,
            Local { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            Checksum(e) => e.is_retryable(),
            HostKeyUnknown { .. }
            | HostKeyChanged { .. }
            | KnownHosts { .. }
            | Key { .. }
            | AuthFailed { .. }
            | NotFound { .. }
            | PermissionDenied { .. }
            | NoSpace { .. }
            | Exec { .. }
            | UnsafePath { .. }
            | DataDir { .. } => false,
        }
    }

    /// A local I/O error, classified (ENOSPC becomes [`TransportError::NoSpace`]).
    pub(crate) fn local(
        path: impl Into<PathBuf>,
        op: &'static str,
        source: std::io::Error,
    ) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::StorageFull => TransportError::NoSpace {
                host: LOCAL.into(),
                path: path.display().to_string(),
                needed: 0,
                available: None,
            },
            _ => TransportError::Local { path, op, source },
        }
    }
}

/// Outcome of one copy attempt: done, or a resumed prefix that failed verification (its
/// `.part` already removed), which calls for a second attempt from zero.
pub(crate) enum Attempt {
    Done(CopyReport),
    BadPrefix(TransportError),
}

impl Attempt {
    /// A finished attempt (`elapsed` is filled in by [`with_restart`]).
    pub(crate) fn done(bytes: u64, digest: FileDigest, resumed_from: u64, verified: bool) -> Self {
        Attempt::Done(CopyReport {
            bytes,
            digest,
            resumed_from,
            elapsed: Duration::ZERO,
            verified,
        })
    }

    /// The report, or what to do next: `Err(Some(e))` retry from zero, `Err(None)` never.
    fn into_report(self, what: &str, may_restart: bool) -> Result<CopyReport, TransportError> {
        match self {
            Attempt::Done(report) => Ok(report),
            Attempt::BadPrefix(err) if may_restart => {
                tracing::warn!(what, %err, "resumed copy failed verification; copying again from zero");
                Err(err)
            }
            Attempt::BadPrefix(err) => Err(err),
        }
    }
}

/// Run `attempt(resume = true)`; if its resumed prefix was bad, run `attempt(false)`.
/// Fills in the report's `elapsed`.
pub(crate) async fn with_restart<F, Fut>(
    what: &str,
    mut attempt: F,
) -> Result<CopyReport, TransportError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<Attempt, TransportError>>,
{
    let start = std::time::Instant::now();
    let report = match attempt(true).await?.into_report(what, true) {
        Ok(report) => report,
        Err(_) => attempt(false).await?.into_report(what, false)?,
    };
    Ok(CopyReport {
        elapsed: start.elapsed(),
        ..report
    })
}

/// Blocking [`with_restart`].
pub(crate) fn with_restart_blocking(
    what: &str,
    mut attempt: impl FnMut(bool) -> Result<Attempt, TransportError>,
) -> Result<CopyReport, TransportError> {
    let start = std::time::Instant::now();
    let report = match attempt(true)?.into_report(what, true) {
        Ok(report) => report,
        Err(_) => attempt(false)?.into_report(what, false)?,
    };
    Ok(CopyReport {
        elapsed: start.elapsed(),
        ..report
    })
}

/// `NAME.part` for a destination path string.
/// A command line as a person would type it: words shell-quoted where needed.
pub(crate) fn command_line(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

/// How a command ended, in words: "exit status 2", or "no exit status" (killed by a
/// signal, or never started).
pub(crate) fn exit_text<T: std::fmt::Display>(status: Option<T>) -> String {
    status.map_or_else(
        || "no exit status".to_owned(),
        |s| format!("exit status {s}"),
    )
}

/// Items of a list for a message: "a, b", or "nothing" when empty.
fn list_text(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

/// Paths for a message, separated by commas.
fn paths_text(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    list_text(&shown)
}

pub(crate) fn part_name(dest: &str) -> String {
    format!("{dest}{PART_SUFFIX}")
}

/// Compare the stream digest with the manifest's SHA-256, if one was given.
pub(crate) fn check_expected(
    host: &str,
    path: &str,
    digest: &FileDigest,
    expected: Option<&str>,
) -> Result<(), TransportError> {
    match expected {
        Some(want) if !want.eq_ignore_ascii_case(&digest.sha256_hex()) => {
            Err(TransportError::ChecksumMismatch {
                host: host.into(),
                path: path.into(),
                expected: format!("sha256={want} (manifest)"),
                actual: format!("sha256={} (sent)", digest.sha256_hex()),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let lost = TransportError::ConnectionLost {
            host: "h".into(),
            path: "p".into(),
            what: "writing".into(),
        };
        assert!(lost.is_retryable());
        let changed = TransportError::HostKeyChanged {
            host: "h".into(),
            port: 22,
            known: "SHA256:a".into(),
            presented: "SHA256:b".into(),
            file: "kh".into(),
            line: 1,
        };
        assert!(!changed.is_retryable());
        let msg = changed.to_string();
        assert!(msg.contains("SHA256:a") && msg.contains("SHA256:b") && msg.contains("h:22"));
        let full = TransportError::local(
            "/x",
            "write",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert!(matches!(full, TransportError::NoSpace { .. }));
        assert!(!full.is_retryable());
    }

    #[test]
    fn expected_digest_mismatch_names_both() {
        let d = FileDigest::empty();
        assert!(check_expected("h", "p", &d, Some(&d.sha256_hex())).is_ok());
        let err = check_expected("h", "p", &d, Some(&"00".repeat(32))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&d.sha256_hex()) && msg.contains(&"00".repeat(32)));
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    /// Messages showed `Some(…)` for an optional number and `["a", "b"]` for lists.
    #[test]
    fn errors_show_optional_numbers_and_lists_in_words() {
        let full = TransportError::NoSpace {
            host: "mirror".into(),
            path: "raw/Run7/a".into(),
            needed: 10,
            available: Some(3),
        };
        assert!(full
            .to_string()
            .ends_with("(need 10 more bytes, 3 available)"));
        let exec = TransportError::Exec {
            host: "mirror".into(),
            argv: vec!["sha256sum".into(), "--".into(), "a b".into()],
            status: Some(1),
            stderr_tail: "no such file".into(),
        };
        assert_eq!(
            exec.to_string(),
            "mirror: command `sha256sum -- 'a b'` failed (exit status 1): no such file"
        );
        let auth = TransportError::AuthFailed {
            host: "mirror".into(),
            user: "ferry".into(),
            tried: vec!["publickey /k/id_ed25519".into(), "agent".into()],
        };
        assert!(auth
            .to_string()
            .ends_with("tried publickey /k/id_ed25519, agent"));
        for text in [full.to_string(), exec.to_string(), auth.to_string()] {
            assert!(!text.contains("Some(") && !text.contains("[\""), "{text}");
        }
    }
}
