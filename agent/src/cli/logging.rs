//! Logging set-up: readable lines on stderr by default, appended to `--log-file` when
//! given, JSON lines with `--log-format json`. Secrets never reach a log line because the
//! types that hold them (e.g. [`crate::catalog::CatalogUri`]) redact themselves.

use std::fs::OpenOptions;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Append log lines to this file instead of stderr (cax's `--log-file`; `--logfile`,
    /// massive-tsm's spelling, also works).
    #[arg(long, global = true, value_name = "FILE", alias = "logfile")]
    pub log_file: Option<PathBuf>,
    /// error, warn, info, debug or trace; or a tracing filter such as `ferry=debug`
    /// (cax's `--log LEVEL` also works).
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        default_value = "info",
        alias = "log"
    )]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Whether log lines on stderr carry colour: only on a terminal, and never when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>). A pipe, a file or
/// journald gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Keeps logging alive until dropped (nothing to flush today; the type keeps the door open).
pub struct LogGuard;

/// Installs the global subscriber. Fails on a bad level or an unwritable log file.
pub fn init(args: &LogArgs) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level `{}`: expected error, warn, info, debug, trace or a tracing filter",
            args.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match (&args.log_file, args.log_format) {
        (Some(path), format) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("--log-file {}: cannot open for appending", path.display())
                })?;
            let writer = Mutex::new(file);
            match format {
                LogFormat::Text => builder.with_ansi(false).with_writer(writer).try_init(),
                LogFormat::Json => builder.json().with_writer(writer).try_init(),
            }
        }
        // Through `progress::Stderr`, which keeps log lines and progress bars apart.
        (None, LogFormat::Text) => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(super::progress::Stderr)
            .try_init(),
        (None, LogFormat::Json) => builder
            .json()
            .with_writer(super::progress::Stderr)
            .try_init(),
    };
    // A second init (only possible in tests) keeps the first subscriber.
    drop(result);
    Ok(LogGuard)
}

#[cfg(test)]
mod colour_tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
