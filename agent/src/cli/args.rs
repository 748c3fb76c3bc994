//! Command-line definitions. The agent's flags follow cax's so operators keep their habits:
//! `ferry [--config FILE] [--host SITE] [--once] [--run N | --name NAME] [--task T ...]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::exit::EXIT_CODES_HELP;
use super::logging::LogArgs;
pub use crate::tasks::Task;

/// Ferry: moves run data between sites, proves every copy with checksums, and records
/// every copy in the run catalogue.
///
/// Without a subcommand, runs the agent for one site: as a daemon, or one cycle with
/// `--once`.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = EXIT_CODES_HELP, max_term_width = 100)]
pub struct Cli {
    /// The shared JSON site map (Ferry's own format or a legacy cax.json).
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The site this agent runs as [default: $FERRY_SITE, else the short hostname].
    #[arg(long, global = true, value_name = "SITE")]
    pub host: Option<String>,

    /// The run catalogue: mongodb://… or sqlite:PATH [default: $FERRY_CATALOG, else the
    /// site map's, else the embedded catalogue].
    #[arg(long, global = true, value_name = "URI")]
    pub catalog: Option<String>,

    /// Run one cycle and exit, instead of running as a daemon.
    #[arg(long)]
    pub once: bool,

    /// Work on this run number only.
    #[arg(long, value_name = "N", conflicts_with = "name",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub run: Option<i64>,

    /// Work on the run with this name only.
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub name: Option<String>,

    /// Work on runs numbered N and above only (with --to-run: a range, as massive-cax's).
    #[arg(long, value_name = "N", conflicts_with_all = ["run", "name"],
          value_parser = clap::value_parser!(i64).range(0..))]
    pub from_run: Option<i64>,

    /// Work on runs numbered M and below only (inclusive); -1 = no upper end, as
    /// massive-ruciax took it.
    #[arg(long, value_name = "M", conflicts_with_all = ["run", "name"],
          allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..))]
    pub to_run: Option<i64>,

    /// Run only these tasks (repeatable), in the cycle's order. cax task names are accepted.
    #[arg(long = "task", value_enum, value_name = "TASK")]
    pub tasks: Vec<Task>,

    /// Serve Prometheus metrics of the agent's cycles at http://ADDR/metrics (e.g.
    /// `127.0.0.1:9464`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// How long a daemon waits from the start of one cycle to the start of the next.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,

    /// The audit task's slow schedule: at most one complete audit per this long (e.g.
    /// `24h`, `7d`); `--task audit` audits at once.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub audit_every: std::time::Duration,

    /// Print what would be done (copies, deletions) without doing it.
    #[arg(long, global = true)]
    pub dry_run: bool,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Site map tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Query the run catalogue (needs no site map).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Restore a run from tape into this site's data directory, verify it against the
    /// manifest, and record the copy (runs as the site given by --host).
    Recall(RecallArgs),
    /// Nagios/Icinga plugin: is this site's agent alive and well? (heartbeat age, failed
    /// work, free disk, last copy made). Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Check(CheckArgs),
    /// Serve a read-only web view and JSON API of the run catalogue (needs no site map):
    /// the runs, each run, the sites and their agents, the transfers per link.
    Serve(ServeArgs),
    /// Print the man page (roff) or a shell's completion script, for packagers and source
    /// installs: `ferry generate bash > /usr/share/bash-completion/completions/ferry`.
    Generate {
        /// What to print.
        #[arg(value_enum)]
        what: Generated,
    },
}

/// What `ferry generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    /// The man page, `ferry(1)`, in roff.
    Man,
    /// Bash completions.
    Bash,
    /// Zsh completions.
    Zsh,
    /// Fish completions.
    Fish,
}

