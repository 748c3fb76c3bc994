//! *push*: copy runs this site holds to the sites it pushes to (`push_to`).
//!
//! For each destination and data type both sites have, the catalogue names the runs that
//! want a copy there and have a verified (`transferred`, digest matching) copy here. How
//! the bytes go is the **destination's** `method`: `sftp` pushes over the agent's pooled SSH
//! session to that site ([`super::sessions`]), `local` copies on a shared file system.
//! Everything from the claim on — `.part`, hashing while reading, read-back **at the
//! destination** (over SFTP for a push), rename, `transferring → verifying → transferred`,
//! lease renewal, `error` on failure — is the shared lifecycle in [`super::copy`].
//!
//! The task plans each wanted copy and hands it to the agent's scheduler
//! ([`super::scheduler`]), which copies to every destination at once; in the daemon the
//! task returns at once and reports the copies finished since the previous cycle.

use catalog_schema::RunDoc;
use tokio_util::sync::CancellationToken;

use super::copy::{self, CopyError, Direction, Outcome, Planned, Step, Wanted};
use super::{Context, Task, TaskReport};
use crate::config::Site;
use crate::datadir;

pub use super::copy::lease;

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    let mut submitted = Vec::new();
    let sources = [ctx.site.name.clone()];
    for dest_name in &ctx.site.push_to {
        let Some(dest) = ctx.map.site(dest_name) else {
            continue;
        };
        for data_type in ctx.site.data_dirs.keys() {
            if dest.data_dir(data_type).is_none() {
                continue;
            }
            copy::for_each_wanted(
                ctx,
                Task::Push,
                Wanted {
                    dest: &dest.name,
                    data_type,
                    sources: &sources,
                },
                token,
                &mut report,
                &mut submitted,
                async |run: &RunDoc| push_run(ctx, dest, data_type, run).await,
            )
            .await;
        }
    }
    let links = &ctx.site.push_to;
    copy::settle(ctx, Task::Push, links, &submitted, token, &mut report).await;
    report
}

async fn push_run(
    ctx: &Context,
    dest: &Site,
    data_type: &str,
    run: &RunDoc,
) -> Result<Step, CopyError> {
    let Some(digest) = run.digest.clone() else {
        return Ok(Step::Now(Outcome::Skipped("no manifest yet".into())));
    };
    let Some((_, src_dir)) =
        copy::verified_source(ctx, run, &[&ctx.site], data_type, &digest).await?
    else {
        return Ok(Step::Now(Outcome::Skipped(
            "no verified copy here to copy from".into(),
        )));
    };
    let dst_dir = datadir::run_dir(dest, data_type, run)?;
    Ok(Step::Copy(Box::new(Planned {
        peer: dest.clone(),
        direction: Direction::Push,
        src_dir,
        dst_dir,
        digest,
        take: None,
    })))
}
