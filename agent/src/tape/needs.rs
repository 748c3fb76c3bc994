//! What the tasks call of a tape backend, and what a backend's site-map entry must hold for
//! each of those operations: declared here and by each backend, read by
//! `ferry config validate` (which never looks at a backend's kind itself).
//!
//! - [`TAPE_USES`]: each task or command that uses a tape backend, the [`Operation`]s it
//!   calls and whether it runs every cycle (then a missing setting fails every cycle: an
//!   error) or only when someone asks (a note).
//! - [`unmet_needs`]: per backend, the settings its operations need that the entry lacks
//!   or cannot use ([`Unmet`]); the backend's own configuration reader refuses the same
//!   entries with the same words.

use crate::config::{TapeBackendConfig, TapeKind};

/// An operation of [`TapeBackend`](super::TapeBackend) that a task calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`TapeBackend::stat`](super::TapeBackend::stat): is this file on tape?
    Stat,
    /// [`TapeBackend::put`](super::TapeBackend::put).
    Put,
    /// [`TapeBackend::verify`](super::TapeBackend::verify).
    Verify,
    /// [`TapeBackend::retrieve`](super::TapeBackend::retrieve).
    Retrieve,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stat => "stat",
            Self::Put => "put",
            Self::Verify => "verify",
            Self::Retrieve => "retrieve",
        })
    }
}

/// A task or command that uses tape backends, and what it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapeUse {
    /// How people know it: "tape backup (the tape task, every cycle)".
    pub task: &'static str,
    /// Whether it runs every cycle of the agent (else only when someone asks).
    pub every_cycle: bool,
    /// The operations it calls.
    pub operations: &'static [Operation],
}

/// Every use of a tape backend (see `tasks/tape.rs` and `tasks/recall.rs`):
///
/// - backup: `put` (which asks `stat` before and after each file), then `verify` of the
///   receipt before the copy is recorded;
/// - re-verification: `stat` of every manifest file, then `verify`;
/// - `ferry recall`: `stat` of every file, then `retrieve` (only from backends whose
///   capabilities offer it; the others are skipped).
///
/// Nothing calls [`TapeBackend::catalogue`](super::TapeBackend::catalogue) on its own
/// (there is no command listing a tape system), so it is not listed.
pub const TAPE_USES: &[TapeUse] = &[
    TapeUse {
        task: "tape backup (the tape task, every cycle)",
        every_cycle: true,
        operations: &[Operation::Stat, Operation::Put, Operation::Verify],
    },
    TapeUse {
        task: "re-verification of tape copies (the tape task, every cycle)",
        every_cycle: true,
        operations: &[Operation::Stat, Operation::Verify],
    },
    TapeUse {
        task: "`ferry recall`",
        every_cycle: false,
        operations: &[Operation::Stat, Operation::Retrieve],
    },
];

/// A setting that operations of a backend need and its site-map entry lacks or cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The operations that cannot work without it.
    pub operations: Vec<Operation>,
    /// The site-map key to add (when absent) or change (when present).
    pub key: &'static str,
    /// Whether the key is present but unusable (else it is missing).
    pub present: bool,
    /// Whether the backend cannot be built at all with this entry (every task using it
    /// fails, whatever it calls).
    pub refused: bool,
    /// What is wrong, in words, without the backend's name.
    pub problem: String,
    /// What to add or change.
    pub fix: String,
}

impl Unmet {
    /// The uses of [`TAPE_USES`] that call one of this setting's operations.
    pub fn needed_by(&self) -> Vec<&'static TapeUse> {
        TAPE_USES
            .iter()
            .filter(|u| u.operations.iter().any(|o| self.operations.contains(o)))
            .collect()
    }

    /// Whether an agent would fail every cycle: the backend is refused, or a task that
    /// runs every cycle needs the setting.
    pub fn fails_every_cycle(&self) -> bool {
        self.refused || self.needed_by().iter().any(|u| u.every_cycle)
    }
}

/// What `cfg`'s operations need that it does not give, declared by each backend.
pub fn unmet_needs(cfg: &TapeBackendConfig) -> Vec<Unmet> {
    match &cfg.kind {
        // Every setting of these two is required or defaulted by the site-map format, and
        // every operation works with what is there.
        TapeKind::Directory { .. } | TapeKind::Tar { .. } => Vec::new(),
        TapeKind::Command { .. } => super::command::unmet_needs(&cfg.kind),
    }
}
