//! *purge*: remove this site's copy of a run once enough verified copies elsewhere protect
//! it (DESIGN §6).
//!
//! [`decide`] is the whole rule, as a pure function of the run document, the policy, the
//! time, the disk and the operator's request. A copy here (`transferred`, on disk) may go
//! only when **all** hold:
//!
//! - every other `transferred` copy of the type carries the run's digest, and so does this
//!   one (copies that disagree are never resolved by deleting one);
//! - at least `min_copies` *other* copies are `transferred` with the run's digest and were
//!   verified within `max_verify_age`, `min_tape_copies` of them on tape (`protocol: tape`);
//! - the run is older than `retention` (its `end`, else `start`, else its oldest copy);
//! - the data directory's file system is fuller than `high_water_mark` (statvfs), **or**
//!   the operator asked for this run (`--run N` / `--name X`).
//!
//! The **absolute guard** comes before the policy and holds whatever the site map says
//! (even `min_copies: 0`): the last verified copy of a run is never removed
//! ([`last_copy_guard`]). Removal is then, in order: `transferred → removing`, one
//! conditional update that also requires every copy counted as protection to be still
//! there as counted (`transferred`, the digest, verified no earlier than counted; see
//! [`crate::catalog::Protector`]), with an audit event: of two sites purging the same run
//! at once, the second finds the first's copy `removing`, gets `Lost`, and keeps its copy
//! `transferred` ("kept: another site is removing its copy"); the run document read again
//! and the guard and `min_copies` checked again (a second guard); the manifest's files
//! deleted (nothing else, no symbolic link
//! followed), then the site's completion marker, then directories left empty, the run
//! directory last; then the entry itself (`remove_copy`, with an audit event). A copy left
//! in `removing` by a crash is finished on a later cycle, guard permitting; one whose guard
//! failed keeps its files and is reported every cycle for an operator.
//!
//! `--dry-run` reports every file it would delete and why, and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::copies_in;
use super::verify::verified_elsewhere;
use super::{lifecycle, walk, Context, RunScope, Subject, TaskReport, WorkList, MAX_PAGES};
use crate::catalog::{Cas, CopyRef, Protector};
use crate::config::{CompletionRule, PurgePolicy};
use crate::datadir::{self, roots, Place};

/// The file system holding a directory, as statvfs sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in the file system.
    pub total_bytes: u64,
    /// Bytes an unprivileged user may still write.
    pub free_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Percentage used, as `df` shows it: used / (used + available), rounded up.
    pub used_percent: u8,
}

impl DiskUsage {
    /// The percentage used once `freed` more bytes are free (`df`'s rounding).
    pub fn used_after(&self, freed: u64) -> u8 {
        if freed == 0 {
            return self.used_percent;
        }
        let used = self.used_bytes.saturating_sub(freed);
        let base = self.used_bytes.saturating_add(self.free_bytes);
        if base == 0 {
            return 0;
        }
        let pct = used.saturating_mul(100).div_ceil(base);
        u8::try_from(pct.min(100)).unwrap_or(100)
    }
}

/// statvfs of `path`.
pub fn disk_usage(path: &Path) -> std::io::Result<DiskUsage> {
    let st = rustix::fs::statvfs(path)?;
    let unit = st.f_frsize.max(1);
    let used = st.f_blocks.saturating_sub(st.f_bfree);
    let base = used.saturating_add(st.f_bavail);
    let pct = if base == 0 {
        0
    } else {
        used.saturating_mul(100).div_ceil(base)
    };
    Ok(DiskUsage {
        total_bytes: st.f_blocks.saturating_mul(unit),
        free_bytes: st.f_bavail.saturating_mul(unit),
        used_bytes: used.saturating_mul(unit),
        used_percent: u8::try_from(pct.min(100)).unwrap_or(100),
    })
}

/// Why the disk permits a purge, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// The disk is this full (percent): over the high-water mark, or still over the
    /// low-water mark in a purge that started over the high-water mark.
    Used(u8),
    /// The operator asked for this run.
    Asked,
}

