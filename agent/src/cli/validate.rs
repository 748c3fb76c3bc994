//! `ferry config validate`.

use anyhow::Result;

use super::args::ValidateArgs;
use super::exit::{coded, Exit};
use super::Cli;

pub(super) fn run(_cli: &Cli, _args: &ValidateArgs) -> Result<Exit> {
    Err(coded(Exit::Unsupported, "config validate: not built yet"))
}
