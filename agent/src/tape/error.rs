//! Errors of the tape backends.
//!
//! Every variant names the backend; those about data name the run or key, those about
//! commands carry argv, exit status and the stderr tail. [`TapeError::is_retryable`] says
//! whether the same operation may succeed later without anyone changing anything but time
//! (a reconnect, a drive freed, a tape changed by an operator counts as "later").

use std::path::PathBuf;
use std::time::Duration;

use crate::checksum::ChecksumError;
use crate::transport::{command_line, exit_text, TransportError};

/// A command that ran and how it ended, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    /// What ran.
    pub argv: Vec<String>,
    /// Exit status (`None`: killed, or never started).
    pub status: Option<i32>,
    /// The end of its stderr.
    pub stderr_tail: String,
}

impl std::fmt::Display for CommandRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command `{}` ended with {}: {}",
            command_line(&self.argv),
            exit_text(self.status),
            self.stderr_tail
        )
    }
}

/// A tape backend failure.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// The site-map entry cannot work (unknown placeholder, missing gateway, bad setting).
    #[error("tape backend {backend}: configuration: {reason}")]
    Config { backend: String, reason: String },
    /// The batch itself is unusable (empty, unsafe paths).
    #[error("tape backend {backend}: run {run}: {reason}")]
    BadInput {
        backend: String,
        run: String,
        reason: String,
    },
    /// A different file is already stored under this key.
    #[error("tape backend {backend}: {key} is already stored with different content ({stored}); refusing to write {offered}")]
    Conflict {
        backend: String,
        key: String,
        stored: String,
        offered: String,
    },
    /// What the tape holds differs from the receipt.
    #[error("tape backend {backend}: {key}: {what} mismatch: expected {expected}, found {found}")]
    Mismatch {
        backend: String,
        key: String,
        what: &'static str,
        expected: String,
        found: String,
    },
    /// The key is not stored.
    #[error("tape backend {backend}: {key} is not stored")]
    NotFound { backend: String, key: String },
    /// The backend cannot do this (see [`super::Capabilities`]).
    #[error("tape backend {backend}: {op} is not supported{hint}")]
    Unsupported {
        backend: String,
        op: &'static str,
        hint: String,
    },
    /// A local file operation failed.
    #[error("tape backend {backend}: {op} {path:?}: {source}")]
    Io {
        backend: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The program of a command is not installed (exit 127, or not found locally).
    #[error("tape backend {backend}: {context}: program {program:?} is not installed (command `{}`){stderr}", command_line(.argv))]
    NotInstalled {
        backend: String,
        context: String,
        program: String,
        argv: Vec<String>,
        stderr: String,
    },
    /// A command ended with an exit status not configured as success.
    #[error("tape backend {backend}: {context}: command `{}` failed with {}: {stderr_tail}", command_line(.argv), exit_text(*.status))]
    Command {
        backend: String,
        /// Run and key, or what the command was for.
        context: String,
        argv: Vec<String>,
        status: Option<i32>,
        stderr_tail: String,
        /// Whether the tool's exit status says the failure may pass (dsmc 12 is not, a
        /// session failure is).
        retryable: bool,
    },
    /// A command ran past its timeout and was killed.
    #[error("tape backend {backend}: {context}: command `{}` timed out after {after:?}", command_line(.argv))]
    Timeout {
        backend: String,
        context: String,
        argv: Vec<String>,
        after: Duration,
    },
    /// A tool's output could not be understood (a stub file that does not parse).
    #[error("tape backend {backend}: {context}: cannot parse {what} from `{}`: {reason}", command_line(.argv))]
    Parse {
        backend: String,
        context: String,
        what: &'static str,
        argv: Vec<String>,
        /// What is wrong, with the start of the output.
        reason: String,
    },
    /// The tape filled up while writing.
    #[error("tape backend {backend}: run {run}: tape {volume} in {device:?} is full ({command}); nothing of this batch is recorded")]
    TapeFull {
        backend: String,
        run: String,
        volume: String,
        device: PathBuf,
        command: Box<CommandRun>,
    },
    /// A drive cannot be used (no tape loaded, load failed, positioning failed).
    #[error("tape backend {backend}: drive {device:?}: {what}: {command}")]
    Drive {
        backend: String,
        device: PathBuf,
        what: String,
        command: Box<CommandRun>,
    },
    /// The SSH gateway failed (connect, exec, SFTP staging).
    #[error("tape backend {backend}: {context}: {source}")]
    Transport {
        backend: String,
        context: String,
        #[source]
        source: Box<TransportError>,
    },
    /// Hashing failed.
    #[error("tape backend {backend}: {source}")]
    Checksum {
        backend: String,
        #[source]
        source: ChecksumError,
    },
    /// The label store or a catalogue on tape is unreadable.
    #[error("tape backend {backend}: label store {path:?}: {reason}")]
    Labels {
        backend: String,
        path: PathBuf,
        reason: String,
    },
    /// Another process held the label store's lock for longer than the backend waits.
    #[error("tape backend {backend}: label store lock {path:?} is held by {holder}; gave up after {waited:?}")]
    Locked {
        backend: String,
        path: PathBuf,
        /// What the holder wrote into the lock file (pid, operation, since when).
        holder: String,
        waited: Duration,
    },
    /// A task of the backend itself died.
    #[error("tape backend {backend}: internal: {reason}")]
    Internal { backend: String, reason: String },
}

impl TapeError {
    /// Whether the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        use TapeError::*;
        match self {
            Config { .. } | BadInput { .. } | Conflict { .. } | NotFound { .. } => false,
            Unsupported { .. } | NotInstalled { .. } | Parse { .. } | Labels { .. } => false,
            // The stored bytes differ from what was written: writing again is refused by
            // idempotency; a person has to look.
            Mismatch { .. } => false,
            Command { retryable, .. } => *retryable,
            Timeout { .. } | Drive { .. } | TapeFull { .. } | Internal { .. } => true,
            Locked { .. } => true,
            Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            Transport { source, .. } => source.is_retryable(),
            Checksum { source, .. } => source.is_retryable(),
        }
    }

    pub(crate) fn io(
        backend: &str,
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        TapeError::Io {
            backend: backend.to_owned(),
            op,
            path: path.into(),
            source,
        }
    }
}
