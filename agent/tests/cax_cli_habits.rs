//! cax's command-line habits, typed as cax users type them, through the real binary.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn ferry(args: &[&str], home: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("HOME", home)
        .env("FERRY_HOME", home)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_CATALOG")
        .env_remove("FERRY_SITE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_range_of_runs_is_parsed_and_an_empty_range_refused() {
    let home = tempfile::tempdir().unwrap();
    let (code, out) = ferry(&["--once", "--from-run", "7", "--to-run", "3"], home.path());
    assert_eq!(code, 2, "{out}");
    // Refused before anything else: no site map is needed to say so.
    assert!(out.contains("--from-run 7 is after --to-run 3"), "{out}");
}

#[test]
fn a_range_and_a_single_run_are_not_both_accepted() {
    let home = tempfile::tempdir().unwrap();
    let (code, out) = ferry(&["--once", "--run", "5", "--from-run", "3"], home.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--from-run") && out.contains("--run"), "{out}");
}

#[test]
fn massive_ruciax_open_ended_to_run_is_accepted() {
    let home = tempfile::tempdir().unwrap();
    let (code, out) = ferry(
        &["--once", "--from-run", "3", "--to-run", "-1", "--help"],
        home.path(),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn cax_log_flags_append_to_the_log_file() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("cax.log");
    std::fs::write(&log, "an older line\n").unwrap();
    // `ferry runs list` on an empty embedded catalogue logs one info line.
    for flag in ["--log-file", "--logfile"] {
        let (code, out) = ferry(
            &["runs", "list", flag, log.to_str().unwrap(), "--log", "info"],
            home.path(),
        );
        assert_eq!(code, 0, "{flag}: {out}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("an older line\n"), "{text}");
    assert_eq!(
        text.matches("nothing recorded yet").count(),
        2,
        "one line per run, appended: {text}"
    );
}
