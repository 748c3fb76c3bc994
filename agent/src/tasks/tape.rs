//! *tape*: back up the runs this site holds to each of its tape backends (the site map's
//! `tape` list), and record each tape copy in the catalogue only after verifying it.
//!
//! One run, one backend, one data type at a time:
//! 1. the catalogue lists runs with a `transferred` copy here (served by the
//!    `(data.host, data.status)` index); runs that already have a copy of that type at the
//!    backend (any status) are left alone;
//! 2. the tape copy (`host` = backend name, `protocol: "tape"`) is **claimed** — exactly one
//!    agent wins — with `location` `<backend>:<run name>/`, the key prefix under which the
//!    backend finds the run's files;
//! 3. the run's files go to the backend in one batch (`put`, idempotent: a crash after a
//!    partial put only rewrites what is missing), then the receipt is **verified** at the
//!    strongest cheap level the backend offers (a seeded sample, else the tape system's own
//!    metadata); the lease is renewed meanwhile;
//! 4. the run digest is recomputed from what the tape side reports and must equal the
//!    manifest's; then `transferring → verifying → transferred`, the last step also setting
//!    the copy's `tape: { backend, reference, volumes, verified: { level, seed, files,
//!    bytes, copies } }` (what `ferry recall` and people read back), with the same text in
//!    the audit reason.
//!
//! Any failure moves the copy to `error` with the backend's message.
//!
//! **Re-verification.** A purge counts a tape copy only while its `verified_time` is within
//! the purge policy's `max_verify_age`, so each cycle the task also re-verifies, per
//! backend, the `transferred` tape copies verified longer ago than [`reverify_every`]
//! (half the shortest `max_verify_age` of the sites that purge; least recently verified
//! first, at most [`REVERIFY_PER_CYCLE`] a cycle): every manifest file is `stat`ed at the
//! backend and must agree with the manifest, then the backend verifies the rebuilt receipt
//! at the same level as a backup ([`level_for`]). Success refreshes `verified_time`
//! (conditional on the copy still being `transferred`); a file missing or different on
//! tape moves the copy to `error`; a backend that cannot be reached changes nothing and
//! is reported.

use std::path::PathBuf;
use std::time::Duration;

use bson::{doc, Bson, DateTime, Document};
use catalog_schema::{CopyEntry, CopyStatus, RunDoc};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Held, RecordError, Take, Taken};
use super::{copy, walk, Context, Subject, TaskReport, WorkList, MAX_PAGES};
use crate::catalog::{Cas, CopyRef, Transition};
use crate::checksum;
use crate::config::{SiteMap, SshEnvironment, TapeBackendConfig, TapeKind};
use crate::datadir::{self, Place};
use crate::tape::{
    build, key_of, Batch, BuildContext, Receipt, RunRef, StoredFile, TapeBackend, TapeError,
    TapeFile, VerifyKind, VerifyLevel, VerifyReport,
};
use catalog_schema::{Failure, FailureClass};

/// How long a claim lasts without renewal; renewed every third of it.
pub const LEASE: Duration = Duration::from_secs(1800);
/// Share of files read back when the backend offers sampled verification.
const SAMPLE_FRACTION: f64 = 0.1;
/// Tape copies re-verified per backend and cycle at most (each may read back from tape).
pub const REVERIFY_PER_CYCLE: usize = 20;
/// How often a tape copy is re-verified when no site of the map purges.
const REVERIFY_DEFAULT: Duration = Duration::from_secs(15 * 86_400);

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    if ctx.site.tape.is_empty() {
        return report;
    }
    let list = WorkList::InStatus(&ctx.site.name, CopyStatus::Transferred);
    let runs = match walk(ctx, list, MAX_PAGES).await {
        Ok(runs) => runs,
        Err(e) => {
            report.fail(Subject::Whole, format!("tape: catalogue: {e}"));
            return report;
        }
    };
    ctx.metrics.tape_queue(waiting_for_tape(ctx, &runs));
    for cfg in &ctx.site.tape {
        let backend = match open(ctx, cfg) {
            Ok(b) => b,
            Err(e) => {
                report.fail(Subject::Whole, format!("tape backend {}: {e}", cfg.name));
                continue;
            }
        };
        for run in &runs {
            if token.is_cancelled() {
                return report;
            }
            for data_type in ctx.site.data_dirs.keys() {
                let subject = Subject::tape(run, data_type, &cfg.name);
                match back_up(ctx, backend.as_ref(), data_type, run).await {
                    Ok(Some(skip)) => report.skip(subject, skip),
                    Ok(None) => report.did(subject, "written, verified on tape and recorded"),
                    Err(e) => report.fail_as(subject, e.class(), e.to_string()),
                }
            }
        }
        reverify(ctx, backend.as_ref(), token, &mut report).await;
    }
    report
}

