//! *audit*: on a slow schedule, check that what the catalogue says this site holds is what
//! its disks hold.
//!
//! One audit pass, in this order; nothing is changed before every check has run:
//!
//! 1. **list** this site's copies from the catalogue (every status, one indexed query per
//!    status). Their directories (the copy's `location`, else the site's layout) are the
//!    run directories the catalogue knows here.
//! 2. **mount check**: a data directory that is missing or empty while the catalogue
//!    records `transferred` copies of its type here is an alarm ("mis-mounted disk?"):
//!    the pass stops and changes nothing.
//! 3. **survey** every `transferred` copy by `stat` only: a directory or manifest file that
//!    is gone is **lost data**; a file of the wrong size is corrupt (re-hashed first below);
//!    files in the directory that the manifest does not list are **dark data**. Run
//!    directories found at the layout's depth (as the register task's `discover` walks
//!    them) that belong to no copy here are dark data too, except at an origin a run
//!    directory still being written (not complete by the site's completion rule): that is
//!    a run not registered yet, reported as such.
//! 4. **re-hash** the surviving copies for **bit rot** (verify's `rehash`), copies of the
//!    wrong size first, then the least recently verified first, until
//!    [`Settings::byte_budget`] bytes were read in this pass. The rest waits for the next
//!    cycle: because a good re-hash refreshes the copy's `verified_time`, the next pass
//!    starts where this one stopped (resumable progress kept in the catalogue itself, so no
//!    cursor can go stale). A pass that hashed every copy is **complete**.
//! 5. **thresholds**: when at least [`Settings::alarm_min`] copies and more than
//!    [`Settings::alarm_percent`] % of this site's `transferred` copies look lost or
//!    corrupt, nothing is changed and an alarm is raised (`failed` + `error` log naming the
//!    data directories).
//! 6. **record**: a corrupt copy goes `transferred → error` with a `[checksum]` failure
//!    naming both run digests and the bad files (so the retry task re-copies it from a
//!    verified copy through a retry job of the scheduler, after its backoff); the bad files are
//!    removed only when another verified copy of the run exists. A lost copy goes
//!    `transferred → error` with `[retryable] lost: …` (re-copied the same way). A copy with
//!    no other verified copy (the origin's, usually) is marked too but keeps its files, and
//!    is reported loudly.
//!    Dark data is reported (a `skipped` line and a warning), never deleted. A good copy's
//!    `verified_time` is refreshed.
//!
//! `--dry-run` runs every check and reports what it would change, changing nothing.
//!
//! **Schedule.** In the daemon (and `--once` without `--task`) [`run_scheduled`] audits at
//! most once per [`Settings::every`] (`--audit-every`, default 24 h): the time of the last
//! complete pass is kept in `audit-SITE.last` in the state directory, so a restart does not
//! audit again at once. A pass cut short by the byte budget, the shutdown token or an alarm
//! is not complete, so the next cycle continues it. `--task audit` runs [`run`], which
//! audits now whatever the schedule says.

use crate::metrics::{Alarm, Check};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::rehash::Rehash;
use super::verify::{self, verified_elsewhere};
use super::{lifecycle, register, Context, RunScope, Subject, TaskReport};
use crate::catalog::{Cas, CopyRef, Transition};
use crate::config::{CompletionRule, Site};
use crate::datadir::{self, Place};
use crate::transport::PART_SUFFIX;
use catalog_schema::{Failure, FailureClass};

/// Runs asked of the catalogue per copy status. A listing this long is taken as cut off:
/// the dark-data walk is then skipped rather than report known runs as dark.
const LIST_LIMIT: u32 = 100_000;
/// Dark files named per copy in a report line.
const SHOW_FILES: usize = 10;

/// How the audit runs; part of the agent's [`Context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// At most one complete audit per this long in the daemon (`--audit-every`).
    pub every: Duration,
    /// Where the time of the last complete audit is kept (`None`: not kept, so the
    /// scheduled audit runs every cycle).
    pub state_dir: Option<PathBuf>,
    /// Bytes re-hashed per pass at most (at least one copy is always hashed).
    pub byte_budget: u64,
    /// The alarm needs more than this percentage of the site's copies lost or corrupt…
    pub alarm_percent: u32,
    /// …and at least this many of them.
    pub alarm_min: usize,
}

