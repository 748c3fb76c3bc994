//! `ferry` without a subcommand: the agent for one site.

use anyhow::Result;

use super::exit::{coded, Exit};
use super::Cli;

pub(super) fn run(_cli: &Cli) -> Result<Exit> {
    Err(coded(
        Exit::Unsupported,
        "the agent's tasks are not built in this version yet; nothing was done",
    ))
}