/// Whether the copy `c` of `run` may be removed now: `Ok(why)` or `Err(why not)`.
/// `used_percent` is the fullness of its data directory's file system (`None`: unknown,
/// which never counts as over the mark).
pub fn decide(
    policy: &PurgePolicy,
    run: &RunDoc,
    c: &CopyEntry,
    now: DateTime,
    used_percent: Option<u8>,
    asked: bool,
) -> Result<String, String> {
    let why = eligible(policy, run, c, now)?;
    let pressure = match used_percent {
        _ if asked => Pressure::Asked,
        Some(used) if used > policy.high_water_mark => Pressure::Used(used),
        Some(used) => return Err(not_over(policy, used)),
        None => return Err("disk usage unknown and the run was not asked for".into()),
    };
    Ok(with_pressure(policy, &why, pressure))
}

/// Every rule but the disk's: `Ok(why)` (the copies that protect it, the run's age) or
/// `Err(why not)`.
pub fn eligible(
    policy: &PurgePolicy,
    run: &RunDoc,
    c: &CopyEntry,
    now: DateTime,
) -> Result<String, String> {
    let Some(digest) = run.digest.as_deref() else {
        return Err("the run has no manifest digest".into());
    };
    if c.checksum.as_deref() != Some(digest) {
        return Err(format!(
            "this copy's checksum {} is not the run digest {digest}",
            c.checksum.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(o) = run.data.iter().find(|o| {
        o.data_type == c.data_type
            && o.host != c.host
            && o.status == CopyStatus::Transferred
            && o.checksum.as_deref() != Some(digest)
    }) {
        return Err(format!(
            "copies disagree: {} has {}, the run digest is {digest}",
            o.host,
            o.checksum.as_deref().unwrap_or("no checksum")
        ));
    }
    last_copy_guard(run, c)?;
    let fresh = fresh_copies(run, c, digest, now, policy.max_verify_age);
    let min = usize::try_from(policy.min_copies).unwrap_or(usize::MAX);
    if fresh.len() < min {
        return Err(format!(
            "{} verified copies elsewhere within {} ({} in all), policy needs {min}",
            fresh.len(),
            humantime::format_duration(policy.max_verify_age),
            verified_elsewhere(run, c, digest).count()
        ));
    }
    let tape = fresh.iter().filter(|o| o.is_tape()).count();
    let min_tape = usize::try_from(policy.min_tape_copies).unwrap_or(usize::MAX);
    if tape < min_tape {
        return Err(format!("{tape} of them on tape, policy needs {min_tape}"));
    }
    let Some(born) = run_time(run) else {
        return Err("the run's age is unknown (no end, start or copy time)".into());
    };
    let age = millis_between(born, now);
    if age < policy.retention {
        return Err(format!(
            "run age {} is under the retention {}",
            humantime::format_duration(whole_seconds(age)),
            humantime::format_duration(policy.retention)
        ));
    }
    let hosts: Vec<&str> = fresh.iter().map(|o| o.host.as_str()).collect();
    Ok(format!(
        "{} verified copies elsewhere ({}; {tape} on tape), run age {} over retention {}",
        fresh.len(),
        hosts.join(", "),
        humantime::format_duration(whole_seconds(age)),
        humantime::format_duration(policy.retention),
    ))
}

/// The reason of [`eligible`] with the disk's part.
fn with_pressure(policy: &PurgePolicy, why: &str, pressure: Pressure) -> String {
    match pressure {
        Pressure::Asked => format!("{why}, asked for by the operator"),
        Pressure::Used(u) if u > policy.high_water_mark => format!(
            "{why}, disk {u}% used over the high-water mark {}%",
            policy.high_water_mark
        ),
        Pressure::Used(u) => format!(
            "{why}, disk {u}% used, purging down to the low-water mark {}%",
            low_water(policy)
        ),
    }
}

fn not_over(policy: &PurgePolicy, used: u8) -> String {
    format!(
        "disk {used}% used, not above the high-water mark {}%, and the run was not asked for",
        policy.high_water_mark
    )
}

/// The low-water mark in force: never above the high-water mark.
fn low_water(policy: &PurgePolicy) -> u8 {
    policy.low_water_mark.min(policy.high_water_mark)
}

/// The absolute guard: at least one *other* copy of the type is `transferred` with the
/// run's digest. Checked before the policy, and again after the copy went to `removing`.
pub fn last_copy_guard(run: &RunDoc, c: &CopyEntry) -> Result<(), String> {
    let verified = run
        .digest
        .as_deref()
        .map_or(0, |d| verified_elsewhere(run, c, d).count());
    if verified == 0 {
        return Err(
            "it is the last verified copy of the run; the last copy is never removed".into(),
        );
    }
    Ok(())
}

/// The other copies of the type, `transferred` with `digest` and verified within `max_age`.
fn fresh_copies<'r>(
    run: &'r RunDoc,
    c: &CopyEntry,
    digest: &str,
    now: DateTime,
    max_age: Duration,
) -> Vec<&'r CopyEntry> {
    verified_elsewhere(run, c, digest)
        .filter(|o| {
            o.verified_time
                .is_some_and(|t| millis_between(t, now) <= max_age)
        })
        .collect()
}

/// When the run was taken: `end`, else `start`, else its oldest copy's creation.
fn run_time(run: &RunDoc) -> Option<DateTime> {
    run.end
        .or(run.start)
        .or_else(|| run.data.iter().filter_map(|c| c.creation_time).min())
}

/// `later - earlier`, zero when negative.
fn millis_between(earlier: DateTime, later: DateTime) -> Duration {
    let ms = later
        .timestamp_millis()
        .saturating_sub(earlier.timestamp_millis());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    finish_removals(ctx, token, &mut report).await;
    if !ctx.site.purge.enabled {
        report.skip(
            Subject::Site(ctx.site.name.clone()),
            "purging is disabled for this site in the site map",
        );
        return report;
    }
    let me = &ctx.site.name;
    let runs = match walk(ctx, WorkList::PurgeCandidates(me), MAX_PAGES).await {
        Ok(runs) => runs,
        Err(e) => {
            report.fail(Subject::Whole, format!("purge candidates: catalogue: {e}"));
            return report;
        }
    };
    let asked = !matches!(ctx.scope, RunScope::All);
    let now = DateTime::now();
    // Runs asked for go at once; the others wait, per data type, for the disk's verdict.
    let mut waiting: BTreeMap<String, Vec<Eligible<'_>>> = BTreeMap::new();
    for run in &runs {
        for c in run
            .data
            .iter()
            .filter(|c| c.host == *me && c.status == CopyStatus::Transferred && !c.is_tape())
        {
            if token.is_cancelled() {
                return report;
            }
            let label = Subject::copy(run, &c.data_type, me);
            if ctx
                .scheduler
                .reads(&CopyRef::new(run.key(), me, &c.data_type))
            {
                report.skip(label, "kept: this agent is copying from it");
                continue;
            }
            let why = match eligible(&ctx.site.purge, run, c, now) {
                Ok(why) => why,
                Err(why_not) => {
                    report.skip(label, format!("kept: {why_not}"));
                    continue;
                }
            };
            if asked {
                let why = with_pressure(&ctx.site.purge, &why, Pressure::Asked);
                let _ = purge_and_report(ctx, run, c, &label, &why, &mut report).await;
                continue;
            }
            waiting
                .entry(c.data_type.clone())
                .or_default()
                .push(Eligible { run, c, label, why });
        }
    }
    for (data_type, mut queue) in waiting {
        // Oldest runs first (their time as the retention rule reads it, then number).
        queue.sort_by_key(|e| (run_time(e.run).map(|t| t.timestamp_millis()), e.run.number));
        drain(ctx, token, &data_type, queue, &mut report).await;
    }
    report
}

/// A copy every rule but the disk's allows to go.
struct Eligible<'r> {
    run: &'r RunDoc,
    c: &'r CopyEntry,
    label: Subject,
    why: String,
}

