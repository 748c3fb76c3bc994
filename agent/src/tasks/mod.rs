//! The agent's tasks: where the site map, the catalogue, the checksums and the transport
//! meet. One file per task, each `pub async fn run(&Context, &CancellationToken) ->
//! TaskReport`; [`run_cycle`] runs the chosen ones in DESIGN §5's order.
//!
//! | task       | file          | status                                            |
//! |------------|---------------|---------------------------------------------------|
//! | register   | `register.rs` | directory discovery at origin sites               |
//! | push       | `push.rs`     | `local` method: claim, copy, read back, record    |
//! | tape       | `tape.rs`     | claim, put, verify on tape, record                |
//! | verify, retry, pull, purge, audit, heartbeat | — | not built yet               |
//!
//! A task never fails the cycle: each run it touches either succeeds, is skipped with a
//! reason, or is listed in the report's failures with the run and the cause; the next task
//! still runs. A lost race in the catalogue is an ordinary outcome, not a failure.

pub mod push;
pub mod record;
pub mod register;
pub mod tape;

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Site, SiteMap};
use crate::transport::limits::Gates;

/// The agent's tasks, in cycle order (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Task {
    /// Find complete runs at origin sites and record them.
    #[value(alias = "AddRunToDatabase", alias = "AddChecksum")]
    Register,
    /// Hash local copies awaiting verification.
    #[value(alias = "RetryStalledTransfer")]
    Verify,
    /// Reclaim stalled copies and retry failed ones.
    #[value(alias = "RetryBadChecksumTransfer")]
    Retry,
    /// Copy runs to the sites this site pushes to.
    #[value(alias = "CopyPush")]
    Push,
    /// Copy runs from the sites this site pulls from.
    #[value(alias = "CopyPull")]
    Pull,
    /// Back runs up to tape.
    #[value(alias = "TSMclient")]
    Tape,
    /// Remove local copies that enough verified copies elsewhere protect.
    #[value(alias = "BufferPurger", alias = "PurgeProcessed")]
    Purge,
    /// Re-hash local copies; report dark and lost data.
    #[value(alias = "Filesystem")]
    Audit,
    /// Write this agent's heartbeat document.
    Heartbeat,
}

/// Which runs a cycle may touch (`--run N` / `--name X`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunScope {
    /// Every run.
    #[default]
    All,
    /// One run number.
    Number(i64),
    /// One run name.
    Name(String),
}

impl RunScope {
    /// Whether a run with this number and name is in scope.
    pub fn admits(&self, number: i64, name: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Number(n) => *n == number,
            Self::Name(want) => name == Some(want.as_str()),
        }
    }
}

/// Everything a task needs, built once per agent.
#[derive(Clone)]
pub struct Context {
    /// The whole site map.
    pub map: Arc<SiteMap>,
    /// The site this agent runs as.
    pub site: Site,
    /// The run catalogue.
    pub catalog: Arc<dyn Catalog>,
    /// This agent's identity in leases and the audit trail: `site@host:pid`.
    pub owner: String,
    /// `--run` / `--name`.
    pub scope: RunScope,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Files in flight per run, per link and in all; shared by every copy of this agent.
    pub gates: Gates,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("site", &self.site.name)
            .field("catalog", &self.catalog.describe())
            .field("owner", &self.owner)
            .field("scope", &self.scope)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// What one task did in one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskReport {
    /// Runs the task completed work on.
    pub done: Vec<String>,
    /// Runs left alone, with why (already done, incomplete, lost a race…).
    pub skipped: Vec<String>,
    /// Runs the task failed on, with the cause.
    pub failed: Vec<String>,
}

/// What one cycle did, task by task.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    /// In the order the tasks ran.
    pub tasks: Vec<(Task, TaskReport)>,
    /// Tasks asked for that this version does not have.
    pub not_built: Vec<Task>,
}

/// Tasks in cycle order; those this version has are run, the others are reported.
pub const CYCLE_ORDER: [Task; 9] = [
    Task::Register,
    Task::Verify,
    Task::Retry,
    Task::Push,
    Task::Pull,
    Task::Tape,
    Task::Purge,
    Task::Audit,
    Task::Heartbeat,
];

/// Whether this version implements `task`.
pub fn is_built(task: Task) -> bool {
    matches!(task, Task::Register | Task::Push | Task::Tape)
}

/// Runs `tasks` (all of them when empty) in cycle order. Stops starting tasks once
/// `token` is cancelled.
pub async fn run_cycle(ctx: &Context, tasks: &[Task], token: &CancellationToken) -> CycleReport {
    let mut report = CycleReport::default();
    for task in CYCLE_ORDER {
        if !tasks.is_empty() && !tasks.contains(&task) {
            continue;
        }
        if token.is_cancelled() {
            break;
        }
        let outcome = match task {
            Task::Register => register::run(ctx, token).await,
            Task::Push => push::run(ctx, token).await,
            Task::Tape => tape::run(ctx, token).await,
            other => {
                report.not_built.push(other);
                continue;
            }
        };
        tracing::info!(
            task = ?task,
            done = outcome.done.len(),
            skipped = outcome.skipped.len(),
            failed = outcome.failed.len(),
            "task finished"
        );
        report.tasks.push((task, outcome));
    }
    report
}
