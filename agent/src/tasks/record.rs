//! Recording a tape copy's (and a recalled copy's) progress in the catalogue: renew the
//! lease while working, and finish with `transferring → verifying → transferred`, each step
//! a conditional update. A failure is recorded by [`super::copy::fail`], with its class, as
//! for every copy.
//!
//! (`copy.rs` still renews and finishes with its own typed errors; it can switch to this
//! module once these steps return `CopyError`.)

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use catalog_schema::{can_transition, CopyEntry, CopyStatus, FileEntry, RunDoc};

use super::retry::{Failure, FailureClass};
use super::{replay, Context};
use crate::catalog::{Cas, CopyRef, Transition};
use crate::datadir::PathError;

/// Flags a copy whose path was refused ([`crate::datadir`]: a recorded location that is not
/// the run's own directory, a planted link): `STATUS → error` with a `[refused]` failure
/// naming the run, the site and the paths, in one conditional update on the status seen.
/// Nothing on disk is touched. Returns the text for the task report (and logs it loudly).
pub async fn refuse(ctx: &Context, run: &RunDoc, c: &CopyEntry, e: &PathError) -> String {
    let copy = CopyRef::new(run.key(), &c.host, &c.data_type);
    tracing::error!(site = %ctx.site.name, run = run.number, copy = %copy, "{e}");
    let why = Failure::new(FailureClass::Refused, e.to_string());
    if ctx.dry_run {
        return format!("{e} (dry run: not flagged)");
    }
    if !can_transition(c.status, CopyStatus::Error) {
        return format!("{e} (left {}, not flagged)", c.status);
    }
    let mut change = Transition::new(c.status, CopyStatus::Error, None, &ctx.owner);
    change.record_failure(&why);
    match ctx.catalog.transition(&copy, &change).await {
        Ok(Cas::Done) => format!("{e}; flagged {} -> error [refused]", c.status),
        Ok(Cas::Lost) => format!("{e} (the copy changed meanwhile; not flagged)"),
        Err(err) => format!("{e} (cannot flag it: {err})"),
    }
}

/// Runs `work` while renewing the copy's lease every third of `lease`.
pub async fn with_lease<T>(
    ctx: &Context,
    copy: &CopyRef,
    lease: Duration,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let mut work = std::pin::pin!(work);
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renew.tick() => {
                match ctx.catalog.renew_lease(copy, &ctx.owner, lease).await {
                    Ok(Cas::Done) => {}
                    Ok(Cas::Lost) => return Err("lost the lease while working".into()),
                    Err(e) => tracing::warn!(%copy, "cannot renew the lease: {e}"),
                }
            }
        }
    }
}

/// One conditional update; losing it is an error naming the transition.
pub async fn cas(ctx: &Context, copy: &CopyRef, change: &Transition) -> Result<(), String> {
    match ctx.catalog.transition(copy, change).await {
        Ok(Cas::Done) => Ok(()),
        Ok(Cas::Lost) => Err(format!(
            "{copy}: {} -> {} lost: the copy changed under us (lease expired?)",
            change.from, change.to
        )),
        Err(e) => Err(format!("{copy}: {e}")),
    }
}

/// `transferring → verifying → transferred` with the digest measured at the copy; `tape`
/// (a tape copy's `{ backend, reference, volumes, verified }`) is set by the last step, in
/// the same conditional update. A catalogue that does not answer sends the record to the
/// journal ([`super::replay`]); the error then says so.
pub async fn finish(
    ctx: &Context,
    copy: &CopyRef,
    measured: String,
    lease: Duration,
    reason: String,
    tape: Option<bson::Document>,
) -> Result<(), String> {
    finish_in(ctx, copy, measured, lease, reason, tape, None).await
}

/// [`finish`] for a copy on disk here, in `dir` (a recall): a journaled record carries the
/// stamps of the run's files there, so the replay can tell whether they changed.
pub async fn finish_in(
    ctx: &Context,
    copy: &CopyRef,
    measured: String,
    lease: Duration,
    reason: String,
    tape: Option<bson::Document>,
    dir: Option<(&Path, &[FileEntry])>,
) -> Result<(), String> {
    let owner = Some(ctx.owner.as_str());
    let mut to_verifying = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        owner,
        &ctx.owner,
    );
    to_verifying.checksum = Some(measured.clone());
    to_verifying.lease_for = lease;
    let mut to_done = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        owner,
        &ctx.owner,
    );
    to_done.checksum = Some(measured.clone());
    to_done.reason = Some(reason);
    to_done.tape = tape;
    for step in [&to_verifying, &to_done] {
        match ctx.catalog.transition(copy, step).await {
            Ok(Cas::Done) => {}
            Ok(Cas::Lost) => {
                return Err(format!(
                    "{copy}: {} -> {} lost: the copy changed under us (lease expired?)",
                    step.from, step.to
                ))
            }
            Err(e) if e.is_retryable() => {
                let (location, files) = match dir {
                    Some((d, files)) => (d.display().to_string(), replay::local_stamps(d, files)),
                    None => ("tape".to_string(), Vec::new()),
                };
                let record = replay::Record {
                    copy,
                    location: &location,
                    from: step.from,
                    to: CopyStatus::Transferred,
                    checksum: &measured,
                    reason: to_done.reason.as_deref().unwrap_or_default(),
                    lease,
                    tape: to_done.tape.as_ref(),
                    files,
                };
                return Err(match replay::keep(ctx, record, &e) {
                    Ok(entry) => format!(
                        "{copy}: verified, but the catalogue did not take the record ({e}); kept in the journal {}, replayed when the catalogue answers",
                        entry.display()
                    ),
                    Err(_) => format!("{copy}: {e}"),
                });
            }
            Err(e) => return Err(format!("{copy}: {e}")),
        }
    }
    Ok(())
}
