//! *register*: at an origin site, find complete runs on disk, build their manifest
//! (DESIGN §3.2) and record the run with its origin copy.
//!
//! Discovery walks each data directory to the layout template's depth and reads each run
//! directory's identity back from its path (`RunPeriod-{period}/Run{number:06}`). A run is
//! complete when its completion marker exists, or when no file in it was modified for the
//! quiet period; a run holding a `.part` file, or a file modified during hashing, is still
//! being written and is left for a later cycle. Symbolic links inside a run directory are
//! refused: a manifest lists only regular files that live in the run directory.
//!
//! A run already recorded with a checksummed copy at this site is skipped without reading
//! its files, so an idle cycle costs one catalogue lookup per run directory.
//!
//! **Runs a DAQ recorded (XENON style).** A DAQ may write the run document itself:
//! `number`, `name`, `start`, `end`, and a `data[]` entry for its own host with `checksum:
//! null` (status `transferred` or `verifying`). When a run directory found on disk belongs to
//! such a document (by number, or by name where the layout has no `{number}`, e.g.
//! `{name}` for XENON1T's `170330_1234`), `end` set means complete; the task builds the
//! manifest, adds it and the wanted copies to the document, and records the digest on the
//! DAQ's own entry (moving a `verifying` entry to `transferred`), instead of adding a second
//! origin copy. Nothing copies such a run before that: the copy tasks only take runs with a
//! `transferred` copy that carries the run's digest, and only runs with a `want`.
//!
//! Before discovery, at every site (origin or not), the task runs [`super::adopt`]: copies at
//! this site that a DAQ or cax recorded without Ferry's manifest get it from this agent,
//! found through the catalogue, so a cax collaboration, which has no origin, moves.
//!
//! Registration also records which copies the collaboration wants ([`wanted_sites`]): every
//! site the site map's links reach from this origin, through sites that hold the data type.
//! The copy tasks find their work through those wants.
//!
//! **Start and end.** A run found on disk has no DAQ record of when it was taken, so a new
//! run document gets `start` and `end` from the disk ([`disk_times`]): the earliest and the
//! latest modification time of its files, or, where the site's completion rule is a
//! marker, the marker's time as `end`. A document the DAQ wrote keeps its own `start` and
//! `end` (registration never changes them).
//!
//! **Dry run.** `--dry-run` registers nothing; the runs it would register are kept in
//! [`WouldRegister`] for the rest of the cycle, so the later tasks and the audit say what
//! would happen to them once registered instead of not finding them in the catalogue.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bson::DateTime;
use catalog_schema::{CopyStatus, FileEntry, RunDoc, RunKey};
use tokio_util::sync::CancellationToken;

use super::{Context, RunScope, Subject, Task, TaskReport};
use crate::catalog::{
    want_tag, Cas, CopyRef, Manifest, NewRun, OriginCopy, Registered, RunSelector, Transition,
};
use crate::checksum::{self, ManifestLine};
use crate::config::{CompletionRule, LayoutField, Link, Site, SiteMap};
use crate::transport::PART_SUFFIX;

/// The detector recorded when the layout does not name one (cax's default).
pub const DEFAULT_DETECTOR: &str = "tpc";

/// A run directory found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Detector and number; `None` when the layout has no `{number}` (the run document,
    /// found by name, gives it).
    pub key: Option<RunKey>,
    /// `{detector}` from the layout, if it has one.
    pub detector: Option<String>,
    /// The run name: `{name}` from the layout, else the run directory's own name.
    pub name: String,
    /// Data type (the data directory's key, e.g. `raw`).
    pub data_type: String,
    /// The run directory.
    pub dir: PathBuf,
    /// Why it is refused (a symbolic link not allowed by the site's `link_roots`).
    pub refused: Option<String>,
}

/// Why a run directory is not registered (yet).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The run is still being written.
    #[error("{dir}: not complete yet: {why}")]
    Incomplete {
        /// The run directory.
        dir: String,
        /// What shows it.
        why: String,
    },
    /// The run directory holds something a manifest cannot list.
    #[error("{dir}: {why}")]
    Refused {
        /// The run directory.
        dir: String,
        /// What is wrong.
        why: String,
    },
    /// Reading the directory or a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Hashing failed.
    #[error(transparent)]
    Checksum(#[from] checksum::ChecksumError),
}

