//! The one place an agent is assembled: [`Agent::build`] turns what differs between the
//! agents that run (the daemon and `--once` in `cli/agent.rs`, `ferry recall`, the tests)
//! into the [`Context`] every task reads, with the parts they share made the same way each
//! time: the file gates and the transfer scheduler from the site's limits, one SSH session
//! pool, the record journal in the state directory, the audit's schedule there too.
//! [`Agent::run`] then runs cycles until shutdown and lets running copies finish.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CopyRef, RunScope};
use crate::config::{self, Site, SiteMap, SshEnvironment};
use crate::daemon::{run_cycles, CancellationToken, LoopOptions, Stopped};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::tasks::copy::CopyProgress;
use crate::tasks::scheduler::{Mode, Scheduler};
use crate::tasks::sessions::SessionPool;
use crate::tasks::{self, audit, Context, CycleReport, Task};
use crate::transport::limits::{Gates, Limits};

/// What differs between agents.
pub struct AgentSpec {
    /// The whole site map.
    pub map: Arc<SiteMap>,
    /// The site this agent runs as.
    pub site: Site,
    /// The opened catalogue.
    pub catalog: Arc<dyn Catalog>,
    /// This agent's identity in leases and events ([`tasks::owner::owner_id`]).
    pub owner: String,
    /// `--run` / `--name` / `--from-run`..`--to-run`.
    pub scope: RunScope,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// The daemon lets copies run behind its cycles; `--once`, recall and tests wait.
    pub mode: Mode,
    /// SSH settings (`~/.ssh/config`, known hosts) for the peer sites.
    pub ssh: SshEnvironment,
    /// Where copies report progress.
    pub progress: Arc<dyn CopyProgress>,
    /// The state directory: the record journal and the audit's last run. `None`: neither
    /// is kept.
    pub state_dir: Option<PathBuf>,
    /// How often the scheduled audit runs at most.
    pub audit_every: Option<Duration>,
    /// Where the agent's figures go (the daemon makes them before it reaches its
    /// catalogue, to serve them from its first second). `None`: figures of its own.
    pub metrics: Option<Arc<Metrics>>,
}

/// An assembled agent.
pub struct Agent {
    ctx: Context,
}

/// The site map's limits as the transport counts them (every limit at least 1).
pub fn transport_limits(l: &config::Limits) -> Limits {
    let n = |v: u32| usize::try_from(v.max(1)).unwrap_or(1);
    Limits {
        files_per_run: n(l.files_in_flight),
        transfers_per_link: n(l.transfers_per_link),
        global: n(l.global_transfers),
        bandwidth_per_link: l.bandwidth_per_link,
    }
}

impl Agent {
    /// Assembles the agent.
    pub fn build(spec: AgentSpec) -> Agent {
        let limits = transport_limits(&spec.site.limits);
        let journal = spec
            .state_dir
            .as_deref()
            .map(|dir| Arc::new(Journal::open(dir, &spec.site.name)));
        let mut audit = audit::Settings {
            state_dir: spec.state_dir.clone(),
            ..audit::Settings::default()
        };
        if let Some(every) = spec.audit_every {
            audit.every = every;
        }
        let metrics = spec
            .metrics
            .unwrap_or_else(|| Metrics::new(&spec.site.name));
        Agent {
            ctx: Context {
                map: spec.map,
                site: spec.site,
                catalog: spec.catalog,
                owner: spec.owner,
                scope: spec.scope,
                dry_run: spec.dry_run,
                gates: Gates::new(limits),
                sessions: Arc::new(SessionPool::new(spec.ssh)),
                progress: spec.progress,
                journal,
                scheduler: Arc::new(Scheduler::new(limits, spec.mode)),
                audit,
                cursors: Arc::default(),
                purging: Arc::default(),
                would_register: Arc::default(),
                metrics,
            },
        }
    }

    /// What the tasks read.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// One cycle of `tasks` (all, in cycle order, when empty).
    pub async fn cycle(&self, tasks: &[Task], token: &CancellationToken) -> CycleReport {
        tasks::run_cycle(&self.ctx, tasks, token).await
    }

    /// Runs cycles of `tasks` (every `opts.interval`, or once) until `shutdown` resolves,
    /// calling `after_cycle` with each report and its duration. Once shutdown is asked for,
    /// no copy starts; copies still running get `grace` (none when the cycle itself ran
    /// out of it). Returns why it stopped, the last report, and the copies cut off.
    pub async fn run(
        &self,
        opts: LoopOptions,
        tasks: &[Task],
        shutdown: impl Future<Output = ()>,
        after_cycle: impl Fn(&Context, &CycleReport, Duration),
    ) -> (Stopped, Option<CycleReport>, Vec<CopyRef>) {
        let grace = opts.grace;
        let closing = Arc::clone(&self.ctx.scheduler);
        let shutdown = async move {
            shutdown.await;
            closing.close();
        };
        let after_cycle = &after_cycle;
        let (stopped, last) = run_cycles(
            opts,
            |token| async move {
                let began = Instant::now();
                let report = self.cycle(tasks, &token).await;
                after_cycle(&self.ctx, &report, began.elapsed());
                report
            },
            shutdown,
        )
        .await;
        let grace = if stopped == Stopped::GraceExpired {
            Duration::ZERO
        } else {
            grace
        };
        let cut = self.ctx.scheduler.shutdown(grace).await;
        (stopped, last, cut)
    }
}
