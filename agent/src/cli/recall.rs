//! `ferry recall --run N [--to SITE] [--from BACKEND] [--dry-run]`: restore a run from
//! tape (`tasks::recall`), as the agent of one site (`--host`, as `ferry --once`).
//!
//! It takes no site lock: the catalogue's claim keeps it and a running daemon apart (only
//! one of them can hold the copy), so an operator need not stop the daemon to recall.

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::args::RecallArgs;
use super::exit::{coded, Exit};
use super::Cli;
use crate::agent::{Agent, AgentSpec};
use crate::catalog::RunSelector;
use crate::config::SshEnvironment;
use crate::tasks::copy::LogProgress;
use crate::tasks::recall::{self, Request};
use crate::tasks::scheduler::Mode;
use crate::tasks::{self, RunScope};

pub(super) fn run(cli: &Cli, args: &RecallArgs) -> Result<Exit> {
    let selector = match (
        args.run.or(cli.run),
        args.name.clone().or_else(|| cli.name.clone()),
    ) {
        (Some(n), None) => RunSelector::Number(n),
        (None, Some(name)) => RunSelector::Name(name),
        (Some(_), Some(_)) => {
            return Err(coded(Exit::Usage, "give --run N or --name NAME, not both"))
        }
        (None, None) => return Err(coded(Exit::Usage, "which run? give --run N or --name NAME")),
    };
    let super::agent::AsSite {
        site,
        loaded,
        catalog,
        model: site_model,
    } = super::agent::as_site(cli)?;
    let ssh = SshEnvironment::load(None).map_err(|e| coded(Exit::Usage, e.to_string()))?;
    let scope = match &selector {
        RunSelector::Number(n) => RunScope::Number(*n),
        RunSelector::Name(name) => RunScope::Name(name.clone()),
    };
    let request = Request {
        run: selector,
        to: args.to.clone(),
        from: args.from.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(async {
        let mut roots = super::agent::open_roots(
            &loaded.map,
            &site_model,
            crate::datadir::roots::Locking::Skip,
        )?;
        let opened = crate::catalog::open_target(&catalog)
            .await
            .map_err(|e| coded(super::exit::catalog_exit(&e), catalog.scrub(&e.to_string())))?;
        if !cli.dry_run {
            super::agent::mark_roots(&mut roots, opened.as_ref(), &site).await?;
        }
        // The site's own journal: the agent replays what a recall could not record.
        let agent = Agent::build(AgentSpec {
            map: Arc::new(loaded.map.clone()),
            site: site_model,
            catalog: Arc::from(opened),
            owner: tasks::owner::owner_id(&site),
            scope,
            dry_run: cli.dry_run,
            mode: Mode::Waiting,
            ssh,
            progress: Arc::new(LogProgress::new()),
            state_dir: Some(crate::daemon::lock::SiteLock::default_dir()),
            audit_every: None,
            metrics: None,
        });
        let ctx = agent.context();
        tracing::info!(%site, %catalog, run = %request.run, to = request.to.as_deref(),
            from = request.from.as_deref(), "ferry recall starting");
        anyhow::Ok(recall::recall(ctx, &request).await)
    })?;
    match outcome {
        Ok(done) => {
            for line in &done {
                println!("{line}");
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            let code = if e.is_usage() {
                Exit::Usage
            } else if e.catalog_error().is_some_and(|c| c.is_connection()) {
                Exit::Catalog
            } else {
                Exit::Failed
            };
            Err(coded(code, catalog.scrub(&format!("recall: {e}"))))
        }
    }
}
