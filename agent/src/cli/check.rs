//! `ferry check`: a Nagios/Icinga plugin (DESIGN §8) telling whether a site's agent is alive
//! and well, from the heartbeat the agent writes into the catalogue every cycle.
//!
//! As Nagios plugins print: one short first line, `FERRY <STATE> - <site>: <status> |
//! <perfdata>`, then one detail line per check (what was found, what was skipped), the
//! last one carrying the rest of the perfdata after a `|`; and the plugin exit codes (not
//! Ferry's own): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Checked, worst first:
//!
//! - no heartbeat, or one older than twice `--max-age`: CRITICAL (the agent is not running,
//!   or its cycles hang); older than `--max-age`: WARNING;
//! - a data directory with less than `--critical-free` percent free: CRITICAL; less than
//!   `--warn-free`: WARNING (a directory the agent could not measure: WARNING), from the
//!   figures the heartbeat records (`disks.*.used_percent`);
//! - the last cycle had failed work: WARNING (the agent's log names it);
//! - with `--max-since-transfer`: no copy made for longer than that: WARNING. A site that
//!   only receives (no outgoing links in the site map, else none in its heartbeat's
//!   `sends_to`) is judged on the last copy it **received** (`last_received`), whoever made
//!   it.
//!
//! **Where it runs.** `--site SITE` on another host than SITE (a monitoring host) judges
//! the site from the catalogue alone: with `--catalog`, or with `--config` (its catalogue
//! settings and links), and without the site map's host-local checks (its data and state
//! directories are on another machine); the last detail line says so. Without `--site`, or
//! when it is this host's own site (`--host`, `FERRY_SITE`, the host name), `--config` also
//! runs the host-local checks, as on the agent's own machine; when they fail the first line
//! says to pass `--site` from a monitoring host.
//!
//! An error (UNKNOWN) prints its own message on the first line, already written for people
//! (the catalogue's say what happened and what to check, without the driver's text), and
//! its further lines and causes below it.
//!
//! The catalogue comes from `--catalog`, `FERRY_CATALOG`, the site map's (`--config`), else
//! the embedded default. A catalogue that cannot be read is UNKNOWN.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bson::{DateTime, Document};
use catalog_schema::Heartbeat;

use super::args::CheckArgs;
use super::exit::{coded, Exit};
use super::Cli;
use crate::catalog::{self, CatalogUri};

/// The first line's status text is cut to this many characters (the whole detail follows).
const SUMMARY_CHARS: usize = 60;

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

/// What the site map says of the site's copies, when a site map was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The map has links out of the site: judged on the copies its agent makes.
    Sends,
    /// No link out of the site: judged on the copies it receives.
    ReceivesOnly,
    /// No site map: the heartbeat's `sends_to` tells.
    Unknown,
}

/// What the plugin prints: the verdict, a short status, perfdata, and the detail lines.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    state: State,
    /// `<site>: <status>` (or the error's first line for UNKNOWN).
    summary: String,
    /// Perfdata of the first line.
    perf: String,
    /// One line per check, in order.
    details: Vec<String>,
    /// Perfdata after the last detail line.
    more_perf: String,
}

impl Verdict {
    /// UNKNOWN: the error's own message on the first line (it says what went wrong and
    /// what to check), each cause and continuation line after it.
    fn unknown(error: &anyhow::Error) -> Self {
        let mut lines: Vec<String> = Vec::new();
        let mut said = String::new();
        for cause in error.chain() {
            let text = cause.to_string();
            // A message that already quotes its cause (`…: {source}`) says it once.
            if said.contains(&text) {
                continue;
            }
            lines.extend(text.lines().map(str::to_string));
            said = text;
        }
        let mut lines = lines.into_iter();
        Verdict {
            state: State::Unknown,
            summary: lines.next().unwrap_or_else(|| "unknown error".to_string()),
            perf: String::new(),
            details: lines.collect(),
            more_perf: String::new(),
        }
    }

    /// The plugin's output, lines ending in `\n`.
    fn render(&self) -> String {
        // A `|` starts perfdata for Nagios: none may come from the text.
        let text = |t: &str| t.replace('|', "/");
        let mut out = format!("FERRY {} - {}", self.state.word(), text(&self.summary));
        if !self.perf.is_empty() {
            let _ = write!(out, " | {}", self.perf);
        }
        out.push('\n');
        let last = self.details.len().saturating_sub(1);
        for (i, line) in self.details.iter().enumerate() {
            out.push_str(&text(line));
            if i == last && !self.more_perf.is_empty() {
                let _ = write!(out, " | {}", self.more_perf);
            }
            out.push('\n');
        }
        out
    }
}

