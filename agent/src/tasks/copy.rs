//! What *push* and *pull* share: find the runs a destination wants, claim the destination
//! copy, copy the run's files, record the copy's lifecycle. The two tasks only differ in
//! which site is the destination and how the bytes go ([`RunCopy`]); everything from the
//! claim on is here, once.
//!
//! ```text
//! for_each_wanted   runs_needing_copy(dest, type, sources) → scope filter → per run:
//!   (task)          pick the verified source copy, render the destination directory →
//!                   a job for the agent's scheduler (`scheduler.rs`), which runs it when
//!                   its link has room; `settle` reports the jobs finished
//!   copy_along      (the job) the peer's method: local copy, or SFTP on the pooled
//!                   session → a Plan
//!   execute         take the copy (`lifecycle::Held::take`: a claim, or for the retry
//!                   task's jobs a reclaim or `error → transferring`) → copy_run (`.part`, hashed while read, read back
//!                   at the destination, rename) with lease renewal; files cut off by a
//!                   failed connection are copied again on a new session (their `.part`
//!                   resumed), up to RECONNECTS times, still under the claim → transferring →
//!                   verifying (digest measured from the destination's bytes) → transferred
//!                   when that digest is the run's; any failure → error, with the cause
//!                   classified (`[retryable]`, `[checksum]`, `[fatal]`: [`FailureClass`])
//!                   and the source named (`from SITE: …`), for the retry task
//! job               the scheduler job of one planned copy: push, pull and retry (whose
//!                   `Planned::take` says how the job takes the copy when it starts)
//! ```
//!
//! Progress goes to a [`CopyProgress`] held by the [`Context`]: plain log lines by default
//! ([`LogProgress`]); the command line puts progress bars there when a person watches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use catalog_schema::{want_tag, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{self, Held, RecordError, Take, Taken};
use super::scheduler::{Job, JobEnd, JobFuture, Mode, Owed};
use super::{replay, walk, Context, RunScope, Subject, Task, TaskReport, WorkList};
use crate::catalog::{CopyRef, RunSelector};
use crate::checksum::{self, ChecksumError};
use crate::config::{DestinationVerify, Site, TransferMethod};
use crate::datadir::{self, PathError};
use crate::journal::Stamp;
use crate::metrics::Check;
use crate::transport::dest;
use crate::transport::run::{copy_run_on, FileJob, Progress, RunCopy};
use crate::transport::{CopyOptions, CopyReport, SshSession, TransportError, Verify};
use catalog_schema::{Failure, FailureClass};

/// How long a claim lasts without renewal (the site map's `limits.lease`, 10 min by
/// default); renewed every third of it while copying.
pub fn lease(ctx: &Context) -> Duration {
    ctx.site.limits.lease
}
/// New sessions a run copy may open when its connection fails under it.
const RECONNECTS: usize = 2;

/// Where a copy task reports what it is doing, file by file.
pub trait CopyProgress: Send + Sync {
    /// A run copy was claimed and starts: `files` files, `bytes` bytes in all.
    fn run_started(&self, label: &str, files: usize, bytes: u64);
    /// A file of that run started, finished or failed.
    fn file(&self, label: &str, event: &Progress<'_>);
    /// The run copy ended: recorded `transferred` (`ok`) or not.
    fn run_finished(&self, label: &str, ok: bool);
}

/// Plain log lines: one when a run starts, one per file finished or failed, and for a
/// file still in flight one every [`LOG_PROGRESS_EVERY`] saying how far it has got.
#[derive(Debug, Default)]
pub struct LogProgress {
    /// When each file in flight last had a progress line (or started).
    last: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

/// How often a long file copy gets a progress log line.
pub const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(60);

impl LogProgress {
    /// A logger with no files in flight.
    pub fn new() -> Self {
        Self::default()
    }

