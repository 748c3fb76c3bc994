//! `ferry` without a subcommand: the agent for one site.

use anyhow::{Context as _, Result};

use super::exit::{coded, Exit};
use super::Cli;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentSpec};
use crate::catalog::{resolve_catalog, CatalogRequest, CatalogTarget};
use crate::config::{self, HostSource, LoadOptions, SshEnvironment};
use crate::daemon::lock::SiteLock;
use crate::daemon::metrics::{self, Metrics};
use crate::daemon::{shutdown_signal, CancellationToken, LoopOptions, Stopped};
use crate::datadir::roots::{Locking, SiteRoots};
use crate::tasks::scheduler::Mode;
use crate::tasks::{self, report, Context, CycleReport, Outcome, RunScope, Task};
use catalog_schema::CopyStatus;

/// The site this agent runs as: `--host`, else `$FERRY_SITE`, else the short host name
/// (as cax did).
pub(super) fn site_identity(flag: Option<&str>) -> Result<(String, HostSource)> {
    if let Some(site) = flag {
        return Ok((site.to_string(), HostSource::Flag));
    }
    if let Ok(site) = std::env::var("FERRY_SITE") {
        if !site.trim().is_empty() {
            return Ok((site.trim().to_string(), HostSource::Environment));
        }
    }
    let host = gethostname::gethostname();
    let host = host
        .to_str()
        .context("the host name is not valid UTF-8: pass --host SITE or set FERRY_SITE")?;
    let short = host.split('.').next().unwrap_or(host);
    if short.is_empty() {
        return Err(coded(
            Exit::Usage,
            "cannot tell which site this is: pass --host SITE or set FERRY_SITE",
        ));
    }
    Ok((short.to_string(), HostSource::Hostname))
}

/// Loads the site map with the host-local checks for `site`. Every problem is printed; a
/// bad site map is a usage error and nothing runs.
pub(super) fn load_site_map(cli: &Cli, site: &(String, HostSource)) -> Result<config::Loaded> {
    load_with(cli, Some(site))
}

/// Loads the site map's shared part only (no host-local checks), for commands that need
/// just its catalogue settings (`ferry runs`).
pub(super) fn load_shared_site_map(cli: &Cli) -> Result<config::Loaded> {
    load_with(cli, None)
}

fn load_with(cli: &Cli, site: Option<&(String, HostSource)>) -> Result<config::Loaded> {
    let Some(path) = &cli.config else {
        return Err(coded(
            Exit::Usage,
            "no site map: pass --config FILE or set FERRY_CONFIG",
        ));
    };
    let opts = LoadOptions {
        host: site.map(|(name, _)| name.clone()),
        host_source: site.map_or(HostSource::Flag, |(_, from)| *from),
        ssh_config: None,
    };
    match config::load(path, &opts) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            Ok(loaded)
        }
        Err(err) => Err(coded(Exit::Usage, err.to_string())),
    }
}

/// The catalogue a command opens, from `--catalog`, the environment and the site map's
/// `catalog` section ([`resolve_catalog`], the one place that decides). An unset variable
/// or an unreadable password file is bad input (exit 2), named in the message.
pub(super) fn catalog_target(cli: &Cli, loaded: Option<&config::Loaded>) -> Result<CatalogTarget> {
    resolve_catalog(&CatalogRequest::new(cli.catalog.as_deref(), loaded))
        .map_err(|e| coded(super::exit::catalog_exit(&e), e.to_string()))
}

/// The runs this invocation works on: `--run`, `--name`, or `--from-run`/`--to-run` (clap
/// keeps them apart), else all.
pub(super) fn run_scope(cli: &Cli) -> Result<RunScope> {
    let to = cli.to_run.filter(|t| *t >= 0);
    Ok(match (&cli.run, &cli.name, cli.from_run, to) {
        (Some(n), _, _, _) => RunScope::Number(*n),
        (None, Some(name), _, _) => RunScope::Name(name.clone()),
        (None, None, Some(f), Some(t)) if f > t => {
            return Err(coded(
                Exit::Usage,
                format!("--from-run {f} is after --to-run {t}: no run is in that range"),
            ))
        }
        (None, None, None, None) => RunScope::All,
        (None, None, from, to) => RunScope::Range(tasks::RunRange { from, to }),
    })
}

/// What a command that runs as one site needs: the site's name, the site map (checked for
/// this host), the catalogue to use, and the site's model.
pub(super) struct AsSite {
    pub site: String,
    pub loaded: config::Loaded,
    pub catalog: CatalogTarget,
    pub model: config::Site,
}

