//! *heartbeat*: this agent's one document in the catalogue (collection `heartbeats`,
//! `_id` = the site), replaced every cycle, for `ferry check` and for people.
//!
//! Besides the fixed fields of [`Heartbeat`] (site, owner id, version, host name, pid,
//! time written, cycle length), `stats` holds:
//!
//! ```text
//! { cycle_start: <date>, cycle_end: <date>,
//!   done: N, skipped: N, failed: N,                       // the cycle so far, all tasks
//!   quarantined: N,              // run documents skipped as unreadable this cycle
//!   quarantined_documents: N,    // distinct unreadable documents seen since start-up
//!   tasks: { register: { done, skipped, failed, quarantined }, … },  // per task that ran
//!   disks: { raw: { path, total_bytes, free_bytes, used_percent } | { path, error } },
//!   last_transfer: <date>,       // the last copy this agent made (push, pull, retry)
//!   last_received: <date>,       // the last copy this site received, whoever made it
//!   sends_to: [site, …] }        // the sites the site map's links take copies to from here
//! ```
//!
//! `last_received` is when the newest copy that came here by a transfer (it has a claim
//! event at this site) became `transferred`, looked for among the [`RECEIVED_LOOKBACK`]
//! highest-numbered runs with a `transferred` copy here, and carried over from the previous
//! heartbeat when they show none newer. With `sends_to` it lets `ferry check` judge a site
//! that only receives on what it receives, from the catalogue alone.
//!
//! It runs last in the cycle, so the counts are the whole cycle's but its own; it takes
//! them from [`super::run_cycle`] (the only task that needs the other tasks' reports).

