//! The command line: the edge of the program, and the only place `anyhow` is used.
//!
//! - [`args`]: clap definitions, compatible with cax's flags.
//! - [`exit`]: the documented exit codes and how errors map onto them.
//! - [`logging`]: tracing set-up (text or JSON, stderr or an appended file).
//! - [`progress`]: progress bars for `--once` on a terminal, log lines otherwise.
//! - `agent`, `validate`, `runs`, `recall`, `check`, `serve`, `generate`: one file per
//!   command.

mod agent;
pub mod args;
mod check;
pub mod exit;
mod generate;
pub mod logging;
pub mod progress;
mod recall;
mod runs;
mod serve;
mod validate;

use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;
pub use exit::Exit;

/// Parses the command line, sets up logging, runs the command and maps the outcome to an
/// exit code. Errors are printed once, with their whole chain (`{:#}`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _guard = match logging::init(&cli.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("ferry: {err:#}");
            return Exit::Usage.into();
        }
    };
    if let Some(args::Command::Check(c)) = &cli.command {
        // A monitoring plugin: its own exit codes and one line on stdout, whatever happens.
        return check::run(&cli, c);
    }
    let outcome = match &cli.command {
        Some(args::Command::Config {
            command: args::ConfigCommand::Validate(v),
        }) => validate::run(&cli, v),
        Some(args::Command::Runs { command }) => runs::run(&cli, command),
        Some(args::Command::Recall(r)) => recall::run(&cli, r),
        Some(args::Command::Serve(s)) => serve::run(&cli, s),
        Some(args::Command::Check(_)) => Ok(Exit::Ok), // handled above
        Some(args::Command::Generate { what }) => generate::run(*what),
        None => agent::run(&cli),
    };
    match outcome {
        Ok(code) => code.into(),
        Err(err) => {
            let code = exit::classify(&err);
            // Always on the terminal; also in the log file when logs go elsewhere.
            if cli.log.log_file.is_some() {
                tracing::error!("{err:#}");
            }
            eprintln!("ferry: {err:#}");
            code.into()
        }
    }
}