/// The data directories being purged down to their low-water mark: a purge that starts
/// over the high-water mark goes on, cycle after cycle, until the disk is at most at the
/// low-water mark (kept for the agent's life in [`Context::purging`]).
#[derive(Debug, Default)]
pub struct Purging(Mutex<BTreeSet<String>>);

impl Purging {
    fn get(&self, data_type: &str) -> bool {
        let set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set.contains(data_type)
    }

    fn set(&self, data_type: &str, on: bool) {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if on {
            set.insert(data_type.to_string());
        } else {
            set.remove(data_type);
        }
    }
}

/// Removes the copies of `queue` (oldest first) while the disk of `data_type` is over its
/// mark: over the high-water mark to start, then over the low-water mark, the disk's
/// usage read again after every removal. What is left is kept, with the disk's reason.
async fn drain(
    ctx: &Context,
    token: &CancellationToken,
    data_type: &str,
    queue: Vec<Eligible<'_>>,
    report: &mut TaskReport,
) {
    let policy = &ctx.site.purge;
    let low = low_water(policy);
    let mut disk = disk_of(ctx, data_type);
    // A dry run removes nothing: the usage it reports is projected from the runs' sizes.
    let mut freed: u64 = 0;
    let mut draining = ctx.purging.get(data_type);
    for e in queue {
        if token.is_cancelled() {
            return;
        }
        let Some(d) = disk else {
            let line = "kept: disk usage unknown and the run was not asked for";
            report.skip(e.label, line);
            continue;
        };
        let used = d.used_after(freed);
        draining = if draining {
            used > low
        } else {
            used > policy.high_water_mark
        };
        if !ctx.dry_run {
            ctx.purging.set(data_type, draining);
        }
        if !draining {
            let why_not = if used > low || low == policy.high_water_mark {
                not_over(policy, used)
            } else {
                format!(
                    "disk {used}% used, at or below the low-water mark {low}% (high-water \
                     mark {}%), and the run was not asked for",
                    policy.high_water_mark
                )
            };
            report.skip(e.label, format!("kept: {why_not}"));
            continue;
        }
        let why = with_pressure(policy, &e.why, Pressure::Used(used));
        let removed = purge_and_report(ctx, e.run, e.c, &e.label, &why, report).await;
        if ctx.dry_run {
            freed = freed.saturating_add(u64::try_from(e.run.size.unwrap_or(0)).unwrap_or(0));
        } else if removed {
            disk = disk_of(ctx, data_type);
        }
    }
}

