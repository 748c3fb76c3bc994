//! The transfer scheduler: wanted copies become jobs that run on every link at once, in
//! the background of the agent's cycle.
//!
//! The copy tasks (push, pull) plan each wanted copy in the cycle and hand it here as a
//! [`Job`]: the destination copy it makes, the link it goes over (the peer site), the copy
//! it reads, and a future that claims, copies and records it (`copy.rs`). The scheduler
//! starts jobs as soon as their link has room and returns at once, so the cycle's other
//! tasks keep their cadence while copies are in flight.
//!
//! - **Bounds.** Every file of a job still passes the transport's gates (files in flight
//!   per run, transfers per link, global: [`crate::transport::limits::Gates`]); the
//!   scheduler decides how many runs are open. A job weighs the file slots it can use at
//!   once (`min(files_in_flight, its files)`); a link opens another run while its open
//!   runs weigh less than `transfers_per_link + files_in_flight` (enough to fill the link,
//!   plus one run's worth waiting, so the link does not idle while a run is claimed or
//!   recorded), and the agent while what the open runs can move (each link's weight, at
//!   most its `transfers_per_link`) is less than `global_transfers + files_in_flight`. A
//!   run that is not started is not claimed: it stays wanted, for this agent's next start
//!   or any other agent.
//! - **Fairness.** Across links: the link whose open runs weigh least starts next (ties
//!   in turn). Within a link: the oldest run first (run number, then detector).
//! - **A failing link is paused** (Rucio's RSE exclusion): after [`PAUSE_AFTER`] failed jobs
//!   in a row it starts nothing for [`pause_for`] (1 min, doubling to 1 h); then one job
//!   probes it, and a success resumes it. The pause is reported by the copy task every
//!   cycle; other links are not held.
//! - **Modes.** [`Mode::Background`] (the daemon): the tasks return after planning and
//!   report finished jobs at a later cycle. [`Mode::Once`] (`--once`): the copy tasks
//!   (retry, push, pull) hand their jobs over and return; the cycle waits for all of them
//!   together after the last copy task, before tape, purge, audit and heartbeat, and then
//!   completes each copy task's report ([`Scheduler::owe`], [`Scheduler::take_owed`]), so a
//!   site's push and pull links run at once. [`Mode::Waiting`] (`ferry recall`, library
//!   callers that run one task): each copy task waits for the jobs it handed over, so its
//!   report is complete when it returns; the jobs of all its links still run at once.
//! - **Shutdown** ([`Scheduler::close`], [`Scheduler::shutdown`]): nothing new starts, jobs
//!   not started are dropped (never claimed, still wanted), running jobs get the grace
//!   period; a job cut off after it keeps this agent's lease, which the next agent on this
//!   host takes back at once (its process is gone) and any other after the lease.
//!
//! The scheduler knows nothing of push, pull or the catalogue; jobs are futures. It uses
//! only the limits and the copy's name ([`CopyRef`]), so every task may use it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use catalog_schema::FailureClass;

use super::{Subject, Task};
use crate::catalog::CopyRef;
use crate::transport::limits::Limits;

/// Failed jobs in a row after which a link is paused.
pub const PAUSE_AFTER: u32 = 3;
/// The first pause of a link; doubled with each pause in a row.
pub const PAUSE_BASE: Duration = Duration::from_secs(60);
/// The longest pause.
pub const PAUSE_CAP: Duration = Duration::from_secs(3600);

/// How long a link is paused the `nth` time in a row (0-based): [`PAUSE_BASE`] doubled,
/// at most [`PAUSE_CAP`].
pub fn pause_for(nth: u32) -> Duration {
    PAUSE_BASE
        .saturating_mul(1u32.checked_shl(nth.min(16)).unwrap_or(u32::MAX))
        .min(PAUSE_CAP)
}

/// What a job's future does: claim, copy and record one copy.
pub type JobFuture = Pin<Box<dyn Future<Output = JobEnd> + Send + 'static>>;