/// Runs the check; the process exits with the plugin's code (not Ferry's own table), and
/// any error — a bad site map, an unreadable catalogue — is UNKNOWN.
pub(super) fn run(cli: &Cli, args: &CheckArgs) -> std::process::ExitCode {
    let verdict = match check(cli, args) {
        Ok(found) => found,
        Err(e) => Verdict::unknown(&e),
    };
    print!("{}", verdict.render());
    std::process::ExitCode::from(verdict.state.code())
}

fn check(cli: &Cli, args: &CheckArgs) -> Result<Verdict> {
    let mut notes = Vec::new();
    // This host's site, when it can tell; with `--site`, only to know whether the site
    // judged is this one.
    let (site, here) = match &args.site {
        Some(site) => (
            site.clone(),
            super::agent::site_identity(cli.host.as_deref()).ok(),
        ),
        None => {
            let identity = super::agent::site_identity(cli.host.as_deref())?;
            (identity.0.clone(), Some(identity))
        }
    };
    let on_site = here.as_ref().is_some_and(|(name, _)| *name == site);
    let loaded = match (&cli.config, &here) {
        (Some(_), Some(identity)) if on_site => {
            // On the site's own machine: the host-local checks too, as the agent runs them.
            let loaded = super::agent::load_site_map(cli, identity).with_context(|| {
                format!(
                    "the site map fails on this host as site {site}; to judge a site \
                         from another host (a monitoring host), pass --site SITE"
                )
            })?;
            notes.push(format!(
                "this host is {site}: its data directories and state directory passed the \
                 site map's host-local checks"
            ));
            Some(loaded)
        }
        (Some(_), _) => {
            // A monitoring host: the site map's shared part (catalogue settings, links).
            let loaded = super::agent::load_shared_site_map(cli)?;
            if loaded.map.site(&site).is_none() {
                let known: Vec<&str> = loaded.map.sites.iter().map(|s| s.name.as_str()).collect();
                return Err(coded(
                    Exit::Usage,
                    format!(
                        "--site {site} is not a site of this site map (its sites: {})",
                        known.join(", ")
                    ),
                ));
            }
            notes.push(format!(
                "judged from the catalogue alone: this host is not {site}, so its data \
                 directories and state directory were not checked here (free space is what \
                 its agent measured)"
            ));
            Some(loaded)
        }
        (None, _) => {
            notes.push(
                "judged from the catalogue alone (no --config: the site map's host-local \
                 checks were not run)"
                    .to_string(),
            );
            None
        }
    };
    let role = match &loaded {
        Some(l) if l.map.links().iter().any(|link| link.from == site) => Role::Sends,
        Some(_) => Role::ReceivesOnly,
        None => Role::Unknown,
    };
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
            // The catalogue's errors name it and say what to check: the first line is theirs.
            let cat = catalog::open_target_for_reading(&target).await?;
            Ok::<_, anyhow::Error>(cat.read_heartbeat(&site).await?)
        })
        // A driver may quote what it was given: the password is taken out of every message.
        .map_err(|e| {
            let lines = Verdict::unknown(&e);
            let text = std::iter::once(lines.summary)
                .chain(lines.details)
                .collect::<Vec<_>>()
                .join("\n");
            anyhow::anyhow!(target.scrub(&text))
        })?;
    let mut verdict = judge(&site, beat.as_ref(), DateTime::now(), &limits, role);
    verdict.details.extend(notes);
    Ok(verdict)
}

/// One check's finding: its state, a few words for the first line, and the detail line.
struct Finding {
    state: State,
    short: String,
    detail: String,
}

impl Finding {
    fn new(state: State, short: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding {
            state,
            short: short.into(),
            detail: detail.into(),
        }
    }
}

/// `text` cut to `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn since(now: DateTime, at: DateTime) -> Duration {
    Duration::from_millis(
        u64::try_from(now.timestamp_millis() - at.timestamp_millis()).unwrap_or(0),
    )
}