/// Resolves [`AsSite`] from `--host`, `--config` and `--catalog` (bad input: exit 2).
pub(super) fn as_site(cli: &Cli) -> Result<AsSite> {
    let identity = site_identity(cli.host.as_deref())?;
    let loaded = load_site_map(cli, &identity)?;
    let site = identity.0;
    let catalog = catalog_target(cli, Some(&loaded))?;
    let Some(model) = loaded.map.site(&site).cloned() else {
        return Err(coded(
            Exit::Usage,
            format!("site {site} is not in the site map"),
        ));
    };
    Ok(AsSite {
        site,
        loaded,
        catalog,
        model,
    })
}

pub(super) fn run(cli: &Cli) -> Result<Exit> {
    let scope = run_scope(cli)?;
    let AsSite {
        site,
        loaded,
        catalog,
        model: site_model,
    } = as_site(cli)?;
    let asked: Vec<Task> = cli.tasks.clone();
    let ssh = SshEnvironment::load(None).map_err(|e| coded(Exit::Usage, e.to_string()))?;
    let (progress, bars) = super::progress::for_agent(cli.once);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (stopped, report) = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
        let state_dir = SiteLock::default_dir();
        // One agent per site per machine: a lock in each data directory (checked to be this
        // site's, never created unless the site map says so) and one in the state directory.
        let mut roots = open_roots(&loaded.map, &site_model, Locking::Take)?;
        let lock = SiteLock::acquire(&state_dir, &site).map_err(|e| {
            let code = if e.is_retryable() { Exit::Locked } else { Exit::Failed };
            coded(code, e.to_string())
        })?;
        tracing::info!(%site, %catalog, once = cli.once, lock = %lock.path().display(), "ferry agent starting");
        // The endpoint answers from the first second, before the catalogue does (its
        // `ferry_catalog_up` is 0 until then).
        let metrics = Metrics::new(&site);
        let stop_metrics = CancellationToken::new();
        if let Some(addr) = cli.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                coded(Exit::Usage, format!("--metrics-listen {addr}: cannot listen: {e}"))
            })?;
            tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            let stopped = stop_metrics.clone();
            tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), async move {
                stopped.cancelled().await;
            }));
        }
        let _stop_metrics = stop_metrics.clone().drop_guard();
        let mut shutdown = std::pin::pin!(shutdown);
        // By hand (`--once`) an unreachable catalogue is an answer (exit 3); the daemon
        // instead waits for it, alive and saying why, until it answers or is stopped.
        let mut wait = Duration::from_secs(2);
        let opened = loop {
            match crate::catalog::open_target(&catalog).await {
                Ok(opened) => break opened,
                Err(e) if !cli.once && e.is_retryable() => {
                    metrics.catalog_answers(false);
                    let e = catalog.scrub(&e.to_string());
                    tracing::warn!(%catalog, "catalogue unreachable, retrying in {wait:?}: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => return Ok((Stopped::Shutdown, None)),
                    }
                    wait = (wait * 2).min(CATALOG_PATIENCE);
                }
                Err(e) => {
                    let code = super::exit::catalog_exit(&e);
                    return Err(coded(code, catalog.scrub(&e.to_string())));
                }
            }
        };
        metrics.catalog_answers(true);
        if !cli.dry_run {
            mark_roots(&mut roots, opened.as_ref(), &site).await?;
        }
        // The daemon plans copies each cycle and lets them run behind it; `--once` waits for
        // the copies it started before the cycle goes on.
        let mode = if cli.once { Mode::Once } else { Mode::Background };
        let agent = Agent::build(AgentSpec {
            map: Arc::new(loaded.map.clone()),
            site: site_model,
            catalog: Arc::from(opened),
            owner: tasks::owner::owner_id(&site),
            scope,
            dry_run: cli.dry_run,
            mode,
            ssh,
            progress,
            state_dir: Some(state_dir),
            audit_every: Some(cli.audit_every),
            metrics: Some(Arc::clone(&metrics)),
        });
        let opts = LoopOptions {
            interval: cli.interval,
            once: cli.once,
            grace: GRACE,
        };
        // Once shutdown is asked for, no copy starts, not even one a finishing copy would
        // make room for; copies still running (the daemon's, or `--once`'s after a signal)
        // get the grace period; one cut off keeps its lease, which the next agent here takes
        // back at once.
        let once = cli.once;
        let (stopped, last, cut) = agent
            .run(opts, &asked, shutdown, |ctx, report, took| {
                if once {
                    // The bars leave the screen first: nothing is drawn after the report.
                    if let Some(bars) = &bars {
                        bars.finish();
                    }
                    print_report(report);
                } else {
                    log_report(report);
                }
                record_metrics(&metrics, ctx, report, took);
            })
            .await;
        if !cut.is_empty() {
            tracing::warn!(copies = cut.len(), "copies stopped at the end of the grace period");
        }
        stop_metrics.cancel();
        drop(lock);
        drop(roots);
        if let Some(bars) = &bars {
            bars.finish();
        }
        anyhow::Ok((stopped, last))
    })?;
    // The exit code says whether everything asked was done: a cycle that could run only
    // some of its tasks did not do everything asked.
    Ok(match report {
        // A daemon asked to stop, stopping cleanly, did what it was asked.
        _ if stopped == Stopped::Shutdown && !cli.once => Exit::Ok,
        Some(r) if !r.failed.is_empty() || r.tasks.iter().any(|(_, t)| t.has_failures()) => {
            Exit::Failed
        }
        Some(_) => Exit::Ok,
        None => Exit::Failed,
    })
}

