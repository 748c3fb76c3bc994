//! Logs fit for journald and files: with stderr on a pipe (as under systemd, `| tee`, or a
//! launcher's log file) the lines carry no terminal escape codes, and `--log-format json`
//! lines are each one JSON object with stable field names.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// One `--once` cycle of a two-site local map with a run to copy, stderr on a pipe.
fn one_cycle(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let run = dir.join("daq/raw/Run000001");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("a.bin"), b"some bytes").unwrap();
    std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    std::fs::create_dir_all(dir.join("mirror/raw")).unwrap();
    let map = serde_json::json!({
        "version": 1,
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.join("daq/raw") }, "layout": "Run{number:06}",
              "completion": { "marker": "RUN_COMPLETE" }, "push_to": ["mirror"] },
            { "name": "mirror", "method": "local",
              "data_dirs": { "raw": dir.join("mirror/raw") }, "layout": "Run{number:06}" },
        ]
    });
    let config = dir.join("map.json");
    std::fs::write(&config, map.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--host",
            "daq",
            "--once",
            "--log-level",
            "debug",
            "--catalog",
        ])
        .arg(format!("sqlite:{}", dir.join("catalog.sqlite").display()))
        .args(extra)
        .env("HOME", dir)
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env_remove("NO_COLOR")
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_CATALOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn log_lines_on_a_pipe_carry_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_cycle(dir.path(), &[], &[("TERM", "xterm-256color")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.lines().count() >= 3,
        "expected log lines on stderr: {stderr}"
    );
    assert!(
        !out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b),
        "an escape byte on a pipe: {stderr:?}"
    );
}

#[test]
fn json_log_lines_are_one_object_each_with_stable_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = one_cycle(dir.path(), &["--log-format", "json"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for field in ["timestamp", "level", "fields"] {
            assert!(v.get(field).is_some(), "no {field:?} in {line}");
        }
        lines += 1;
    }
    assert!(lines >= 3, "expected JSON log lines: {stderr}");
}