/// Runs the task for `ctx.site` (does nothing at sites that are not origins).
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    // Copies at this site that another tool recorded without a Ferry manifest (a DAQ's
    // entry, a copy cax made), at origins and elsewhere alike.
    ctx.would_register.clear();
    let mut report = super::adopt::run(ctx, token).await;
    if !ctx.site.origin {
        return report;
    }
    let found = match discover(&ctx.site) {
        Ok(found) => found,
        Err(err) => {
            report.fail(Subject::Site(ctx.site.name.clone()), err.to_string());
            return report;
        }
    };
    for run in found {
        if token.is_cancelled() {
            break;
        }
        if let Some(key) = &run.key {
            if !ctx.scope.admits(key.number, Some(&run.name)) {
                continue;
            }
        }
        let subject = Subject::Run {
            number: run.key.as_ref().map(|k| k.number),
            name: Some(run.name.clone()),
            data_type: run.data_type.clone(),
        };
        match register_one(ctx, &run).await {
            Ok(Outcome::Registered) => report.did(subject, "registered"),
            Ok(Outcome::Skipped(why)) => report.skip(subject, why),
            Err(why) => report.fail(subject, why),
        }
    }
    report
}

enum Outcome {
    Registered,
    Skipped(String),
}

/// The run document a directory belongs to: by key, or by name when the layout gives none
/// (`Ok(None)`: not recorded yet).
async fn recorded(ctx: &Context, run: &Found) -> Result<Option<RunDoc>, String> {
    if let Some(key) = &run.key {
        return ctx.catalog.get_run(key).await.map_err(|e| e.to_string());
    }
    let mut docs = ctx
        .catalog
        .find_runs(&RunSelector::Name(run.name.clone()))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(d) = &run.detector {
        docs.retain(|doc| &doc.detector == d);
    }
    match docs.len() {
        0 | 1 => Ok(docs.pop()),
        n => Err(format!(
            "{n} run documents are named {:?} (detectors {}); add {{detector}} to the layout \
             to tell them apart",
            run.name,
            docs.iter()
                .map(|d| d.detector.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

async fn register_one(ctx: &Context, run: &Found) -> Result<Outcome, String> {
    if let Some(why) = &run.refused {
        return Err(why.clone());
    }
    let existing = recorded(ctx, run).await?;
    let key = match (&run.key, &existing) {
        (Some(key), _) => key.clone(),
        (None, Some(doc)) => doc.key(),
        (None, None) => {
            return Ok(Outcome::Skipped(format!(
                "no run document named {:?} in the catalogue yet (the layout has no \
                 {{number}}: only runs the DAQ recorded are registered)",
                run.name
            )))
        }
    };
    if !ctx.scope.admits(key.number, Some(&run.name)) {
        return Ok(Outcome::Skipped("not the run asked for".into()));
    }
    // The DAQ's own entry for this site, if it wrote one.
    let daq_entry = existing
        .as_ref()
        .and_then(|doc| doc.copy(&ctx.site.name, &run.data_type))
        .cloned();
    if let (Some(doc), Some(entry)) = (&existing, &daq_entry) {
        if entry.checksum.is_some() && doc.digest.is_some() {
            return Ok(Outcome::Skipped("already registered".into()));
        }
        if !matches!(
            entry.status,
            CopyStatus::Transferred | CopyStatus::Verifying
        ) {
            return Ok(Outcome::Skipped(format!(
                "this site's copy is {} in the catalogue; registered when it is transferred",
                entry.status
            )));
        }
    }
    // The DAQ said the run ended, and its entry here is still waiting for a digest. (A run
    // that merely has `end` set but no entry here, e.g. purged here, follows the rule.)
    let daq_complete = daq_entry.is_some() && existing.as_ref().is_some_and(|d| d.end.is_some());
    let (marker, quiet) = match &ctx.site.completion {
        _ if daq_complete => (None, None),
        CompletionRule::Marker(m) => {
            if !run.dir.join(m).is_file() {
                return Ok(Outcome::Skipped(format!("no completion marker {m}")));
            }
            (Some(m.clone()), None)
        }
        CompletionRule::QuietPeriod(d) => (None, Some(*d)),
    };
    // The marker's time is the run's end where the site's rule uses one.
    let end_marker = match &ctx.site.completion {
        CompletionRule::Marker(m) => Some(m.clone()),
        CompletionRule::QuietPeriod(_) => None,
    };
    let dir = run.dir.clone();
    let built = tokio::task::spawn_blocking(move || {
        let manifest = build_manifest(&dir, marker.as_deref(), quiet)?;
        let times = disk_times(&dir, end_marker.as_deref())?;
        Ok::<_, RegisterError>((manifest, times))
    })
    .await
    .map_err(|e| format!("manifest task failed: {e}"))?;
    let (manifest, times) = match built {
        Ok(m) => m,
        Err(RegisterError::Incomplete { why, .. }) => return Ok(Outcome::Skipped(why)),
        Err(e) => return Err(e.to_string()),
    };
    let want = wants(&ctx.map, &ctx.site.name, &run.data_type);
    if ctx.dry_run {
        ctx.would_register.add(Pending {
            key: key.clone(),
            name: run.name.clone(),
            data_type: run.data_type.clone(),
            dir: run.dir.clone(),
            want: want.clone(),
        });
        return Ok(Outcome::Skipped(format!(
            "dry run: would register {} files, {} bytes, digest {}",
            manifest.files.len(),
            manifest.size,
            manifest.digest
        )));
    }
    // A document the DAQ wrote keeps its own times; a new one takes the disk's.
    let (start, end) = match &existing {
        Some(_) => (None, None),
        None => (
            Some(DateTime::from_system_time(times.start)),
            Some(DateTime::from_system_time(times.end)),
        ),
    };
    let new = NewRun {
        key: key.clone(),
        // A DAQ-written document's name stands (the directory may be named otherwise).
        name: existing
            .as_ref()
            .and_then(|d| d.name.clone())
            .or_else(|| Some(run.name.clone())),
        start,
        end,
        manifest: Some(manifest.clone()),
        want,
        who: ctx.owner.clone(),
    };
    match ctx
        .catalog
        .register_run(&new)
        .await
        .map_err(|e| e.to_string())?
    {
        Registered::Created | Registered::Existing => {}
        Registered::Conflict { reason } => {
            return Err(format!(
                "the catalogue already holds this run with different contents ({reason}); \
                 nothing was changed"
            ))
        }
    }
    let copy = CopyRef::new(key, &ctx.site.name, &run.data_type);
    if let Some(entry) = daq_entry {
        return checksum_daq_entry(ctx, &copy, entry.status, &manifest.digest).await;
    }
    let origin = OriginCopy {
        copy,
        location: run.dir.display().to_string(),
        protocol: crate::catalog::Protocol::Local,
        manifest,
        who: ctx.owner.clone(),
    };
    match ctx
        .catalog
        .add_origin_copy(&origin)
        .await
        .map_err(|e| e.to_string())?
    {
        Cas::Done => Ok(Outcome::Registered),
        Cas::Lost => Ok(Outcome::Skipped(
            "origin copy already recorded by another agent".into(),
        )),
    }
}

/// A run the dry run's register would have registered this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Detector and number.
    pub key: RunKey,
    /// The run name.
    pub name: String,
    /// Data type.
    pub data_type: String,
    /// The run directory.
    pub dir: PathBuf,
    /// The copies registration would want (`"<site>/<type>"`).
    pub want: Vec<String>,
}

/// The runs a dry run's register would have registered in this cycle (empty outside dry
/// runs): what the later tasks report on instead of a run they cannot find. Shared by
/// clones of the [`Context`]; the register task empties it at the start of each cycle.
#[derive(Debug, Default)]
pub struct WouldRegister(Mutex<Vec<Pending>>);

impl WouldRegister {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn add(&self, run: Pending) {
        self.lock().push(run);
    }

    /// The runs, in the order found.
    pub fn runs(&self) -> Vec<Pending> {
        self.lock().clone()
    }

    /// Whether the run directory `dir` is one of them.
    pub fn holds_dir(&self, dir: &Path) -> bool {
        self.lock().iter().any(|p| p.dir == dir)
    }

    /// Whether the run `--run N` / `--name X` asks for is one of them.
    pub fn holds(&self, scope: &RunScope) -> bool {
        match scope {
            RunScope::Number(n) => self.lock().iter().any(|p| p.key.number == *n),
            RunScope::Name(name) => self.lock().iter().any(|p| &p.name == name),
            RunScope::All | RunScope::Range(_) => !self.lock().is_empty(),
        }
    }
}

/// In a dry run, what `task` would do with the runs the register task would have
/// registered (they are not in the catalogue, so the task's work list cannot hold them):
/// a skipped line each, saying so. Nothing outside dry runs.
pub fn note_would_register(ctx: &Context, task: Task, report: &mut TaskReport) {
    if !ctx.dry_run {
        return;
    }
    for p in ctx.would_register.runs() {
        let what = match task {
            Task::Push => {
                let to: Vec<&str> = ctx
                    .site
                    .push_to
                    .iter()
                    .map(String::as_str)
                    .filter(|s| p.want.contains(&want_tag(s, &p.data_type)))
                    .collect();
                if to.is_empty() {
                    continue;
                }
                format!("would push to {} after registering", to.join(", "))
            }
            Task::Tape if !ctx.site.tape.is_empty() => {
                let to: Vec<&str> = ctx.site.tape.iter().map(|t| t.name.as_str()).collect();
                format!(
                    "would back up to tape ({}) after registering",
                    to.join(", ")
                )
            }
            _ => continue,
        };
        report.skip(
            Subject::Run {
                number: Some(p.key.number),
                name: Some(p.name.clone()),
                data_type: p.data_type.clone(),
            },
            format!("dry run: not registered yet; {what}"),
        );
    }
}

/// Records the digest measured here on the entry the DAQ wrote (conditional on its status),
/// and moves a `verifying` entry to `transferred`.
async fn checksum_daq_entry(
    ctx: &Context,
    copy: &CopyRef,
    status: CopyStatus,
    digest: &str,
) -> Result<Outcome, String> {
    let outcome = if status == CopyStatus::Verifying {
        let mut t = Transition::new(
            CopyStatus::Verifying,
            CopyStatus::Transferred,
            None,
            &ctx.owner,
        );
        t.checksum = Some(digest.to_string());
        t.reason = Some("digest of the DAQ's files measured at the origin".into());
        ctx.catalog.transition(copy, &t).await
    } else {
        ctx.catalog
            .record_checksum(copy, status, None, digest, DateTime::now())
            .await
    };
    match outcome.map_err(|e| e.to_string())? {
        Cas::Done => Ok(Outcome::Registered),
        Cas::Lost => Ok(Outcome::Skipped(
            "the DAQ's entry changed while it was hashed; next cycle".into(),
        )),
    }
}

/// The `want` tags (`"<site>/<type>"`) of [`wanted_sites`]: what registration and adoption
/// write so that the copy tasks find the run.
pub fn wants(map: &SiteMap, origin: &str, data_type: &str) -> Vec<String> {
    wanted_sites(map, origin, data_type)
        .iter()
        .map(|site| want_tag(site, data_type))
        .collect()
}

/// The sites that should end up with a copy of `data_type` from `origin`: every site the
/// map's links reach from `origin`, transitively, through sites that have a data directory
/// for that type. `origin` itself is not listed.
pub fn wanted_sites(map: &SiteMap, origin: &str, data_type: &str) -> Vec<String> {
    reachable(&map.links(), origin, |site| {
        map.site(site)
            .is_some_and(|s| s.data_dir(data_type).is_some())
    })
}

/// Sites reachable from `origin` along `links` (`from -> to`, whichever side initiates),
/// entering only sites for which `holds` is true; breadth first, each once, without `origin`.
pub fn reachable(links: &[Link], origin: &str, holds: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut queue: std::collections::VecDeque<&str> = std::collections::VecDeque::from([origin]);
    while let Some(at) = queue.pop_front() {
        for l in links.iter().filter(|l| l.from == at) {
            if l.to != origin && !seen.contains(&l.to) && holds(&l.to) {
                seen.push(l.to.clone());
                queue.push_back(&l.to);
            }
        }
    }
    seen
}

/// When a run directory's data was written, as far as its files tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskTimes {
    /// The earliest modification time of its files.
    pub start: SystemTime,
    /// The latest modification time of its files, or the completion marker's.
    pub end: SystemTime,
}

/// The [`DiskTimes`] of the run directory `dir`: the earliest and the latest modification
/// time of its files, `marker` (the completion marker, when the site's rule uses one)
/// excluded; when the marker is there, its own time is the end (never before the start).
pub fn disk_times(dir: &Path, marker: Option<&str>) -> Result<DiskTimes, RegisterError> {
    let mut files = Vec::new();
    list_files(dir, dir, &mut files)?;
    let mut marker_time = None;
    let mut times = Vec::with_capacity(files.len());
    for (rel, path) in &files {
        let t = mtime(path)?;
        if Some(rel.as_str()) == marker {
            marker_time = Some(t);
        } else {
            times.push(t);
        }
    }
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return Err(RegisterError::Refused {
            dir: dir.display().to_string(),
            why: "the run directory holds no files; an empty run is not registered".into(),
        });
    };
    let end = marker_time.map_or(*last, |m| m.max(*first));
    Ok(DiskTimes { start: *first, end })
}

/// Why the run directory `dir` is still being written by the site's completion `rule`
/// (stat only, nothing is read): no completion marker yet, a `.part` file, or a file
/// modified within the quiet period. `None`: complete by the rule (or unreadable, which
/// the register task reports itself).
pub fn still_written(dir: &Path, rule: &CompletionRule) -> Option<String> {
    if let CompletionRule::Marker(m) = rule {
        if !dir.join(m).is_file() {
            return Some(format!("no completion marker {m} yet"));
        }
    }
    let mut files = Vec::new();
    list_files(dir, dir, &mut files).ok()?;
    if let Some((rel, _)) = files.iter().find(|(rel, _)| rel.ends_with(PART_SUFFIX)) {
        return Some(format!("{rel} is still being written"));
    }
    if let CompletionRule::QuietPeriod(quiet) = rule {
        let newest = newest_mtime(&files).ok()?;
        let age = SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO);
        if age < *quiet {
            return Some(format!(
                "a file was modified {} ago, within the quiet period of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(*quiet)
            ));
        }
    }
    None
}

/// Finds run directories under each of the site's data directories.
pub fn discover(site: &Site) -> Result<Vec<Found>, RegisterError> {
    let layout = &site.layout;
    if !layout.uses(LayoutField::Number) && !layout.uses(LayoutField::Name) {
        return Err(RegisterError::Refused {
            dir: site
                .data_dirs
                .values()
                .next()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            why: format!(
                "layout `{layout}` has neither {{number}} nor {{name}}: directory discovery \
                 cannot tell which run a directory holds (use a layout such as \
                 Run{{number:06}}, or {{name}} with run documents the DAQ writes)"
            ),
        });
    }
    let mut found = Vec::new();
    for (data_type, root) in &site.data_dirs {
        let mut dirs = Vec::new();
        collect_dirs(root, root, layout.depth(), &site.link_roots, &mut dirs)?;
        for (rel, dir, refused) in dirs {
            let Some(fields) = layout.match_path(&rel) else {
                continue;
            };
            if fields.number.is_none() && fields.name.is_none() {
                continue;
            }
            let name = fields
                .name
                .unwrap_or_else(|| rel.rsplit('/').next().unwrap_or(rel.as_str()).to_string());
            let key = fields.number.map(|number| {
                let detector = fields.detector.as_deref().unwrap_or(DEFAULT_DETECTOR);
                RunKey::new(detector, number)
            });
            found.push(Found {
                key,
                detector: fields.detector,
                name,
                data_type: data_type.clone(),
                dir,
                refused,
            });
        }
    }
    found.sort_by(|a, b| (&a.key, &a.name).cmp(&(&b.key, &b.name)));
    Ok(found)
}

/// A directory found by [`collect_dirs`]: its path relative to the data directory, its
/// path, and why it is refused (a symbolic link not allowed by `link_roots`).
type FoundDir = (String, PathBuf, Option<String>);

/// Directories exactly `depth` levels below `root`: real directories, and links into one of
/// `link_roots` (the site map's); a run directory that is any other link is returned with
/// why it is refused, so the register task can say so (a link above that depth is skipped).
fn collect_dirs(
    root: &Path,
    dir: &Path,
    depth: usize,
    link_roots: &[PathBuf],
    out: &mut Vec<FoundDir>,
) -> Result<(), RegisterError> {
    let io = |source| RegisterError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let kind = entry.file_type().map_err(io)?;
        let path = entry.path();
        let mut refused = None;
        if kind.is_symlink() {
            if crate::datadir::allowed_link(&path, link_roots).is_none() {
                if depth > 1 {
                    continue;
                }
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                refused = Some(format!(
                    "{} is a symbolic link to {target}; refused, not followed (list the \
                     directories run links may point into in the site's \"link_roots\")",
                    path.display()
                ));
            }
        } else if !kind.is_dir() {
            continue;
        }
        if depth <= 1 {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else {
                tracing::warn!(dir = %path.display(), "run directory name is not UTF-8; skipped");
                continue;
            };
            out.push((rel.to_string(), path.clone(), refused));
        } else {
            collect_dirs(root, &path, depth - 1, link_roots, out)?;
        }
    }
    Ok(())
}

