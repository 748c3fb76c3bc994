//! Recording a copy's progress in the catalogue, shared by the copy tasks: renew the lease
//! while working, record a failure as `error`, and finish with `transferring → verifying →
//! transferred`, each step a conditional update.
//!
//! (`push.rs` still has its own copies of these steps; it can switch to this module.)

use std::future::Future;
use std::time::Duration;

use catalog_schema::CopyStatus;

use super::Context;
use crate::catalog::{Cas, CopyRef, Transition};

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

/// `transferring → verifying → transferred` with the digest measured at the copy.
pub async fn finish(
    ctx: &Context,
    copy: &CopyRef,
    measured: String,
    lease: Duration,
    reason: String,
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
    cas(ctx, copy, &to_verifying).await?;
    let mut to_done = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        owner,
        &ctx.owner,
    );
    to_done.checksum = Some(measured);
    to_done.reason = Some(reason);
    cas(ctx, copy, &to_done).await
}

/// Records a failed copy as `error` (best effort: if this fails too, the lease expires and
/// the copy can be reclaimed).
pub async fn fail(ctx: &Context, copy: &CopyRef, why: &str) {
    let mut change = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        Some(&ctx.owner),
        &ctx.owner,
    );
    change.error = Some(why.to_string());
    if let Err(e) = ctx.catalog.transition(copy, &change).await {
        tracing::warn!(%copy, "cannot record the failure ({why}): {e}");
    }
}
