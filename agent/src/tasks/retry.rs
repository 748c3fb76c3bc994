//! *retry*: take back copies whose agent died, and try failed copies again, with backoff and
//! a limit.
//!
//! This site is **responsible** for the copies its agent makes: the destinations of the
//! links it initiates (its `push_to` sites, and itself for its `pull_from` sites). For each
//! such destination, every cycle:
//!
//! 1. **stalled** copies (`transferring`, lease expired; [`Catalog::stalled_copies`]) are
//!    reclaimed with [`Catalog::reclaim_stalled`] (one conditional update: exactly one
//!    reclaimer wins, `attempts` goes up) and copied again at once; **abandoned** copies
//!    (`transferring`, lease not expired, held by an agent of this site on this host whose
//!    process is provably gone: [`owner::is_dead_predecessor`]) are taken back at once with
//!    [`Catalog::reclaim_abandoned`], so a restart after `kill -9` does not wait out the
//!    lease (`limits.lease`, 10 min by default); so are **orphaned** copies, held by this
//!    very agent, which an earlier copy could not finish recording (the catalogue was
//!    unreachable) and no job of the agent's scheduler is copying now; copies left
//!    `transferring` with **no lease** (cax's pending entries, a cax that died) are taken
//!    with [`Catalog::reclaim_unleased`] once idle longer than `limits.lease`, cleared
//!    (`error → removing`, entry removed) and wanted again, so the copy is made afresh;
//! 2. **failed** copies (`error`) are classified by the class recorded with the failure
//!    (the copy's `error_class`, a [`FailureClass`], as FTS3 classifies) and
//!    - `[retryable]` (connection cut, timeout, catalogue, a lost lease) and `[checksum]`
//!      (the bytes at the destination did not match) are retried once their backoff has
//!      passed: [`backoff`] after `updated_time`, doubling with each attempt;
//!    - `[checksum]` after [`SUSPECT_SOURCE_AFTER`] mismatches since the source copy was
//!      last verified: the source is suspected, its copy goes to `verifying` (its site's
//!      verify task re-hashes it) and the retry waits until it is `transferred` again;
//!    - `[fatal]` (permission denied, no space, a missing source file, a refused path,
//!      authentication) is never retried on its own: it is listed as failed every cycle
//!      until an operator fixes the cause and asks for the run (`--run N` / `--name X`);
//!    - at [`MAX_ATTEMPTS`] the copy is given up: a failed line every cycle and an `error`
//!      log, no further attempt unless an operator asks for the run.
//!
//!    A run the operator names is retried at once: past the class, the limit and the
//!    backoff, one attempt per invocation.
//!
//! **How a retried copy re-enters the push path**: it becomes a job of the agent's
//! scheduler (`copy::job`), like a push or a pull, on its link's turn. When the job starts it
//! takes the copy (`lifecycle::Take::Failed`: `error → transferring`, a conditional update on
//! the status; the catalogue gives it the lease and counts the attempt; or a reclaim of a
//! stalled or abandoned copy), then copies it as push and pull do, from a source holding a
//! verified copy. The entry is
//! kept (not removed and requested again), so `attempts` and the audit trail of earlier
//! failures survive: the limit and the suspect-source rule are counted from them.
//!
//! The class is written with the failure, in the same conditional update, by every task that
//! fails a copy ([`Transition::record_failure`]); `last_error` carries the text, prefixed with
//! the class tag (`[retryable] …`, `[checksum] …`, `[fatal] …`) for people. A failure with no
//! class (recorded by cax, another tool, an older agent) is classified from its text: the
//! tag, else the words FTS3 looks for, else retryable ([`FailureClass::classify`]).
//! Both methods (`local`, `sftp`) are retried, in either direction (this site pushing to the
//! destination, or the destination pulling).
//!
//! [`Catalog::stalled_copies`]: crate::catalog::Catalog::stalled_copies
//! [`Catalog::reclaim_stalled`]: crate::catalog::Catalog::reclaim_stalled
//! [`Catalog::reclaim_abandoned`]: crate::catalog::Catalog::reclaim_abandoned