impl Default for Settings {
    /// Every 24 h, 64 GiB per pass (about two minutes at SHA-NI speed), alarm above 10 %
    /// and at least 5 copies, no state directory.
    fn default() -> Self {
        Settings {
            every: Duration::from_secs(24 * 3600),
            state_dir: None,
            byte_budget: 64 << 30,
            alarm_percent: 10,
            alarm_min: 5,
        }
    }
}

/// The audit's own state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the state file failed.
    #[error("audit state {}: {source}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state file holds something else than a time.
    #[error("audit state {}: not an RFC 3339 time: {text:?}", path.display())]
    Format {
        /// The state file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

impl AuditError {
    /// An I/O error may pass (a full disk, a busy NFS server); a garbled file will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::State { .. })
    }
}

/// The file keeping the time of `site`'s last complete audit.
pub fn state_file(state_dir: &Path, site: &str) -> PathBuf {
    state_dir.join(format!("audit-{site}.last"))
}

/// When `site`'s last complete audit finished (`None`: never).
pub fn last_complete(state_dir: &Path, site: &str) -> Result<Option<SystemTime>, AuditError> {
    let path = state_file(state_dir, site);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AuditError::State { path, source }),
    };
    humantime::parse_rfc3339(text.trim())
        .map(Some)
        .map_err(|_| AuditError::Format { path, text })
}

/// Records `at` as the time of `site`'s last complete audit (temp file, fsync, rename).
fn remember(state_dir: &Path, site: &str, at: SystemTime) -> Result<(), AuditError> {
    let path = state_file(state_dir, site);
    let tmp = path.with_extension("last.tmp");
    let io = |source| AuditError::State {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", humantime::format_rfc3339_seconds(at))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(io)
}

/// Audits now, whatever the schedule says (`--task audit`).
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let started = SystemTime::now();
    let pass = audit(ctx, token).await;
    finish(ctx, pass, started)
}

