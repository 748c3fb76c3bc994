//! *push*: copy runs this site holds to the sites it pushes to (`push_to`), for the `local`
//! method (sites sharing a file system). SFTP pushes arrive with the next step of the agent.
//!
//! One run, one destination, one data type at a time:
//! 1. the catalogue names runs with a verified copy here and none at the destination;
//! 2. the destination copy is **claimed** (a conditional update: exactly one agent wins);
//! 3. every file of the manifest is copied to `NAME.part`, hashed while read, fsynced,
//!    **read back and hashed again at the destination** (independently of the sending
//!    stream), checked against the manifest's SHA-256, then renamed into place; the lease
//!    is renewed while this runs;
//! 4. the copy moves `transferring → verifying` with the digest measured from the
//!    destination's bytes, then `verifying → transferred` when that digest is the run's.
//!
//! Any failure moves the copy to `error` with the cause, prefixed by its class
//! (`[retryable]`, `[checksum]`, `[fatal]`: see [`super::retry::FailureClass`]), and names
//! the source (`from SITE: …`); the retry task takes it from there and re-enters step 3
//! through `transfer_claimed`. A crash leaves the copy `transferring` under a lease that
//! expires, so another agent can reclaim it; the next agent of this site on this host takes
//! it back at once (its holder's process is provably gone, see [`super::owner`]). Nothing is recorded as `transferred` that was
//! not read back.

use std::path::PathBuf;
use std::time::Duration;

use catalog_schema::{CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::retry::{Failure, FailureClass};
use super::verify::digest_of;
use super::{Context, TaskReport};
use crate::catalog::{Cas, Claim, ClaimRequest, CopyRef, Transition};
use crate::config::{Site, TransferMethod};
use crate::transport::run::{copy_run, FileJob, RunCopy};
use crate::transport::{CopyOptions, Verify};

/// How long a claim lasts without renewal (the site map's `limits.lease`, 10 min by
/// default); renewed every third of it while copying.
pub fn lease(ctx: &Context) -> Duration {
    ctx.site.limits.lease
}
/// Runs asked of the catalogue per destination and cycle.
const BATCH: u32 = 100;

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    for dest_name in &ctx.site.push_to {
        let Some(dest) = ctx.map.site(dest_name) else {
            continue;
        };
        for data_type in ctx.site.data_dirs.keys() {
            if dest.data_dir(data_type).is_none() {
                continue;
            }
            push_to(ctx, dest, data_type, token, &mut report).await;
        }
    }
    report
}

async fn push_to(
    ctx: &Context,
    dest: &Site,
    data_type: &str,
    token: &CancellationToken,
    report: &mut TaskReport,
) {
    let sources = [ctx.site.name.clone()];
    let runs = match ctx
        .catalog
        .runs_needing_copy(&dest.name, data_type, &sources, BATCH)
        .await
    {
        Ok(runs) => runs,
        Err(e) => {
            report
                .failed
                .push(format!("{data_type} to {}: catalogue: {e}", dest.name));
            return;
        }
    };
    for run in runs {
        if token.is_cancelled() {
            break;
        }
        if !ctx.scope.admits(run.number, run.name.as_deref()) {
            continue;
        }
        let label = format!("run {} {data_type} to {}", run.number, dest.name);
        match push_run(ctx, dest, data_type, &run).await {
            Ok(Some(skip)) => report.skipped.push(format!("{label}: {skip}")),
            Ok(None) => report.done.push(label),
            Err(e) => {
                tracing::error!(site = %ctx.site.name, run = run.number, dest = %dest.name, "{e}");
                report.failed.push(format!("{label}: {e}"));
            }
        }
    }
}