use std::path::PathBuf;
use std::time::Duration;

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::copy::{self, lease, Direction};
use super::lifecycle::{self, Held, Take, Taken};
use super::owner;
use super::{copies_in, walk, Context, RunScope, Subject, Task, TaskReport, WorkList, MAX_PAGES};
use crate::catalog::{Cas, CopyRef, Transition};
use crate::config::{Site, TransferMethod};
use crate::datadir;

/// Attempts after which a copy is given up.
pub const MAX_ATTEMPTS: i64 = 5;
/// The wait before the first retry; doubled with each attempt.
pub const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// The longest wait between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Checksum mismatches from one source (since it was last verified) that make it suspect.
pub const SUSPECT_SOURCE_AFTER: usize = 2;

pub use catalog_schema::{Failure, FailureClass};

/// The wait after a copy's `attempts`-th attempt failed: [`BACKOFF_BASE`] × 2^attempts,
/// at most [`BACKOFF_CAP`].
pub fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exp))
        .min(BACKOFF_CAP)
}

/// How long after its last failure a copy of `class` is retried: [`backoff`], except for
/// `[catalogue]` failures, retried as soon as the catalogue answers (the cause is gone then),
/// and for copies no attempt of Ferry's has failed yet (`attempts` 0: every claim counts one):
/// a copy another tool recorded and that was found bad (adoption measured bytes that do not
/// match cax's dirhash, or cax recorded it `failed`) is copied again at once, as Rucio
/// recovers a replica declared bad; backoff spaces Ferry's own failed attempts.
pub fn wait_before_retry(class: FailureClass, attempts: i64) -> Duration {
    match class {
        FailureClass::Catalog => Duration::ZERO,
        _ if attempts <= 0 => Duration::ZERO,
        _ => backoff(attempts),
    }
}

/// A destination this agent copies to, and the sites it copies from (link order).
struct Route<'a> {
    dest: &'a Site,
    sources: Vec<&'a Site>,
}

/// The destinations of the links this site initiates (pushes from it, pulls into it).
fn routes(ctx: &Context) -> Vec<Route<'_>> {
    let mut out: Vec<Route<'_>> = Vec::new();
    for link in ctx.map.links() {
        if link.initiator != ctx.site.name {
            continue;
        }
        let (Some(dest), Some(src)) = (ctx.map.site(&link.to), ctx.map.site(&link.from)) else {
            continue;
        };
        match out.iter_mut().find(|r| r.dest.name == dest.name) {
            Some(r) => r.sources.push(src),
            None => out.push(Route {
                dest,
                sources: vec![src],
            }),
        }
    }
    out
}

/// Runs the task.
///
/// Copies to make again become jobs of the agent's scheduler, which takes each copy
/// (reclaims it, or moves it `error → transferring`) when the job starts, on the link's
/// turn among every other copy; the report gets them when they end (in `--once`, before
/// the task returns).
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    let mut jobs = Jobs::default();
    for route in routes(ctx) {
        if token.is_cancelled() {
            break;
        }
        reclaim_stalled(ctx, &route, token, &mut report, &mut jobs).await;
        reclaim_abandoned(ctx, &route, token, &mut report, &mut jobs).await;
        retry_failed(ctx, &route, token, &mut report, &mut jobs).await;
    }
    // Paused links are reported by the push and pull tasks.
    copy::settle(ctx, Task::Retry, &[], &jobs.0, token, &mut report).await;
    report
}

/// The copies handed to the scheduler in this cycle.
#[derive(Default)]
struct Jobs(Vec<CopyRef>);

/// Where a copy can be copied from again.
struct Source {
    site: String,
    dir: PathBuf,
    digest: String,
    /// When the source copy was last verified.
    verified: Option<DateTime>,
}