/// Audits if the last complete audit is older than [`Settings::every`] (the daemon's cycle).
pub async fn run_scheduled(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let settings = &ctx.audit;
    if let Some(dir) = &settings.state_dir {
        match last_complete(dir, &ctx.site.name) {
            Ok(Some(last)) => {
                let next = last + settings.every;
                if SystemTime::now() < next {
                    let mut report = TaskReport::default();
                    report.skip(
                        Subject::Site(ctx.site.name.clone()),
                        format!(
                            "not due: last complete audit {}, next after {} (every {}; \
                             `--task audit` runs it now)",
                            humantime::format_rfc3339_seconds(last),
                            humantime::format_rfc3339_seconds(next),
                            humantime::format_duration(settings.every)
                        ),
                    );
                    return report;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}; auditing now"),
        }
    }
    run(ctx, token).await
}

/// Records a complete pass in the state directory (never in a dry run, nor for a pass
/// limited to one run by `--run` / `--name`).
fn finish(ctx: &Context, pass: Pass, started: SystemTime) -> TaskReport {
    let mut report = pass.report;
    if pass.complete && !ctx.dry_run && ctx.scope == RunScope::All {
        if let Some(dir) = &ctx.audit.state_dir {
            if let Err(e) = remember(dir, &ctx.site.name, started) {
                tracing::warn!("{e}: the next cycle audits again");
                report.fail(Subject::Whole, e.to_string());
            }
        }
    }
    report
}

/// What one pass did, and whether it covered every copy.
struct Pass {
    report: TaskReport,
    complete: bool,
}

/// A `transferred` copy here, with its run and directory.
struct Held {
    run: RunDoc,
    copy: CopyEntry,
    dir: PathBuf,
}

impl Held {
    fn subject(&self) -> Subject {
        Subject::copy(&self.run, &self.copy.data_type, &self.copy.host)
    }
}

/// What `stat` found for one copy.
enum Seen {
    /// The directory or some manifest files are gone.
    Lost(String),
    /// Cannot be audited (a location outside the data directory, a link…).
    Refused(String),
    /// Every manifest file is there; `resized`: some have the wrong size.
    Present { dark: Vec<String>, resized: bool },
}

/// What re-hashing found.
enum Hashed {
    Good(String),
    Corrupt(Rehash),
}

async fn audit(ctx: &Context, token: &CancellationToken) -> Pass {
    let mut report = TaskReport::default();
    let incomplete = |report| Pass {
        report,
        complete: false,
    };
    // 1. list
    let (held, known, cut_off, misplaced) = match list(ctx).await {
        Ok(listed) => listed,
        Err(e) => {
            report.fail(Subject::Whole, e);
            return incomplete(report);
        }
    };
    for (_, _, e) in &misplaced {
        tracing::error!(site = %ctx.site.name, "{e}");
    }
    // 2. mount check
    if let Some(alarm) = mount_alarm(&ctx.site, &held) {
        ctx.metrics.audit_alarm(Alarm::Mount);
        report.fail(Subject::Site(ctx.site.name.clone()), alarm);
        return incomplete(report);
    }
    // 3. survey (stat only) and dark run directories
    let site = ctx.site.clone();
    let dirs: Vec<(PathBuf, RunDoc, String)> = held
        .iter()
        .map(|h| (h.dir.clone(), h.run.clone(), h.copy.data_type.clone()))
        .collect();
    let seen = match tokio::task::spawn_blocking(move || {
        dirs.iter()
            .map(|(dir, run, data_type)| survey(&site, dir, run, data_type))
            .collect::<Vec<Seen>>()
    })
    .await
    {
        Ok(seen) => seen,
        Err(e) => {
            report.fail(Subject::Whole, format!("audit survey task failed: {e}"));
            return incomplete(report);
        }
    };
    let mut dark = dark_runs(ctx, &known, cut_off);
    let mut lost = Vec::new();
    let mut to_hash = Vec::new();
    for (h, s) in held.iter().zip(seen) {
        match s {
            Seen::Lost(why) => lost.push((h, why)),
            Seen::Refused(why) => report.fail(h.subject(), why),
            Seen::Present {
                dark: extra,
                resized,
            } => {
                if !extra.is_empty() {
                    dark.push(dark_files(h, &extra));
                }
                to_hash.push((h, resized));
            }
        }
    }
    let total = held.len();
    if let Some(alarm) = threshold_alarm(ctx, total, lost.len()) {
        report.fail(Subject::Site(ctx.site.name.clone()), alarm);
        return incomplete(report);
    }
    // 4. re-hash within the byte budget
    to_hash.sort_by_key(|(h, resized)| (!resized, h.copy.verified_time));
    let mut read: u64 = 0;
    let mut hashed = Vec::new();
    let mut complete = true;
    for (h, _) in to_hash {
        if token.is_cancelled() || (read >= ctx.audit.byte_budget && !hashed.is_empty()) {
            complete = false;
            break;
        }
        read = read.saturating_add(u64::try_from(h.run.size.unwrap_or(0)).unwrap_or(0));
        match rehash(ctx, h).await {
            Ok(outcome) => hashed.push((h, outcome)),
            Err(e) => report.fail(h.subject(), e),
        }
    }
    let left = held.len().saturating_sub(lost.len() + hashed.len());
    if !complete {
        report.skip(
            Subject::Site(ctx.site.name.clone()),
            format!(
                "re-hash budget of {} bytes used ({read} bytes read): {left} copies wait for the \
             next cycle (least recently verified first)",
                ctx.audit.byte_budget
            ),
        );
    }
    let corrupt = hashed
        .iter()
        .filter(|(_, o)| matches!(o, Hashed::Corrupt(_)))
        .count();
    if let Some(alarm) = threshold_alarm(ctx, total, lost.len() + corrupt) {
        report.fail(Subject::Site(ctx.site.name.clone()), alarm);
        return incomplete(report);
    }
    // 5. record
    for (run, c, e) in &misplaced {
        let line = lifecycle::refuse(ctx, run, c, e).await;
        report.fail(Subject::copy(run, &c.data_type, &c.host), line);
    }
    for (subject, line) in dark {
        report.skip(subject, line);
    }
    for (h, why) in lost {
        mark_lost(ctx, h, &why, &mut report).await;
    }
    for (h, outcome) in hashed {
        match outcome {
            Hashed::Good(digest) => refresh(ctx, h, &digest, &mut report).await,
            Hashed::Corrupt(found) => mark_corrupt(ctx, h, &found, &mut report).await,
        }
    }
    Pass { report, complete }
}

/// What [`list`] found: the copies to audit, the run directories the catalogue knows
/// here, whether a listing was cut off, and the copies whose recorded location is refused.
type Listed = (
    Vec<Held>,
    HashSet<PathBuf>,
    bool,
    Vec<(RunDoc, CopyEntry, datadir::PathError)>,
);

/// This site's `transferred` copies in scope (tape copies excepted), the directories of all
/// its copies in any status, and whether a listing was cut off at [`LIST_LIMIT`]; copies in
/// scope whose location is not their run's directory are set apart, never audited.
async fn list(ctx: &Context) -> Result<Listed, String> {
    let me = &ctx.site.name;
    let mut held = Vec::new();
    let mut known = HashSet::new();
    let mut misplaced = Vec::new();
    let mut cut_off = false;
    for status in CopyStatus::ALL {
        let runs = ctx
            .catalog
            .copies_in_status(me, status, None, LIST_LIMIT)
            .await
            .map_err(|e| format!("{status} copies at {me}: catalogue: {e}"))?;
        cut_off |= runs.len() >= usize::try_from(LIST_LIMIT).unwrap_or(usize::MAX);
        for run in runs {
            let here: Vec<CopyEntry> = run
                .data
                .iter()
                .filter(|c| c.host == *me && c.status == status)
                .cloned()
                .collect();
            for c in here {
                if c.is_tape() {
                    continue;
                }
                let in_scope = ctx.scope.admits(run.number, run.name.as_deref());
                let dir = match dir_of(&ctx.site, &run, &c) {
                    Ok(dir) => dir,
                    Err(e) => {
                        if let Ok(expected) = datadir::run_dir(&ctx.site, &c.data_type, &run) {
                            known.insert(canonical(&expected));
                        }
                        if e.is_refusal() && in_scope && status != CopyStatus::Error {
                            misplaced.push((run.clone(), c, e));
                        }
                        continue;
                    }
                };
                known.insert(canonical(&dir));
                let audited = status == CopyStatus::Transferred && run.digest.is_some() && in_scope;
                if audited {
                    held.push(Held {
                        run: run.clone(),
                        copy: c,
                        dir,
                    });
                }
            }
        }
    }
    Ok((held, known, cut_off, misplaced))
}

/// A copy's directory: its `location`, which must be the run's directory by the site's
/// layout ([`datadir::check_location`]); a copy without one (written by another tool) is
/// looked for where the layout puts it.
fn dir_of(site: &Site, run: &RunDoc, c: &CopyEntry) -> Result<PathBuf, datadir::PathError> {
    match &c.location {
        Some(l) => datadir::check_location(site, &c.data_type, run, Some(l)),
        None => datadir::run_dir(site, &c.data_type, run),
    }
}

/// The path with links resolved when it exists (so two spellings compare equal).
fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The alarm for a data directory that is missing or empty while copies are recorded in it.
fn mount_alarm(site: &Site, held: &[Held]) -> Option<String> {
    let mut alarms = Vec::new();
    for (data_type, root) in &site.data_dirs {
        let n = held
            .iter()
            .filter(|h| h.copy.data_type == *data_type)
            .count();
        if n == 0 {
            continue;
        }
        let state = match std::fs::read_dir(root).map(|mut entries| entries.next().is_none()) {
            Ok(true) => "is empty",
            Ok(false) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
            Err(_) => "cannot be read",
        };
        alarms.push(format!(
            "{data_type} data directory {} {state} but the catalogue records {n} transferred \
             copies in it",
            root.display()
        ));
    }
    if alarms.is_empty() {
        return None;
    }
    Some(format!(
        "ALARM at {}: {}: mis-mounted disk? nothing changed",
        site.name,
        alarms.join("; ")
    ))
}

/// The alarm when `bad` of `total` copies crosses the thresholds (logged as an error).
fn threshold_alarm(ctx: &Context, total: usize, bad: usize) -> Option<String> {
    let s = &ctx.audit;
    let over = bad >= s.alarm_min
        && u128::try_from(bad).unwrap_or(u128::MAX) * 100
            > u128::try_from(total).unwrap_or(u128::MAX) * u128::from(s.alarm_percent);
    if !over {
        return None;
    }
    let dirs: Vec<String> = ctx
        .site
        .data_dirs
        .values()
        .map(|d| d.display().to_string())
        .collect();
    let alarm = format!(
        "ALARM at {}: {bad} of {total} transferred copies look lost or corrupt (alarm above \
         {}% and {} copies) in data directories {}: mis-mounted disk? nothing changed",
        ctx.site.name,
        s.alarm_percent,
        s.alarm_min,
        dirs.join(", ")
    );
    tracing::error!(site = %ctx.site.name, "{alarm}");
    ctx.metrics.audit_alarm(Alarm::Threshold);
    Some(alarm)
}

/// Checks one copy by `stat`: directory and manifest files present, sizes, dark files.
/// Blocking.
fn survey(site: &Site, dir: &Path, run: &RunDoc, data_type: &str) -> Seen {
    let place = Place::new(run, &site.name, data_type);
    let Some(root) = site.data_dir(data_type) else {
        return Seen::Refused(format!("{place}: no {data_type} data directory"));
    };
    match datadir::walk_dirs(&place, root, dir, &site.link_roots) {
        Ok(()) => {}
        Err(datadir::PathError::Missing { .. }) => {
            return Seen::Lost(format!("directory {} is gone", dir.display()))
        }
        Err(e) => return Seen::Refused(e.to_string()),
    }
    let mut missing = Vec::new();
    let mut resized = false;
    for f in &run.files {
        let path = match datadir::file_in(&place, dir, &f.path) {
            Ok(p) => p,
            Err(why) => return Seen::Refused(why.to_string()),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => resized |= i64::try_from(m.len()).ok() != Some(f.size),
            Ok(_) => resized = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(f.path.clone()),
            Err(e) => return Seen::Refused(format!("{}: {e}", path.display())),
        }
    }
    if !missing.is_empty() {
        return Seen::Lost(format!(
            "{} of {} files missing in {}: {}",
            missing.len(),
            run.files.len(),
            dir.display(),
            missing.join(", ")
        ));
    }
    let listed: BTreeSet<&str> = run.files.iter().map(|f| f.path.as_str()).collect();
    let marker = match &site.completion {
        CompletionRule::Marker(name) => Some(name.as_str()),
        CompletionRule::QuietPeriod(_) => None,
    };
    let mut on_disk = Vec::new();
    if let Err(e) = walk(dir, "", &mut on_disk) {
        return Seen::Refused(format!("listing {}: {e}", dir.display()));
    }
    let dark = on_disk
        .into_iter()
        .filter(|p| !listed.contains(p.as_str()) && Some(p.as_str()) != marker)
        .collect();
    Seen::Present { dark, resized }
}

/// Every non-directory below `dir` as a `/`-separated path after `prefix` (links listed,
/// never followed).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Run directories on disk that belong to no copy here (only when auditing every run).
/// At an origin, a directory the DAQ is still writing (not complete by the site's
/// completion rule) is not dark data but a run not registered yet, and a dry run's
/// [`register::WouldRegister`] runs are said to be registered by this cycle; every other
/// directory is dark data, reported and logged as a warning.
fn dark_runs(ctx: &Context, known: &HashSet<PathBuf>, cut_off: bool) -> Vec<(Subject, String)> {
    if ctx.scope != RunScope::All {
        return Vec::new();
    }
    let me = &ctx.site.name;
    if cut_off {
        return vec![(
            Subject::Site(me.clone()),
            format!("dark data: not looked for (a catalogue listing reached {LIST_LIMIT} runs)"),
        )];
    }
    let found = match register::discover(&ctx.site) {
        Ok(found) => found,
        Err(e) => {
            return vec![(
                Subject::Site(me.clone()),
                format!("dark data: run directories not walked: {e}"),
            )]
        }
    };
    found
        .iter()
        .filter(|f| !known.contains(&canonical(&f.dir)))
        .map(|f| {
            let subject = Subject::Run {
                number: f.key.as_ref().map(|k| k.number),
                name: Some(f.name.clone()),
                data_type: f.data_type.clone(),
            };
            let shown = f.dir.display();
            if ctx.site.origin {
                if let Some(why) = register::still_written(&f.dir, &ctx.site.completion) {
                    let line = format!(
                        "run directory {shown} is still being written ({why}); registered \
                         once complete"
                    );
                    return (subject, line);
                }
                if ctx.dry_run && ctx.would_register.holds_dir(&f.dir) {
                    let line = format!(
                        "dry run: run directory {shown} is not registered yet; the register \
                         task would register it in this cycle"
                    );
                    return (subject, line);
                }
            }
            let line = format!(
                "dark data: run directory {shown} ({} {}) is not in the catalogue at this \
                 site; left alone",
                f.data_type, f.name
            );
            tracing::warn!(site = %me, dir = %shown, "{line}");
            (Subject::Site(me.clone()), line)
        })
        .collect()
}

/// The report line for files in a copy's directory that its manifest does not list.
fn dark_files(h: &Held, extra: &[String]) -> (Subject, String) {
    let shown: Vec<&str> = extra.iter().take(SHOW_FILES).map(String::as_str).collect();
    let more = extra.len().saturating_sub(SHOW_FILES);
    let parts = extra.iter().any(|p| p.ends_with(PART_SUFFIX));
    let line = format!(
        "dark data: {} files in {} not in the manifest: {}{}{}; left alone",
        extra.len(),
        h.dir.display(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        if parts {
            " (leftover .part files of an interrupted copy)"
        } else {
            ""
        }
    );
    tracing::warn!(site = %h.copy.host, dir = %h.dir.display(), "{line}");
    (h.subject(), line)
}

/// Re-hashes one copy (verify's `rehash`) in the directory [`list`] checked and [`survey`]
/// walked.
async fn rehash(ctx: &Context, h: &Held) -> Result<Hashed, String> {
    let dir = h.dir.clone();
    let place = Place::new(&h.run, &ctx.site.name, &h.copy.data_type);
    let files = h.run.files.clone();
    let found = tokio::task::spawn_blocking(move || super::rehash::rehash(&place, &dir, &files))
        .await
        .map_err(|e| format!("re-hash task failed: {e}"))?;
    let digest = h.run.digest.clone().unwrap_or_default();
    if found.bad.is_empty() && found.digest.as_deref() == Some(digest.as_str()) {
        Ok(Hashed::Good(digest))
    } else {
        Ok(Hashed::Corrupt(found))
    }
}

/// `transferred → error` with `failure`; `Ok(false)`: the copy changed meanwhile.
async fn to_error(ctx: &Context, h: &Held, failure: &Failure) -> Result<bool, String> {
    let copy = CopyRef::new(h.run.key(), &h.copy.host, &h.copy.data_type);
    let mut change = Transition::new(CopyStatus::Transferred, CopyStatus::Error, None, &ctx.owner);
    change.record_failure(failure);
    match ctx.catalog.transition(&copy, &change).await {
        Ok(Cas::Done) => {
            ctx.metrics.failure(failure.class);
            Ok(true)
        }
        Ok(Cas::Lost) => Ok(false),
        Err(e) => Err(format!("{copy}: {e}")),
    }
}

/// Whether another verified copy of the run can restore this one.
fn restorable(h: &Held) -> bool {
    let digest = h.run.digest.as_deref().unwrap_or_default();
    verified_elsewhere(&h.run, &h.copy, digest).next().is_some()
}

/// Files a lost or corrupt copy in the report (logged loudly where the report is shown).
fn bad(h: &Held, line: String, report: &mut TaskReport) {
    report.fail(h.subject(), line);
}

async fn mark_lost(ctx: &Context, h: &Held, why: &str, report: &mut TaskReport) {
    let restore = if restorable(h) {
        "re-copied from a verified copy by the retry task"
    } else {
        "NO other verified copy of the run exists"
    };
    let failure = Failure::new(
        FailureClass::Retryable,
        format!("lost: audit at {}: {why}; {restore}", ctx.site.name),
    );
    if ctx.dry_run {
        bad(h, format!("dry run: would record {failure}"), report);
        return;
    }
    match to_error(ctx, h, &failure).await {
        Ok(true) => bad(h, failure.to_string(), report),
        Ok(false) => report.skip(h.subject(), "changed while it was audited"),
        Err(e) => report.fail(h.subject(), e),
    }
}

async fn mark_corrupt(ctx: &Context, h: &Held, found: &Rehash, report: &mut TaskReport) {
    ctx.metrics.checksum_mismatch(Check::Audit);
    let digest = h.run.digest.as_deref().unwrap_or_default();
    let restore = restorable(h);
    let failure = verify::mismatch(
        &format!("audit at {} (bit rot)", ctx.site.name),
        &h.dir,
        found,
        digest,
        restore,
    );
    if ctx.dry_run {
        bad(h, format!("dry run: would record {failure}"), report);
        return;
    }
    match to_error(ctx, h, &failure).await {
        Ok(true) => {}
        Ok(false) => {
            report.skip(h.subject(), "changed while it was audited");
            return;
        }
        Err(e) => {
            report.fail(h.subject(), e);
            return;
        }
    }
    let problems = if restore {
        let place = Place::new(&h.run, &h.copy.host, &h.copy.data_type);
        verify::remove_bad(&place, &h.dir, found)
    } else {
        Vec::new()
    };
    if problems.is_empty() {
        bad(h, failure.to_string(), report);
    } else {
        let line = format!("{failure}; but removing failed: {}", problems.join("; "));
        bad(h, line, report);
    }
}

/// A good re-hash: the copy's `verified_time` becomes now.
async fn refresh(ctx: &Context, h: &Held, digest: &str, report: &mut TaskReport) {
    let line = format!(
        "{} files re-hashed in {}, digest matches",
        h.run.files.len(),
        h.dir.display()
    );
    if ctx.dry_run {
        report.did(h.subject(), line);
        return;
    }
    let copy = CopyRef::new(h.run.key(), &h.copy.host, &h.copy.data_type);
    match ctx
        .catalog
        .record_checksum(
            &copy,
            CopyStatus::Transferred,
            None,
            digest,
            DateTime::now(),
        )
        .await
    {
        Ok(Cas::Done) => report.did(h.subject(), line),
        Ok(Cas::Lost) => report.skip(h.subject(), "changed while it was audited"),
        Err(e) => report.fail(h.subject(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_and_a_garbled_one_is_not_retryable() {
        let d = tempfile::tempdir().unwrap();
        assert!(last_complete(d.path(), "mirror").unwrap().is_none());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        remember(d.path(), "mirror", at).unwrap();
        assert_eq!(last_complete(d.path(), "mirror").unwrap(), Some(at));
        assert!(last_complete(d.path(), "daq").unwrap().is_none());
        std::fs::write(state_file(d.path(), "daq"), "yesterday").unwrap();
        let err = last_complete(d.path(), "daq").unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("audit-daq.last"), "{err}");
    }

    #[test]
    fn walk_lists_nested_files_with_slashes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/c"), b"").unwrap();
        std::fs::write(d.path().join("top"), b"").unwrap();
        let mut out = Vec::new();
        walk(d.path(), "", &mut out).unwrap();
        out.sort();
        assert_eq!(out, ["a/b/c", "top"]);
    }
}