/// `Ok(None)`: copied and recorded; `Ok(Some(why))`: left alone; `Err`: failed (recorded).
async fn push_run(
    ctx: &Context,
    dest: &Site,
    data_type: &str,
    run: &RunDoc,
) -> Result<Option<String>, String> {
    if ctx.site.method != TransferMethod::Local || dest.method != TransferMethod::Local {
        return Ok(Some(format!(
            "method {}/{}: only `local` pushes are built in this version",
            ctx.site.method, dest.method
        )));
    }
    let Some(digest) = run.digest.clone() else {
        return Ok(Some("no manifest yet".into()));
    };
    let source = run
        .copy(&ctx.site.name, data_type)
        .filter(|c| c.status == CopyStatus::Transferred && c.checksum.as_deref() == Some(&digest));
    let Some(src_dir) = source.and_then(|c| c.location.clone()).map(PathBuf::from) else {
        return Ok(Some("no verified copy here to copy from".into()));
    };
    let Some(dst_dir) = run_dir(dest, data_type, run)? else {
        return Ok(Some(format!("{} has no {data_type} directory", dest.name)));
    };
    if ctx.dry_run {
        return Ok(Some(format!(
            "dry run: would copy {} files ({} bytes) {} -> {}",
            run.files.len(),
            run.size.unwrap_or(0),
            src_dir.display(),
            dst_dir.display()
        )));
    }
    let copy = CopyRef::new(run.key(), &dest.name, data_type);
    let claim = ClaimRequest {
        copy: copy.clone(),
        location: dst_dir.display().to_string(),
        protocol: "local".into(),
        owner: ctx.owner.clone(),
        lease_for: lease(ctx),
    };
    match ctx
        .catalog
        .claim_copy(&claim)
        .await
        .map_err(|e| e.to_string())?
    {
        Claim::Won(_) => {}
        Claim::Lost => return Ok(Some("claimed by another agent".into())),
    }
    transfer_claimed(ctx, &copy, &ctx.site.name, src_dir, dst_dir, run, &digest).await?;
    Ok(None)
}

/// The directory of `run`'s `data_type` copy at `site` (its data directory joined with the
/// rendered layout); `Ok(None)` when the site has no directory for that type.
pub(super) fn run_dir(
    site: &Site,
    data_type: &str,
    run: &RunDoc,
) -> Result<Option<PathBuf>, String> {
    let Some(root) = site.data_dir(data_type) else {
        return Ok(None);
    };
    let name = run.name.clone().unwrap_or_else(|| run.number.to_string());
    let period = run.extra.get_str("period").ok();
    let rel = site
        .layout
        .render(run.number, &name, period, &run.detector)
        .map_err(|e| format!("{} layout: {e}", site.name))?;
    Ok(Some(root.join(rel)))
}

/// Copies a run into a copy this agent holds in `transferring` (a fresh claim, or one the
/// retry task took back), reads it back, and records `verifying → transferred`; on any
/// failure records `error` with a [`Failure`] class prefix and returns the text.
pub(super) async fn transfer_claimed(
    ctx: &Context,
    copy: &CopyRef,
    source: &str,
    src_dir: PathBuf,
    dst_dir: PathBuf,
    run: &RunDoc,
    digest: &str,
) -> Result<(), String> {
    let outcome = copy_and_measure(ctx, copy, source, src_dir, dst_dir, run).await;
    let measured = match outcome {
        Ok(measured) if measured == digest => measured,
        Ok(measured) => {
            let why = Failure::new(
                FailureClass::Checksum,
                format!(
                    "from {source}: run digest at the destination {measured} != manifest {digest}"
                ),
            );
            fail(ctx, copy, &why).await;
            return Err(why.to_string());
        }
        Err(why) => {
            fail(ctx, copy, &why).await;
            return Err(why.to_string());
        }
    };
    let owner = Some(ctx.owner.as_str());
    let mut to_verifying = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        owner,
        &ctx.owner,
    );
    to_verifying.checksum = Some(measured.clone());
    to_verifying.lease_for = lease(ctx);
    cas(ctx, copy, &to_verifying).await?;
    let mut to_done = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        owner,
        &ctx.owner,
    );
    to_done.checksum = Some(measured);
    to_done.reason = Some("every file read back at the destination matched the manifest".into());
    cas(ctx, copy, &to_done).await
}