/// The first of `route.sources` holding a verified copy (transferred, with the run's
/// digest) of `data_type` recorded at the run's own directory there
/// ([`datadir::check_location`]). A verified copy recorded anywhere else is flagged
/// `[refused]` ([`lifecycle::refuse`]) and passed over; when it was the only one, the refusal
/// is the error.
async fn verified_source(
    ctx: &Context,
    route: &Route<'_>,
    run: &RunDoc,
    data_type: &str,
) -> Result<Option<Source>, String> {
    let Some(digest) = run.digest.clone() else {
        return Ok(None);
    };
    let mut refused = None;
    for s in &route.sources {
        let Some(c) = run.copy(&s.name, data_type) else {
            continue;
        };
        if c.status != CopyStatus::Transferred || c.checksum.as_deref() != Some(&digest) {
            continue;
        }
        let dir = match datadir::check_location(s, data_type, run, c.location.as_deref()) {
            Ok(dir) => dir,
            Err(e) if e.is_refusal() => {
                refused = Some(lifecycle::refuse(ctx, run, c, &e).await);
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        return Ok(Some(Source {
            site: s.name.clone(),
            dir,
            digest: digest.clone(),
            verified: c.verified_time,
        }));
    }
    refused.map_or(Ok(None), Err)
}

/// Why this version cannot copy between the two sites, if it cannot (a method Ferry does
/// not implement); checked before the copy is taken, so that it is not left `transferring`.
fn unsupported(src: &str, route: &Route<'_>, ctx: &Context) -> Option<String> {
    let src_site = ctx.map.site(src);
    [src_site, Some(route.dest)]
        .into_iter()
        .flatten()
        .find_map(|s| match &s.method {
            TransferMethod::Unsupported(m) => Some(format!(
                "{} is reached by {m}, which Ferry does not implement",
                s.name
            )),
            _ => None,
        })
}

async fn reclaim_stalled(
    ctx: &Context,
    route: &Route<'_>,
    token: &CancellationToken,
    report: &mut TaskReport,
    jobs: &mut Jobs,
) {
    let now = DateTime::now();
    let dest = &route.dest.name;
    let runs = match walk(ctx, WorkList::Stalled(Some(dest.as_str()), now), MAX_PAGES).await {
        Ok(runs) => runs,
        Err(e) => {
            report.fail(
                Subject::Whole,
                format!("stalled copies at {dest}: catalogue: {e}"),
            );
            return;
        }
    };
    let in_scope = runs
        .iter()
        .filter(|run| ctx.scope.admits(run.number, run.name.as_deref()));
    for run in in_scope {
        for c in run
            .data
            .iter()
            .filter(|c| c.host == *dest && c.is_stalled(now))
        {
            if token.is_cancelled() {
                return;
            }
            let outcome = reclaim_one(ctx, route, run, c, Reclaim::Expired, jobs).await;
            note(report, run, c, outcome);
        }
    }
}

/// Copies at the route's destination still `transferring` under a live lease whose holder
/// was this site's agent on this host and is gone (killed, crashed): taken back at once.
async fn reclaim_abandoned(
    ctx: &Context,
    route: &Route<'_>,
    token: &CancellationToken,
    report: &mut TaskReport,
    jobs: &mut Jobs,
) {
    let copies = match copies_in(ctx, &route.dest.name, CopyStatus::Transferring).await {
        Ok(copies) => copies,
        Err(e) => {
            report.fail(Subject::Whole, e);
            return;
        }
    };
    let now = DateTime::now();
    for (run, c) in &copies {
        if token.is_cancelled() {
            return;
        }
        let Some(holder) = c.lease.as_ref().map(|l| l.owner.as_str()) else {
            let outcome = clear_unleased(ctx, run, c, now).await;
            note(report, run, c, outcome);
            continue;
        };
        let how = if c.is_stalled(now) {
            continue; // `reclaim_stalled` takes it
        } else if holder == ctx.owner {
            // Ours, and no job of the scheduler copies it (`reclaim_one` checks): an
            // earlier copy could not record its end (the catalogue was unreachable), so
            // the copy would otherwise wait out its lease.
            Reclaim::Orphaned
        } else if owner::is_dead_predecessor(holder, &ctx.owner) {
            Reclaim::Abandoned
        } else {
            continue;
        };
        let outcome = reclaim_one(ctx, route, run, c, how, jobs).await;
        note(report, run, c, outcome);
    }
}

/// A copy left `transferring` with no lease (cax wrote its pending copies so, and a cax that
/// died left them there), idle for longer than the lease (`limits.lease`, the grace a live
/// holder would have to renew it): taken with [`Catalog::reclaim_unleased`] (one winner),
/// then cleared as cax's `RetryStalledTransfer` did, so the copy is made afresh by the
/// normal path: `transferring → error → removing`, the entry removed and the copy wanted
/// again (`request_copy`). Its files are left alone; the new copy replaces them. An entry
/// still inside its grace is left for a later cycle.
async fn clear_unleased(
    ctx: &Context,
    run: &RunDoc,
    c: &CopyEntry,
    now: DateTime,
) -> Result<Step, String> {
    let grace = lease(ctx);
    let idle_before = DateTime::from_millis(
        now.timestamp_millis()
            .saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)),
    );
    if !crate::catalog::unleased_and_idle(c, idle_before) {
        return Ok(Step::Skipped(format!(
            "transferring with no lease (left by cax?); cleared once idle for {}",
            humantime::format_duration(grace)
        )));
    }
    if ctx.dry_run {
        return Ok(Step::Skipped(
            "dry run: would clear a transferring entry with no lease and copy it again".into(),
        ));
    }
    let copy = CopyRef::new(run.key(), &c.host, &c.data_type);
    let how = Take::Unleased { idle_before };
    let lost = how.lost();
    let held = match Held::take(ctx, copy.clone(), how, grace)
        .await
        .map_err(|e| e.to_string())?
    {
        Taken::Held(held) => held,
        Taken::Lost => return Ok(Step::Skipped(lost.into())),
        Taken::Journaled(why) => return Ok(Step::Skipped(why)),
    };
    let why = Failure::new(
        FailureClass::Retryable,
        format!(
            "left transferring with no lease (a cax that died?), idle for more than {}; \
             cleared to be copied again",
            humantime::format_duration(grace)
        ),
    );
    let mut to_error = held.change(CopyStatus::Transferring, CopyStatus::Error);
    to_error.record_failure(&why);
    held.step(&to_error).await.map_err(|e| e.to_string())?;
    let cleared = why.to_string();
    match ctx
        .catalog
        .mark_removing(&copy, CopyStatus::Error, &[], &ctx.owner, &cleared)
        .await
        .map_err(|e| e.to_string())?
    {
        Cas::Done => {}
        Cas::Lost => return Ok(Step::Skipped("the copy changed meanwhile".into())),
    }
    let _removed: Cas = ctx
        .catalog
        .remove_copy(&copy, &ctx.owner, &cleared)
        .await
        .map_err(|e| e.to_string())?;
    // Lost: the copy is wanted already (or another agent claimed it meanwhile).
    let _wanted: Cas = ctx
        .catalog
        .request_copy(&copy.run, &copy.host, &copy.data_type)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Step::Done(format!(
        "cleared a transferring entry with no lease (idle past {}); wanted again",
        humantime::format_duration(grace)
    )))
}