/// Checks and locks the site's data directories ([`SiteRoots::open`]): exit 4 when another
/// agent holds one, 2 for a missing, foreign or shared directory.
pub(super) fn open_roots(
    map: &config::SiteMap,
    site: &config::Site,
    locking: Locking,
) -> Result<SiteRoots> {
    SiteRoots::open(map, site, locking).map_err(|e| {
        let code = if e.is_locked() {
            Exit::Locked
        } else {
            Exit::Usage
        };
        coded(code, e.to_string())
    })
}

/// Marks the data directories that have no marker yet, unless one is empty while the
/// catalogue records copies there (exit 2).
pub(super) async fn mark_roots(
    roots: &mut SiteRoots,
    catalog: &dyn crate::catalog::Catalog,
    site: &str,
) -> Result<()> {
    let mut holds = std::collections::BTreeSet::new();
    for root in roots.unmarked() {
        let runs = catalog
            .copies_in_status(site, CopyStatus::Transferred, None, 50)
            .await
            .map_err(|e| coded(Exit::Catalog, format!("catalogue: {e}")))?;
        let here = runs.iter().any(|r| {
            r.data.iter().any(|c| {
                c.host == site
                    && c.data_type == root.data_type
                    && c.status == CopyStatus::Transferred
                    && !c.is_tape()
            })
        });
        if here {
            holds.insert(root.data_type.clone());
        }
    }
    roots
        .mark(|t| holds.contains(t))
        .map_err(|e| coded(Exit::Usage, e.to_string()))
}

/// One cycle's report as metrics: per-task counts, whether it copied, free disk.
fn record_metrics(metrics: &Metrics, ctx: &Context, report: &CycleReport, took: Duration) {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let tasks: Vec<(String, metrics::TaskCounts)> = report
        .tasks
        .iter()
        .map(|(t, r)| {
            (
                t.name().to_string(),
                (
                    n(r.count(Outcome::Done)),
                    n(r.count(Outcome::Skipped)),
                    n(r.count(Outcome::Failed)),
                ),
            )
        })
        .collect();
    let copied = report.tasks.iter().any(|(t, r)| {
        matches!(t, Task::Push | Task::Pull | Task::Retry) && r.count(Outcome::Done) > 0
    });
    let disks: Vec<(String, (u64, u64))> = ctx
        .site
        .data_dirs
        .iter()
        .filter_map(|(t, dir)| {
            let d = tasks::purge::disk_usage(dir).ok()?;
            Some((t.clone(), (d.total_bytes, d.free_bytes)))
        })
        .collect();
    let quarantine = ctx.catalog.quarantine();
    let quarantined = metrics::Quarantined {
        skips: quarantine.count(),
        documents: n(quarantine.documents().len()),
    };
    metrics.record_cycle_with(took, &tasks, copied, &disks, Some(quarantined));
}

/// How long running copies (and a running cycle) may go on after shutdown was asked for.
const GRACE: Duration = Duration::from_secs(300);

/// The longest wait between two attempts of a daemon to reach its catalogue.
const CATALOG_PATIENCE: Duration = Duration::from_secs(60);

/// The site map's limits as the transport's gates take them.
/// One line per task and per run touched, on stdout: what a person at the terminal asked for.
fn print_report(report: &CycleReport) {
    for (task, r) in &report.tasks {
        let unreadable = match r.quarantined {
            0 => String::new(),
            n => format!(", {n} unreadable run documents skipped"),
        };
        println!(
            "{task}: {} done, {} skipped, {} failed{unreadable}",
            r.count(Outcome::Done),
            r.count(Outcome::Skipped),
            r.count(Outcome::Failed)
        );
        for outcome in [Outcome::Done, Outcome::Skipped, Outcome::Failed] {
            let word = match outcome {
                Outcome::Done => "done",
                Outcome::Skipped => "skipped",
                Outcome::Failed => "FAILED",
            };
            for entry in r.with(outcome) {
                println!("  {word:<8} {entry}");
            }
        }
    }
    for entry in &report.failed {
        println!("FAILED   {entry}");
    }
}

/// The daemon's report of one cycle, for journald and log files ([`report::log`]): a
/// summary line per task, a line per run done or failed; what was left alone at debug.
fn log_report(report: &CycleReport) {
    for (task, r) in &report.tasks {
        report::log(*task, r);
    }
    for entry in &report.failed {
        tracing::warn!(outcome = "failed", "{entry}");
    }
}