/// Copies every file, renewing the lease meanwhile; returns the run digest measured from
/// the destination's read-back, or why it failed.
async fn copy_and_measure(
    ctx: &Context,
    copy: &CopyRef,
    source: &str,
    src_dir: PathBuf,
    dst_dir: PathBuf,
    run: &RunDoc,
) -> Result<String, Failure> {
    let files: Vec<FileJob> = run
        .files
        .iter()
        .map(|f| FileJob {
            path: f.path.clone(),
            size: u64::try_from(f.size).unwrap_or(0),
            sha256: Some(f.sha256.clone()),
        })
        .collect();
    let method = RunCopy::Local {
        src_root: src_dir,
        dst_root: dst_dir,
    };
    let opts = CopyOptions {
        verify: Verify::ReadBack,
        ..CopyOptions::default()
    };
    let copying = copy_run(&method, &files, &opts, &ctx.gates, |_| {});
    let mut copying = std::pin::pin!(copying);
    let mut renew = tokio::time::interval(lease(ctx) / 3);
    renew.tick().await;
    let results = loop {
        tokio::select! {
            results = &mut copying => break results,
            _ = renew.tick() => {
                match ctx.catalog.renew_lease(copy, &ctx.owner, lease(ctx)).await {
                    Ok(Cas::Done) => {}
                    Ok(Cas::Lost) => {
                        let why = "lost the lease while copying".to_string();
                        return Err(Failure::new(FailureClass::Retryable, why));
                    }
                    Err(e) => tracing::warn!(%copy, "cannot renew the lease: {e}"),
                }
            }
        }
    };
    let mut errors = Vec::new();
    let mut class = None;
    let mut measured = Vec::with_capacity(files.len());
    for (job, result) in files.iter().zip(results) {
        match result {
            Ok(report) if report.verified => measured.push((job.path.clone(), report.digest)),
            Ok(_) => {
                class = class.max(Some(FailureClass::Retryable));
                errors.push(format!("{}: not read back", job.path));
            }
            Err(e) => {
                class = class.max(Some(FailureClass::of_transport(&e)));
                errors.push(format!("{}: {e}", job.path));
            }
        }
    }
    if let Some(class) = class {
        return Err(Failure::new(
            class,
            format!("from {source}: {}", errors.join("; ")),
        ));
    }
    let hex: Vec<(String, u64, String)> = measured
        .iter()
        .map(|(p, d)| (p.clone(), d.size, d.sha256_hex()))
        .collect();
    digest_of(&hex).map_err(|e| Failure::new(FailureClass::Fatal, format!("manifest: {e}")))
}

async fn cas(ctx: &Context, copy: &CopyRef, change: &Transition) -> Result<(), String> {
    match ctx.catalog.transition(copy, change).await {
        Ok(Cas::Done) => Ok(()),
        Ok(Cas::Lost) => Err(format!(
            "{copy}: {} -> {} lost: the copy changed under us (lease expired?)",
            change.from, change.to
        )),
        Err(e) => Err(format!("{copy}: {e}")),
    }
}

/// Records a failed copy as `error`, the classified text in `last_error` and in the audit
/// trail (where the retry task counts checksum mismatches). Best effort: if this fails too,
/// the lease expires and the retry task reclaims the copy.
pub(super) async fn fail(ctx: &Context, copy: &CopyRef, why: &Failure) {
    let mut change = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        Some(&ctx.owner),
        &ctx.owner,
    );
    change.error = Some(why.to_string());
    change.reason = Some(why.to_string());
    if let Err(e) = ctx.catalog.transition(copy, &change).await {
        tracing::warn!(%copy, "cannot record the failure ({why}): {e}");
    }
}