/// Why a `transferring` copy may be taken from its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// Its lease expired.
    Expired,
    /// Its holder, this site's agent on this host, is gone (lease not expired).
    Abandoned,
    /// Its holder is this agent, which left it in an earlier cycle (lease not expired).
    Orphaned,
}

impl Reclaim {
    fn cause(self) -> &'static str {
        match self {
            Self::Expired => "lease expired",
            Self::Abandoned => "its process is gone",
            Self::Orphaned => "left by an earlier cycle of this agent",
        }
    }
}

/// What happened to one copy.
enum Step {
    Done(String),
    Skipped(String),
    /// Handed to the scheduler: reported when its job ends.
    Queued,
}

async fn reclaim_one(
    ctx: &Context,
    route: &Route<'_>,
    run: &RunDoc,
    c: &CopyEntry,
    how: Reclaim,
    jobs: &mut Jobs,
) -> Result<Step, String> {
    let Some(stale) = c.lease.as_ref().map(|l| l.owner.clone()) else {
        return Ok(Step::Skipped("no lease to reclaim".into()));
    };
    if ctx
        .scheduler
        .holds(&CopyRef::new(run.key(), &route.dest.name, &c.data_type))
    {
        return Ok(Step::Skipped("being copied by this agent".into()));
    }
    let cause = how.cause();
    let Some(src) = verified_source(ctx, route, run, &c.data_type).await? else {
        return Ok(Step::Skipped(format!(
            "stalled ({cause}, held by {stale}) but no verified source to copy from"
        )));
    };
    if let Some(why) = unsupported(&src.site, route, ctx) {
        return Ok(Step::Skipped(why));
    }
    if ctx.dry_run {
        return Ok(Step::Skipped(format!(
            "dry run: would reclaim from {stale} ({cause}) and copy again from {}",
            src.site
        )));
    }
    let take = match how {
        Reclaim::Expired => Take::Stalled {
            stale: stale.clone(),
        },
        Reclaim::Abandoned | Reclaim::Orphaned => Take::Abandoned {
            stale: stale.clone(),
        },
    };
    let attempts = c.attempts.saturating_add(1);
    if attempts > MAX_ATTEMPTS {
        // Given up: taken and failed here, nothing to copy.
        let copy = CopyRef::new(run.key(), &route.dest.name, &c.data_type);
        let lost = take.lost();
        let held = match Held::take(ctx, copy, take, lease(ctx))
            .await
            .map_err(|e| e.to_string())?
        {
            Taken::Held(held) => held,
            Taken::Lost => return Ok(Step::Skipped(lost.into())),
            Taken::Journaled(why) => return Ok(Step::Skipped(why)),
        };
        let why = Failure::new(
            FailureClass::Retryable,
            format!(
                "stalled again (held by {stale}, {cause}) after {} attempts",
                c.attempts
            ),
        );
        held.fail(&why).await;
        return Err(format!("gave up: {why}"));
    }
    let done = format!(
        "reclaimed from {stale} ({cause}), copied from {} (attempt {attempts})",
        src.site
    );
    copy_again(ctx, route, run, &c.data_type, &src, take, done, jobs)
}

