//! *adopt* (the first step of the register task, at every site): copies at this site that
//! another tool recorded without Ferry's manifest get it from this agent.
//!
//! A cax deployment records runs in two ways Ferry must take over as they stand:
//!
//! - **A DAQ-written run**: the DAQ wrote the run document with a `data[]` entry for its
//!   host (`transferred` or `verifying`, `checksum: null`, `end` set). cax computed checksums
//!   wherever the data was (`AddChecksum` ran on the host holding the copy), and no site of a
//!   cax.json is an origin, so the agent that holds the copy computes the manifest here.
//! - **A copy cax made**: `checksum` holds cax's SHA-512 dirhash ([`checksum::dirhash`]).
//!   The copy is hashed once, Ferry's manifest and cax's dirhash from the same read; a match
//!   adopts it (Ferry's run digest replaces the dirhash, nothing is copied again), a mismatch
//!   marks it `error` with `[checksum]` naming both digests, and the retry task of the site
//!   that copies to it re-copies it from a good copy.
//!
//! The candidates come from the indexed work list of this site's copies
//! ([`Catalog::copies_in_status`](crate::catalog::Catalog::copies_in_status), `transferred`
//! and `verifying`), not from a walk of the disk: only entries without a Ferry digest (no
//! checksum, or a dirhash), or in a run without a manifest, are read. Their location must
//! pass [`datadir::copy_dir`](crate::datadir::copy_dir); a refused one is flagged as
//! everywhere (`[refused]`). An entry without a location (or cax's `"n/a"`) is left to the
//! origin's directory discovery.
//!
//! Adopting also derives what the run needs in order to be copied: the `want` list, from
//! the site map's links out of this (holding) site ([`super::register::wanted_sites`]),
//! written by the same registration that adds the manifest.

use catalog_schema::{CopyEntry, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::register::{build_manifest_and_dirhash, wants};
use super::{lifecycle, walk, Context, Subject, TaskReport, WorkList, MAX_PAGES};
use crate::catalog::{Cas, CopyRef, Manifest, NewRun, Registered, Transition};
use crate::checksum;
use crate::datadir;
use catalog_schema::{Failure, FailureClass};

/// What adopting one copy did.
enum Outcome {
    Adopted(String),
    Skipped(String),
    Bad(String),
}

/// Adopts this site's copies recorded by other tools (see the module docs).
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    for status in [CopyStatus::Transferred, CopyStatus::Verifying] {
        let runs = match walk(ctx, WorkList::InStatus(&ctx.site.name, status), MAX_PAGES).await {
            Ok(runs) => runs,
            Err(e) => {
                report.fail(
                    Subject::Whole,
                    format!("{status} copies at {}: {e}", ctx.site.name),
                );
                continue;
            }
        };
        for run in runs {
            if token.is_cancelled() {
                return report;
            }
            if !ctx.scope.admits(run.number, run.name.as_deref()) {
                continue;
            }
            let entries: Vec<CopyEntry> = run
                .data
                .iter()
                .filter(|c| {
                    c.host == ctx.site.name && c.status == status && needs_adopting(&run, c)
                })
                .cloned()
                .collect();
            for c in entries {
                let subject = Subject::copy(&run, &c.data_type, &c.host);
                match adopt_one(ctx, &run, &c).await {
                    Ok(Outcome::Adopted(why)) => report.did(subject, why),
                    Ok(Outcome::Skipped(why)) => report.skip(subject, why),
                    Ok(Outcome::Bad(why)) | Err(why) => report.fail(subject, why),
                }
            }
        }
    }
    report
}

/// Whether `c` (a `transferred`/`verifying` copy at this site) still lacks what Ferry needs:
/// a run digest on the copy, or a manifest on the run. A copy whose checksum is a Ferry run
/// digest in a run with a manifest is Ferry's own (the verify task's, when `verifying`).
fn needs_adopting(run: &RunDoc, c: &CopyEntry) -> bool {
    if !has_location(c) {
        return false;
    }
    match c.checksum.as_deref() {
        None => true,
        Some(sum) if checksum::is_dirhash(sum) => true,
        Some(_) => run.digest.is_none(),
    }
}

/// A location cax wrote while a copy was pending is `"n/a"`: no location.
fn has_location(c: &CopyEntry) -> bool {
    c.location
        .as_deref()
        .is_some_and(|l| !l.is_empty() && l != "n/a")
}

