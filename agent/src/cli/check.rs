//! `ferry check`: a Nagios/Icinga plugin (DESIGN §8) telling whether a site's agent is alive
//! and well, from the heartbeat the agent writes into the catalogue every cycle.
//!
//! One line on stdout, `FERRY <STATE> - <summary> | <perfdata>`, and the plugin exit codes
//! (not Ferry's own): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Checked, worst first:
//!
//! - no heartbeat, or one older than twice `--max-age`: CRITICAL (the agent is not running,
//!   or its cycles hang); older than `--max-age`: WARNING;
//! - a data directory with less than `--critical-free` percent free: CRITICAL; less than
//!   `--warn-free`: WARNING (a directory the agent could not measure: WARNING);
//! - the last cycle had failed work: WARNING (the agent's log names it);
//! - with `--max-since-transfer`: no copy made for longer than that: WARNING.
//!
//! The catalogue comes from `--catalog`, `FERRY_CATALOG`, the site map's (`--config`), else
//! the embedded default. A catalogue that cannot be read is UNKNOWN.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bson::{DateTime, Document};
use catalog_schema::Heartbeat;

use super::args::CheckArgs;
use super::Cli;
use crate::catalog::{self, CatalogUri};

/// A plugin state, in Nagios' order of gravity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }
}

/// The thresholds of one check.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_age: Duration,
    warn_free: u8,
    critical_free: u8,
    max_since_transfer: Option<Duration>,
}

/// Runs the check; the process exits with the plugin's code (not Ferry's own table), and
/// any error — a bad site map, an unreadable catalogue — is UNKNOWN.
pub(super) fn run(cli: &Cli, args: &CheckArgs) -> std::process::ExitCode {
    let (state, line) = match check(cli, args) {
        Ok(found) => found,
        Err(e) => (State::Unknown, format!("{e:#}")),
    };
    println!("FERRY {} - {line}", state.word());
    std::process::ExitCode::from(state.code())
}