/// Hands the copy to the scheduler: its job takes the copy as `take` says when it starts,
/// and copies it from `src`; `done` is the report's line when it is recorded.
#[allow(clippy::too_many_arguments)]
fn copy_again(
    ctx: &Context,
    route: &Route<'_>,
    run: &RunDoc,
    data_type: &str,
    src: &Source,
    take: Take,
    done: String,
    jobs: &mut Jobs,
) -> Result<Step, String> {
    let dst_dir = datadir::run_dir(route.dest, data_type, run).map_err(|e| e.to_string())?;
    // This agent initiates the link: it is the source (a push) or the destination (a pull).
    let (peer, direction) = if src.site == ctx.site.name {
        (route.dest, Direction::Push)
    } else {
        let peer = ctx
            .map
            .site(&src.site)
            .ok_or_else(|| format!("source site {} is not in the site map", src.site))?;
        (peer, Direction::Pull)
    };
    if ctx.scheduler.mode().waits() {
        if let Some(why) = ctx.scheduler.paused(&peer.name) {
            return Ok(Step::Skipped(format!("not started: {why}")));
        }
    }
    let planned = copy::Planned {
        peer: peer.clone(),
        direction,
        src_dir: src.dir.display().to_string(),
        dst_dir,
        digest: src.digest.clone(),
        take: Some(take),
    };
    let job = copy::job(ctx, Task::Retry, run.clone(), data_type, planned, done);
    let copy = job.copy.clone();
    if ctx.scheduler.submit(job) {
        jobs.0.push(copy);
        Ok(Step::Queued)
    } else {
        Ok(Step::Skipped("being copied by this agent".into()))
    }
}