/// Hashes every regular file of a run directory (the completion marker excluded) into a
/// manifest. Fails as [`RegisterError::Incomplete`] when the run is still being written.
pub fn build_manifest(
    dir: &Path,
    marker: Option<&str>,
    quiet: Option<Duration>,
) -> Result<Manifest, RegisterError> {
    hash_run(dir, marker, quiet, false).map(|(m, _)| m)
}

/// [`build_manifest`] and cax's [`checksum::dirhash`] of the same files, from one read of
/// each file (SHA-512 on a third hashing thread): what adopting a copy cax recorded needs.
pub fn build_manifest_and_dirhash(
    dir: &Path,
    marker: Option<&str>,
    quiet: Option<Duration>,
) -> Result<(Manifest, String), RegisterError> {
    hash_run(dir, marker, quiet, true).map(|(m, d)| (m, d.unwrap_or_default()))
}

fn hash_run(
    dir: &Path,
    marker: Option<&str>,
    quiet: Option<Duration>,
    with_dirhash: bool,
) -> Result<(Manifest, Option<String>), RegisterError> {
    let shown = dir.display().to_string();
    let mut files = Vec::new();
    list_files(dir, dir, &mut files)?;
    files.retain(|(rel, _)| Some(rel.as_str()) != marker);
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if files.is_empty() {
        return Err(RegisterError::Refused {
            dir: shown,
            why: "the run directory holds no files; an empty run is not registered".into(),
        });
    }
    if let Some((rel, _)) = files.iter().find(|(rel, _)| rel.ends_with(PART_SUFFIX)) {
        return Err(RegisterError::Incomplete {
            dir: shown,
            why: format!("{rel} is still being written"),
        });
    }
    let newest = newest_mtime(&files)?;
    if let Some(quiet) = quiet {
        let age = SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO);
        if age < quiet {
            return Err(RegisterError::Incomplete {
                dir: shown,
                why: format!(
                    "a file was modified {} ago (quiet period {})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(quiet)
                ),
            });
        }
    }
    let mut entries = Vec::with_capacity(files.len());
    let mut total: u64 = 0;
    let mut sha512s = Vec::new();
    for (rel, path) in &files {
        let digest = if with_dirhash {
            let (digest, sha512) = checksum::hash_file_with_sha512(path)?;
            sha512s.push(sha512);
            digest
        } else {
            checksum::hash_file(path)?
        };
        total = total.saturating_add(digest.size);
        entries.push(FileEntry {
            path: rel.clone(),
            size: i64::try_from(digest.size).unwrap_or(i64::MAX),
            sha256: digest.sha256_hex(),
            md5: Some(digest.md5_hex()),
            adler32: Some(digest.adler32_hex()),
        });
    }
    // A file that changed while it was read would give a manifest that no copy matches.
    if newest_mtime(&files)? != newest {
        return Err(RegisterError::Incomplete {
            dir: shown,
            why: "a file changed while it was hashed".into(),
        });
    }
    let lines: Vec<ManifestLine<'_>> = entries
        .iter()
        .map(|f| ManifestLine {
            path: &f.path,
            size: u64::try_from(f.size).unwrap_or(0),
            sha256: &f.sha256,
        })
        .collect();
    let digest = checksum::run_digest(&lines)?;
    let manifest = Manifest {
        files: entries,
        size: i64::try_from(total).unwrap_or(i64::MAX),
        digest,
    };
    Ok((manifest, with_dirhash.then(|| checksum::dirhash(&sha512s))))
}