/// `ferry check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// WARNING when the last heartbeat is older than this; CRITICAL at twice it.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_age: std::time::Duration,
    /// WARNING when a data directory has less than this percent free.
    #[arg(long, value_name = "PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub warn_free: u8,
    /// CRITICAL when a data directory has less than this percent free.
    #[arg(long, value_name = "PERCENT", default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub critical_free: u8,
    /// WARNING when the agent has made no copy (push, pull, retry) for longer than this; a
    /// site that only receives (no outgoing links): when it has received none for as long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_since_transfer: Option<std::time::Duration>,
    /// The site to judge. On another host than SITE (a monitoring host) it is judged from
    /// the catalogue alone, its heartbeat, without the site map's host-local checks
    /// [default: this host's site: --host, FERRY_SITE, the host name].
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
}

/// `ferry serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on: loopback unless told otherwise (port 0: any free port,
    /// printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Ask for HTTP basic credentials, checked against this htpasswd file of bcrypt hashes
    /// (`htpasswd -nB USER`).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Show an agent as silent when its last heartbeat is older than this.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub silent_after: std::time::Duration,
    /// Runs per page of the runs table.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// `ferry recall`
#[derive(Debug, Args)]
pub struct RecallArgs {
    /// The run number.
    #[arg(long, value_name = "N", conflicts_with = "name",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub run: Option<i64>,
    /// The run name.
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub name: Option<String>,
    /// The site to restore to; must be this site (the data is written to local disk).
    #[arg(long, value_name = "SITE")]
    pub to: Option<String>,
    /// The tape backend to read from [default: every backend of this site holding the
    /// run, in the site map's order].
    #[arg(long, value_name = "BACKEND")]
    pub from: Option<String>,
}

/// `ferry config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a site map and print a summary; exit 0 when valid, 2 with every problem listed.
    Validate(ValidateArgs),
}

/// `ferry config validate`
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ferry runs …`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, one line each.
    List(RunsListArgs),
    /// Show one run and every copy of it.
    Show(RunsShowArgs),
}

/// `ferry runs list`
#[derive(Debug, Args)]
pub struct RunsListArgs {
    /// Only runs with a copy in this status (with --host: at that site). The global
    /// `--host SITE` filters the list to runs with a copy at SITE.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only runs with no transferred copy at this site.
    #[arg(long, value_name = "SITE")]
    pub missing_at: Option<String>,
    /// Only runs with fewer than N transferred copies.
    #[arg(long, value_name = "N")]
    pub fewer_copies_than: Option<u32>,
    /// Only runs that started on or after this date (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A run name from the command line, refused (exit 2, nothing done) when it cannot be one.
fn run_name(s: &str) -> Result<String, String> {
    catalog_schema::check_run_name(s)
        .map(|()| s.to_owned())
        .map_err(str::to_owned)
}

/// `ferry runs show`
#[derive(Debug, Args)]
pub struct RunsShowArgs {
    /// A run number or a run name.
    #[arg(value_parser = run_name)]
    pub run: String,
    /// Print the run document as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cax_task_names_accepted() {
        let cli = Cli::try_parse_from(["ferry", "--once", "--task", "CopyPush", "--task", "purge"])
            .unwrap();
        assert_eq!(cli.tasks, vec![Task::Push, Task::Purge]);
    }

    #[test]
    fn recall_takes_its_own_run_and_sites() {
        let cli = Cli::try_parse_from([
            "ferry",
            "--host",
            "daq",
            "recall",
            "--run",
            "7",
            "--from",
            "lto",
            "--dry-run",
        ])
        .unwrap();
        assert!(cli.dry_run);
        let Some(Command::Recall(r)) = &cli.command else {
            panic!("not recall")
        };
        assert_eq!(
            (r.run, r.from.as_deref(), r.to.as_deref()),
            (Some(7), Some("lto"), None)
        );
        assert!(Cli::try_parse_from(["ferry", "recall", "--run", "1", "--name", "x"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "recall", "--name", "../x"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "recall", "--run", "-4"]).is_err());
    }

    #[test]
    fn run_and_name_conflict() {
        assert!(Cli::try_parse_from(["ferry", "--run", "1", "--name", "x"]).is_err());
    }
}