fn check(cli: &Cli, args: &CheckArgs) -> Result<(State, String)> {
    let identity = super::agent::site_identity(cli.host.as_deref())?;
    let loaded = match &cli.config {
        Some(_) => Some(super::agent::load_site_map(cli, &identity)?),
        None => None,
    };
    let site = identity.0;
    let target = super::agent::catalog_target(cli, loaded.as_ref())?;
    let uri = target.uri.clone();
    let limits = Limits {
        max_age: args.max_age,
        warn_free: args.warn_free,
        critical_free: args.critical_free,
        max_since_transfer: args.max_since_transfer,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let beat = runtime
        .block_on(async {
            if let CatalogUri::Embedded { path } = &uri {
                if !super::runs::embedded_exists(&uri, path)? {
                    return Ok(None);
                }
            }
            // The error names the catalogue itself.
            let cat = catalog::open_target_for_reading(&target).await?;
            cat.read_heartbeat(&site)
                .await
                .with_context(|| format!("reading the heartbeat of {site} from {uri}"))
        })
        // A driver may quote what it was given: the password is taken out of every message.
        .map_err(|e| anyhow::anyhow!(target.scrub(&format!("{e:#}"))))?;
    Ok(judge(&site, beat.as_ref(), DateTime::now(), &limits))
}

/// The verdict on a heartbeat read at `now`: a pure function, so every branch is tested.
fn judge(site: &str, beat: Option<&Heartbeat>, now: DateTime, limits: &Limits) -> (State, String) {
    let Some(beat) = beat else {
        return (
            State::Critical,
            format!("{site}: no heartbeat in the catalogue (has its agent ever run?)"),
        );
    };
    let mut state = State::Ok;
    let mut notes = Vec::new();
    let mut perf = String::new();
    let age = Duration::from_millis(
        u64::try_from(now.timestamp_millis() - beat.time.timestamp_millis()).unwrap_or(0),
    );
    let age_state = if age > limits.max_age * 2 {
        State::Critical
    } else if age > limits.max_age {
        State::Warning
    } else {
        State::Ok
    };
    state = state.max(age_state);
    let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
    notes.push(format!(
        "last cycle ended {age_text} ago on {} (pid {}, {:.1} s)",
        beat.hostname, beat.pid, beat.cycle_seconds
    ));
    let _ = write!(
        perf,
        "age={}s;{};{} cycle={:.3}s",
        age.as_secs(),
        limits.max_age.as_secs(),
        limits.max_age.as_secs() * 2,
        beat.cycle_seconds
    );
    let failed = beat.stats.get_i64("failed").unwrap_or(0);
    if failed > 0 {
        state = state.max(State::Warning);
        notes.push(format!(
            "{failed} failed in the last cycle (see the agent's log)"
        ));
    }
    let _ = write!(perf, " failed={failed}");
    if let Ok(disks) = beat.stats.get_document("disks") {
        for (data_type, d) in disks {
            let Some(d) = d.as_document() else { continue };
            let (s, note) = disk(data_type, d, limits);
            state = state.max(s);
            if let Some(note) = note {
                notes.push(note);
            }
            if let Ok(used) = d.get_i32("used_percent") {
                let _ = write!(
                    perf,
                    " {data_type}_used={used}%;{};{};0;100",
                    100 - u32::from(limits.warn_free),
                    100 - u32::from(limits.critical_free)
                );
            }
        }
    }
    if let Some(max) = limits.max_since_transfer {
        match beat.stats.get_datetime("last_transfer") {
            Ok(at) => {
                let since = Duration::from_millis(
                    u64::try_from(now.timestamp_millis() - at.timestamp_millis()).unwrap_or(0),
                );
                if since > max {
                    state = state.max(State::Warning);
                    notes.push(format!(
                        "no copy made for {}",
                        humantime::format_duration(Duration::from_secs(since.as_secs()))
                    ));
                }
            }
            Err(_) => {
                state = state.max(State::Warning);
                notes.push("no copy made since the agent started".into());
            }
        }
    }
    (state, format!("{site}: {} | {perf}", notes.join("; ")))
}

/// One data directory's free space against the thresholds.
fn disk(data_type: &str, d: &Document, limits: &Limits) -> (State, Option<String>) {
    let path = d.get_str("path").unwrap_or("?");
    let Ok(used) = d.get_i32("used_percent") else {
        let why = d.get_str("error").unwrap_or("not measured");
        return (State::Warning, Some(format!("{data_type} ({path}): {why}")));
    };
    let free = 100 - used.clamp(0, 100);
    let state = if free < i32::from(limits.critical_free) {
        State::Critical
    } else if free < i32::from(limits.warn_free) {
        State::Warning
    } else {
        return (State::Ok, None);
    };
    (
        state,
        Some(format!("{data_type} ({path}) has {free}% free")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn beat(age_s: i64, stats: Document) -> (Heartbeat, DateTime) {
        let now = DateTime::from_millis(1_800_000_000_000);
        let hb = Heartbeat {
            site: "daq".into(),
            owner: "daq@box:1/2/3".into(),
            version: "0".into(),
            hostname: "box".into(),
            pid: 1,
            time: DateTime::from_millis(now.timestamp_millis() - age_s * 1000),
            cycle_seconds: 1.5,
            stats,
        };
        (hb, now)
    }

    const LIMITS: Limits = Limits {
        max_age: Duration::from_secs(300),
        warn_free: 10,
        critical_free: 5,
        max_since_transfer: None,
    };

    fn disks(used: i32) -> Document {
        doc! { "failed": 0_i64, "disks": { "raw": { "path": "/data/raw", "used_percent": used } } }
    }

    #[test]
    fn states_from_age_disk_failures_and_transfers() {
        let (hb, now) = beat(30, disks(50));
        let (s, line) = judge("daq", Some(&hb), now, &LIMITS);
        assert_eq!(s, State::Ok, "{line}");
        assert!(line.contains("age=30s;300;600") && line.contains("raw_used=50%;90;95;0;100"));

        let (hb, now) = beat(400, disks(50));
        assert_eq!(judge("daq", Some(&hb), now, &LIMITS).0, State::Warning);
        let (hb, now) = beat(700, disks(50));
        assert_eq!(judge("daq", Some(&hb), now, &LIMITS).0, State::Critical);

        let (hb, now) = beat(30, disks(93));
        let (s, line) = judge("daq", Some(&hb), now, &LIMITS);
        assert_eq!(s, State::Warning);
        assert!(line.contains("raw (/data/raw) has 7% free"), "{line}");
        let (hb, now) = beat(30, disks(97));
        assert_eq!(judge("daq", Some(&hb), now, &LIMITS).0, State::Critical);

        let (hb, now) = beat(30, doc! { "failed": 2_i64 });
        let (s, line) = judge("daq", Some(&hb), now, &LIMITS);
        assert_eq!(s, State::Warning);
        assert!(line.contains("2 failed in the last cycle"), "{line}");

        let (hb, now) = beat(
            30,
            doc! { "disks": { "raw": { "path": "/x", "error": "gone" } } },
        );
        assert_eq!(judge("daq", Some(&hb), now, &LIMITS).0, State::Warning);

        assert_eq!(judge("daq", None, now, &LIMITS).0, State::Critical);

        let stale = Limits {
            max_since_transfer: Some(Duration::from_secs(3600)),
            ..LIMITS
        };
        let mut stats = disks(50);
        stats.insert(
            "last_transfer",
            DateTime::from_millis(now.timestamp_millis() - 7_200_000),
        );
        let (hb, now) = beat(30, stats);
        let (s, line) = judge("daq", Some(&hb), now, &stale);
        assert_eq!(s, State::Warning);
        assert!(line.contains("no copy made for 2h"), "{line}");
    }
}
