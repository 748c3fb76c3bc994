//! Catalogue errors read as messages for people: what happened and what to check on the
//! first line, no driver dump (it is logged at `--log-level debug`). They once printed the
//! MongoDB driver's topology description, with "SystemOverloadedError" for a server that
//! was simply down, and `ferry check` repeated the catalogue prefix twice.

#![allow(clippy::unwrap_used)]

use std::process::Command;

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn ferry(args: &[&str]) -> (Option<i32>, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("HOME", home.path())
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_CATALOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn no_driver_text(line: &str) {
    for internal in [
        "Kind:",
        "Topology",
        "labels",
        "SystemOverloaded",
        "source: None",
    ] {
        assert!(
            !line.contains(internal),
            "driver text {internal:?} in: {line}"
        );
    }
}

#[test]
fn an_unreachable_catalogue_says_connection_refused_and_what_to_check() {
    let uri = format!(
        "mongodb://ferry:s3cret@127.0.0.1:{}/run?serverSelectionTimeoutMS=500",
        closed_port()
    );
    let (code, _, stderr) = ferry(&["runs", "list", "--catalog", &uri]);
    assert_eq!(code, Some(3), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("ferry: catalogue mongodb://ferry:****@127.0.0.1:")
            && first.contains("is unreachable (connection refused)")
            && first.contains("check that the server runs"),
        "{stderr}"
    );
    assert_eq!(first.matches("catalogue").count(), 1, "{first}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    no_driver_text(&stderr);
}

#[test]
fn check_reports_an_unreachable_catalogue_in_one_short_unknown_line() {
    let uri = format!(
        "mongodb://127.0.0.1:{}/run?serverSelectionTimeoutMS=500",
        closed_port()
    );
    let (code, stdout, _) = ferry(&["check", "--host", "daq", "--catalog", &uri]);
    assert_eq!(code, Some(3), "{stdout}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("FERRY UNKNOWN - catalogue mongodb://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        first.contains("unreachable (connection refused)"),
        "{stdout}"
    );
    assert_eq!(first.matches("catalogue mongodb").count(), 1, "{first}");
    no_driver_text(first);
}

#[test]
fn the_driver_text_is_logged_at_debug_level() {
    let uri = format!(
        "mongodb://127.0.0.1:{}/run?serverSelectionTimeoutMS=500",
        closed_port()
    );
    let (_, _, stderr) = ferry(&["runs", "list", "--log-level", "debug", "--catalog", &uri]);
    assert!(stderr.contains("the MongoDB driver said"), "{stderr}");
}