/// One wanted copy, planned, waiting for its link.
pub struct Job {
    /// The destination copy it makes (one job per copy).
    pub copy: CopyRef,
    /// The copy it reads (kept from purge while the job is known).
    pub source: Option<CopyRef>,
    /// The link: the peer site.
    pub link: String,
    /// The task whose report gets the outcome.
    pub task: Task,
    /// What the report entry is about (the run on its way, e.g. `run 7 raw daq -> mirror`).
    pub subject: Subject,
    /// Files in the run.
    pub files: usize,
    /// Makes the job's future when the job starts.
    pub start: Box<dyn FnOnce() -> JobFuture + Send>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Copied, verified and recorded; what was done, for the report.
    Done(String),
    /// Left alone, with why (claimed by another agent, a dry run, not started).
    Skipped(String),
    /// Failed with the cause; `link_fault`: the link is to blame (counts towards a pause).
    Failed {
        /// The error, as text for the report.
        error: String,
        /// How the retry task treats it.
        class: FailureClass,
        /// Whether the failure counts against the link.
        link_fault: bool,
    },
}

/// A finished job, for its task's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The task that handed the job over.
    pub task: Task,
    /// The destination copy.
    pub copy: CopyRef,
    /// What the report entry is about.
    pub subject: Subject,
    /// How it ended.
    pub end: JobEnd,
}

/// How the copy tasks use the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each copy task waits for the jobs it handed over (`ferry recall`, library callers).
    Waiting,
    /// The copy tasks return after planning; the cycle waits for all their jobs together
    /// after the last copy task (`--once`).
    Once,
    /// The tasks return after planning; jobs run on behind the cycle (the daemon).
    Background,
}

impl Mode {
    /// Whether every job handed over in a cycle ends in that cycle (`--once`, library
    /// callers): a paused link is then reported at once instead of being queued on.
    pub fn waits(self) -> bool {
        matches!(self, Mode::Waiting | Mode::Once)
    }
}

/// A copy task's report still owed in [`Mode::Once`]: what it handed over, and the links
/// whose pause it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    /// The copy task.
    pub task: Task,
    /// Its links (paused ones are reported).
    pub links: Vec<String>,
    /// The jobs it handed over.
    pub submitted: Vec<CopyRef>,
}

/// How busy the scheduler is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Jobs waiting for their link.
    pub pending: usize,
    /// Jobs running.
    pub running: usize,
}

/// The scheduler; one per agent, shared by clones of the [`super::Context`].
pub struct Scheduler {
    limits: Limits,
    mode: Mode,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    closed: bool,
    links: BTreeMap<String, Link>,
    /// Jobs running, by destination copy.
    running: HashMap<CopyRef, Running>,
    /// Link of each job waiting.
    pending: HashMap<CopyRef, String>,
    finished: Vec<Finished>,
    /// Copy tasks' reports owed in [`Mode::Once`].
    owed: Vec<Owed>,
    /// The last link that started a job (ties go to the links after it).
    last: Option<String>,
}

#[derive(Default)]
struct Link {
    /// Jobs waiting, oldest run first.
    queue: BTreeMap<(i64, String, String), Job>,
    /// File slots the running jobs can use.
    weight: usize,
    running: usize,
    /// Failed jobs in a row.
    failures: u32,
    /// Pauses in a row.
    pauses: u32,
    paused_until: Option<Instant>,
    last_error: Option<String>,
}

struct Running {
    link: String,
    weight: usize,
    source: Option<CopyRef>,
    abort: AbortHandle,
}

impl Link {
    fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| t > now)
    }

    /// After a pause, one job at a time until one succeeds.
    fn probing(&self) -> bool {
        self.pauses > 0
    }
}

fn order(copy: &CopyRef) -> (i64, String, String) {
    (
        copy.run.number,
        copy.run.detector.clone(),
        format!("{}/{}", copy.host, copy.data_type),
    )
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("mode", &self.mode)
            .field("load", &self.load())
            .finish()
    }
}

