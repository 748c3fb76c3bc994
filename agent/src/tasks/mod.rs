//! The agent's tasks: where the site map, the catalogue, the checksums and the transport
//! meet. One file per task, each `pub async fn run(&Context, &CancellationToken) ->
//! TaskReport`; [`run_cycle`] runs the chosen ones in DESIGN §5's order.
//!
//! | task       | file          | status                                            |
//! |------------|---------------|---------------------------------------------------|
//! | register   | `register.rs` | directory discovery at origin sites               |
//! | verify     | `verify.rs`   | re-hash `verifying` copies here; take over only dead leases |
//! | retry      | `retry.rs`    | reclaim stalled copies; classified retries with backoff |
//! | push       | `push.rs`     | to `push_to` sites over SFTP or locally           |
//! | pull       | `pull.rs`     | from `pull_from` sites over SFTP or locally       |
//! | tape       | `tape.rs`     | claim, put, verify on tape, record                |
//! | purge      | `purge.rs`    | DESIGN §6 rules, last-copy guard, dry run         |
//! | audit      | `audit.rs`    | slow schedule: bit rot, lost and dark data, alarm thresholds |
//! | heartbeat  | `heartbeat.rs`| one document per agent: cycle, counts, free disk  |
//!
//! Push, pull and retry share `copy.rs` (claim → copy → read back → record) and the agent's
//! SSH sessions, one per peer site (`sessions.rs`); every task that works on a copy (copy, tape, recall, verify) takes, renews, records and
//! fails it through one lifecycle, `lifecycle.rs`, which builds on no task. Push, pull and
//! retry hand their copies to `scheduler.rs`, which runs them on every link at once,
//! behind the cycle.
//! `recall.rs` is not a cycle task: `ferry recall` restores one run from tape with the
//! same lifecycle (`lifecycle.rs`) and the tape task's backends.
//!
//! A task never fails the cycle: each run it touches either succeeds, is skipped with a
//! reason, or is listed in the report's failures with the run and the cause; the next task
//! still runs. Reports are typed entries ([`report`]), made into text only where they are
//! shown. A lost race in the catalogue is an ordinary outcome, not a failure.

pub mod adopt;
pub mod audit;
pub mod copy;
pub mod heartbeat;
pub mod lifecycle;
pub mod owner;
pub mod pull;
pub mod purge;
pub mod push;
pub mod recall;
pub mod register;
pub mod rehash;
pub mod replay;
pub mod report;
pub mod retry;
pub mod scheduler;
pub mod sessions;
pub mod tape;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, RunDoc, RunKey};
use tokio_util::sync::CancellationToken;

use crate::catalog::{page_after, Catalog, CatalogError, RunSelector};
pub use crate::catalog::{RunRange, RunScope};
use crate::config::{Site, SiteMap};
use crate::transport::limits::Gates;
pub use report::{Entry, Outcome, Subject, TaskReport};

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