/// Purges one copy and files the outcome in `report`; `true` when it was removed (or, in
/// a dry run, would be).
async fn purge_and_report(
    ctx: &Context,
    run: &RunDoc,
    c: &CopyEntry,
    label: &Subject,
    why: &str,
    report: &mut TaskReport,
) -> bool {
    match purge_one(ctx, run, c, why).await {
        Ok(Purged::DryRun(lines)) => {
            for line in lines {
                report.skip(label.clone(), line);
            }
            true
        }
        Ok(Purged::Kept(why_not)) => {
            report.skip(label.clone(), format!("kept: {why_not}"));
            false
        }
        Ok(Purged::Removed) => {
            report.did(label.clone(), format!("removed: {why}"));
            true
        }
        Err(e) => {
            report.fail(label.clone(), e.to_string());
            false
        }
    }
}

fn disk_of(ctx: &Context, data_type: &str) -> Option<DiskUsage> {
    let dir = ctx.site.data_dir(data_type)?;
    match disk_usage(dir) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read the disk usage: {e}");
            None
        }
    }
}

/// What [`purge_one`] did.
#[derive(Debug)]
enum Purged {
    /// Files and entry gone.
    Removed,
    /// Dry run: what it would delete.
    DryRun(Vec<String>),
    /// Left `transferred`: a copy protecting it changed before the mark (why).
    Kept(String),
}