/// The copies of `runs` (transferred here) that some tape endpoint of this site does not
/// hold verified yet: the tape task's queue.
fn waiting_for_tape(ctx: &Context, runs: &[RunDoc]) -> usize {
    let done = |r: &RunDoc, host: &str, t: &str| {
        r.copy(host, t)
            .is_some_and(|c| c.status == CopyStatus::Transferred)
    };
    let mut n = 0;
    for cfg in &ctx.site.tape {
        for r in runs {
            n += ctx
                .site
                .data_dirs
                .keys()
                .filter(|t| done(r, &ctx.site.name, t) && !done(r, &cfg.name, t))
                .count();
        }
    }
    n
}

/// How long a tape copy's verification lasts before the tape task verifies it again: half
/// the shortest `purge.max_verify_age` of the sites in the map that purge (so a copy is
/// fresh for every purge that counts it, with half the age to spare for a backend that is
/// down), else [`REVERIFY_DEFAULT`].
pub fn reverify_every(map: &SiteMap) -> Duration {
    map.sites
        .iter()
        .filter(|s| s.purge.enabled)
        .map(|s| s.purge.max_verify_age / 2)
        .min()
        .unwrap_or(REVERIFY_DEFAULT)
}

/// Re-verifies the tape copies on `backend` that are due (see the module docs).
async fn reverify(
    ctx: &Context,
    backend: &dyn TapeBackend,
    token: &CancellationToken,
    report: &mut TaskReport,
) {
    let name = backend.name();
    let list = WorkList::InStatus(name, CopyStatus::Transferred);
    let runs = match walk(ctx, list, MAX_PAGES).await {
        Ok(runs) => runs,
        Err(e) => {
            report.fail(
                Subject::Whole,
                format!("tape {name}: re-verification: catalogue: {e}"),
            );
            return;
        }
    };
    let now = DateTime::now();
    let every = i64::try_from(reverify_every(&ctx.map).as_millis()).unwrap_or(i64::MAX);
    let due_before = now.timestamp_millis().saturating_sub(every);
    let mut due: Vec<(&RunDoc, &CopyEntry)> = runs
        .iter()
        .flat_map(|run| run.data.iter().map(move |c| (run, c)))
        .filter(|(_, c)| {
            c.host == name
                && c.status == CopyStatus::Transferred
                && c.is_tape()
                && c.verified_time
                    .is_none_or(|t| t.timestamp_millis() < due_before)
        })
        .collect();
    due.sort_by_key(|(_, c)| c.verified_time.map(|t| t.timestamp_millis()));
    for (run, c) in due.into_iter().take(REVERIFY_PER_CYCLE) {
        if token.is_cancelled() {
            return;
        }
        let subject = Subject::tape(run, &c.data_type, name);
        match reverify_one(ctx, backend, run, c).await {
            Ok(Reverified::Good(line)) => report.did(subject, line),
            Ok(Reverified::Skipped(line)) => report.skip(subject, line),
            Err(e) => report.fail(subject, format!("re-verification: {e}")),
        }
    }
}

/// What re-verifying one tape copy did (a failure is an `Err`).
enum Reverified {
    /// Verified again; `verified_time` refreshed.
    Good(String),
    /// Left alone.
    Skipped(String),
}

/// Re-verifies one tape copy: `stat` of every manifest file, then the backend's own
/// verification of the rebuilt receipt at [`level_for`].
async fn reverify_one(
    ctx: &Context,
    backend: &dyn TapeBackend,
    run: &RunDoc,
    c: &CopyEntry,
) -> Result<Reverified, String> {
    let Some(digest) = run.digest.clone() else {
        return Ok(Reverified::Skipped("no manifest to verify against".into()));
    };
    if c.checksum.as_deref() != Some(digest.as_str()) {
        return Ok(Reverified::Skipped(
            "its checksum is not the run digest; left for an operator".into(),
        ));
    }
    let level = level_for(backend);
    if ctx.dry_run {
        return Ok(Reverified::Skipped(format!(
            "dry run: would re-verify {} files at level {}",
            run.files.len(),
            level.kind()
        )));
    }
    let copy = CopyRef::new(run.key(), backend.name(), &c.data_type);
    let receipt = match stored_receipt(backend, run, c).await {
        Ok(r) => r,
        Err(Bad::Unreachable(why)) => return Err(why),
        Err(Bad::Wrong(why)) => return Err(to_error(ctx, &copy, why).await),
    };
    let verified = match backend.verify(&receipt, level).await {
        Ok(v) => v,
        Err(e) if e.is_retryable() => return Err(e.to_string()),
        Err(e) => return Err(to_error(ctx, &copy, e.to_string()).await),
    };
    match ctx
        .catalog
        .record_checksum(
            &copy,
            CopyStatus::Transferred,
            None,
            &digest,
            DateTime::now(),
        )
        .await
        .map_err(|e| format!("{copy}: {e}"))?
    {
        Cas::Done => Ok(Reverified::Good(format!(
            "re-verified at level {} ({} files checked, {} bytes read)",
            verified.level.kind(),
            verified.checked.len(),
            verified.bytes_read
        ))),
        Cas::Lost => Ok(Reverified::Skipped(
            "changed while it was re-verified".into(),
        )),
    }
}

