//! A catalogue password must never appear in a log line, an error message or `--help`,
//! whichever way it reaches Ferry and whatever the log format.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

const SECRET: &str = "hunter2-Secret";

/// A one-site map whose data directory exists, so the agent gets as far as the catalogue.
fn site_map(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("raw");
    std::fs::create_dir_all(&data).unwrap();
    let map = dir.join("site-map.json");
    let text = serde_json::json!({
        "version": 1,
        "sites": [{ "name": "daq", "hostname": "localhost", "method": "local",
                    "origin": true, "data_dirs": { "raw": data } }]
    });
    std::fs::write(&map, text.to_string()).unwrap();
    map
}

fn ferry(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Each test its own state directory: agents of parallel tests must not share a lock.
    cmd.env_remove("FERRY_CATALOG")
        .env("FERRY_CONFIG", site_map(dir))
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env("FERRY_SITE", "daq");
    cmd
}

fn uri() -> String {
    format!("mongodb://ferry:{SECRET}@127.0.0.1:9/run?authSource=admin")
}

#[test]
fn password_in_catalog_flag_not_logged_text_or_json() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["text", "json"] {
        let out = ferry(dir.path())
            .args([
                "--once",
                "--log-level",
                "trace",
                "--log-format",
                format,
                "--catalog",
            ])
            .arg(uri())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stderr.contains(SECRET),
            "{format}: password in stderr:\n{stderr}"
        );
        assert!(
            !stdout.contains(SECRET),
            "{format}: password in stdout:\n{stdout}"
        );
        // The URI itself is logged, redacted, so this test would see a leak.
        assert!(
            stderr.contains("ferry:****@127.0.0.1:9"),
            "{format}: {stderr}"
        );
    }
}

#[test]
fn password_in_env_not_logged_to_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ferry.log");
    let out = ferry(dir.path())
        .env("FERRY_CATALOG", uri())
        .args(["--once", "--log-level", "debug", "--log-file"])
        .arg(&log)
        .output()
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ferry:****@127.0.0.1:9"), "{logged}");
    assert!(!logged.contains(SECRET), "password in log file:\n{logged}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));
}

#[test]
fn help_never_shows_catalog_env_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path())
        .env("FERRY_CATALOG", uri())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
}

#[test]
fn help_shows_cax_compatible_flags_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--host",
        "--catalog",
        "--once",
        "--run",
        "--name",
        "--task",
        "--log-file",
        "--log-level",
        "--log-format",
        "--dry-run",
        "Exit codes:",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_catalog_uri_is_usage_error_without_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path())
        .args(["--once", "--catalog", "postgres://u:hunter2-Secret@h/db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("catalogue URI"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
