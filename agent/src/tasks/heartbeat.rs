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
//!   disks: { raw: { path, total_bytes, free_bytes, used_percent } | { path, error } } }
//! ```
//!
//! It runs last in the cycle, so the counts are the whole cycle's but its own; it takes
//! them from [`super::run_cycle`] (the only task that needs the other tasks' reports).

use bson::{doc, DateTime, Document};
use tokio_util::sync::CancellationToken;

use super::purge::disk_usage;
use super::{Context, CycleReport, Outcome, Subject, Task, TaskReport};
use crate::catalog::Heartbeat;

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
    let last = if copied {
        Some(now)
    } else {
        match ctx.catalog.read_heartbeat(&ctx.site.name).await {
            Ok(prev) => prev.and_then(|p| p.stats.get_datetime("last_transfer").ok().copied()),
            Err(e) => {
                tracing::warn!("reading the previous heartbeat: {e}");
                None
            }
        }
    };
    if let Some(at) = last {
        beat.stats.insert("last_transfer", at);
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
        },
    }
}