/// Why a tape copy's receipt could not be rebuilt.
enum Bad {
    /// The backend did not answer; nothing is known about the copy.
    Unreachable(String),
    /// The tape side lacks a file or holds different bytes.
    Wrong(String),
}

/// The receipt of a tape copy as the backend holds it now: each manifest file `stat`ed and
/// compared with the manifest (size, SHA-256, MD5 where the tape side records them), the
/// manifest's SHA-256 attached for read-back checks, reference and volumes from the copy's
/// `tape` field where recorded.
async fn stored_receipt(
    backend: &dyn TapeBackend,
    run: &RunDoc,
    c: &CopyEntry,
) -> Result<Receipt, Bad> {
    let name = backend.name();
    let run_ref = run_ref(run);
    let mut files = Vec::with_capacity(run.files.len());
    for f in &run.files {
        let key = key_of(&run_ref.name, &f.path);
        let stored = match backend.stat(&run_ref, &f.path).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Bad::Wrong(format!("{key} is no longer on tape {name}"))),
            Err(e) if e.is_retryable() => return Err(Bad::Unreachable(e.to_string())),
            Err(e) => return Err(Bad::Wrong(e.to_string())),
        };
        let size = u64::try_from(f.size).unwrap_or(0);
        let differs = |what: &str, want: &str, found: &str| {
            Bad::Wrong(format!(
                "{key} on tape {name}: {what} {found}, manifest {want}"
            ))
        };
        if let Some(s) = stored.size.filter(|s| *s != size) {
            return Err(differs("size", &size.to_string(), &s.to_string()));
        }
        if let Some(sha) = stored
            .sha256
            .as_deref()
            .filter(|s| !s.eq_ignore_ascii_case(&f.sha256))
        {
            return Err(differs("sha256", &f.sha256, sha));
        }
        if let (Some(md5), Some(want)) = (stored.md5.as_deref(), f.md5.as_deref()) {
            if !md5.eq_ignore_ascii_case(want) {
                return Err(differs("md5", want, md5));
            }
        }
        files.push(StoredFile {
            source_sha256: Some(f.sha256.clone()),
            ..stored
        });
    }
    let (reference, volumes) = recorded_place(c, name, &run_ref.name);
    Ok(Receipt {
        backend: name.to_owned(),
        run: run_ref,
        reference,
        volumes,
        files,
        written: 0,
    })
}

/// `transferred → error` with a `[checksum]` failure naming what the tape side holds;
/// returns the failure's text for the report.
async fn to_error(ctx: &Context, copy: &CopyRef, why: String) -> String {
    let failure = Failure::new(
        FailureClass::Checksum,
        format!("re-verification of the tape copy: {why}"),
    );
    let mut change = Transition::new(CopyStatus::Transferred, CopyStatus::Error, None, &ctx.owner);
    change.record_failure(&failure);
    match ctx.catalog.transition(copy, &change).await {
        Ok(Cas::Done) => failure.to_string(),
        Ok(Cas::Lost) => format!("{failure} (the copy changed meanwhile; not recorded)"),
        Err(e) => format!("{failure}; recording it failed: {copy}: {e}"),
    }
}

/// The backend, with its gateway resolved as `ssh` would (site map, then `~/.ssh/config`).
pub(super) fn open(ctx: &Context, cfg: &TapeBackendConfig) -> Result<Box<dyn TapeBackend>, String> {
    let gateway = match &cfg.kind {
        TapeKind::Command {
            gateway: Some(name),
            ..
        } => {
            let site = ctx
                .map
                .site(name)
                .ok_or_else(|| format!("gateway site {name:?} is not in the site map"))?;
            let env = SshEnvironment::load(None).map_err(|e| e.to_string())?;
            let t = crate::tasks::sessions::target_for(&env, site);
            Some(t)
        }
        _ => None,
    };
    build(cfg, &BuildContext { gateway }).map_err(|e| e.to_string())
}