impl Scheduler {
    /// A scheduler for an agent with these limits.
    pub fn new(limits: Limits, mode: Mode) -> Self {
        Scheduler {
            limits,
            mode,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// How the copy tasks use it.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn weight(&self, files: usize) -> usize {
        self.limits.files_per_run.max(1).min(files.max(1))
    }

    /// Whether the scheduler already has a job for `copy` (waiting or running).
    pub fn knows(&self, copy: &CopyRef) -> bool {
        let st = self.state();
        st.running.contains_key(copy) || st.pending.contains_key(copy)
    }

    /// Whether a job of this agent is copying `copy` now (it holds the claim): no other
    /// task of the agent may take it over.
    pub fn holds(&self, copy: &CopyRef) -> bool {
        self.state().running.contains_key(copy)
    }

    /// Whether a job waiting or running reads `copy`: purge keeps it meanwhile.
    pub fn reads(&self, copy: &CopyRef) -> bool {
        let st = self.state();
        st.running.values().any(|r| r.source.as_ref() == Some(copy))
            || st
                .links
                .values()
                .any(|l| l.queue.values().any(|j| j.source.as_ref() == Some(copy)))
    }

    /// Jobs waiting and running.
    pub fn load(&self) -> Load {
        let st = self.state();
        Load {
            pending: st.pending.len(),
            running: st.running.len(),
        }
    }

    /// Why `link` starts nothing now, if it is paused.
    pub fn paused(&self, link: &str) -> Option<String> {
        let st = self.state();
        let l = st.links.get(link)?;
        let until = l.paused_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(format!(
            "link to {link} paused for {}s after {} failed copies in a row ({} waiting); last: {}",
            left.as_secs().max(1),
            l.failures,
            l.queue.len(),
            l.last_error.as_deref().unwrap_or("?")
        ))
    }

    /// Hands a job over; it starts as soon as its link has room. `false`: the scheduler
    /// already knows that copy, or is closed (the job is dropped, its copy stays wanted).
    pub fn submit(self: &Arc<Self>, job: Job) -> bool {
        {
            let mut st = self.state();
            if st.closed || st.running.contains_key(&job.copy) || st.pending.contains_key(&job.copy)
            {
                return false;
            }
            st.pending.insert(job.copy.clone(), job.link.clone());
            let link = st.links.entry(job.link.clone()).or_default();
            link.queue.insert(order(&job.copy), job);
        }
        self.dispatch();
        true
    }

    /// Starts every job the limits allow now.
    fn dispatch(self: &Arc<Self>) {
        let mut st = self.state();
        if st.closed {
            return;
        }
        let now = Instant::now();
        let per_link = self.limits.transfers_per_link.max(1) + self.limits.files_per_run.max(1);
        let global = self.limits.global.max(1) + self.limits.files_per_run.max(1);
        let link_slots = self.limits.transfers_per_link.max(1);
        loop {
            // What the open runs can move at once: a link never more than its transfers.
            let total: usize = st.links.values().map(|l| l.weight.min(link_slots)).sum();
            if total >= global {
                return;
            }
            // The least busy link that may start a job; ties go round from the last one.
            let last = st.last.clone();
            let pick = st
                .links
                .iter()
                .filter(|(_, l)| {
                    let busy = l.weight >= per_link || (l.probing() && l.running > 0);
                    !(l.queue.is_empty() || l.paused(now) || busy)
                })
                .min_by_key(|(name, l)| {
                    let after_last = last.as_deref().is_none_or(|x| name.as_str() > x);
                    (l.weight, !after_last, (*name).clone())
                })
                .map(|(name, _)| name.clone());
            let Some(name) = pick else {
                return;
            };
            let Some(link) = st.links.get_mut(&name) else {
                return;
            };
            let Some((_, job)) = link.queue.pop_first() else {
                return;
            };
            let weight = self.weight(job.files);
            link.weight += weight;
            link.running += 1;
            st.last = Some(name.clone());
            st.pending.remove(&job.copy);
            let Job {
                copy,
                source,
                link: link_name,
                task,
                subject,
                start,
                ..
            } = job;
            tracing::info!(copy = %copy, link = %link_name, "copy job started");
            let future = start();
            let me = Arc::clone(self);
            let key = copy.clone();
            let handle = tokio::spawn(async move {
                // A job that panics still ends: its slot is freed and its task told.
                let end = std::panic::AssertUnwindSafe(future)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| JobEnd::Failed {
                        error: "the copy job panicked (a bug; the copy's lease expires)".into(),
                        class: FailureClass::Retryable,
                        link_fault: false,
                    });
                me.finish(key, task, subject, end);
            });
            st.running.insert(
                copy,
                Running {
                    link: link_name,
                    weight,
                    source,
                    abort: handle.abort_handle(),
                },
            );
        }
    }