fn list_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), RegisterError> {
    let io = |source| RegisterError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .ok_or_else(|| RegisterError::Refused {
                dir: root.display().to_string(),
                why: format!("{}: file name is not UTF-8", path.display()),
            })?
            .to_string();
        if kind.is_symlink() {
            return Err(RegisterError::Refused {
                dir: root.display().to_string(),
                why: format!(
                    "{} is a symbolic link; a run holds regular files only",
                    path.display()
                ),
            });
        } else if kind.is_dir() {
            list_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push((rel, path));
        } else {
            return Err(RegisterError::Refused {
                dir: root.display().to_string(),
                why: format!("{rel} is not a regular file"),
            });
        }
    }
    Ok(())
}

fn newest_mtime(files: &[(String, PathBuf)]) -> Result<SystemTime, RegisterError> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for (_, path) in files {
        newest = newest.max(mtime(path)?);
    }
    Ok(newest)
}

fn mtime(path: &Path) -> Result<SystemTime, RegisterError> {
    let io = |source| RegisterError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::symlink_metadata(path)
        .map_err(io)?
        .modified()
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn link(from: &str, to: &str, initiator: &str) -> Link {
        Link {
            from: from.into(),
            to: to.into(),
            initiator: initiator.into(),
        }
    }

    #[test]
    fn reachable_follows_push_and_pull_transitively_through_holding_sites() {
        let links = [
            link("daq", "mirror", "daq"),         // push daq -> mirror
            link("mirror", "archive", "archive"), // pull by archive from mirror
            link("archive", "daq", "archive"),    // a cycle back to the origin
            link("mirror", "scratch", "mirror"),  // scratch has no dir for the type
            link("scratch", "far", "scratch"),    // only reachable through scratch
            link("other", "daq", "other"),        // into the origin: not followed backwards
        ];
        let holds = |s: &str| s != "scratch";
        assert_eq!(
            reachable(&links, "daq", holds),
            ["mirror".to_string(), "archive".to_string()]
        );
        assert_eq!(reachable(&links, "archive", holds), ["daq", "mirror"]);
        assert!(reachable(&links, "far", holds).is_empty());
    }

    #[test]
    fn manifest_lists_files_sorted_without_marker() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "b.evio", b"bbb");
        write(d.path(), "a/000.evio", b"");
        write(d.path(), "DONE", b"");
        let m = build_manifest(d.path(), Some("DONE"), None).unwrap();
        let paths: Vec<_> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a/000.evio", "b.evio"]);
        assert_eq!(m.size, 3);
        assert_eq!(
            m.files[0].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(m.digest.len(), 64);
    }

    #[test]
    fn part_file_means_incomplete() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "000.evio.part", b"x");
        assert!(matches!(
            build_manifest(d.path(), None, None),
            Err(RegisterError::Incomplete { .. })
        ));
    }

    #[test]
    fn recent_file_inside_quiet_period_means_incomplete() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "000.evio", b"x");
        let err = build_manifest(d.path(), None, Some(Duration::from_secs(600))).unwrap_err();
        assert!(err.to_string().contains("quiet period"), "{err}");
    }

    #[test]
    fn symlink_out_of_run_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "000.evio", b"x");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("evil")).unwrap();
        let err = build_manifest(d.path(), None, None).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn empty_run_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "DONE", b"");
        let err = build_manifest(d.path(), Some("DONE"), None).unwrap_err();
        assert!(err.to_string().contains("empty run"), "{err}");
    }
}