/// The level a backup is verified at before it is recorded.
fn level_for(backend: &dyn TapeBackend) -> VerifyLevel {
    if backend.capabilities().verify.contains(&VerifyKind::Sample) {
        VerifyLevel::Sample {
            fraction: SAMPLE_FRACTION,
            seed: None,
        }
    } else {
        VerifyLevel::Metadata
    }
}

/// `Ok(None)`: backed up and recorded; `Ok(Some(why))`: left alone; `Err`: failed.
async fn back_up(
    ctx: &Context,
    backend: &dyn TapeBackend,
    data_type: &str,
    run: &RunDoc,
) -> Result<Option<String>, BackupError> {
    let Some(digest) = run.digest.clone() else {
        return Ok(Some("no manifest yet".into()));
    };
    if run.copy(backend.name(), data_type).is_some() {
        return Ok(Some("already has a tape copy".into()));
    }
    let Some((_, src_dir)) =
        copy::verified_source(ctx, run, &[&ctx.site], data_type, &digest).await?
    else {
        return Ok(Some("no verified copy here".into()));
    };
    let src_dir = PathBuf::from(src_dir);
    let place = Place::new(run, &ctx.site.name, data_type);
    let run_ref = run_ref(run);
    let name = run_ref.name.clone();
    let mut files = Vec::with_capacity(run.files.len());
    for f in &run.files {
        let Some(md5) = f.md5.clone() else {
            return Ok(Some(format!("manifest has no md5 for {}", f.path)));
        };
        let local = datadir::file_in(&place, &src_dir, &f.path)?;
        files.push(TapeFile {
            path: f.path.clone(),
            local,
            size: u64::try_from(f.size).unwrap_or(0),
            sha256: f.sha256.clone(),
            md5,
        });
    }
    let batch = Batch {
        run: run_ref,
        files,
    };
    if ctx.dry_run {
        return Ok(Some(format!(
            "dry run: would write {} files ({} bytes) from {} to tape {}",
            batch.files.len(),
            batch.size(),
            src_dir.display(),
            backend.name()
        )));
    }
    let copy = CopyRef::new(run.key(), backend.name(), data_type);
    let how = Take::Claim {
        location: format!("{}:{name}/", backend.name()),
        protocol: crate::catalog::Protocol::Tape,
    };
    let held = match Held::take(ctx, copy, how, LEASE).await? {
        Taken::Held(held) => held,
        Taken::Lost => return Ok(Some("claimed by another agent".into())),
        Taken::Journaled(why) => return Ok(Some(why)),
    };
    let written = write_and_verify(backend, &batch, digest, &held).await;
    match written {
        Ok((measured, receipt, verified)) => {
            let reason = format!(
                "on tape {}: reference {}, volumes [{}], {} of {} files written; verified {} ({} files checked, {} bytes read)",
                backend.name(),
                receipt.reference,
                receipt.volumes.join(", "),
                receipt.written,
                receipt.files.len(),
                verified.level,
                verified.checked.len(),
                verified.bytes_read
            );
            let details = tape_details(&receipt, &verified);
            let no_files = async { Vec::new() };
            held.finish(&measured, reason, Some(details), "tape", no_files)
                .await?;
            Ok(None)
        }
        Err(e) => {
            held.fail(&Failure::new(e.class(), e.to_string())).await;
            Err(e)
        }
    }
}

/// Writes the batch, verifies it at the backend's level while the lease is renewed, and
/// proves the run digest from what the tape side reports.
async fn write_and_verify(
    backend: &dyn TapeBackend,
    batch: &Batch,
    digest: String,
    held: &Held<'_>,
) -> Result<(String, Receipt, VerifyReport), BackupError> {
    let level = level_for(backend);
    let work = async {
        let receipt = backend.put(batch).await?;
        let report = backend.verify(&receipt, level).await?;
        Ok::<_, BackupError>((receipt, report))
    };
    let (receipt, verified) = held.work(work).await?;
    let measured = tape_digest(batch, &receipt).map_err(BackupError::Receipt)?;
    if measured != digest {
        return Err(BackupError::Digest {
            measured,
            expected: digest,
        });
    }
    Ok((measured, receipt, verified))
}

