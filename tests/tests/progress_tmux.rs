//! `ferry --once`'s progress bars under a real terminal: the agent copies a run of a few
//! files (throttled by `bandwidth_per_link` so the copy lasts a second or two) inside a
//! detached tmux session of a fixed size (120×40, a private tmux server on its own socket),
//! over SFTP (the harness's sshd) and over a local link. The screen is captured with
//! `tmux capture-pane` several times while it copies and once after, and must show:
//!
//! - bars while copying (else the test would prove nothing), never an "ETA 0s" at a rate of
//!   0 B/s, never a total bar with nothing moved (the empty `total … ETA 0s` line that
//!   stood above the first run's header), and never a total ahead of the bytes its file
//!   lines show (file bars drawn only on a steady tick lagged it by a report);
//! - at the end: no bar left anywhere on the screen, the `total X of Y` line, then the
//!   cycle's report, whose lines are the last ones on screen (no bar drawn after it).
//!
//! Needs tmux (`apt-get install tmux`, deploy/install-test-deps.sh); fails saying so when it
//! is missing.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ferry_tests::Sshd;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const MARKER: &str = "RUN_COMPLETE";
/// What the session's script prints when ferry has exited.
const EXITED: &str = "ferry exited with status";

/// A private tmux server (its own socket name), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn binary() -> PathBuf {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("tmux"))
            .find(|p| p.is_file());
        found.unwrap_or_else(|| {
            panic!(
                "tmux not found on PATH: this test runs ferry under a real terminal; \
                 install it with `apt-get install tmux` (deploy/install-test-deps.sh)"
            )
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(Self::binary());
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `script` in a detached 120×40 session.
    fn start(name: &str, script: &Path) -> Tmux {
        let tmux = Tmux {
            socket: format!("ferry-test-{}-{name}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "walk",
            "-x",
            "120",
            "-y",
            "40",
            &script.display().to_string(),
        ]);
        tmux
    }

    /// The screen (and the history above it), trailing blank lines dropped.
    fn capture(&self) -> Vec<String> {
        let out = self.run(&["capture-pane", "-p", "-S", "-", "-t", "walk"]);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// A bar line: indicatif's `[=====>    ] … ETA …`.
fn is_bar(line: &str) -> bool {
    line.contains('[') && line.contains("ETA")
}

/// The rate shown on a bar line (the words before "ETA"), e.g. "3.50 MiB/s".
fn rate_of(line: &str) -> Option<String> {
    let before = &line[..line.find(" ETA")?];
    let words: Vec<&str> = before.split_whitespace().collect();
    let n = words.len();
    (n >= 2).then(|| format!("{} {}", words[n - 2], words[n - 1]))
}

fn zero_rate(rate: &str) -> bool {
    rate.split_whitespace()
        .next()
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(|n| n == 0.0)
}

/// "1020.00 KiB" or "2.9 MiB" in bytes.
fn size_of(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let unit = match words.next()? {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(n * unit)
}

/// On a bar line, the bytes done: the size between "] " and "/".
fn done_of(line: &str) -> Option<f64> {
    let after = &line[line.find("] ")? + 2..];
    size_of(&after[..after.find('/')?])
}

/// The bytes the total bar shows, and the bytes the file lines account for (finished files'
/// sizes and the files in flight), on one screen with a total bar.
fn total_and_files(screen: &[String]) -> Option<(f64, f64)> {
    let total = screen
        .iter()
        .find(|l| l.trim_start().starts_with("total [") && is_bar(l))?;
    let mut files = 0.0;
    for line in screen {
        if line.starts_with("  ok    ") {
            let size = &line[line.find(" (")? + 2..];
            files += size_of(&size[..size.find(',')?])?;
        } else if is_bar(line) && !line.trim_start().starts_with("total [") {
            files += done_of(line)?;
        }
    }
    Some((done_of(total)?, files))
}

/// Writes a run of `files` files of `size` bytes (and its marker) under `data`.
fn write_run(data: &Path, number: u32, files: usize, size: usize) {
    let dir = data.join(format!("Run{number:06}"));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..files {
        let bytes: Vec<u8> = (0..size)
            .map(|j| (j as u64 * 2654435761 + i as u64 * 97) as u8)
            .collect();
        std::fs::write(dir.join(format!("raw_{i:03}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join(MARKER), b"").unwrap();
}

/// Runs `ferry --once` at `daq` (pushing to `mirror`, described by `mirror`) in tmux and
/// checks every capture of the screen.
fn bars_under_tmux(name: &str, mirror: serde_json::Value) {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("daq");
    // 4 files of 3 MB at 8 MB/s: about a second and a half.
    write_run(&data, 4711, 4, 3_000_000);
    let map = serde_json::json!({ "version": 1, "sites": [
        {
            "name": "daq", "origin": true, "method": "local",
            "data_dirs": { "raw": data }, "layout": "Run{number:06}",
            "completion": { "marker": MARKER }, "push_to": ["mirror"],
            "limits": { "files_in_flight": 2, "transfers_per_link": 2,
                        "bandwidth_per_link": "8MB/s" },
        },
        mirror,
    ]});
    std::fs::write(home.path().join("map.json"), map.to_string()).unwrap();
    let script = home.path().join("run.sh");
    let mut text = String::from("#!/bin/sh\n");
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            text.push_str(&format!("unset {k}\n"));
        }
    }
    text.push_str(&format!(
        "export HOME='{home}'\n\
         '{FERRY}' --config '{home}/map.json' --catalog 'sqlite:{home}/catalog.sqlite' \
         --host daq --once\n\
         echo \"{EXITED} $?\"\n\
         exec sleep 600\n",
        home = home.path().display(),
    ));
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let tmux = Tmux::start(name, &script);
    let started = Instant::now();
    let mut during = Vec::new();
    let last = loop {
        let screen = tmux.capture();
        if screen.iter().any(|l| l.starts_with(EXITED)) {
            break screen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ferry did not finish in 60 s; the screen:\n{}",
            screen.join("\n")
        );
        during.push(screen);
        std::thread::sleep(Duration::from_millis(150));
    };
    let shown = last.join("\n");

    // Bars were drawn while copying (else nothing below is tested).
    assert!(
        during.iter().any(|s| s
            .iter()
            .any(|l| l.trim_start().starts_with("total [") && is_bar(l))),
        "no total bar in any of {} captures while copying; last:\n{shown}",
        during.len()
    );
    for screen in during.iter().chain(std::iter::once(&last)) {
        for line in screen.iter().filter(|l| is_bar(l)) {
            let rate = rate_of(line).unwrap_or_default();
            assert!(
                !(zero_rate(&rate) && line.contains("ETA 0s")),
                "ETA 0s at a rate of {rate}: {line:?}\n{}",
                screen.join("\n")
            );
            assert!(
                !(line.trim_start().starts_with("total [") && line.contains("] 0 B/")),
                "a total bar with nothing moved: {line:?}\n{}",
                screen.join("\n")
            );
        }
    }

    // The total and the file bars are drawn from the same reports: the total never runs
    // ahead of what the files show (by more than the rounding of the numbers shown).
    for screen in &during {
        if let Some((total, files)) = total_and_files(screen) {
            assert!(
                total <= files + 300_000.0,
                "the total shows {total} bytes, the files {files}:\n{}",
                screen.join("\n")
            );
        }
    }

    let exit = last.iter().position(|l| l.starts_with(EXITED)).unwrap();
    assert_eq!(last[exit], format!("{EXITED} 0"), "{shown}");
    let report = &last[..exit];
    assert!(
        !report.iter().any(|l| is_bar(l)),
        "a bar is left on the final screen:\n{shown}"
    );
    let first_task = report
        .iter()
        .position(|l| l.starts_with("register: "))
        .unwrap_or_else(|| panic!("no report on the final screen:\n{shown}"));
    let total = report
        .iter()
        .position(|l| l.starts_with("   total ") && l.contains(" of "))
        .unwrap_or_else(|| panic!("no `total X of Y` line on the final screen:\n{shown}"));
    assert!(
        total < first_task,
        "the total line after the report:\n{shown}"
    );
    assert!(
        report[total].contains("11.4 MiB of 11.4 MiB"),
        "{:?}\n{shown}",
        report[total]
    );
    // The report's lines are the last on screen: every line from its first task line on
    // is a task line or one of its entries.
    for line in &report[first_task..] {
        assert!(
            line.starts_with("  ") || line.contains(": ") && line.contains(" done, "),
            "not a report line after the report began: {line:?}\n{shown}"
        );
    }
    assert!(
        report[first_task..]
            .iter()
            .any(|l| l.contains("run 4711 raw daq -> mirror: copied, verified and recorded")),
        "{shown}"
    );
    assert_eq!(
        report
            .last()
            .map(|l| l.starts_with("  done     site daq: heartbeat")),
        Some(true),
        "the last line on screen is not the report's last:\n{shown}"
    );
}

#[test]
fn progress_bars_under_a_real_terminal_over_sftp() {
    let sshd = Sshd::start().unwrap();
    let root = sshd.root().join("raw");
    std::fs::create_dir_all(&root).unwrap();
    bars_under_tmux(
        "sftp",
        serde_json::json!({
            "name": "mirror", "method": "sftp",
            "hostname": sshd.host(), "port": sshd.port(), "username": sshd.user(),
            "identity_file": sshd.user_key_path(), "known_hosts": sshd.known_hosts_path(),
            "strict_host_key_checking": "yes",
            "data_dirs": { "raw": root }, "layout": "Run{number:06}",
        }),
    );
}

#[test]
fn progress_bars_under_a_real_terminal_over_a_local_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("raw");
    std::fs::create_dir_all(&root).unwrap();
    bars_under_tmux(
        "local",
        serde_json::json!({
            "name": "mirror", "method": "local",
            "data_dirs": { "raw": root }, "layout": "Run{number:06}",
        }),
    );
}