/// The copies that [`decide`] counted as protecting `c`, as the conditional mark must find
/// them: the fresh ones, or when the policy needs none (`min_copies: 0`), those the
/// absolute guard counted.
fn protectors(run: &RunDoc, c: &CopyEntry, now: DateTime, max_age: Duration) -> Vec<Protector> {
    let Some(digest) = run.digest.as_deref() else {
        return Vec::new();
    };
    let mut counted = fresh_copies(run, c, digest, now, max_age);
    if counted.is_empty() {
        counted = verified_elsewhere(run, c, digest).collect();
    }
    counted
        .into_iter()
        .map(|o| Protector {
            host: o.host.clone(),
            data_type: o.data_type.clone(),
            checksum: digest.to_string(),
            verified_after: o.verified_time,
        })
        .collect()
}

/// Why a lost mark lost, from the run as it is now: our copy changed, or a protector did.
fn why_lost(
    now: Option<&RunDoc>,
    c: &CopyEntry,
    protected_by: &[Protector],
) -> Result<Purged, String> {
    let Some(run) = now else {
        return Err("the run vanished from the catalogue".into());
    };
    let mine = run.copy(&c.host, &c.data_type);
    if mine.is_none_or(|m| m.status != CopyStatus::Transferred) {
        return Err("the copy changed before it could be marked removing".into());
    }
    let gone: Vec<&Protector> = protected_by.iter().filter(|p| !p.holds(run)).collect();
    // Only a purge takes a copy to `removing`, and only `removing` entries are deleted.
    if gone.iter().any(|p| {
        run.copy(&p.host, &p.data_type)
            .is_none_or(|o| o.status == CopyStatus::Removing)
    }) {
        return Ok(Purged::Kept(
            "another site is removing its copy (or has removed it)".into(),
        ));
    }
    let hosts: Vec<&str> = gone.iter().map(|p| p.host.as_str()).collect();
    Ok(Purged::Kept(if hosts.is_empty() {
        "the run changed while it was being marked; checked again next cycle".into()
    } else {
        format!(
            "the copy at {} changed since it was counted; checked again next cycle",
            hosts.join(", ")
        )
    }))
}

/// Removes one copy (or, in a dry run, lists what it would delete).
async fn purge_one(
    ctx: &Context,
    run: &RunDoc,
    c: &CopyEntry,
    why: &str,
) -> Result<Purged, String> {
    let dir = match datadir::copy_dir(&ctx.site, run, c) {
        Ok(dir) => dir,
        Err(e) if e.is_refusal() => return Err(lifecycle::refuse(ctx, run, c, &e).await),
        Err(e) => return Err(e.to_string()),
    };
    let place = Place::new(run, &ctx.site.name, &c.data_type);
    let marker = marker(ctx);
    let protected_by = protectors(run, c, DateTime::now(), ctx.site.purge.max_verify_age);
    if let Some(host) = same_files(ctx, run, &dir, &protected_by) {
        return Err(format!(
            "kept: the copy counted at {host} is this very directory ({}), not another copy; \
             two sites share a data directory on this machine",
            dir.display()
        ));
    }
    if ctx.dry_run {
        let mut lines = vec![format!(
            "dry run: would remove this copy ({}): {why}",
            dir.display()
        )];
        for path in planned_deletions(&place, &dir, run, marker.as_deref())? {
            lines.push(format!("dry run: would delete {}", path.display()));
        }
        return Ok(Purged::DryRun(lines));
    }
    let copy = CopyRef::new(run.key(), &ctx.site.name, &c.data_type);
    let purge_why = format!("purge: {why}");
    if protected_by.is_empty() {
        // `decide` let it through, so this cannot happen; never mark without protection.
        return Err("no copy elsewhere protects it".into());
    }
    match ctx
        .catalog
        .mark_removing(
            &copy,
            CopyStatus::Transferred,
            &protected_by,
            &ctx.owner,
            &purge_why,
        )
        .await
        .map_err(|e| format!("{copy}: {e}"))?
    {
        Cas::Done => {}
        Cas::Lost => {
            let now = ctx
                .catalog
                .get_run(&run.key())
                .await
                .map_err(|e| format!("{copy}: re-reading the run: {e}"))?;
            return why_lost(now.as_ref(), c, &protected_by);
        }
    }
    // Read again: another site may have removed its copy meanwhile.
    let now = ctx
        .catalog
        .get_run(&run.key())
        .await
        .map_err(|e| format!("{copy}: re-reading the run: {e}"))?
        .ok_or_else(|| format!("{copy}: the run vanished from the catalogue"))?;
    let min = ctx.site.purge.min_copies.max(1);
    let still = recheck(&now, c, DateTime::now(), ctx.site.purge.max_verify_age);
    if still < usize::try_from(min).unwrap_or(usize::MAX) {
        return Err(format!(
            "left in `removing` with every file kept: only {still} verified copies remain \
             elsewhere now (needs {min}); an operator must check the run"
        ));
    }
    delete_and_forget(ctx, &copy, run, &dir, &purge_why).await?;
    Ok(Purged::Removed)
}