impl Task {
    /// The task's name as `--task` takes it (`push`, `tape`…).
    pub fn name(self) -> &'static str {
        match self {
            Task::Register => "register",
            Task::Verify => "verify",
            Task::Retry => "retry",
            Task::Push => "push",
            Task::Pull => "pull",
            Task::Tape => "tape",
            Task::Purge => "purge",
            Task::Audit => "audit",
            Task::Heartbeat => "heartbeat",
        }
    }

    /// Whether the task hands copies to the scheduler (retry, push, pull).
    pub fn copies(self) -> bool {
        matches!(self, Task::Retry | Task::Push | Task::Pull)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
    /// This agent's identity in leases and the audit trail ([`owner::owner_id`]).
    pub owner: String,
    /// `--run` / `--name`.
    pub scope: RunScope,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Files in flight per run, per link and in all; shared by every copy of this agent.
    pub gates: Gates,
    /// One SSH session per peer site, reused across runs, files and cycles.
    pub sessions: Arc<sessions::SessionPool>,
    /// Where copies report their progress (log lines, or bars on a terminal).
    pub progress: Arc<dyn copy::CopyProgress>,
    /// Runs the copies of push and pull as jobs, every link at once ([`scheduler`]).
    pub scheduler: Arc<scheduler::Scheduler>,
    /// The audit's schedule, byte budget and alarm thresholds.
    pub audit: audit::Settings,
    /// Where each work list's walk stopped, so the next cycle goes on from there
    /// ([`walk`]). Shared by clones of the context.
    pub cursors: Arc<Cursors>,
    /// The data directories the purge is taking down to their low-water mark
    /// ([`purge::Purging`]). Shared by clones of the context.
    pub purging: Arc<purge::Purging>,
    /// Where verified copies go whose record the catalogue could not take
    /// ([`crate::journal`]); replayed at the start of every cycle. `None`: no journal (the
    /// record then fails as the catalogue does).
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// In a dry run, the runs the register task would have registered this cycle, for the
    /// later tasks to report on ([`register::WouldRegister`]). Shared by clones.
    pub would_register: Arc<register::WouldRegister>,
    /// The agent's Prometheus figures ([`crate::metrics`]): each task reports its events
    /// there with one call where they happen.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Runs asked of the catalogue per page of a work list.
pub const PAGE: u32 = 100;
/// Pages of one work list read per cycle at most ([`walk`]). Each page of a long list costs
/// about as much as the whole list did before paging (the server gathers and sorts every
/// match; `docs/benchmarks.md`), so the budget is small: the cursor, not the budget, is
/// what brings every run round.
pub const MAX_PAGES: usize = 5;

/// One of the catalogue's paged work lists.
#[derive(Debug, Clone, Copy)]
pub enum WorkList<'a> {
    /// [`Catalog::copies_in_status`] at a site.
    InStatus(&'a str, CopyStatus),
    /// [`Catalog::purge_candidates`] at a site.
    PurgeCandidates(&'a str),
    /// [`Catalog::stalled_copies`] (at a site when given) as of a time.
    Stalled(Option<&'a str>, DateTime),
    /// [`Catalog::runs_needing_copy`].
    NeedingCopy {
        /// Destination site.
        dest: &'a str,
        /// Data type.
        data_type: &'a str,
        /// Sites it may come from.
        sources: &'a [String],
    },
}

impl WorkList<'_> {
    /// The list's name, which keys its cursor.
    fn name(&self) -> String {
        match self {
            Self::InStatus(host, status) => format!("{status} copies at {host}"),
            Self::PurgeCandidates(host) => format!("purge candidates at {host}"),
            Self::Stalled(Some(host), _) => format!("stalled copies at {host}"),
            Self::Stalled(None, _) => "stalled copies".to_string(),
            Self::NeedingCopy {
                dest,
                data_type,
                sources,
            } => format!("{data_type} for {dest} from {}", sources.join(",")),
        }
    }

    /// One page of the runs in `scope`.
    async fn page(
        &self,
        catalog: &dyn Catalog,
        scope: &RunScope,
        after: Option<&RunKey>,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        match *self {
            Self::InStatus(host, status) => {
                catalog
                    .copies_in_status_scoped(host, status, scope, after, PAGE)
                    .await
            }
            Self::PurgeCandidates(host) => {
                catalog
                    .purge_candidates_scoped(host, scope, after, PAGE)
                    .await
            }
            Self::Stalled(host, now) => {
                catalog
                    .stalled_copies_scoped(host, now, scope, after, PAGE)
                    .await
            }
            Self::NeedingCopy {
                dest,
                data_type,
                sources,
            } => {
                catalog
                    .runs_needing_copy_scoped(dest, data_type, sources, scope, after, PAGE)
                    .await
            }
        }
    }
}

/// Where each work list's walk stopped: the key of the last run read.
#[derive(Debug, Default)]
pub struct Cursors(Mutex<HashMap<String, RunKey>>);

impl Cursors {
    fn get(&self, list: &str) -> Option<RunKey> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(list).cloned()
    }

    fn set(&self, list: &str, at: Option<RunKey>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match at {
            Some(k) => map.insert(list.to_string(), k),
            None => map.remove(list),
        };
    }
}

/// `a` comes before or is `b` in the work lists' order, `(number, detector)`.
fn not_after(a: &RunKey, b: &RunKey) -> bool {
    (a.number, a.detector.as_str()) <= (b.number, b.detector.as_str())
}

/// The runs of a work list in the cycle's scope (`--run`, `--name`, a range: part of the
/// catalogue query, so a run asked for is found however many runs come before it), page
/// by page: at most `max_pages` pages, starting
/// where the previous cycle's walk of the same list stopped and wrapping around to the
/// first run at the end, never reading a run twice in one walk. So runs that stay on a
/// list (copies given up, runs too young to purge) cannot hide the runs after them: a list
/// longer than the budget is read in turns, every run at least once every
/// `len / (PAGE × max_pages)` cycles. The lists the tasks only inspect take
/// [`MAX_PAGES`]; the copy task takes one page a cycle (each run there costs a transfer).
pub async fn walk(
    ctx: &Context,
    list: WorkList<'_>,
    max_pages: usize,
) -> Result<Vec<RunDoc>, CatalogError> {
    let name = match &ctx.scope {
        RunScope::All => list.name(),
        scope => format!("{} in {scope:?}", list.name()),
    };
    let start = ctx.cursors.get(&name);
    let mut after = start.clone();
    let mut wrapped = start.is_none();
    let mut out = Vec::new();
    for _ in 0..max_pages.max(1) {
        let mut page = list
            .page(ctx.catalog.as_ref(), &ctx.scope, after.as_ref())
            .await?;
        let next = page_after(&page, PAGE);
        if let (true, Some(s)) = (wrapped, &start) {
            // Second lap: stop at the runs the first lap began after.
            let before = page.len();
            page.retain(|r| not_after(&r.key(), s));
            if page.len() < before {
                out.extend(page);
                ctx.cursors.set(&name, None);
                return Ok(out);
            }
        }
        out.extend(page);
        match next {
            Some(k) => after = Some(k),
            None if wrapped => {
                ctx.cursors.set(&name, None);
                return Ok(out);
            }
            None => {
                wrapped = true;
                after = None;
            }
        }
    }
    ctx.cursors.set(&name, after);
    Ok(out)
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

/// What one cycle did, task by task.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    /// In the order the tasks ran.
    pub tasks: Vec<(Task, TaskReport)>,
    /// What the cycle as a whole could not do: journal entries still waiting, `--run N` /
    /// `--name X` naming a run that is not in the catalogue (nor registered by this cycle).
    pub failed: Vec<Entry>,
}

/// Tasks in cycle order (DESIGN §5).
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

/// Runs looked at per cycle for copies written by other tools.
const ADOPT_BATCH: u32 = 1000;

/// Runs `tasks` (all of them when empty) in cycle order. Stops starting tasks once
/// `token` is cancelled.
pub async fn run_cycle(ctx: &Context, tasks: &[Task], token: &CancellationToken) -> CycleReport {
    let mut report = CycleReport::default();
    let started = bson::DateTime::now();
    // Records of verified copies the catalogue could not take, before anything claims.
    report.failed.extend(
        replay::run(ctx, token)
            .await
            .into_iter()
            .map(Entry::failure),
    );
    // Copies other tools wrote (a DAQ's own entry) join the work lists before any task
    // asks for them. A failure here is logged; the tasks still run on what is indexed.
    match ctx.catalog.adopt_foreign_copies(ADOPT_BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(adopted = n, "copies written by other tools adopted"),
        Err(e) => tracing::warn!("adopting copies written by other tools: {e}"),
    }
    for task in CYCLE_ORDER {
        if !tasks.is_empty() && !tasks.contains(&task) {
            continue;
        }
        if token.is_cancelled() {
            break;
        }
        if !task.copies() {
            // `--once`: every copy task's jobs end before the tasks that count copies.
            copy::settle_owed(ctx, token, &mut report.tasks).await;
        }
        let skips_before = ctx.catalog.quarantine().count();
        let mut outcome = match task {
            Task::Register => register::run(ctx, token).await,
            Task::Verify => verify::run(ctx, token).await,
            Task::Retry => retry::run(ctx, token).await,
            Task::Push => push::run(ctx, token).await,
            Task::Pull => pull::run(ctx, token).await,
            Task::Tape => tape::run(ctx, token).await,
            Task::Purge => purge::run(ctx, token).await,
            // Asked for by name: now. In the whole cycle: on its slow schedule.
            Task::Audit if tasks.contains(&Task::Audit) => audit::run(ctx, token).await,
            Task::Audit => audit::run_scheduled(ctx, token).await,
            Task::Heartbeat => heartbeat::run(ctx, token, &report, started).await,
        };
        register::note_would_register(ctx, task, &mut outcome);
        outcome.quarantined = ctx
            .catalog
            .quarantine()
            .count()
            .saturating_sub(skips_before);
        report.tasks.push((task, outcome));
    }
    copy::settle_owed(ctx, token, &mut report.tasks).await;
    if let Some(missing) = missing_run(ctx).await {
        report.failed.push(Entry::failure(missing));
    }
    report
}

/// With `--run N` / `--name X`: a line saying the run is not in the catalogue, if it is not
/// (asked for by hand, doing nothing must not look like success).
async fn missing_run(ctx: &Context) -> Option<String> {
    if ctx.dry_run && ctx.would_register.holds(&ctx.scope) {
        // Not in the catalogue because this dry run registered nothing; said so above.
        return None;
    }
    let sel = match &ctx.scope {
        RunScope::All | RunScope::Range(_) => return None,
        RunScope::Number(n) => RunSelector::Number(*n),
        RunScope::Name(name) => RunSelector::Name(name.clone()),
    };
    match ctx.catalog.find_runs(&sel).await {
        Ok(runs) if runs.is_empty() => Some(match sel {
            RunSelector::Number(n) => format!(
                "run {n}: not in the catalogue {} (nor found complete at {} to register)",
                ctx.catalog.describe(),
                ctx.site.name
            ),
            RunSelector::Name(name) => format!(
                "run {name:?}: not in the catalogue {} (nor found complete at {} to register)",
                ctx.catalog.describe(),
                ctx.site.name
            ),
        }),
        Ok(_) => None,
        Err(e) => Some(format!("looking up the run asked for: {e}")),
    }
}

/// The copies at `host` in `status` of the runs in scope, each with its run (the indexed
/// work list, walked page by page: [`walk`]).
pub(crate) async fn copies_in(
    ctx: &Context,
    host: &str,
    status: CopyStatus,
) -> Result<Vec<(RunDoc, CopyEntry)>, String> {
    let runs = walk(ctx, WorkList::InStatus(host, status), MAX_PAGES)
        .await
        .map_err(|e| format!("{status} copies at {host}: catalogue: {e}"))?;
    let mut out = Vec::new();
    for run in runs {
        for c in run
            .data
            .iter()
            .filter(|c| c.host == host && c.status == status)
        {
            out.push((run.clone(), c.clone()));
        }
    }
    Ok(out)
}