async fn retry_failed(
    ctx: &Context,
    route: &Route<'_>,
    token: &CancellationToken,
    report: &mut TaskReport,
    jobs: &mut Jobs,
) {
    let copies = match copies_in(ctx, &route.dest.name, CopyStatus::Error).await {
        Ok(copies) => copies,
        Err(e) => {
            report.fail(Subject::Whole, e);
            return;
        }
    };
    for (run, c) in &copies {
        if token.is_cancelled() {
            return;
        }
        let outcome = retry_one(ctx, route, run, c, jobs).await;
        note(report, run, c, outcome);
    }
}

/// Files one copy's outcome in the report.
fn note(report: &mut TaskReport, run: &RunDoc, c: &CopyEntry, outcome: Result<Step, String>) {
    let subject = Subject::copy(run, &c.data_type, &c.host);
    match outcome {
        Ok(Step::Done(what)) => report.did(subject, what),
        Ok(Step::Skipped(why)) => report.skip(subject, why),
        Ok(Step::Queued) => {}
        Err(e) => report.fail(subject, e),
    }
}

async fn retry_one(
    ctx: &Context,
    route: &Route<'_>,
    run: &RunDoc,
    c: &CopyEntry,
    jobs: &mut Jobs,
) -> Result<Step, String> {
    // The failed copy's own recorded location must be its run's directory: a forged one is
    // refused (never copied over, never "repaired" silently), even when asked for by hand.
    if let Err(e) = datadir::check_location(route.dest, &c.data_type, run, c.location.as_deref()) {
        if e.is_refusal() {
            tracing::error!(site = %ctx.site.name, run = run.number, "{e}");
            return Err(format!("[refused] {e}"));
        }
    }
    let last = c.last_error.clone().unwrap_or_default();
    // The class recorded with the failure; text only for what another tool wrote.
    let class = c.failure_class();
    // `--run N` / `--name X`: the operator asks for this run now, past the limit, the
    // class and the backoff (once per invocation).
    let asked = !matches!(ctx.scope, RunScope::All);
    let hint = format!(
        "fix the cause, then `ferry --once --task retry --run {}`",
        run.number
    );
    if c.attempts >= MAX_ATTEMPTS && !asked {
        return Err(format!(
            "gave up after {} attempts (limit {MAX_ATTEMPTS}; {hint}); last error: {last}",
            c.attempts
        ));
    }
    if matches!(class, FailureClass::Fatal | FailureClass::Refused) && !asked {
        return Err(format!("not retried (needs an operator: {hint}): {last}"));
    }
    let wait = wait_before_retry(class, c.attempts);
    let since = c.updated_time.unwrap_or(DateTime::from_millis(0));
    let due = crate::catalog::after(since, wait);
    if DateTime::now() < due && !asked {
        return Ok(Step::Skipped(format!(
            "attempt {} of {MAX_ATTEMPTS} after {} (backoff {}): {last}",
            c.attempts.saturating_add(1),
            due.try_to_rfc3339_string().unwrap_or_default(),
            humantime::format_duration(wait)
        )));
    }
    let Some(src) = verified_source(ctx, route, run, &c.data_type).await? else {
        return Ok(Step::Skipped(
            "no verified source to copy from (waiting for one)".into(),
        ));
    };
    if let Some(why) = unsupported(&src.site, route, ctx) {
        return Ok(Step::Skipped(why));
    }
    if class == FailureClass::Checksum {
        let n = mismatches_since(run, c, src.verified);
        if n >= SUSPECT_SOURCE_AFTER {
            return suspect_source(ctx, run, c, &src, n).await;
        }
    }
    if ctx.dry_run {
        return Ok(Step::Skipped(format!(
            "dry run: would retry ({}) from {}, attempt {}",
            class.tag(),
            src.site,
            c.attempts.saturating_add(1)
        )));
    }
    let attempt = c.attempts.saturating_add(1);
    let take = Take::Failed {
        reason: format!(
            "retry {attempt} of {MAX_ATTEMPTS} from {} after {}",
            src.site,
            class.tag()
        ),
    };
    let done = format!(
        "retried from {} (attempt {attempt}) after {}",
        src.site,
        class.tag()
    );
    copy_again(ctx, route, run, &c.data_type, &src, take, done, jobs)
}