/// A protector whose copy is, on this machine, the same directory as `dir` (two sites
/// sharing a data directory): its "other copy" is these very files.
fn same_files(
    ctx: &Context,
    run: &RunDoc,
    dir: &Path,
    protected_by: &[Protector],
) -> Option<String> {
    protected_by.iter().find_map(|p| {
        let site = ctx.map.site(&p.host)?;
        if !roots::on_this_machine(&ctx.site, site) {
            return None;
        }
        let loc = run.copy(&p.host, &p.data_type)?.location.clone()?;
        roots::same_dir(Path::new(&loc), dir).then(|| p.host.clone())
    })
}

/// Other copies of `c`'s type that still protect it: transferred, digest-equal, verified
/// within `max_age`. Zero when the absolute guard fails.
fn recheck(run: &RunDoc, c: &CopyEntry, now: DateTime, max_age: Duration) -> usize {
    match (last_copy_guard(run, c), run.digest.as_deref()) {
        (Ok(()), Some(d)) => fresh_copies(run, c, d, now, max_age).len(),
        _ => 0,
    }
}

/// The site's completion marker, which goes with the run's files (otherwise the register
/// task would find a complete run with no files).
fn marker(ctx: &Context) -> Option<String> {
    match &ctx.site.completion {
        CompletionRule::Marker(m) => Some(m.clone()),
        CompletionRule::QuietPeriod(_) => None,
    }
}