    fn last(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), std::time::Instant>>
    {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CopyProgress for LogProgress {
    fn run_started(&self, label: &str, files: usize, bytes: u64) {
        tracing::info!(copy = label, files, bytes, "copy started");
    }

    fn file(&self, label: &str, event: &Progress<'_>) {
        let key = |path: &str| (label.to_owned(), path.to_owned());
        match event {
            Progress::Started { path, .. } => {
                self.last().insert(key(path), std::time::Instant::now());
            }
            Progress::Bytes { path, done, size } => {
                let mut last = self.last();
                let Some(at) = last.get_mut(&key(path)) else {
                    return;
                };
                if at.elapsed() >= LOG_PROGRESS_EVERY {
                    *at = std::time::Instant::now();
                    drop(last);
                    tracing::info!(
                        copy = label,
                        file = path,
                        done,
                        size,
                        "file in flight: {} of {}",
                        bytesize::ByteSize(*done),
                        bytesize::ByteSize(*size)
                    );
                }
            }
            Progress::Finished { path, report } => {
                self.last().remove(&key(path));
                let secs = report.elapsed.as_secs_f64();
                let rate = if secs > 0.0 {
                    report.bytes as f64 / secs
                } else {
                    0.0
                };
                tracing::info!(
                    copy = label,
                    file = path,
                    bytes = report.digest.size,
                    sent = report.bytes,
                    resumed_from = report.resumed_from,
                    rate = %format!("{}/s", bytesize::ByteSize(rate as u64)),
                    "file copied"
                );
            }
            Progress::Failed { path, error } => {
                self.last().remove(&key(path));
                tracing::warn!(copy = label, file = path, %error, "file failed");
            }
        }
    }

    fn run_finished(&self, label: &str, ok: bool) {
        tracing::info!(copy = label, ok, "copy finished");
    }
}

/// Why a run copy failed. [`is_retryable`](Self::is_retryable) says whether the same copy
/// may succeed in a later cycle.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Taking or recording the copy failed: the catalogue did not answer (the record then
    /// waits in the journal), or another agent changed the copy.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// No SSH session to the peer site.
    #[error("site {site}: no SSH session: {source}")]
    Session {
        /// The peer site.
        site: String,
        /// The transport's error.
        #[source]
        source: Box<TransportError>,
    },
    /// A copy's directory was refused or cannot be placed ([`datadir`]): a recorded
    /// location that is not the run's own directory, a planted link, no data directory, a
    /// layout that cannot place the run.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Files failed to copy; each with the transport's error.
    #[error("{copy}: {} file(s) failed: {}", failed.len(), list_failures(failed))]
    Files {
        /// The destination copy.
        copy: String,
        /// Manifest path and error of each failed file.
        failed: Vec<(String, TransportError)>,
    },
    /// The transport copied files without verifying them at the destination.
    #[error("{copy}: not verified at the destination: {}", paths.join(", "))]
    NotVerified {
        /// The destination copy.
        copy: String,
        /// The files concerned.
        paths: Vec<String>,
    },
    /// The run digest measured from the destination's bytes is not the manifest's.
    #[error("{copy}: run digest at the destination {measured} != manifest {expected}")]
    DigestMismatch {
        /// The destination copy.
        copy: String,
        /// Measured from the destination's read-back.
        measured: String,
        /// The run's digest.
        expected: String,
    },
    /// The measured files do not form a valid manifest.
    #[error("{copy}: run digest: {source}")]
    Manifest {
        /// The destination copy.
        copy: String,
        /// The checksum module's error.
        #[source]
        source: ChecksumError,
    },
}

fn list_failures(failed: &[(String, TransportError)]) -> String {
    failed
        .iter()
        .map(|(path, e)| format!("{path}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl CopyError {
    /// Whether the same copy may succeed later (a cut connection, a digest mismatch that a
    /// fresh copy may fix); not for bad layouts, refused keys, a full disk or a lost race.
    pub fn is_retryable(&self) -> bool {
        match self {
            CopyError::Record(e) => e.is_retryable(),
            CopyError::Session { source, .. } => source.is_retryable(),
            CopyError::Files { failed, .. } => failed.iter().all(|(_, e)| e.is_retryable()),
            CopyError::DigestMismatch { .. } | CopyError::NotVerified { .. } => true,
            CopyError::Path(_) | CopyError::Manifest { .. } => false,
        }
    }

    /// How the retry task should treat the failed copy (FTS3's classes).
    pub fn class(&self) -> FailureClass {
        match self {
            CopyError::Record(e) => e.class(),
            CopyError::Session { source, .. } if source.is_retryable() => FailureClass::Retryable,
            CopyError::Files { failed, .. } => failed
                .iter()
                .map(|(_, e)| super::lifecycle::class_of_transport(e))
                .max()
                .unwrap_or(FailureClass::Retryable),
            CopyError::DigestMismatch { .. } => FailureClass::Checksum,
            CopyError::NotVerified { .. } => FailureClass::Retryable,
            CopyError::Path(e) if e.is_refusal() => FailureClass::Refused,
            CopyError::Session { .. } | CopyError::Path(_) | CopyError::Manifest { .. } => {
                FailureClass::Fatal
            }
        }
    }

    /// Whether the SSH connection itself failed, so the pooled session should be dropped.
    pub fn connection_failed(&self) -> bool {
        match self {
            CopyError::Session { source, .. } => is_connection_error(source),
            CopyError::Files { failed, .. } => failed.iter().any(|(_, e)| is_connection_error(e)),
            _ => false,
        }
    }
}

/// What became of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Copied, verified and recorded `transferred`.
    Copied,
    /// Left alone, with why (no verified source, lost the claim, dry run…).
    Skipped(String),
}

/// One run copy, ready to execute.
struct Plan {
    /// The destination copy.
    pub copy: CopyRef,
    /// The destination directory, as recorded in the catalogue.
    pub location: String,
    /// `sftp` or `local`.
    pub protocol: crate::catalog::Protocol,
    /// How the bytes go.
    pub method: RunCopy,
    /// The site whose SSH session `method` uses, if any (dropped from the pool when the
    /// connection fails).
    pub peer: Option<String>,
    /// The link the files' gates count on: the peer site.
    pub link: String,
    /// The site the bytes come from (named in a recorded failure).
    pub source: String,
    /// For messages: `site:path` of the source and the destination.
    pub label: String,
}

/// The first of `sources` holding a verified copy of `run` (`transferred` with the run's
/// digest) whose recorded location is the run's own directory there
/// ([`datadir::check_location`]; this site's own copy is also walked on disk,
/// [`datadir::copy_dir`]). A verified copy whose location is refused is flagged `[refused]`
/// and passed over; when it was the only one, the refusal is the error. `Ok(None)`: no
/// verified copy at any of them.
pub(super) async fn verified_source<'s>(
    ctx: &Context,
    run: &RunDoc,
    sources: &[&'s Site],
    data_type: &str,
    digest: &str,
) -> Result<Option<(&'s Site, String)>, CopyError> {
    let mut refused = None;
    for site in sources {
        let Some(c) = run.copy(&site.name, data_type).filter(|c| {
            c.status == CopyStatus::Transferred && c.checksum.as_deref() == Some(digest)
        }) else {
            continue;
        };
        let checked = if site.name == ctx.site.name {
            datadir::copy_dir(site, run, c)
        } else {
            match datadir::check_location(site, data_type, run, c.location.as_deref()) {
                Ok(dir) if site.method == TransferMethod::Sftp => {
                    remote_copy_dir(ctx, site, run, data_type, dir).await?
                }
                other => other,
            }
        };
        match checked {
            Ok(dir) => return Ok(Some((site, dir.display().to_string()))),
            Err(e) if e.is_refusal() => {
                lifecycle::refuse(ctx, run, c, &e).await;
                refused = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match refused {
        Some(e) => Err(e.into()),
        None => Ok(None),
    }
}

/// A peer's run directory `dir` (its location checked), walked over SFTP from the peer's
/// data directory down with `lstat` ([`dest::check_remote_run_dir`]): a planted link is
/// refused like one at this site.
async fn remote_copy_dir(
    ctx: &Context,
    site: &Site,
    run: &RunDoc,
    data_type: &str,
    dir: PathBuf,
) -> Result<Result<PathBuf, PathError>, CopyError> {
    let place = datadir::Place::new(run, &site.name, data_type);
    let Some(base) = site.data_dir(data_type) else {
        return Ok(Err(PathError::NoDataDir { place }));
    };
    let session = session_for(ctx, site).await?;
    Ok(
        dest::check_remote_run_dir(&session, &place, base, &dir, &site.link_roots)
            .await
            .map(|()| dir),
    )
}

/// Which way a run goes between this site and its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// From this site to the peer: the peer's `method` decides how.
    Push,
    /// From the peer to this site: the peer's `method` decides how.
    Pull,
}

/// One run's way between this site and a peer site.
pub(super) struct Route<'a> {
    /// The other site.
    pub peer: &'a Site,
    /// Which way.
    pub direction: Direction,
    /// The source copy's directory (at this site for a push, at the peer for a pull).
    pub src_dir: String,
    /// The destination directory (at the peer for a push, here for a pull).
    pub dst_dir: PathBuf,
}

/// Copies `run` along `route`: the peer's method picks local copy or SFTP over the pooled
/// session, then [`execute`] claims and records. A dry run only says what it would do.
pub(super) async fn copy_along(
    ctx: &Context,
    run: &RunDoc,
    digest: &str,
    data_type: &str,
    route: Route<'_>,
    take: Option<Take>,
) -> Result<Outcome, CopyError> {
    match plan(ctx, run, data_type, route).await? {
        Ok(plan) => execute(ctx, run, digest, plan, take).await,
        Err(skipped) => Ok(skipped),
    }
}

/// How `run` goes along `route` (`Err`: it does not go, and why).
async fn plan(
    ctx: &Context,
    run: &RunDoc,
    data_type: &str,
    route: Route<'_>,
) -> Result<Result<Plan, Outcome>, CopyError> {
    let Route {
        peer,
        direction,
        src_dir,
        dst_dir,
    } = route;
    let (src_site, dst_site) = match direction {
        Direction::Push => (&ctx.site, peer),
        Direction::Pull => (peer, &ctx.site),
    };
    let from = format!("{}:{src_dir}", src_site.name);
    let to = format!("{}:{}", dst_site.name, dst_dir.display());
    if ctx.dry_run {
        return Ok(Err(Outcome::Skipped(format!(
            "dry run: would copy {} files ({} bytes) {from} -> {to}",
            run.files.len(),
            run.size.unwrap_or(0)
        ))));
    }
    let location = dst_dir.display().to_string();
    // The destination's data directory: the copy checks it exists, never creates it, and
    // writes nothing below it through a symbolic link.
    let dst_base = dst_site
        .data_dir(data_type)
        .ok_or_else(|| PathError::NoDataDir {
            place: datadir::Place::new(run, &dst_site.name, data_type),
        })?
        .to_path_buf();
    let (method, protocol, pooled) = match &peer.method {
        TransferMethod::Local => (
            RunCopy::Local {
                src_root: src_dir.into(),
                dst_root: dst_dir,
                dst_base,
            },
            crate::catalog::Protocol::Local,
            None,
        ),
        TransferMethod::Sftp => {
            let session = session_for(ctx, peer).await?;
            let method = match direction {
                Direction::Push => RunCopy::Push {
                    session,
                    local_root: src_dir.into(),
                    remote_root: location.clone(),
                    remote_base: dst_base.display().to_string(),
                },
                Direction::Pull => RunCopy::Pull {
                    session,
                    remote_root: src_dir,
                    local_root: dst_dir,
                    local_base: dst_base,
                },
            };
            (
                method,
                crate::catalog::Protocol::Sftp,
                Some(peer.name.clone()),
            )
        }
        TransferMethod::Unsupported(m) => {
            return Ok(Err(Outcome::Skipped(format!(
                "{} is reached by {m}, which Ferry does not implement",
                peer.name
            ))))
        }
    };
    Ok(Ok(Plan {
        copy: CopyRef::new(run.key(), &dst_site.name, data_type),
        location,
        protocol,
        method,
        peer: pooled,
        link: peer.name.clone(),
        source: src_site.name.clone(),
        label: format!("run {} {from} -> {to}", run.number),
    }))
}

/// Which runs a copy task asks the catalogue for.
pub(super) struct Wanted<'a> {
    /// The site that wants the copies.
    pub dest: &'a str,
    /// The data type.
    pub data_type: &'a str,
    /// Sites whose verified copy may be the source.
    pub sources: &'a [String],
}

/// What the cycle found for one wanted run: nothing to copy (and why), or a copy planned
/// for the scheduler.
pub(super) enum Step {
    /// Nothing to copy now.
    Now(Outcome),
    /// A copy from `src_dir` to `dst_dir` along the link to `peer`.
    Copy(Box<Planned>),
}

/// A copy planned in the cycle, made by a scheduler job ([`copy_along`]).
pub(super) struct Planned {
    /// The other site: the link.
    pub peer: Site,
    /// Which way.
    pub direction: Direction,
    /// The source copy's directory.
    pub src_dir: String,
    /// The destination directory.
    pub dst_dir: PathBuf,
    /// The run digest the copy must have.
    pub digest: String,
    /// How the job takes the copy when it starts (`None`: a new claim; the retry task's
    /// reclaims and `error → transferring`).
    pub take: Option<Take>,
}

/// Hands every run that `wanted` names to `one`, which plans it: a planned copy becomes a
/// job for the agent's [`Scheduler`](super::scheduler::Scheduler), which starts it as soon
/// as its link has room (every link at once) and returns; a run already in the scheduler
/// is passed over. Runs left alone go to `report` at once; the copies of the jobs handed
/// over are added to `submitted` for [`settle`]. Stops early when cancelled, or when the
/// peer cannot be reached at all (the rest would only wait for the same timeout). A dry run
/// plans and reports inline.
pub(super) async fn for_each_wanted(
    ctx: &Context,
    task: Task,
    wanted: Wanted<'_>,
    token: &CancellationToken,
    report: &mut TaskReport,
    submitted: &mut Vec<CopyRef>,
    mut one: impl AsyncFnMut(&RunDoc) -> Result<Step, CopyError>,
) {
    let Wanted {
        dest,
        data_type,
        sources,
    } = wanted;
    let from = sources.join("|");
    // One run asked for by hand is looked up by itself: it may lie beyond the first batch.
    let selector = match &ctx.scope {
        RunScope::All | RunScope::Range(_) => None,
        RunScope::Number(n) => Some(RunSelector::Number(*n)),
        RunScope::Name(name) => Some(RunSelector::Name(name.clone())),
    };
    let found = match &selector {
        None => {
            let list = WorkList::NeedingCopy {
                dest,
                data_type,
                sources,
            };
            walk(ctx, list, 1).await
        }
        Some(sel) => ctx.catalog.find_runs(sel).await.map(|runs| {
            let tag = want_tag(dest, data_type);
            runs.into_iter().filter(|r| r.want.contains(&tag)).collect()
        }),
    };
    let runs = match found {
        Ok(runs) => runs,
        Err(e) => {
            report.fail(
                Subject::Whole,
                format!("{data_type} for {dest} from {from}: catalogue: {e}"),
            );
            return;
        }
    };
    if matches!(ctx.scope, RunScope::All) {
        ctx.metrics.runs_waiting(dest, data_type, runs.len());
    }
    let waiting = ctx.scheduler.mode().waits();
    for run in runs {
        if token.is_cancelled() {
            break;
        }
        if !ctx.scope.admits(run.number, run.name.as_deref()) {
            continue;
        }
        let copy = CopyRef::new(run.key(), dest, data_type);
        if ctx.scheduler.knows(&copy) {
            continue;
        }
        let subject = Subject::transfer(&run, data_type, &from, dest);
        let planned = match one(&run).await {
            Ok(Step::Now(outcome)) => Ok(outcome),
            Ok(Step::Copy(planned)) if ctx.dry_run => {
                copy_planned(ctx, &run, data_type, *planned).await
            }
            Ok(Step::Copy(planned)) => {
                let link = planned.peer.name.clone();
                if let (true, Some(why)) = (waiting, ctx.scheduler.paused(&link)) {
                    report.skip(subject, format!("not started: {why}"));
                    continue;
                }
                let job = job(
                    ctx,
                    task,
                    run,
                    data_type,
                    *planned,
                    "copied, verified and recorded",
                );
                if ctx.scheduler.submit(job) {
                    submitted.push(copy);
                }
                continue;
            }
            Err(e) => Err(e),
        };
        match planned {
            Ok(Outcome::Copied) => report.did(subject, "copied, verified and recorded"),
            Ok(Outcome::Skipped(why)) => report.skip(subject, why),
            Err(e) => {
                let stop = matches!(e, CopyError::Session { .. });
                report.fail_as(subject, e.class(), e.to_string());
                if stop {
                    report.skip(
                        Subject::Whole,
                        format!(
                            "{data_type} for {dest} from {from}: remaining runs left for the \
                             next cycle (peer unreachable)"
                        ),
                    );
                    break;
                }
            }
        }
    }
}

/// The scheduler job of `task` that makes the copy `planned` of `run`; `done` is the
/// report's line when it is copied, verified and recorded.
pub(super) fn job(
    ctx: &Context,
    task: Task,
    run: RunDoc,
    data_type: &str,
    planned: Planned,
    done: impl Into<String>,
) -> Job {
    let dest = match planned.direction {
        Direction::Push => planned.peer.name.clone(),
        Direction::Pull => ctx.site.name.clone(),
    };
    let source = match planned.direction {
        Direction::Push => ctx.site.name.clone(),
        Direction::Pull => planned.peer.name.clone(),
    };
    Job {
        copy: CopyRef::new(run.key(), &dest, data_type),
        source: Some(CopyRef::new(run.key(), &source, data_type)),
        link: planned.peer.name.clone(),
        task,
        subject: Subject::transfer(&run, data_type, &source, &dest),
        files: run.files.len(),
        start: job_start(ctx, run, data_type, planned, done.into()),
    }
}

/// The future a scheduler job runs: [`copy_along`] on its own clone of the context, so
/// the job (and its lease renewal) lives apart from the cycle that planned it.
fn job_start(
    ctx: &Context,
    run: RunDoc,
    data_type: &str,
    planned: Planned,
    done: String,
) -> Box<dyn FnOnce() -> JobFuture + Send> {
    let ctx = ctx.clone();
    let data_type = data_type.to_owned();
    Box::new(move || {
        Box::pin(async move {
            let result = copy_planned(&ctx, &run, &data_type, planned).await;
            match result {
                Ok(Outcome::Copied) => JobEnd::Done(done),
                Ok(Outcome::Skipped(why)) => JobEnd::Skipped(why),
                Err(e) => JobEnd::Failed {
                    link_fault: counts_against_link(&e),
                    class: e.class(),
                    error: e.to_string(),
                },
            }
        })
    })
}

async fn copy_planned(
    ctx: &Context,
    run: &RunDoc,
    data_type: &str,
    planned: Planned,
) -> Result<Outcome, CopyError> {
    let Planned {
        peer,
        direction,
        src_dir,
        dst_dir,
        digest,
        take,
    } = planned;
    let route = Route {
        peer: &peer,
        direction,
        src_dir,
        dst_dir,
    };
    copy_along(ctx, run, &digest, data_type, route, take).await
}

/// Whether a failed copy counts towards pausing its link: the session, the transfer, the
/// destination's bytes or disk; not the catalogue, a lost race or a bad manifest.
fn counts_against_link(e: &CopyError) -> bool {
    match e {
        CopyError::Session { .. }
        | CopyError::Files { .. }
        | CopyError::NotVerified { .. }
        | CopyError::DigestMismatch { .. }
        | CopyError::Path(_) => true,
        CopyError::Record(_) | CopyError::Manifest { .. } => false,
    }
}

/// After a copy task handed its jobs over: in [`Mode::Waiting`] waits for them (when
/// `token` is cancelled the scheduler starts nothing more and only running jobs are waited
/// for); then adds every job of `task` that finished since the last report, and a failed
/// line for each of `links` that is paused. In [`Mode::Once`] the report is owed: the
/// cycle completes it in [`settle_owed`], once every copy task's jobs have ended.
pub(super) async fn settle(
    ctx: &Context,
    task: Task,
    links: &[String],
    submitted: &[CopyRef],
    token: &CancellationToken,
    report: &mut TaskReport,
) {
    match ctx.scheduler.mode() {
        Mode::Once => {
            ctx.scheduler.owe(Owed {
                task,
                links: links.to_vec(),
                submitted: submitted.to_vec(),
            });
            return;
        }
        Mode::Waiting => wait_for(ctx, submitted, token).await,
        Mode::Background => {}
    }
    add_finished(ctx, task, links, report);
}

/// In [`Mode::Once`], after the last copy task: waits for the jobs of every copy task of the
/// cycle together, then completes their reports in `reports` (as [`settle`] does for one).
pub(super) async fn settle_owed(
    ctx: &Context,
    token: &CancellationToken,
    reports: &mut [(Task, TaskReport)],
) {
    let owed = ctx.scheduler.take_owed();
    if owed.is_empty() {
        return;
    }
    let submitted: Vec<CopyRef> = owed.iter().flat_map(|o| o.submitted.clone()).collect();
    wait_for(ctx, &submitted, token).await;
    for o in owed {
        if let Some((_, report)) = reports.iter_mut().find(|(t, _)| *t == o.task) {
            add_finished(ctx, o.task, &o.links, report);
        }
    }
}

/// Waits until none of `submitted` is waiting or running; when `token` is cancelled first,
/// starts nothing more and waits only for the running ones.
async fn wait_for(ctx: &Context, submitted: &[CopyRef], token: &CancellationToken) {
    if submitted.is_empty() {
        return;
    }
    tokio::select! {
        () = ctx.scheduler.wait_for(submitted) => {}
        () = token.cancelled() => {
            ctx.scheduler.close();
            ctx.scheduler.wait_for(submitted).await;
        }
    }
}

/// Adds every job of `task` that finished since the last report, and a failed line for each
/// of `links` that is paused.
fn add_finished(ctx: &Context, task: Task, links: &[String], report: &mut TaskReport) {
    for done in ctx.scheduler.take_finished(task) {
        let subject = done.subject;
        match done.end {
            JobEnd::Done(what) => report.did(subject, what),
            JobEnd::Skipped(why) => report.skip(subject, why),
            JobEnd::Failed { error, class, .. } => report.fail_as(subject, class, error),
        }
    }
    for link in links {
        if let Some(why) = ctx.scheduler.paused(link) {
            report.fail(Subject::Site(link.clone()), why);
        }
    }
}

/// Takes the destination copy (`take`; `None`: a new claim) and carries it to
/// `transferred` (or `error`).
async fn execute(
    ctx: &Context,
    run: &RunDoc,
    digest: &str,
    plan: Plan,
    take: Option<Take>,
) -> Result<Outcome, CopyError> {
    let how = take.unwrap_or_else(|| Take::Claim {
        location: plan.location.clone(),
        protocol: plan.protocol.clone(),
    });
    let lost = how.lost();
    // A verified copy whose record waits in the journal is recorded, not copied again.
    let held = match Held::take(ctx, plan.copy.clone(), how, lease(ctx)).await? {
        Taken::Held(held) => held,
        Taken::Lost => return Ok(Outcome::Skipped(lost.into())),
        Taken::Journaled(why) => return Ok(Outcome::Skipped(why)),
    };
    run_held(ctx, &held, run, digest, &plan)
        .await
        .map(|()| Outcome::Copied)
}

/// Copies and records a copy this agent holds in `transferring`; on failure records `error`
/// with the classified cause.
async fn run_held(
    ctx: &Context,
    held: &Held<'_>,
    run: &RunDoc,
    digest: &str,
    plan: &Plan,
) -> Result<(), CopyError> {
    let bytes: u64 = run
        .files
        .iter()
        .map(|f| u64::try_from(f.size).unwrap_or(0))
        .sum();
    ctx.progress
        .run_started(&plan.label, run.files.len(), bytes);
    let files = u64::try_from(run.files.len()).unwrap_or(u64::MAX);
    let in_flight = ctx.metrics.copy_started(&plan.source, &plan.copy.host);
    let result = copy_and_record(ctx, held, run, digest, plan).await;
    drop(in_flight);
    match &result {
        Ok(()) => ctx
            .metrics
            .copied(&plan.source, &plan.copy.host, files, bytes),
        Err(e) if e.class() == FailureClass::Checksum => ctx.metrics.checksum_mismatch(Check::Copy),
        Err(_) => {}
    }
    if let Some(e) = result
        .as_ref()
        .err()
        .filter(|e| !matches!(e, CopyError::Record(r) if r.is_journaled()))
    {
        let why = Failure::new(e.class(), format!("from {}: {e}", plan.source));
        held.fail(&why).await;
        if let (true, Some(peer)) = (e.connection_failed(), &plan.peer) {
            ctx.sessions.forget(peer).await;
        }
    }
    ctx.progress.run_finished(&plan.label, result.is_ok());
    result
}

async fn copy_and_record(
    ctx: &Context,
    held: &Held<'_>,
    run: &RunDoc,
    digest: &str,
    plan: &Plan,
) -> Result<(), CopyError> {
    let copy = &plan.copy;
    let measured = copy_and_measure(ctx, held, plan, run).await?;
    if measured != digest {
        return Err(CopyError::DigestMismatch {
            copy: copy.to_string(),
            measured,
            expected: digest.to_owned(),
        });
    }
    let mut to_verifying = held.change(CopyStatus::Transferring, CopyStatus::Verifying);
    to_verifying.checksum = Some(measured.clone());
    let stamps = stamps(plan, run);
    if destination_check(ctx, plan) == Verify::Deferred {
        // The destination's agent re-hashes its files (its `verify` task) and only it moves
        // the copy to `transferred`; the digest recorded here is what was sent.
        to_verifying.reason = Some(format!(
            "sent; {} verifies it with its own agent (site map: verify = \"agent\")",
            copy.host
        ));
        held.record(&[&to_verifying], &plan.location, stamps)
            .await?;
        // The destination's verify waits for the lease (or for it to run out).
        held.release().await;
        return Ok(());
    }
    let mut to_done = held.change(CopyStatus::Verifying, CopyStatus::Transferred);
    to_done.checksum = Some(measured);
    to_done.reason = Some(match destination_check(ctx, plan) {
        Verify::RemoteCommand { argv } => format!(
            "every file hashed at the destination ({}) matched the manifest",
            argv.join(" ")
        ),
        _ => "every file read back at the destination matched the manifest".into(),
    });
    held.record(&[&to_verifying, &to_done], &plan.location, stamps)
        .await?;
    Ok(())
}

/// The destination files' stamps for a journaled record (read only when the record goes to
/// the journal).
async fn stamps(plan: &Plan, run: &RunDoc) -> Vec<Stamp> {
    match &plan.method {
        RunCopy::Push {
            session,
            remote_root,
            ..
        } => replay::remote_stamps(session, remote_root, &run.files).await,
        RunCopy::Pull { local_root, .. } => replay::local_stamps(local_root, &run.files),
        RunCopy::Local { dst_root, .. } => replay::local_stamps(dst_root, &run.files),
    }
}

/// Copies every file, renewing the lease meanwhile; returns the run digest measured from
/// the destination's read-back.
async fn copy_and_measure(
    ctx: &Context,
    held: &Held<'_>,
    plan: &Plan,
    run: &RunDoc,
) -> Result<String, CopyError> {
    let copy = &plan.copy;
    let files: Vec<FileJob> = run
        .files
        .iter()
        .map(|f| FileJob {
            path: f.path.clone(),
            size: u64::try_from(f.size).unwrap_or(0),
            sha256: Some(f.sha256.clone()),
        })
        .collect();
    let mut results: Vec<Option<Result<CopyReport, TransportError>>> =
        files.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..files.len()).collect();
    let mut method = plan.method.clone();
    for attempt in 0..=RECONNECTS {
        let jobs: Vec<FileJob> = pending.iter().map(|&i| files[i].clone()).collect();
        let outcome = copy_files(ctx, held, plan, &method, &jobs).await?;
        let mut cut = Vec::new();
        for (&i, result) in pending.iter().zip(outcome) {
            if matches!(&result, Err(e) if is_connection_error(e)) {
                cut.push(i);
            }
            results[i] = Some(result);
        }
        let Some(peer) = plan.peer.as_deref().and_then(|p| ctx.map.site(p)) else {
            break;
        };
        if cut.is_empty() || attempt == RECONNECTS {
            break;
        }
        // The connection failed under some files: a new session, and those files again
        // (their `.part` is resumed), still under this claim.
        tracing::warn!(%copy, peer = %peer.name, files = cut.len(), attempt = attempt + 1,
            "connection lost during the copy; reconnecting to resume");
        ctx.sessions.forget(&peer.name).await;
        method = with_session(&method, session_for(ctx, peer).await?);
        pending = cut;
    }
    let results = results.into_iter().flatten();
    // Left to the destination's agent: the sent digests are what it will be checked against.
    let deferred = destination_check(ctx, plan) == Verify::Deferred;
    let mut failed = Vec::new();
    let mut unverified = Vec::new();
    let mut measured = Vec::with_capacity(files.len());
    for (job, result) in files.iter().zip(results) {
        match result {
            Ok(report) if report.verified || deferred => {
                measured.push((job.path.clone(), report.digest));
            }
            Ok(_) => unverified.push(job.path.clone()),
            Err(e) => failed.push((job.path.clone(), e)),
        }
    }
    if !failed.is_empty() {
        return Err(CopyError::Files {
            copy: copy.to_string(),
            failed,
        });
    }
    if !unverified.is_empty() {
        return Err(CopyError::NotVerified {
            copy: copy.to_string(),
            paths: unverified,
        });
    }
    let hex: Vec<(String, u64, String)> = measured
        .iter()
        .map(|(p, d)| (p.clone(), d.size, d.sha256_hex()))
        .collect();
    checksum::run_digest_of(&hex).map_err(|source| CopyError::Manifest {
        copy: copy.to_string(),
        source,
    })
}

/// How the destination's bytes are checked: a pull or a local copy re-reads them on this
/// host's disk; a push follows the destination site's `verify` setting (read back over
/// SFTP, a hashing command run there, or left to the destination's own agent).
fn destination_check(ctx: &Context, plan: &Plan) -> Verify {
    let pushed = matches!(plan.method, RunCopy::Push { .. });
    match ctx.map.site(&plan.copy.host).map(|s| &s.verify) {
        Some(DestinationVerify::Command(argv)) if pushed => {
            Verify::RemoteCommand { argv: argv.clone() }
        }
        Some(DestinationVerify::Agent) if pushed => Verify::Deferred,
        _ => Verify::ReadBack,
    }
}

/// Copies `jobs` with `method` while renewing the lease; each file's result, in order.
async fn copy_files(
    ctx: &Context,
    held: &Held<'_>,
    plan: &Plan,
    method: &RunCopy,
    jobs: &[FileJob],
) -> Result<Vec<Result<CopyReport, TransportError>>, CopyError> {
    let opts = CopyOptions {
        verify: destination_check(ctx, plan),
        ..CopyOptions::default()
    };
    let progress = Arc::clone(&ctx.progress);
    let label = plan.label.as_str();
    let copying = copy_run_on(&plan.link, method, jobs, &opts, &ctx.gates, |event| {
        progress.file(label, &event);
    });
    held.work(async { Ok::<_, CopyError>(copying.await) }).await
}

/// The pooled session to `peer`.
async fn session_for(ctx: &Context, peer: &Site) -> Result<Arc<SshSession>, CopyError> {
    ctx.sessions
        .session(peer)
        .await
        .map_err(|source| CopyError::Session {
            site: peer.name.clone(),
            source: Box::new(source),
        })
}

/// The same copy on another session (after a reconnect).
fn with_session(method: &RunCopy, session: Arc<SshSession>) -> RunCopy {
    match method {
        RunCopy::Push {
            local_root,
            remote_root,
            remote_base,
            ..
        } => RunCopy::Push {
            session,
            local_root: local_root.clone(),
            remote_root: remote_root.clone(),
            remote_base: remote_base.clone(),
        },
        RunCopy::Pull {
            remote_root,
            local_root,
            local_base,
            ..
        } => RunCopy::Pull {
            session,
            remote_root: remote_root.clone(),
            local_root: local_root.clone(),
            local_base: local_base.clone(),
        },
        RunCopy::Local { .. } => method.clone(),
    }
}

/// Whether the SSH connection itself failed (as opposed to the file or the disk).
fn is_connection_error(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Connect { .. }
            | TransportError::ConnectionLost { .. }
            | TransportError::Ssh { .. }
            | TransportError::Timeout { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_and_reconnect_classification() {
        let cut = TransportError::ConnectionLost {
            host: "mirror".into(),
            path: "/data/Run000001/a".into(),
            what: "writing".into(),
        };
        let denied = TransportError::PermissionDenied {
            host: "mirror".into(),
            path: "/data/Run000001/b".into(),
            op: "open",
        };
        let files = CopyError::Files {
            copy: "run 1 raw@mirror".into(),
            failed: vec![("a".into(), cut)],
        };
        assert!(files.is_retryable() && files.connection_failed());
        let msg = files.to_string();
        assert!(msg.contains("raw@mirror") && msg.contains("a: "), "{msg}");
        let mixed = CopyError::Files {
            copy: "run 1 raw@mirror".into(),
            failed: vec![("b".into(), denied)],
        };
        assert!(!mixed.is_retryable() && !mixed.connection_failed());
        let lost = CopyError::Record(RecordError::Lost {
            copy: CopyRef::new(catalog_schema::RunKey::new("tpc", 1), "mirror", "raw"),
            from: CopyStatus::Transferring,
            to: CopyStatus::Verifying,
        });
        assert!(!lost.is_retryable());
    }
}