fn shown(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The verdict on a heartbeat read at `now`: a pure function, so every branch is tested.
fn judge(
    site: &str,
    beat: Option<&Heartbeat>,
    now: DateTime,
    limits: &Limits,
    role: Role,
) -> Verdict {
    let Some(beat) = beat else {
        return Verdict {
            state: State::Critical,
            summary: format!("{site}: no heartbeat"),
            perf: String::new(),
            details: vec![format!(
                "no heartbeat of {site} in this catalogue: check that its agent runs \
                 (systemctl status ferry@{site}) and uses this catalogue"
            )],
            more_perf: String::new(),
        };
    };
    let mut findings = Vec::new();
    let mut perf = String::new();
    let mut more_perf = String::new();
    let age = since(now, beat.time);
    let age_state = if age > limits.max_age * 2 {
        State::Critical
    } else if age > limits.max_age {
        State::Warning
    } else {
        State::Ok
    };
    findings.push(Finding::new(
        age_state,
        format!("last cycle {} ago", shown(age)),
        format!(
            "last cycle ended {} ago on {} (ferry {}, pid {}, {:.1} s); WARNING after {}, \
             CRITICAL after {}{}",
            shown(age),
            beat.hostname,
            beat.version,
            beat.pid,
            beat.cycle_seconds,
            shown(limits.max_age),
            shown(limits.max_age * 2),
            match age_state {
                State::Ok => String::new(),
                _ => format!(
                    ": check that its agent runs (systemctl status ferry@{site}) and its log"
                ),
            }
        ),
    ));
    let _ = write!(
        perf,
        "age={}s;{};{}",
        age.as_secs(),
        limits.max_age.as_secs(),
        limits.max_age.as_secs() * 2,
    );
    let _ = write!(more_perf, "cycle={:.3}s", beat.cycle_seconds);
    let failed = beat.stats.get_i64("failed").unwrap_or(0);
    let done = beat.stats.get_i64("done").unwrap_or(0);
    findings.push(if failed > 0 {
        Finding::new(
            State::Warning,
            format!("{failed} failed"),
            format!(
                "last cycle: {done} done, {failed} failed: its agent's log names each failure \
                 (docs/troubleshooting.md says what to do)"
            ),
        )
    } else {
        Finding::new(
            State::Ok,
            "no failures",
            format!("last cycle: {done} done, none failed"),
        )
    });
    let _ = write!(perf, " failed={failed}");
    if let Ok(disks) = beat.stats.get_document("disks") {
        for (data_type, d) in disks {
            let Some(d) = d.as_document() else { continue };
            findings.push(disk(data_type, d, limits));
            if let Ok(used) = d.get_i32("used_percent") {
                let _ = write!(
                    more_perf,
                    " {data_type}_used={used}%;{};{};0;100",
                    100 - u32::from(limits.warn_free),
                    100 - u32::from(limits.critical_free)
                );
            }
        }
    }
    if let Some(max) = limits.max_since_transfer {
        let (finding, perf_item) = transfers(beat, now, max, role);
        findings.push(finding);
        if let Some(p) = perf_item {
            let _ = write!(more_perf, " {p}");
        }
    }
    let state = findings.iter().map(|f| f.state).max().unwrap_or(State::Ok);
    let problems: Vec<&Finding> = findings.iter().filter(|f| f.state > State::Ok).collect();
    let status = match problems.iter().find(|f| f.state == state) {
        Some(worst) if problems.len() > 1 => {
            format!("{} (+{} more)", worst.short, problems.len() - 1)
        }
        Some(worst) => worst.short.clone(),
        None => findings
            .first()
            .map_or_else(|| "alive".to_string(), |f| f.short.clone()),
    };
    Verdict {
        state,
        summary: format!("{site}: {}", cut(&status, SUMMARY_CHARS)),
        perf,
        details: findings.into_iter().map(|f| f.detail).collect(),
        more_perf,
    }
}

/// `--max-since-transfer`: the copies the agent made, or, at a site that only receives,
/// the copies it received; and the perfdata item.
fn transfers(
    beat: &Heartbeat,
    now: DateTime,
    max: Duration,
    role: Role,
) -> (Finding, Option<String>) {
    let receives_only = match role {
        Role::Sends => false,
        Role::ReceivesOnly => true,
        // The heartbeat names the sites this one sends to (an agent before that: as sending).
        Role::Unknown => beat.sends_to().is_some_and(|to| to.is_empty()),
    };
    let (at, verb, whose) = if receives_only {
        (
            beat.last_received(),
            "received",
            "it sends to no site, so it is judged on the copies it receives",
        )
    } else {
        (
            beat.last_transfer(),
            "made",
            "judged on the copies its agent makes (push, pull, retry)",
        )
    };
    let Some(at) = at else {
        let detail = if receives_only {
            format!(
                "no copy received that its heartbeat knows of ({whose}): check that the sites \
                 that send to it run and have new runs (an agent older than this check does \
                 not record what it receives)"
            )
        } else {
            format!(
                "no copy made since its agent started ({whose}): check that new runs arrive \
                 and its agent's log"
            )
        };
        return (
            Finding::new(State::Warning, format!("no copy {verb} yet"), detail),
            None,
        );
    };
    let ago = since(now, at);
    let perf = format!("since_transfer={}s;{}", ago.as_secs(), max.as_secs());
    if ago > max {
        let detail = format!(
            "no copy {verb} for {}, more than --max-since-transfer {} ({whose}): check that \
             new runs arrive and the agents' logs",
            shown(ago),
            shown(max)
        );
        (
            Finding::new(
                State::Warning,
                format!("no copy {verb} for {}", shown(ago)),
                detail,
            ),
            Some(perf),
        )
    } else {
        let detail = format!("last copy {verb} {} ago ({whose})", shown(ago));
        (
            Finding::new(State::Ok, format!("copy {verb} {} ago", shown(ago)), detail),
            Some(perf),
        )
    }
}

/// One data directory's free space against the thresholds.
fn disk(data_type: &str, d: &Document, limits: &Limits) -> Finding {
    let path = d.get_str("path").unwrap_or("?");
    let Ok(used) = d.get_i32("used_percent") else {
        let why = d.get_str("error").unwrap_or("not measured");
        return Finding::new(
            State::Warning,
            format!("{data_type} not measured"),
            format!(
                "{data_type} ({path}): its agent could not measure the free space ({why}): \
                 check that the directory exists and is mounted on the site's machine"
            ),
        );
    };
    let free = 100 - used.clamp(0, 100);
    let state = if free < i32::from(limits.critical_free) {
        State::Critical
    } else if free < i32::from(limits.warn_free) {
        State::Warning
    } else {
        State::Ok
    };
    Finding::new(
        state,
        format!("{data_type} has {free}% free"),
        format!(
            "{data_type} ({path}) has {free}% free (WARNING under {}%, CRITICAL under {}%){}",
            limits.warn_free,
            limits.critical_free,
            match state {
                State::Ok => "",
                _ => ": free space there (the site's purge settings, or more disk)",
            }
        ),
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

    fn judged(hb: &Heartbeat, now: DateTime, limits: &Limits) -> (State, String) {
        let v = judge("daq", Some(hb), now, limits, Role::Sends);
        (v.state, v.render())
    }

    #[test]
    fn states_from_age_disk_failures_and_transfers() {
        let (hb, now) = beat(30, disks(50));
        let (s, out) = judged(&hb, now, &LIMITS);
        assert_eq!(s, State::Ok, "{out}");
        assert!(
            out.starts_with("FERRY OK - daq: last cycle 30s ago | age=30s;300;600 failed=0\n"),
            "{out}"
        );
        assert!(out.contains("raw_used=50%;90;95;0;100"), "{out}");

        let (hb, now) = beat(400, disks(50));
        assert_eq!(judged(&hb, now, &LIMITS).0, State::Warning);
        let (hb, now) = beat(700, disks(50));
        assert_eq!(judged(&hb, now, &LIMITS).0, State::Critical);

        let (hb, now) = beat(30, disks(93));
        let (s, out) = judged(&hb, now, &LIMITS);
        assert_eq!(s, State::Warning);
        assert!(
            out.starts_with("FERRY WARNING - daq: raw has 7% free |"),
            "{out}"
        );
        assert!(out.contains("\nraw (/data/raw) has 7% free"), "{out}");
        let (hb, now) = beat(30, disks(97));
        assert_eq!(judged(&hb, now, &LIMITS).0, State::Critical);

        let (hb, now) = beat(30, doc! { "failed": 2_i64 });
        let (s, out) = judged(&hb, now, &LIMITS);
        assert_eq!(s, State::Warning);
        assert!(out.starts_with("FERRY WARNING - daq: 2 failed |"), "{out}");
        assert!(out.contains("\nlast cycle: 0 done, 2 failed: "), "{out}");

        let (hb, now) = beat(
            30,
            doc! { "disks": { "raw": { "path": "/x", "error": "gone" } } },
        );
        assert_eq!(judged(&hb, now, &LIMITS).0, State::Warning);

        let v = judge("daq", None, now, &LIMITS, Role::Sends);
        assert_eq!(v.state, State::Critical);
        assert!(v
            .render()
            .starts_with("FERRY CRITICAL - daq: no heartbeat\n"));

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
        let (s, out) = judged(&hb, now, &stale);
        assert_eq!(s, State::Warning);
        assert!(out.contains("no copy made for 2h"), "{out}");
    }

    /// Several problems: the worst on the first line, counted, every one on its own line.
    #[test]
    fn the_first_line_is_short_and_every_note_is_on_the_lines_after_it() {
        let mut stats = doc! {
            "failed": 3_i64,
            "disks": {
                "raw": { "path": "/a/very/long/path/to/the/raw/data/directory", "used_percent": 97 },
                "processed": { "path": "/data/processed", "used_percent": 92 },
                "reduced": { "path": "/data/reduced", "error": "No such file or directory" },
            },
        };
        stats.insert("sends_to", bson::Bson::Array(vec![]));
        let (hb, now) = beat(400, stats);
        let limits = Limits {
            max_since_transfer: Some(Duration::from_secs(3600)),
            ..LIMITS
        };
        let v = judge("daq", Some(&hb), now, &limits, Role::Unknown);
        assert_eq!(v.state, State::Critical);
        let out = v.render();
        let first = out.lines().next().unwrap();
        assert!(first.chars().count() < 100, "{first}");
        assert!(
            first.starts_with("FERRY CRITICAL - daq: raw has 3% free (+5 more) | age=400s"),
            "{first}"
        );
        for note in [
            "last cycle: 0 done, 3 failed",
            "processed (/data/processed) has 8% free",
            "reduced (/data/reduced): its agent could not measure the free space (No such file",
            "no copy received that its heartbeat knows of",
            "last cycle ended 6m 40s ago",
        ] {
            assert!(!first.contains(note), "{first}");
            assert!(
                out.lines().skip(1).any(|l| l.contains(note)),
                "{note}: {out}"
            );
        }
        assert!(
            out.lines()
                .last()
                .unwrap()
                .contains("| cycle=1.500s raw_used=97%"),
            "{out}"
        );
    }

    /// A site with no link out never makes a copy itself: `--max-since-transfer` judges it
    /// on the copies it received, by the site map or by its heartbeat's `sends_to`.
    #[test]
    fn a_receive_only_site_is_judged_on_the_copies_it_received() {
        let limits = Limits {
            max_since_transfer: Some(Duration::from_secs(3600)),
            ..LIMITS
        };
        let (_, now) = beat(30, Document::new());
        let ago = |s: i64| DateTime::from_millis(now.timestamp_millis() - s * 1000);
        let received = |s: i64| {
            let mut stats = disks(50);
            stats.insert("last_received", ago(s));
            stats
        };
        for role in [Role::ReceivesOnly, Role::Unknown] {
            let mut stats = received(600);
            stats.insert("sends_to", bson::Bson::Array(vec![]));
            let (hb, _) = beat(30, stats);
            let v = judge("mirror", Some(&hb), now, &limits, role);
            assert_eq!(v.state, State::Ok, "{role:?}: {}", v.render());
            assert!(
                v.render().contains("last copy received 10m ago"),
                "{}",
                v.render()
            );

            let mut stats = received(7200);
            stats.insert("sends_to", bson::Bson::Array(vec![]));
            let (hb, _) = beat(30, stats);
            let v = judge("mirror", Some(&hb), now, &limits, role);
            assert_eq!(v.state, State::Warning, "{role:?}: {}", v.render());
            assert!(
                v.render()
                    .starts_with("FERRY WARNING - mirror: no copy received for 2h |"),
                "{}",
                v.render()
            );
        }
        // A site that sends is still judged on the copies its agent makes.
        let (hb, _) = beat(30, received(600));
        let v = judge("daq", Some(&hb), now, &limits, Role::Sends);
        assert_eq!(v.state, State::Warning, "{}", v.render());
        assert!(v.render().contains("no copy made since its agent started"));
    }

    /// The error's own message is the first line, each further line and cause below it, a
    /// cause the message already quotes once only.
    #[test]
    fn an_error_is_unknown_with_its_message_first_and_its_causes_below() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(io)
            .context("opening x: gone")
            .context("the site map fails | here\n  line two");
        assert_eq!(
            Verdict::unknown(&e).render(),
            "FERRY UNKNOWN - the site map fails / here\n  line two\nopening x: gone\n"
        );
    }
}
