//! `ferry generate`: the man page and the shell completions, made from the clap definitions
//! so they cannot drift from the flags (`clap_mangen`, `clap_complete`). The Debian package
//! (`deploy/build-deb.sh`) installs their output; a source install runs them by hand
//! (`docs/operations.md`).

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;
use clap_complete::Shell;

use super::args::{Cli, Generated};
use super::exit::Exit;

/// Writes what was asked for to stdout.
pub fn run(what: Generated) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    match what {
        Generated::Man => clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("rendering the man page")?,
        Generated::Bash => clap_complete::generate(Shell::Bash, &mut cmd, "ferry", &mut out),
        Generated::Zsh => clap_complete::generate(Shell::Zsh, &mut cmd, "ferry", &mut out),
        Generated::Fish => clap_complete::generate(Shell::Fish, &mut cmd, "ferry", &mut out),
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing to stdout")?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_names_every_subcommand_and_the_exit_codes() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap();
        for word in [
            "ferry",
            "config",
            "runs",
            "recall",
            "check",
            "Exit codes",
            "\\-\\-once",
        ] {
            assert!(page.contains(word), "the man page lacks {word:?}");
        }
    }
}