/// Why a run was not backed up to tape.
#[derive(Debug, thiserror::Error)]
enum BackupError {
    /// No usable source copy here (before the tape copy is claimed).
    #[error(transparent)]
    Source(#[from] copy::CopyError),
    /// A file of the source copy cannot be placed (before the tape copy is claimed).
    #[error(transparent)]
    Path(#[from] datadir::PathError),
    /// The backend failed to write or verify.
    #[error(transparent)]
    Tape(#[from] TapeError),
    /// Taking or recording the tape copy failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The tape side's receipt cannot prove the run digest.
    #[error("{0}")]
    Receipt(String),
    /// The tape side's files make another run digest.
    #[error("run digest from the tape side {measured} != manifest {expected}")]
    Digest {
        /// From the tape side's checksums.
        measured: String,
        /// The manifest's.
        expected: String,
    },
}

impl BackupError {
    /// How the retry task treats the copy (and the report classes the failure).
    fn class(&self) -> FailureClass {
        match self {
            Self::Source(e) => e.class(),
            Self::Path(e) if e.is_refusal() => FailureClass::Refused,
            Self::Path(_) | Self::Receipt(_) => FailureClass::Fatal,
            Self::Tape(e) => super::lifecycle::class_of_tape(e),
            Self::Record(e) => e.class(),
            Self::Digest { .. } => FailureClass::Checksum,
        }
    }
}

/// The run as tape backends name it: its name (else its number), period and detector. The
/// key of a file is `<name>/<path>`.
pub(super) fn run_ref(run: &RunDoc) -> RunRef {
    RunRef {
        number: run.number,
        name: run.name.clone().unwrap_or_else(|| run.number.to_string()),
        period: run.extra.get_str("period").ok().map(str::to_owned),
        detector: run.detector.clone(),
    }
}

/// The copy's `tape` field: where the receipt says the run is and how it was verified. A
/// sample's seed is kept as a decimal string (BSON has no unsigned 64-bit integer), so the
/// same sample can be checked again.
fn tape_details(receipt: &Receipt, verified: &VerifyReport) -> Document {
    let (level, seed) = match verified.level {
        VerifyLevel::Metadata => ("metadata", Bson::Null),
        VerifyLevel::Sample { seed, .. } => (
            "sample",
            seed.map_or(Bson::Null, |s| Bson::String(s.to_string())),
        ),
        VerifyLevel::Full => ("full", Bson::Null),
    };
    doc! {
        "backend": receipt.backend.clone(),
        "reference": receipt.reference.clone(),
        "volumes": receipt.volumes.clone(),
        "verified": {
            "level": level,
            "seed": seed,
            "files": i64::try_from(verified.checked.len()).unwrap_or(i64::MAX),
            "bytes": i64::try_from(verified.bytes_read).unwrap_or(i64::MAX),
            "copies": i64::from(verified.copies),
        },
    }
}

/// The run digest as the tape side reports the files: its SHA-256 where it records one,
/// else the manifest's SHA-256 when the tape side's MD5 matches the manifest's.
fn tape_digest(batch: &Batch, receipt: &Receipt) -> Result<String, String> {
    let mut lines = Vec::with_capacity(batch.files.len());
    for f in &batch.files {
        let key = batch.key(f);
        let s = receipt
            .files
            .iter()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("{key} missing from the receipt"))?;
        let sha = match (&s.sha256, &s.md5) {
            (Some(sha), _) => sha.clone(),
            (None, Some(md5)) if md5.eq_ignore_ascii_case(&f.md5) => f.sha256.clone(),
            _ => {
                return Err(format!(
                    "{key}: the tape side reports no checksum to compare"
                ))
            }
        };
        lines.push((f.path.clone(), s.size.unwrap_or(f.size), sha));
    }
    checksum::run_digest_of(&lines).map_err(|e| e.to_string())
}

/// Where a tape copy's bytes are, as its entry recorded them: the backend's reference
/// (else the entry's location, else `BACKEND:RUN/`) and the volumes.
pub(super) fn recorded_place(
    c: &CopyEntry,
    backend: &str,
    run_name: &str,
) -> (String, Vec<String>) {
    let recorded = c.tape.as_ref();
    let reference = recorded
        .and_then(|t| t.get_str("reference").ok())
        .map(str::to_owned)
        .or_else(|| c.location.clone())
        .unwrap_or_else(|| format!("{backend}:{run_name}/"));
    let volumes = recorded
        .and_then(|t| t.get_array("volumes").ok())
        .map(|v| {
            v.iter()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (reference, volumes)
}
