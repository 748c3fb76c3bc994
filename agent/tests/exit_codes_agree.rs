//! One exit-code table: `cli/exit.rs` is the source; `ferry --help`, the systemd unit, the
//! screen/tmux launcher and both docs pages must say the same (they disagreed once: the unit
//! and the launcher cited an exit code 5 that no code path returned).

use std::collections::BTreeSet;
use std::path::Path;

use ferry::cli::exit::{Exit, EXIT_CODES_HELP};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn codes(filter: impl Fn(Exit) -> bool) -> BTreeSet<u8> {
    Exit::ALL
        .into_iter()
        .filter(|e| filter(*e))
        .map(|e| e as u8)
        .collect()
}

/// The codes in the first column of the markdown table under `heading`.
fn table_codes(page: &str, heading: &str) -> BTreeSet<u8> {
    let text = read(page);
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{page} has no {heading:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            l.trim_start_matches('|')
                .split('|')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn the_help_lists_every_exit_code() {
    let listed: BTreeSet<u8> = EXIT_CODES_HELP
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(listed, codes(|_| true));
}

#[test]
fn both_docs_tables_list_exactly_the_exit_codes() {
    assert_eq!(
        table_codes("docs/operations.md", "## 5. Exit codes"),
        codes(|_| true)
    );
    assert_eq!(table_codes("docs/cli.md", "## Exit codes"), codes(|_| true));
}

#[test]
fn the_systemd_unit_does_not_restart_after_the_codes_that_need_a_person() {
    let unit = read("deploy/ferry@.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .expect("the unit sets RestartPreventExitStatus");
    let prevented: BTreeSet<u8> = line
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(prevented, codes(|e| e != Exit::Ok && !e.worth_a_restart()));
    assert!(unit.contains("Restart=on-failure"));
}

#[test]
fn the_launcher_restarts_after_exactly_the_codes_worth_a_restart() {
    let script = read("deploy/ferry-screen.sh");
    let arm = script
        .lines()
        .map(str::trim)
        .find(|l| l.contains("restarting in"))
        .expect("the launcher has a restart arm");
    let restarted: BTreeSet<u8> = arm
        .split(')')
        .next()
        .unwrap()
        .split('|')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    assert_eq!(restarted, codes(Exit::worth_a_restart));
}