use bson::{doc, DateTime, Document};
use catalog_schema::heartbeat::{LAST_RECEIVED, LAST_TRANSFER, SENDS_TO};
use catalog_schema::{CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::purge::disk_usage;
use super::{Context, CycleReport, Outcome, Subject, Task, TaskReport};
use crate::catalog::{Heartbeat, RunFilter};

/// Runs looked at for the last copy received (the highest-numbered ones).
pub const RECEIVED_LOOKBACK: u32 = 20;

/// Runs the task: `cycle` is what the cycle did so far, `started` when it began.
pub async fn run(
    ctx: &Context,
    _token: &CancellationToken,
    cycle: &CycleReport,
    started: DateTime,
) -> TaskReport {
    let mut report = TaskReport::default();
    let now = DateTime::now();
    let mut beat = build(ctx, cycle, started, now);
    // When this agent last made a copy (for `ferry check --max-since-transfer`): now, if
    // this cycle made one, else carried over from the previous heartbeat.
    let copied = cycle.tasks.iter().any(|(t, r)| {
        matches!(t, Task::Push | Task::Pull | Task::Retry) && r.count(Outcome::Done) > 0
    });
    let prev = match ctx.catalog.read_heartbeat(&ctx.site.name).await {
        Ok(prev) => prev,
        Err(e) => {
            tracing::warn!("reading the previous heartbeat: {e}");
            None
        }
    };
    let last = if copied {
        Some(now)
    } else {
        prev.as_ref().and_then(Heartbeat::last_transfer)
    };
    if let Some(at) = last {
        beat.stats.insert(LAST_TRANSFER, at);
    }
    // When a copy last arrived here (for a site that only receives): the newest among the
    // latest runs, else the previous heartbeat's (an older one the look-up no longer sees).
    let filter = RunFilter {
        host: Some(ctx.site.name.clone()),
        status: Some(CopyStatus::Transferred),
        limit: Some(RECEIVED_LOOKBACK),
        ..RunFilter::default()
    };
    let newest = match ctx.catalog.list_runs(&filter).await {
        Ok(runs) => runs
            .iter()
            .filter_map(|r| received_at(r, &ctx.site.name))
            .max(),
        Err(e) => {
            tracing::warn!("looking up the last copy received here: {e}");
            None
        }
    };
    if let Some(at) = newest.max(prev.as_ref().and_then(Heartbeat::last_received)) {
        beat.stats.insert(LAST_RECEIVED, at);
    }
    count_copies(ctx).await;
    if ctx.dry_run {
        report.skip(
            Subject::Site(ctx.site.name.clone()),
            "dry run: would write the heartbeat",
        );
        return report;
    }
    let written = ctx.catalog.heartbeat(&beat).await;
    ctx.metrics.catalog_answers(written.is_ok());
    match written {
        Ok(()) => report.did(Subject::Site(ctx.site.name.clone()), "heartbeat written"),
        Err(e) => report.fail(
            Subject::Site(ctx.site.name.clone()),
            format!("heartbeat not written: catalogue: {e}"),
        ),
    }
    report
}

/// The site's copies per status for the metrics, and whether the catalogue answers
/// (read-only, so also in a dry run).
async fn count_copies(ctx: &Context) {
    match ctx.catalog.copies_by_status(&ctx.site.name).await {
        Ok(counts) => {
            for (status, runs) in counts {
                ctx.metrics.site_copies(status, runs);
            }
            ctx.metrics.catalog_answers(true);
        }
        Err(e) => {
            tracing::warn!("counting the copies at {}: {e}", ctx.site.name);
            ctx.metrics.catalog_answers(false);
        }
    }
}

/// The heartbeat document for a cycle that began at `started` and ends at `now`.
pub fn build(ctx: &Context, cycle: &CycleReport, started: DateTime, now: DateTime) -> Heartbeat {
    let count = |outcome: Outcome| -> i64 {
        let n: usize = cycle.tasks.iter().map(|(_, r)| r.count(outcome)).sum();
        i64::try_from(n).unwrap_or(i64::MAX)
    };
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let quarantined: u64 = cycle.tasks.iter().map(|(_, r)| r.quarantined).sum();
    let mut tasks = Document::new();
    for (task, r) in &cycle.tasks {
        tasks.insert(
            task.name(),
            doc! {
                "done": as_i64(r.count(Outcome::Done)),
                "skipped": as_i64(r.count(Outcome::Skipped)),
                "failed": as_i64(r.count(Outcome::Failed)),
                "quarantined": i64::try_from(r.quarantined).unwrap_or(i64::MAX),
            },
        );
    }
    let mut disks = Document::new();
    for (data_type, dir) in &ctx.site.data_dirs {
        let path = dir.display().to_string();
        let entry = match disk_usage(dir) {
            Ok(d) => doc! {
                "path": path,
                "total_bytes": i64::try_from(d.total_bytes).unwrap_or(i64::MAX),
                "free_bytes": i64::try_from(d.free_bytes).unwrap_or(i64::MAX),
                "used_percent": i32::from(d.used_percent),
            },
            Err(e) => doc! { "path": path, "error": e.to_string() },
        };
        disks.insert(data_type.clone(), entry);
    }
    let millis = now
        .timestamp_millis()
        .saturating_sub(started.timestamp_millis())
        .max(0);
    Heartbeat {
        site: ctx.site.name.clone(),
        owner: ctx.owner.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        time: now,
        cycle_seconds: millis as f64 / 1000.0,
        stats: doc! {
            "cycle_start": started,
            "cycle_end": now,
            "done": count(Outcome::Done),
            "skipped": count(Outcome::Skipped),
            "failed": count(Outcome::Failed),
            "quarantined": i64::try_from(quarantined).unwrap_or(i64::MAX),
            "quarantined_documents": as_i64(ctx.catalog.quarantine().documents().len()),
            "tasks": tasks,
            "disks": disks,
            SENDS_TO: sends_to(ctx),
        },
    }
}

/// The sites the site map's links take copies to from this site (whoever initiates).
fn sends_to(ctx: &Context) -> Vec<String> {
    let mut to: Vec<String> = Vec::new();
    for l in ctx.map.links() {
        if l.from == ctx.site.name && !to.contains(&l.to) {
            to.push(l.to);
        }
    }
    to
}

/// When a copy of `run` last arrived at `site` by a transfer: for each of its `transferred`
/// copies there that was claimed there (a copy the origin registered, or another tool
/// recorded, was not received), the last event that moved it to `transferred`. `None` when
/// there is none, or the run's events no longer hold them (the oldest are trimmed).
pub fn received_at(run: &RunDoc, site: &str) -> Option<DateTime> {
    let became_transferred = format!("-> {}", CopyStatus::Transferred);
    run.data
        .iter()
        .filter(|c| c.host == site && c.status == CopyStatus::Transferred)
        .filter_map(|c| {
            let of_copy = || {
                run.events.iter().filter(|e| {
                    e.host.as_deref() == Some(site)
                        && e.data_type.as_deref() == Some(c.data_type.as_str())
                })
            };
            let claimed = of_copy().any(|e| matches!(e.action.as_str(), "claimed" | "reclaimed"));
            if !claimed {
                return None;
            }
            of_copy()
                .filter(|e| {
                    e.action == "status"
                        && e.reason.as_deref().is_some_and(|r| {
                            // `from -> to`, then `: why` when a reason was given.
                            r.split(':')
                                .next()
                                .unwrap_or(r)
                                .trim_end()
                                .ends_with(&became_transferred)
                        })
                })
                .map(|e| e.time)
                .max()
        })
        .max()
}