    fn finish(self: &Arc<Self>, copy: CopyRef, task: Task, subject: Subject, end: JobEnd) {
        let mut wake_at = None;
        {
            let mut st = self.state();
            let Some(running) = st.running.remove(&copy) else {
                return;
            };
            let waiting = self.mode.waits();
            let mut dropped = Vec::new();
            if let Some(link) = st.links.get_mut(&running.link) {
                link.weight = link.weight.saturating_sub(running.weight);
                link.running = link.running.saturating_sub(1);
                match &end {
                    JobEnd::Done(_) => {
                        if link.pauses > 0 {
                            tracing::info!(link = %running.link, "link resumed: a copy succeeded");
                        }
                        link.failures = 0;
                        link.pauses = 0;
                        link.paused_until = None;
                    }
                    JobEnd::Failed {
                        error,
                        link_fault: true,
                        ..
                    } => {
                        link.failures += 1;
                        link.last_error = Some(error.clone());
                        let already = link.paused(Instant::now());
                        if !already && (link.failures >= PAUSE_AFTER || link.probing()) {
                            let wait = pause_for(link.pauses);
                            link.pauses += 1;
                            let until = Instant::now() + wait;
                            link.paused_until = Some(until);
                            wake_at = Some(until);
                            tracing::warn!(link = %running.link, failures = link.failures,
                                pause = ?wait, "link paused: {error}");
                            if waiting {
                                // Nobody waits a pause out by hand: the rest stay wanted.
                                dropped = std::mem::take(&mut link.queue).into_values().collect();
                            }
                        }
                    }
                    JobEnd::Failed { .. } | JobEnd::Skipped(_) => {}
                }
            }
            st.finished.push(Finished {
                task,
                copy,
                subject,
                end,
            });
            for job in dropped {
                st.pending.remove(&job.copy);
                let why = format!("not started: the link to {} is paused", job.link);
                st.finished.push(Finished {
                    task: job.task,
                    copy: job.copy,
                    subject: job.subject,
                    end: JobEnd::Skipped(why),
                });
            }
        }
        self.changed.notify_waiters();
        if let Some(at) = wake_at {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(me) = me.upgrade() {
                    me.dispatch();
                }
            });
        }
        self.dispatch();
    }

    /// The finished jobs handed over by `task`, taken out (each is reported once).
    pub fn take_finished(&self, task: Task) -> Vec<Finished> {
        let mut st = self.state();
        let (mine, rest) = std::mem::take(&mut st.finished)
            .into_iter()
            .partition(|f| f.task == task);
        st.finished = rest;
        mine
    }

    /// In [`Mode::Once`]: a copy task's report, to be completed once its jobs have ended.
    pub fn owe(&self, owed: Owed) {
        self.state().owed.push(owed);
    }

    /// The reports owed so far, taken out.
    pub fn take_owed(&self) -> Vec<Owed> {
        std::mem::take(&mut self.state().owed)
    }

    /// Waits until none of `copies` is waiting or running.
    pub async fn wait_for(&self, copies: &[CopyRef]) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                if copies
                    .iter()
                    .all(|c| !st.running.contains_key(c) && !st.pending.contains_key(c))
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits until no job is waiting or running.
    pub async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.load() == Load::default() {
                return;
            }
            notified.await;
        }
    }

    /// Starts nothing more: jobs not started are dropped (reported as skipped; their
    /// copies were never claimed and stay wanted). Running jobs go on.
    pub fn close(&self) {
        {
            let mut st = self.state();
            if st.closed {
                return;
            }
            st.closed = true;
            let mut dropped = Vec::new();
            for link in st.links.values_mut() {
                dropped.extend(std::mem::take(&mut link.queue).into_values());
            }
            st.pending.clear();
            if !dropped.is_empty() || !st.running.is_empty() {
                tracing::info!(
                    running = st.running.len(),
                    not_started = dropped.len(),
                    "copy scheduler closed: no new copies"
                );
            }
            for job in dropped {
                st.finished.push(Finished {
                    task: job.task,
                    copy: job.copy,
                    subject: job.subject,
                    end: JobEnd::Skipped("not started: the agent is stopping".into()),
                });
            }
        }
        self.changed.notify_waiters();
    }

    /// [`close`](Self::close), then waits up to `grace` for the running jobs; those still
    /// running after it are stopped. Returns the copies stopped (they keep this agent's
    /// lease until the next agent takes them back).
    pub async fn shutdown(&self, grace: Duration) -> Vec<CopyRef> {
        self.close();
        if tokio::time::timeout(grace, self.idle()).await.is_ok() {
            return Vec::new();
        }
        let mut st = self.state();
        let cut: Vec<CopyRef> = st.running.keys().cloned().collect();
        for (copy, running) in st.running.drain() {
            tracing::warn!(%copy, "grace period over: copy stopped; its lease is taken back by the next agent");
            running.abort.abort();
        }
        for link in st.links.values_mut() {
            link.weight = 0;
            link.running = 0;
        }
        drop(st);
        self.changed.notify_waiters();
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog_schema::RunKey;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limits(per_run: usize, per_link: usize, global: usize) -> Limits {
        Limits {
            files_per_run: per_run,
            transfers_per_link: per_link,
            global,
            bandwidth_per_link: None,
        }
    }

    fn copy(run: i64, link: &str) -> CopyRef {
        CopyRef::new(
            RunKey {
                number: run,
                detector: "tpc".into(),
            },
            link,
            "raw",
        )
    }

    /// Counts jobs running per link and in all; each job takes `took` and ends with `end`.
    #[derive(Default)]
    struct Meter {
        now: Mutex<HashMap<String, usize>>,
        peak: Mutex<HashMap<String, usize>>,
        total: AtomicUsize,
        peak_total: AtomicUsize,
        order: Mutex<Vec<(String, i64)>>,
    }

    fn job(m: &Arc<Meter>, run: i64, link: &str, files: usize, took: Duration, end: JobEnd) -> Job {
        let m = Arc::clone(m);
        let name = link.to_string();
        Job {
            copy: copy(run, link),
            source: Some(copy(run, "daq")),
            link: link.into(),
            task: Task::Push,
            subject: Subject::Copy {
                number: run,
                data_type: "raw".into(),
                host: link.into(),
                tape: false,
            },
            files,
            start: Box::new(move || {
                Box::pin(async move {
                    m.order.lock().unwrap().push((name.clone(), run));
                    {
                        let mut now = m.now.lock().unwrap();
                        let n = now.entry(name.clone()).or_default();
                        *n += 1;
                        let mut peak = m.peak.lock().unwrap();
                        let p = peak.entry(name.clone()).or_default();
                        *p = (*p).max(*n);
                        let t = m.total.fetch_add(1, Ordering::SeqCst) + 1;
                        m.peak_total.fetch_max(t, Ordering::SeqCst);
                    }
                    tokio::time::sleep(took).await;
                    *m.now.lock().unwrap().get_mut(&name).unwrap() -= 1;
                    m.total.fetch_sub(1, Ordering::SeqCst);
                    end
                })
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_link_does_not_hold_the_fast_ones_and_runs_go_oldest_first() {
        let s = Arc::new(Scheduler::new(limits(2, 2, 5), Mode::Waiting));
        let m = Arc::new(Meter::default());
        let mut all = Vec::new();
        for run in (1..=6).rev() {
            for (link, took) in [("fast-a", 1), ("fast-b", 1), ("slow", 100)] {
                let j = job(
                    &m,
                    run,
                    link,
                    4,
                    Duration::from_secs(took),
                    JobEnd::Done("copied".into()),
                );
                all.push(j.copy.clone());
                assert!(s.submit(j));
            }
        }
        // The fast links finish every run while the slow one has barely begun.
        let fast: Vec<CopyRef> = all.iter().filter(|c| c.host != "slow").cloned().collect();
        let started = Instant::now();
        s.wait_for(&fast).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(s.load().running > 0, "the slow link is still copying");
        s.wait_for(&all).await;
        // Two runs of weight 2 open per link (2 transfers + one run's worth waiting); in
        // all, links count what they can move (2 each): 6 < 7 (global 5 + 2), so 6 runs.
        let peak = m.peak.lock().unwrap().clone();
        assert_eq!(peak["fast-a"], 2, "{peak:?}");
        assert_eq!(peak["slow"], 2, "{peak:?}");
        assert_eq!(m.peak_total.load(Ordering::SeqCst), 6);
        // Handed over newest first: run 6 (and on some links 5) starts at once, the links
        // being idle; the runs that waited go oldest first.
        let order = m.order.lock().unwrap().clone();
        for link in ["fast-a", "fast-b", "slow"] {
            let runs: Vec<i64> = order
                .iter()
                .filter(|(l, _)| l == link)
                .map(|x| x.1)
                .collect();
            assert_eq!(runs[0], 6, "{link}: {runs:?}");
            let waited: Vec<i64> = runs.iter().copied().filter(|r| *r < 5).collect();
            assert_eq!(waited, vec![1, 2, 3, 4], "{link}: {runs:?}");
        }
        assert_eq!(s.take_finished(Task::Push).len(), 18);
        assert!(s.take_finished(Task::Push).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_link_is_paused_with_backoff_and_resumes_after_a_success() {
        let s = Arc::new(Scheduler::new(limits(1, 1, 8), Mode::Background));
        let m = Arc::new(Meter::default());
        let bad = || JobEnd::Failed {
            error: "connection refused".into(),
            class: FailureClass::Retryable,
            link_fault: true,
        };
        for run in 1..=7 {
            s.submit(job(&m, run, "down", 1, Duration::from_millis(10), bad()));
            s.submit(job(
                &m,
                run,
                "up",
                1,
                Duration::from_millis(10),
                JobEnd::Done("copied".into()),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Two at a time: the third failure pauses it with the fourth job in flight; nothing
        // more starts on it. The other link is done.
        let started = |l: &str| {
            m.order
                .lock()
                .unwrap()
                .iter()
                .filter(|(x, _)| x == l)
                .count()
        };
        assert_eq!(started("down"), 4);
        assert_eq!(started("up"), 7);
        let why = s.paused("down").unwrap();
        assert!(
            why.contains("4 failed copies in a row") && why.contains("3 waiting"),
            "{why}"
        );
        assert!(s.paused("up").is_none());
        // After the pause one job probes; it fails again: paused for twice as long.
        tokio::time::sleep(PAUSE_BASE).await;
        assert_eq!(started("down"), 5);
        assert!(s.paused("down").is_some());
        tokio::time::sleep(PAUSE_BASE).await;
        assert_eq!(started("down"), 5, "the second pause is longer");
        tokio::time::sleep(PAUSE_BASE).await;
        assert_eq!(started("down"), 6);
        assert_eq!(pause_for(0), PAUSE_BASE);
        assert_eq!(pause_for(20), PAUSE_CAP);
    }

    #[tokio::test(start_paused = true)]
    async fn close_drops_jobs_not_started_and_shutdown_stops_what_outlives_the_grace() {
        let s = Arc::new(Scheduler::new(limits(1, 1, 1), Mode::Background));
        let m = Arc::new(Meter::default());
        for run in 1..=3 {
            s.submit(job(
                &m,
                run,
                "l",
                1,
                Duration::from_secs(60),
                JobEnd::Done("copied".into()),
            ));
        }
        tokio::task::yield_now().await;
        assert_eq!(
            s.load(),
            Load {
                pending: 1,
                running: 2
            }
        );
        assert!(s.holds(&copy(1, "l")) && !s.holds(&copy(3, "l")));
        assert!(s.reads(&copy(3, "daq")), "a waiting job's source is kept");
        let cut = s.shutdown(Duration::from_secs(10)).await;
        assert_eq!(cut.len(), 2);
        assert_eq!(s.load(), Load::default());
        let ends: Vec<JobEnd> = s
            .take_finished(Task::Push)
            .into_iter()
            .map(|f| f.end)
            .collect();
        assert_eq!(
            ends,
            vec![JobEnd::Skipped("not started: the agent is stopping".into())]
        );
        assert!(!s.submit(job(
            &m,
            9,
            "l",
            1,
            Duration::ZERO,
            JobEnd::Done("copied".into())
        )));
    }

    #[tokio::test]
    async fn a_job_that_panics_frees_its_slot_and_is_reported() {
        let s = Arc::new(Scheduler::new(limits(1, 1, 1), Mode::Waiting));
        let mut job = job(
            &Arc::default(),
            1,
            "l",
            1,
            Duration::ZERO,
            JobEnd::Done("copied".into()),
        );
        job.start = Box::new(|| Box::pin(async { panic!("bug") }));
        let c = job.copy.clone();
        assert!(s.submit(job));
        s.wait_for(&[c]).await;
        assert_eq!(s.load(), Load::default());
        let ends = s.take_finished(Task::Push);
        assert!(
            matches!(&ends[0].end, JobEnd::Failed { error, link_fault: false, .. } if error.contains("panicked")),
            "{ends:?}"
        );
    }
}