async fn adopt_one(ctx: &Context, run: &RunDoc, c: &CopyEntry) -> Result<Outcome, String> {
    let recorded_dirhash = c.checksum.clone().filter(|s| checksum::is_dirhash(s));
    // A DAQ entry without a checksum waits for the run's end (the DAQ sets it); a copy cax
    // checksummed was complete when it did.
    if recorded_dirhash.is_none() && run.end.is_none() {
        return Ok(Outcome::Skipped(
            "no checksum and no `end` yet: the run may still be written".into(),
        ));
    }
    let dir = match datadir::copy_dir(&ctx.site, run, c) {
        Ok(dir) => dir,
        Err(e) if e.is_refusal() => return Err(lifecycle::refuse(ctx, run, c, &e).await),
        Err(e) => return Ok(Outcome::Skipped(e.to_string())),
    };
    let shown = dir.display().to_string();
    let hashed = tokio::task::spawn_blocking(move || build_manifest_and_dirhash(&dir, None, None))
        .await
        .map_err(|e| format!("manifest task failed: {e}"))?;
    let (manifest, measured_dirhash) = match hashed {
        Ok(h) => h,
        Err(super::register::RegisterError::Incomplete { why, .. }) => {
            return Ok(Outcome::Skipped(why))
        }
        Err(e) => return Err(e.to_string()),
    };
    let copy = CopyRef::new(run.key(), &ctx.site.name, &c.data_type);
    // The copy's bytes against what cax recorded, then against the run's manifest.
    let mismatch = match (&recorded_dirhash, &run.digest) {
        (Some(rec), _) if !rec.eq_ignore_ascii_case(&measured_dirhash) => Some(format!(
            "adopt: {shown}: cax dirhash recorded {rec}, measured {measured_dirhash}"
        )),
        (_, Some(d)) if *d != manifest.digest => Some(format!(
            "adopt: {shown}: run digest measured {}, manifest {d}",
            manifest.digest
        )),
        _ => None,
    };
    if let Some(text) = mismatch {
        return mark_bad(ctx, &copy, c, text).await;
    }
    if ctx.dry_run {
        return Ok(Outcome::Skipped(format!(
            "dry run: would adopt {} files, {} bytes, digest {}",
            manifest.files.len(),
            manifest.size,
            manifest.digest
        )));
    }
    register(ctx, run, c, &manifest).await?;
    let what = if recorded_dirhash.is_some() {
        "cax's dirhash matches; adopted with Ferry's manifest, nothing copied"
    } else {
        "manifest computed where the copy is"
    };
    let outcome = if c.status == CopyStatus::Verifying {
        let mut t = Transition::new(
            CopyStatus::Verifying,
            CopyStatus::Transferred,
            None,
            &ctx.owner,
        );
        t.checksum = Some(manifest.digest.clone());
        t.reason = Some(format!("adopt: {what}"));
        ctx.catalog.transition(&copy, &t).await
    } else {
        ctx.catalog
            .record_checksum(
                &copy,
                c.status,
                None,
                &manifest.digest,
                bson::DateTime::now(),
            )
            .await
    };
    match outcome.map_err(|e| format!("{copy}: {e}"))? {
        Cas::Done => Ok(Outcome::Adopted(format!(
            "{what} (digest {})",
            manifest.digest
        ))),
        Cas::Lost => Ok(Outcome::Skipped(
            "the copy changed while it was hashed; next cycle".into(),
        )),
    }
}

/// Adds the manifest (when the run has none) and the wanted copies from this site.
async fn register(
    ctx: &Context,
    run: &RunDoc,
    c: &CopyEntry,
    manifest: &Manifest,
) -> Result<(), String> {
    let new = NewRun {
        key: run.key(),
        name: run.name.clone(),
        start: None,
        end: None,
        manifest: Some(manifest.clone()),
        want: wants(&ctx.map, &ctx.site.name, &c.data_type),
        who: ctx.owner.clone(),
    };
    match ctx
        .catalog
        .register_run(&new)
        .await
        .map_err(|e| e.to_string())?
    {
        Registered::Created | Registered::Existing => Ok(()),
        Registered::Conflict { reason } => Err(format!(
            "the catalogue holds this run with different contents ({reason}); nothing changed"
        )),
    }
}

/// `STATUS → error` with `[checksum]` and both digests; the retry task re-copies it from a
/// verified copy. The files stay (the re-copy replaces them).
async fn mark_bad(
    ctx: &Context,
    copy: &CopyRef,
    c: &CopyEntry,
    text: String,
) -> Result<Outcome, String> {
    let failure = Failure::new(FailureClass::Checksum, text);
    if ctx.dry_run {
        return Ok(Outcome::Skipped(format!(
            "dry run: would mark bad: {failure}"
        )));
    }
    let mut t = Transition::new(c.status, CopyStatus::Error, None, &ctx.owner);
    t.record_failure(&failure);
    match ctx.catalog.transition(copy, &t).await {
        Ok(Cas::Done) => Ok(Outcome::Bad(failure.to_string())),
        Ok(Cas::Lost) => Ok(Outcome::Skipped(
            "the copy changed while it was hashed; next cycle".into(),
        )),
        Err(e) => Err(format!("{copy}: {e}")),
    }
}
