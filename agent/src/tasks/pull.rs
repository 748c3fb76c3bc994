//! *pull*: copy runs to this site from the sites it pulls from (`pull_from`).
//!
//! For each data type this site has a directory for, the catalogue names the runs that want
//! a copy **here** and have a verified (`transferred`, digest matching) copy at one of the
//! `pull_from` sites; the first of those in `pull_from` order is the source. How the bytes
//! come is the **source's** `method`: `sftp` pulls over the agent's pooled SSH session to
//! that site ([`super::sessions`]), `local` copies on a shared file system.
//!
//! The copy at this site is claimed with a conditional update (two agents wanting it: one
//! wins), written to `.part`, hashed while received, flushed, **re-read and hashed from the
//! local disk**, renamed, and recorded `verifying` then `transferred` only when the digest
//! measured from those local bytes is the run's — the lifecycle shared with push, in
//! [`super::copy`]. As for push, the copies are jobs of the agent's scheduler
//! ([`super::scheduler`]), from every source at once.

use catalog_schema::RunDoc;
use tokio_util::sync::CancellationToken;

use super::copy::{self, CopyError, Direction, Outcome, Planned, Step, Wanted};
use super::{Context, Task, TaskReport};
use crate::config::Site;
use crate::datadir;

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    let mut submitted = Vec::new();
    let sources: Vec<&Site> = ctx
        .site
        .pull_from
        .iter()
        .filter_map(|name| ctx.map.site(name))
        .collect();
    if sources.is_empty() {
        return report;
    }
    for data_type in ctx.site.data_dirs.keys() {
        let holders: Vec<&Site> = sources
            .iter()
            .copied()
            .filter(|s| s.data_dir(data_type).is_some())
            .collect();
        if holders.is_empty() {
            continue;
        }
        let names: Vec<String> = holders.iter().map(|s| s.name.clone()).collect();
        copy::for_each_wanted(
            ctx,
            Task::Pull,
            Wanted {
                dest: &ctx.site.name,
                data_type,
                sources: &names,
            },
            token,
            &mut report,
            &mut submitted,
            async |run: &RunDoc| pull_run(ctx, &holders, data_type, run).await,
        )
        .await;
    }
    let links = &ctx.site.pull_from;
    copy::settle(ctx, Task::Pull, links, &submitted, token, &mut report).await;
    report
}

async fn pull_run(
    ctx: &Context,
    sources: &[&Site],
    data_type: &str,
    run: &RunDoc,
) -> Result<Step, CopyError> {
    let Some(digest) = run.digest.clone() else {
        return Ok(Step::Now(Outcome::Skipped("no manifest yet".into())));
    };
    let Some((src, src_dir)) = copy::verified_source(ctx, run, sources, data_type, &digest).await?
    else {
        return Ok(Step::Now(Outcome::Skipped(
            "no verified copy at a site this site pulls from".into(),
        )));
    };
    let dst_dir = datadir::run_dir(&ctx.site, data_type, run)?;
    Ok(Step::Copy(Box::new(Planned {
        peer: src.clone(),
        direction: Direction::Pull,
        src_dir,
        dst_dir,
        digest,
        take: None,
    })))
}