/// What deleting the copy would remove: the manifest files present, the marker.
fn planned_deletions(
    place: &Place,
    dir: &Path,
    run: &RunDoc,
    marker: Option<&str>,
) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for rel in run.files.iter().map(|f| f.path.as_str()).chain(marker) {
        let path = datadir::file_in(place, dir, rel).map_err(|e| e.to_string())?;
        if std::fs::symlink_metadata(&path).is_ok() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Deletes the files, then the entry.
async fn delete_and_forget(
    ctx: &Context,
    copy: &CopyRef,
    run: &RunDoc,
    dir: &Path,
    why: &str,
) -> Result<(), String> {
    let marker = marker(ctx);
    let files: Vec<String> = run
        .files
        .iter()
        .map(|f| f.path.clone())
        .chain(marker)
        .collect();
    let owned = dir.to_path_buf();
    let place = Place::new(run, &copy.host, &copy.data_type);
    tokio::task::spawn_blocking(move || delete_files(&place, &owned, &files))
        .await
        .map_err(|e| format!("delete task failed: {e}"))??;
    match ctx
        .catalog
        .remove_copy(copy, &ctx.owner, why)
        .await
        .map_err(|e| format!("{copy}: {e}"))?
    {
        Cas::Done => Ok(()),
        Cas::Lost => Err(format!(
            "{copy}: files deleted but the entry was no longer `removing`"
        )),
    }
}

/// Deletes `files` below `dir`, then the directories they leave empty, `dir` last.
/// A directory still holding something else stays.
fn delete_files(place: &Place, dir: &Path, files: &[String]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut parents: Vec<PathBuf> = Vec::new();
    for rel in files {
        if let Err(e) = datadir::remove_file_in(place, dir, rel) {
            problems.push(e.to_string());
        }
        let mut p = Path::new(rel).parent();
        while let Some(sub) = p.filter(|s| !s.as_os_str().is_empty()) {
            parents.push(dir.join(sub));
            p = sub.parent();
        }
    }
    if !problems.is_empty() {
        return Err(format!("cannot delete: {}", problems.join("; ")));
    }
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.dedup();
    for p in parents.iter().map(PathBuf::as_path).chain([dir]) {
        // Fails (and keeps it) when something not in the manifest is still there.
        let _ = std::fs::remove_dir(p);
    }
    Ok(())
}

/// Copies here in `removing`: finish them when the guard holds, report them when not.
async fn finish_removals(ctx: &Context, token: &CancellationToken, report: &mut TaskReport) {
    let me = &ctx.site.name;
    let copies = match copies_in(ctx, me, CopyStatus::Removing).await {
        Ok(copies) => copies,
        Err(e) => {
            report.fail(Subject::Whole, e);
            return;
        }
    };
    for (run, c) in &copies {
        if token.is_cancelled() {
            return;
        }
        let label = Subject::copy(run, &c.data_type, me);
        if let Err(why) = last_copy_guard(run, c) {
            report.fail(
                label,
                format!("left in `removing` with its files: {why}; an operator must check"),
            );
            continue;
        }
        if ctx.dry_run {
            report.skip(label, "dry run: would finish removing this copy");
            continue;
        }
        let copy = CopyRef::new(run.key(), me, &c.data_type);
        let why = "purge: finishing a removal that was cut short";
        // The location is checked before anything: a `removing` entry whose location is not
        // the run's own directory is neither deleted from nor forgotten.
        let outcome = match datadir::copy_dir(&ctx.site, run, c) {
            Ok(dir) => delete_and_forget(ctx, &copy, run, &dir, why).await,
            Err(e) if e.is_refusal() => Err(lifecycle::refuse(ctx, run, c, &e).await),
            Err(datadir::PathError::Missing { .. }) => {
                match ctx.catalog.remove_copy(&copy, &ctx.owner, why).await {
                    Ok(Cas::Done) => Ok(()),
                    Ok(Cas::Lost) => Err(format!("{copy}: the entry was no longer `removing`")),
                    Err(e) => Err(format!("{copy}: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => report.did(label, "removal finished"),
            Err(e) => report.fail(label, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_of_tmp_is_sane() {
        let d = disk_usage(Path::new("/tmp")).unwrap();
        assert!(d.total_bytes > 0);
        assert!(d.free_bytes <= d.total_bytes);
        assert!(d.used_percent <= 100);
    }

    #[test]
    fn empty_directories_left_behind_are_removed_but_not_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("Run1");
        std::fs::create_dir_all(run.join("a/b")).unwrap();
        std::fs::create_dir_all(run.join("c")).unwrap();
        std::fs::write(run.join("a/b/x"), b"x").unwrap();
        std::fs::write(run.join("c/y"), b"y").unwrap();
        std::fs::write(run.join("c/not-in-manifest"), b"z").unwrap();
        let place = Place {
            run: 1,
            data_type: "raw".into(),
            site: "s".into(),
        };
        delete_files(&place, &run, &["a/b/x".into(), "c/y".into()]).unwrap();
        assert!(!run.join("a").exists());
        assert!(run.join("c/not-in-manifest").exists());
        std::fs::remove_file(run.join("c/not-in-manifest")).unwrap();
        delete_files(&place, &run, &["a/b/x".into(), "c/y".into()]).unwrap();
        assert!(!run.exists());
    }
}