/// Checksum failures of copy `c` recorded in the run's audit trail after `since` (the
/// source's last verification; all of them when it was never verified): events whose
/// `error_class` is `checksum`, and events written before the class was (no class) whose
/// reason carries the tag.
fn mismatches_since(run: &RunDoc, c: &CopyEntry, since: Option<DateTime>) -> usize {
    let marker = format!("-> error: {}", FailureClass::Checksum.tag());
    run.events
        .iter()
        .filter(|e| {
            e.host.as_deref() == Some(c.host.as_str())
                && e.data_type.as_deref() == Some(c.data_type.as_str())
                && match e.error_class {
                    Some(class) => class == FailureClass::Checksum,
                    None => e.reason.as_deref().is_some_and(|r| r.contains(&marker)),
                }
                && since.is_none_or(|t| e.time > t)
        })
        .count()
}

/// Sends the source copy to `verifying` (no lease: its site's verify task takes it at
/// once); the retry waits until it is verified again.
async fn suspect_source(
    ctx: &Context,
    run: &RunDoc,
    c: &CopyEntry,
    src: &Source,
    mismatches: usize,
) -> Result<Step, String> {
    let why = format!(
        "{mismatches} checksum mismatches copying from {} to {} since {} was last verified",
        src.site, c.host, src.site
    );
    if ctx.dry_run {
        return Ok(Step::Skipped(format!(
            "dry run: would send {}'s copy to verifying: {why}",
            src.site
        )));
    }
    let source_copy = CopyRef::new(run.key(), &src.site, &c.data_type);
    let mut change = Transition::new(
        CopyStatus::Transferred,
        CopyStatus::Verifying,
        None,
        &ctx.owner,
    );
    change.reason = Some(format!("source suspected: {why}"));
    tracing::warn!(run = run.number, source = %src.site, "source suspected: {why}");
    match ctx.catalog.transition(&source_copy, &change).await {
        Ok(Cas::Done) => Ok(Step::Skipped(format!(
            "source suspected ({why}): sent {}'s copy to verifying; the retry waits for it",
            src.site
        ))),
        Ok(Cas::Lost) => Ok(Step::Skipped(format!(
            "source suspected ({why}) but its copy changed meanwhile"
        ))),
        Err(e) => Err(format!("{source_copy}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::lifecycle::class_of_transport;
    use crate::transport::TransportError;

    /// The typed class decides; the text is read only when no class was recorded (cax).
    #[test]
    fn the_recorded_class_wins_over_the_text() {
        let now = DateTime::now();
        let mut c = CopyEntry::new("mirror", "raw", CopyStatus::Error, now);
        c.record_failure(Some(&Failure::new(
            FailureClass::Checksum,
            "from daq: connection reset by peer".into(),
        )));
        assert_eq!(c.failure_class(), FailureClass::Checksum);
        // A class recorded with text that reads otherwise (no prefix, other words).
        c.last_error = Some("permission denied".into());
        assert_eq!(c.failure_class(), FailureClass::Checksum);
        // The same text as cax wrote it, no class: read from the words.
        c.error_class = None;
        assert_eq!(c.failure_class(), FailureClass::Fatal);
        c.last_error = None;
        assert_eq!(c.failure_class(), FailureClass::Retryable);
    }

    #[test]
    fn transport_failures_have_their_class() {
        let cut = TransportError::ConnectionLost {
            host: "mirror".into(),
            path: "/data/Run000001/a".into(),
            what: "writing".into(),
        };
        assert_eq!(class_of_transport(&cut), FailureClass::Retryable);
        let denied = TransportError::PermissionDenied {
            host: "mirror".into(),
            path: "/data/Run000001/b".into(),
            op: "open",
        };
        assert_eq!(class_of_transport(&denied), FailureClass::Fatal);
    }

    /// Checksum failures are counted by the class recorded on the event; an event from
    /// before the field, by its reason's tag.
    #[test]
    fn checksum_mismatches_are_counted_by_their_recorded_class() {
        let mut run = RunDoc::new("tpc", 1, None);
        let c = CopyEntry::new("mirror", "raw", CopyStatus::Error, DateTime::now());
        let event = |class: Option<FailureClass>, reason: &str| {
            let mut e = catalog_schema::Event::copy(
                "a",
                "status",
                "mirror",
                "raw",
                Some(reason.to_string()),
            );
            e.error_class = class;
            e
        };
        run.push_event(event(
            Some(FailureClass::Checksum),
            "verifying -> error: bad",
        ));
        run.push_event(event(
            Some(FailureClass::Retryable),
            "transferring -> error: [checksum] text that says otherwise",
        ));
        run.push_event(event(
            None,
            "verifying -> error: [checksum] from an older agent",
        ));
        run.push_event(event(None, "error -> transferring: retry after [checksum]"));
        assert_eq!(mismatches_since(&run, &c, None), 2);
    }

    #[test]
    fn prefixes_round_trip_and_win_over_words() {
        for class in [
            FailureClass::Catalog,
            FailureClass::Retryable,
            FailureClass::Checksum,
            FailureClass::Fatal,
        ] {
            let f = Failure::new(class, "from daq: permission denied".into());
            assert_eq!(FailureClass::classify(&f.to_string()), class);
        }
    }

    #[test]
    fn unprefixed_text_is_classified_like_fts3() {
        use FailureClass::*;
        let cases = [
            ("local: /x: permission denied (while open)", Fatal),
            (
                "mirror: /x: no space left on device (need 5 more bytes)",
                Fatal,
            ),
            ("daq: /x: no such file or directory (while open)", Fatal),
            (
                "mirror: a: checksum mismatch: expected 1, found 2",
                Checksum,
            ),
            ("mirror: connection lost while writing a", Retryable),
            ("", Retryable),
        ];
        for (text, class) in cases {
            assert_eq!(FailureClass::classify(text), class, "{text}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(60));
        assert_eq!(backoff(1), Duration::from_secs(120));
        assert_eq!(backoff(3), Duration::from_secs(480));
        assert_eq!(backoff(10), BACKOFF_CAP);
        assert_eq!(backoff(-4), Duration::from_secs(60));
        assert_eq!(backoff(i64::MAX), BACKOFF_CAP);
    }

    #[test]
    fn a_rotted_cax_copy_is_copied_again_without_waiting_for_a_backoff() {
        // adoption found it bad; Ferry never tried to copy it (no claim: attempts 0)
        assert_eq!(wait_before_retry(FailureClass::Checksum, 0), Duration::ZERO);
        assert_eq!(
            wait_before_retry(FailureClass::Retryable, 0),
            Duration::ZERO
        );
        assert_eq!(wait_before_retry(FailureClass::Checksum, 1), backoff(1));
    }

    #[test]
    fn a_copy_failed_only_by_the_catalogue_is_retried_without_backoff() {
        assert_eq!(wait_before_retry(FailureClass::Catalog, 3), Duration::ZERO);
        assert_eq!(wait_before_retry(FailureClass::Retryable, 1), backoff(1));
        assert_eq!(wait_before_retry(FailureClass::Checksum, 2), backoff(2));
        let recorded = Failure::new(
            copy::CopyError::Record(lifecycle::RecordError::Catalog {
                copy: CopyRef::new(catalog_schema::RunKey::new("tpc", 1), "mirror", "raw"),
                source: crate::catalog::CatalogError::Unreachable {
                    catalog: "mongodb://x".into(),
                    op: "status".into(),
                    detail: "no server".into(),
                },
            })
            .class(),
            "from daq: …".into(),
        )
        .to_string();
        assert!(recorded.starts_with("[catalogue]"), "{recorded}");
        assert_eq!(FailureClass::classify(&recorded), FailureClass::Catalog);
    }

    #[test]
    fn the_worst_class_wins() {
        use FailureClass::*;
        assert_eq!(Some(Retryable).max(Some(Checksum)), Some(Checksum));
        assert_eq!(Some(Catalog).max(Some(Retryable)), Some(Retryable));
        assert_eq!(Some(Fatal).max(Some(Checksum)), Some(Fatal));
    }
}
