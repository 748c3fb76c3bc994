//! `ferry runs list|show`.

use anyhow::Result;

use super::args::RunsCommand;
use super::exit::{coded, Exit};
use super::Cli;

pub(super) fn run(_cli: &Cli, _cmd: &RunsCommand) -> Result<Exit> {
    Err(coded(Exit::Unsupported, "runs: not built yet"))
}
