//! *push*: copy runs this site holds to the sites it pushes to (`push_to`).
//!
//! For each destination and data type both sites have, the catalogue names the runs that
//! want a copy there and have a verified (`transferred`, digest matching) copy here. How
//! the bytes go is the **destination's** `method`: `sftp` pushes over the agent's pooled SSH
//! session to that site ([`super::sessions`]), `local` copies on a shared file system.
//! Everything from the claim on — `.part`, hashing while reading, read-back **at the
//! destination** (over SFTP for a push), rename, `transferring → verifying → transferred`,
//! lease renewal, `error` on failure — is the shared lifecycle in [`super::copy`].

use catalog_schema::RunDoc;
use tokio_util::sync::CancellationToken;

use super::copy::{self, CopyError, Direction, Outcome, Route, Wanted};
use super::{Context, TaskReport};
use crate::config::Site;

pub use super::copy::LEASE;

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    let sources = [ctx.site.name.clone()];
    for dest_name in &ctx.site.push_to {
        let Some(dest) = ctx.map.site(dest_name) else {
            continue;
        };
        for data_type in ctx.site.data_dirs.keys() {
            if dest.data_dir(data_type).is_none() {
                continue;
            }
            let label = format!("to {}", dest.name);
            copy::for_each_wanted(
                ctx,
                Wanted {
                    dest: &dest.name,
                    data_type,
                    sources: &sources,
                    label: &label,
                },
                token,
                &mut report,
                async |run: &RunDoc| push_run(ctx, dest, data_type, run).await,
            )
            .await;
        }
    }
    report
}

async fn push_run(
    ctx: &Context,
    dest: &Site,
    data_type: &str,
    run: &RunDoc,
) -> Result<Outcome, CopyError> {
    let Some(digest) = run.digest.clone() else {
        return Ok(Outcome::Skipped("no manifest yet".into()));
    };
    let Some(src_dir) = copy::verified_location(run, &ctx.site.name, data_type, &digest) else {
        return Ok(Outcome::Skipped(
            "no verified copy here to copy from".into(),
        ));
    };
    let dst_dir = copy::run_dir(dest, data_type, run)?;
    copy::copy_along(
        ctx,
        run,
        &digest,
        data_type,
        Route {
            peer: dest,
            direction: Direction::Push,
            src_dir,
            dst_dir,
        },
    )
    .await
}

/// The directory of `run`'s `data_type` copy at `site`; `Ok(None)` when the site has no
/// directory for that type. (For the retry task.)
pub(super) fn run_dir(
    site: &Site,
    data_type: &str,
    run: &RunDoc,
) -> Result<Option<std::path::PathBuf>, String> {
    match copy::run_dir(site, data_type, run) {
        Ok(dir) => Ok(Some(dir)),
        Err(CopyError::NoDataDir { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies `run` into `copy`, already held in `transferring` by this agent (the retry task
/// re-enters here), from `source`'s verified copy in `src_dir`; records the outcome.
pub(super) async fn transfer_claimed(
    ctx: &Context,
    copy: &crate::catalog::CopyRef,
    source: &str,
    src_dir: std::path::PathBuf,
    dst_dir: std::path::PathBuf,
    run: &RunDoc,
    digest: &str,
) -> Result<(), String> {
    let src_dir = src_dir.display().to_string();
    copy::transfer_claimed(ctx, copy, source, src_dir, dst_dir, run, digest)
        .await
        .map_err(|e| format!("{} {e}", e.class().tag()))
}

/// Records a failed copy as `error` with its classified text. (For the retry task.)
pub(super) async fn fail(
    ctx: &Context,
    copy: &crate::catalog::CopyRef,
    why: &super::retry::Failure,
) {
    copy::fail(ctx, copy, &why.to_string()).await;
}
