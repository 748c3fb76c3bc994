//! *recall* (`ferry recall --run N`): restore a run from tape into this site's data
//! directory, prove it against the manifest, and record the restored copy.
//!
//! Not a cycle task: an operator asks for it, for one run. Per data type of this site:
//! 1. pick the run's `transferred` tape copies whose `host` is one of this site's tape
//!    backends (`--from` names one; otherwise they are tried in the site map's order);
//! 2. refuse when this site has a copy of that type (the claim would refuse too; this says
//!    why), except a failed (`error`) one recorded in the run's directory, which is taken
//!    over (`error → transferring`, as the retry task does) so a failed recall can be run
//!    again; refuse too when the run directory exists and is not empty;
//! 3. rebuild the receipt `retrieve` needs: every manifest key is `stat`ed at the backend
//!    (so copies recorded before the `tape` field existed recall too), the reference and
//!    volumes come from the copy's `tape` field when it has one, and every file carries the
//!    manifest's SHA-256 for the backend's own read-back check;
//! 4. **claim** the destination copy (`claim_copy`: exactly one agent wins, none while any
//!    copy exists; or the takeover above), then, renewing the lease, retrieve into a hidden scratch directory in
//!    the data directory (same file system), hash every file, compare size and SHA-256 with
//!    the manifest and the run digest with the run's; a backend that fails is followed by
//!    the next one holding the run;
//! 5. only then move the files into the run directory (the layout template, as push and
//!    pull place runs: [`copy::run_dir`]) and `transferring → verifying → transferred` with
//!    the measured digest ([`Held::finish`]).
//!
//! Any failure after the claim records the copy as `error` (the retry task's classes), the
//! scratch directory and any file already moved are removed, and the error is returned.

use std::path::{Path, PathBuf};

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, RunDoc};

use super::lifecycle::{Held, RecordError, Take, Taken};
use super::{copy, owner, replay, tape, Context};
use crate::catalog::{CatalogError, CopyRef, RunSelector};
use crate::checksum::{self, ChecksumError};
use crate::config::TapeBackendConfig;
use crate::datadir;
use crate::tape::{key_of, Receipt, StoredFile, TapeBackend, TapeError};
use catalog_schema::{Failure, FailureClass};

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The run.
    pub run: RunSelector,
    /// The destination site (`--to`); must be this site.
    pub to: Option<String>,
    /// The tape backend to read from (`--from`); else every backend holding the run.
    pub from: Option<String>,
}

/// One data type of a run restored (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recalled {
    /// The restored copy.
    pub copy: CopyRef,
    /// The tape backend read.
    pub backend: String,
    /// The run directory written.
    pub dir: PathBuf,
    /// Files restored.
    pub files: usize,
    /// Bytes restored.
    pub bytes: u64,
    /// Whether this was only a dry run (nothing read or written).
    pub dry_run: bool,
}

impl std::fmt::Display for Recalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            write!(
                f,
                "dry run: would restore {} from tape {} to {} ({} files, {} bytes)",
                self.copy,
                self.backend,
                self.dir.display(),
                self.files,
                self.bytes
            )
        } else {
            write!(
                f,
                "{} restored from tape {} to {} ({} files, {} bytes; every file and the run digest match the manifest)",
                self.copy,
                self.backend,
                self.dir.display(),
                self.files,
                self.bytes
            )
        }
    }
}

/// Why a recall did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    /// `--to` names another site.
    #[error("--to {to}: recall writes the run to this machine's disk, so it runs as the destination site; this agent runs as {here} (run `ferry recall` on {to}'s machine, with --host {to})")]
    NotThisSite {
        /// The site asked for.
        to: String,
        /// This site.
        here: String,
    },
    /// `--from` names no tape backend of this site.
    #[error("site {site} has no tape backend {name:?} (its tape backends: {known})")]
    UnknownBackend {
        /// This site.
        site: String,
        /// The name given.
        name: String,
        /// This site's backends.
        known: String,
    },
    /// No run has that number or name.
    #[error("no run {0} in the catalogue")]
    NoSuchRun(String),
    /// Several runs (detectors) share that number or name.
    #[error("{run} names {count} runs (detectors {detectors}); name the run by the other of --run/--name")]
    Ambiguous {
        /// The number or name.
        run: String,
        /// How many.
        count: usize,
        /// Their detectors.
        detectors: String,
    },
    /// The run has no manifest, so nothing could be verified.
    #[error("run {0} has no manifest yet: nothing to verify a restore against")]
    NoManifest(i64),
    /// No tape backend of this site holds a `transferred` copy of the run.
    #[error("run {run}: no transferred tape copy on {backends} (copies of the run: {copies})")]
    NoTapeCopy {
        /// The run number.
        run: i64,
        /// The backends looked at.
        backends: String,
        /// The run's copies, `host:type:status`.
        copies: String,
    },
    /// This site already has a copy of that type.
    #[error("{copy}: this site already has that copy (status {status}); recall restores only a missing copy{hint}")]
    CopyExists {
        /// The copy.
        copy: CopyRef,
        /// Its status.
        status: CopyStatus,
        /// What to do about it.
        hint: &'static str,
    },
    /// Another agent claimed the copy first.
    #[error("{0}: claimed by another agent meanwhile")]
    ClaimLost(CopyRef),
    /// The run directory has files the catalogue does not know of.
    #[error("{copy}: {dir} exists and is not empty; recall restores only into a new or empty run directory")]
    DirNotEmpty {
        /// The copy.
        copy: CopyRef,
        /// The run directory.
        dir: PathBuf,
    },
    /// The run directory could not be derived (layout, data directory).
    #[error(transparent)]
    Destination(#[from] copy::CopyError),
    /// The backend could not be built from the site map.
    #[error("tape {backend}: {reason}")]
    Backend {
        /// The backend.
        backend: String,
        /// Why.
        reason: String,
    },
    /// The backend cannot read data back.
    #[error("tape {0} cannot retrieve files (see its capabilities in docs/tape.md)")]
    NoRetrieve(String),
    /// A manifest file is not on the tape.
    #[error("tape {backend}: {key} is not stored there")]
    NotOnTape {
        /// The backend.
        backend: String,
        /// The file's key.
        key: String,
    },
    /// The tape backend failed.
    #[error("{copy}: tape {backend}: {source}")]
    Tape {
        /// The copy being restored.
        copy: CopyRef,
        /// The backend.
        backend: String,
        /// Its error.
        #[source]
        source: TapeError,
    },
    /// A file differs from the manifest (as the tape side reports it, or as read back).
    #[error("{copy}: {path} from tape {backend}: {what} {found} != manifest {expected}")]
    FileMismatch {
        /// The copy being restored.
        copy: CopyRef,
        /// The backend.
        backend: String,
        /// The file.
        path: String,
        /// `size`, `sha256` or `md5`.
        what: &'static str,
        /// The manifest's value.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The run digest of the files read back is not the run's.
    #[error("{copy}: run digest of the files read from tape {backend} {measured} != run digest {expected}")]
    DigestMismatch {
        /// The copy being restored.
        copy: CopyRef,
        /// The backend.
        backend: String,
        /// Measured from the restored files.
        measured: String,
        /// The run's digest.
        expected: String,
    },
    /// Hashing a restored file failed, or the measured files form no manifest.
    #[error("{copy}: {path}: {source}")]
    Checksum {
        /// The copy being restored.
        copy: CopyRef,
        /// The file.
        path: String,
        /// The checksum module's error.
        #[source]
        source: ChecksumError,
    },
    /// A file-system operation on this site's disk failed.
    #[error("{copy}: {what} {}: {source}", path.display())]
    Io {
        /// The copy being restored.
        copy: CopyRef,
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The catalogue failed.
    #[error("run {run}: catalogue: {source}")]
    Catalog {
        /// The run (number or name).
        run: String,
        /// Its error.
        #[source]
        source: CatalogError,
    },
    /// Taking or recording the copy failed (a lost lease, a lost transition, the
    /// catalogue).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The copy's verified record waits in the journal: it is replayed, not recalled.
    #[error("{copy}: not recalled: {why}")]
    Journaled {
        /// The copy here.
        copy: CopyRef,
        /// What the journal said.
        why: String,
    },
    /// Every backend holding the run failed.
    #[error("{copy}: every tape copy failed: {}", failures.join("; "))]
    AllFailed {
        /// The copy being restored.
        copy: CopyRef,
        /// Each backend's failure.
        failures: Vec<String>,
        /// The gravest class among them.
        class: FailureClass,
    },
}

impl RecallError {
    /// Whether the command line asked for something impossible (exit code 2; nothing was
    /// changed).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::NotThisSite { .. }
                | Self::UnknownBackend { .. }
                | Self::NoSuchRun(_)
                | Self::Ambiguous { .. }
        )
    }

    /// The catalogue's error, when the catalogue failed.
    pub fn catalog_error(&self) -> Option<&CatalogError> {
        match self {
            Self::Catalog { source, .. } => Some(source),
            _ => None,
        }
    }

    /// How the retry task treats the `error` copy a failed recall leaves.
    fn class(&self) -> FailureClass {
        match self {
            Self::FileMismatch { .. } | Self::DigestMismatch { .. } => FailureClass::Checksum,
            Self::Tape {
                source: TapeError::Mismatch { .. },
                ..
            } => FailureClass::Checksum,
            Self::Tape { source, .. } if source.is_retryable() => FailureClass::Retryable,
            Self::Catalog { source, .. } if source.is_retryable() => FailureClass::Retryable,
            Self::Record(e) => e.class(),
            Self::AllFailed { class, .. } => *class,
            _ => FailureClass::Fatal,
        }
    }
}

/// Restores the run `req` names from tape to this site. Returns one line per data type.
pub async fn recall(ctx: &Context, req: &Request) -> Result<Vec<Recalled>, RecallError> {
    if let Some(to) = req.to.as_deref().filter(|to| *to != ctx.site.name) {
        return Err(RecallError::NotThisSite {
            to: to.to_owned(),
            here: ctx.site.name.clone(),
        });
    }
    let known = || {
        let names: Vec<&str> = ctx.site.tape.iter().map(|t| t.name.as_str()).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    if let Some(from) = &req.from {
        if !ctx.site.tape.iter().any(|t| t.name == *from) {
            return Err(RecallError::UnknownBackend {
                site: ctx.site.name.clone(),
                name: from.clone(),
                known: known(),
            });
        }
    }
    let asked = match &req.run {
        RunSelector::Number(n) => n.to_string(),
        RunSelector::Name(name) => name.clone(),
    };
    let mut runs =
        ctx.catalog
            .find_runs(&req.run)
            .await
            .map_err(|source| RecallError::Catalog {
                run: asked.clone(),
                source,
            })?;
    let run = match runs.len() {
        0 => return Err(RecallError::NoSuchRun(asked)),
        1 => runs.remove(0),
        count => {
            return Err(RecallError::Ambiguous {
                run: asked,
                count,
                detectors: runs
                    .iter()
                    .map(|r| r.detector.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let digest = run
        .digest
        .clone()
        .ok_or(RecallError::NoManifest(run.number))?;
    let backends: Vec<&TapeBackendConfig> = ctx
        .site
        .tape
        .iter()
        .filter(|t| req.from.as_deref().is_none_or(|f| f == t.name))
        .collect();
    let mut plans = Vec::new();
    for data_type in ctx.site.data_dirs.keys() {
        let sources: Vec<(&CopyEntry, &TapeBackendConfig)> = backends
            .iter()
            .filter_map(|cfg| {
                run.copy(&cfg.name, data_type)
                    .filter(|c| is_verified_tape_copy(c, &digest))
                    .map(|c| (c, *cfg))
            })
            .collect();
        if !sources.is_empty() {
            plans.push((data_type.as_str(), sources));
        }
    }
    if plans.is_empty() {
        let copies: Vec<String> = run
            .data
            .iter()
            .map(|c| format!("{}:{}:{}", c.host, c.data_type, c.status))
            .collect();
        return Err(RecallError::NoTapeCopy {
            run: run.number,
            backends: match &req.from {
                Some(f) => format!("tape {f}"),
                None => format!("this site's tape backends ({})", known()),
            },
            copies: if copies.is_empty() {
                "none".into()
            } else {
                copies.join(", ")
            },
        });
    }
    let mut done = Vec::with_capacity(plans.len());
    for (data_type, sources) in plans {
        done.push(recall_type(ctx, &run, &digest, data_type, &sources).await?);
    }
    Ok(done)
}

/// A tape copy that holds the run: `transferred`, on tape, with the run's digest.
fn is_verified_tape_copy(c: &CopyEntry, digest: &str) -> bool {
    c.status == CopyStatus::Transferred && c.is_tape() && c.checksum.as_deref() == Some(digest)
}

/// Restores one data type, from the first of `sources` that works.
async fn recall_type(
    ctx: &Context,
    run: &RunDoc,
    digest: &str,
    data_type: &str,
    sources: &[(&CopyEntry, &TapeBackendConfig)],
) -> Result<Recalled, RecallError> {
    let copy = CopyRef::new(run.key(), &ctx.site.name, data_type);
    let dir = datadir::run_dir(&ctx.site, data_type, run).map_err(copy::CopyError::from)?;
    // A failed copy here (an earlier recall or copy that failed) whose directory is the
    // run's is taken over; any other copy is refused.
    let existing = run.copy(&ctx.site.name, data_type);
    let location = dir.display().to_string();
    let mut how = Take::Claim {
        location: location.clone(),
        protocol: crate::catalog::Protocol::Local,
    };
    if let Some(c) = existing {
        let here = c.location.as_deref() == Some(location.as_str());
        let taken = match (c.status, c.lease.as_ref()) {
            (CopyStatus::Error, _) if here => Some(Take::Failed {
                reason: "recall from tape".into(),
            }),
            // A recall (or copy) here that was killed: its lease ran out, or its holder was
            // this site's agent on this host and its process is gone.
            (CopyStatus::Transferring, Some(l)) if here && c.is_stalled(DateTime::now()) => {
                Some(Take::Stalled {
                    stale: l.owner.clone(),
                })
            }
            (CopyStatus::Transferring, Some(l))
                if here && owner::is_dead_predecessor(&l.owner, &ctx.owner) =>
            {
                Some(Take::Abandoned {
                    stale: l.owner.clone(),
                })
            }
            _ => None,
        };
        let Some(taken) = taken else {
            return Err(RecallError::CopyExists {
                copy,
                status: c.status,
                hint: match c.status {
                    CopyStatus::Transferred => "; if its files are lost, the audit task records that (`ferry --once --task audit`) and recall then takes the failed copy over",
                    CopyStatus::Error => ": this failed copy is recorded at another location; an operator removes it first",
                    _ => ": another agent works on it",
                },
            });
        };
        how = taken;
    }
    if dir_has_entries(&dir).map_err(|source| RecallError::Io {
        copy: copy.clone(),
        what: "listing",
        path: dir.clone(),
        source,
    })? {
        return Err(RecallError::DirNotEmpty { copy, dir });
    }
    let bytes: u64 = run
        .files
        .iter()
        .map(|f| u64::try_from(f.size).unwrap_or(0))
        .sum();
    // Every source is checked (built, can retrieve, holds every file) before the claim.
    let mut ready = Vec::with_capacity(sources.len());
    let mut refused = Vec::new();
    for (tape_copy, cfg) in sources {
        match prepare(ctx, run, &copy, tape_copy, cfg).await {
            Ok(r) => ready.push(r),
            Err(e) => {
                tracing::warn!(%copy, tape = %cfg.name, "{e}");
                refused.push(e);
            }
        }
    }
    if ready.is_empty() {
        return Err(one_or_all(&copy, refused));
    }
    if ctx.dry_run {
        return Ok(Recalled {
            copy,
            backend: ready[0].0.name().to_owned(),
            dir,
            files: run.files.len(),
            bytes,
            dry_run: true,
        });
    }
    let held = match Held::take(ctx, copy.clone(), how, copy::lease(ctx)).await? {
        Taken::Held(held) => held,
        Taken::Lost => return Err(RecallError::ClaimLost(copy)),
        Taken::Journaled(why) => return Err(RecallError::Journaled { copy, why }),
    };
    let mut failures = Vec::new();
    for (backend, receipt) in &ready {
        match restore(ctx, &held, run, digest, backend.as_ref(), receipt, &dir).await {
            Ok(measured) => {
                let reason = format!(
                    "restored from tape {} ({}): every file and the run digest matched the manifest",
                    backend.name(),
                    receipt.reference
                );
                let stamps = async { replay::local_stamps(&dir, &run.files) };
                held.finish(&measured, reason, None, &location, stamps)
                    .await?;
                return Ok(Recalled {
                    copy,
                    backend: backend.name().to_owned(),
                    dir,
                    files: run.files.len(),
                    bytes,
                    dry_run: false,
                });
            }
            Err(e) => {
                tracing::error!(%copy, tape = %backend.name(), "recall failed: {e}");
                failures.push(e);
            }
        }
    }
    let err = one_or_all(&copy, failures);
    held.fail(&Failure::new(err.class(), err.to_string())).await;
    Err(err)
}

/// The one failure, or all of them with the gravest class.
fn one_or_all(copy: &CopyRef, mut failures: Vec<RecallError>) -> RecallError {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    RecallError::AllFailed {
        copy: copy.clone(),
        class: failures
            .iter()
            .map(RecallError::class)
            .max()
            .unwrap_or(FailureClass::Retryable),
        failures: failures.iter().map(ToString::to_string).collect(),
    }
}

/// Whether `dir` exists and holds anything.
fn dir_has_entries(dir: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The backend of a tape copy and the receipt `retrieve` needs, rebuilt: each manifest
/// key `stat`ed (what the tape side holds now; it must agree with the manifest), the
/// manifest's SHA-256 attached for the read-back check, the reference and volumes from the
/// copy's `tape` field where recorded.
async fn prepare(
    ctx: &Context,
    run: &RunDoc,
    copy: &CopyRef,
    tape_copy: &CopyEntry,
    cfg: &TapeBackendConfig,
) -> Result<(Box<dyn TapeBackend>, Receipt), RecallError> {
    let name = cfg.name.clone();
    let backend = tape::open(ctx, cfg).map_err(|reason| RecallError::Backend {
        backend: name.clone(),
        reason,
    })?;
    if !backend.capabilities().retrieve {
        return Err(RecallError::NoRetrieve(name));
    }
    let run_ref = tape::run_ref(run);
    let mut files = Vec::with_capacity(run.files.len());
    for f in &run.files {
        let key = key_of(&run_ref.name, &f.path);
        let stored = backend
            .stat(&run_ref, &f.path)
            .await
            .map_err(|source| RecallError::Tape {
                copy: copy.clone(),
                backend: name.clone(),
                source,
            })?
            .ok_or_else(|| RecallError::NotOnTape {
                backend: name.clone(),
                key: key.clone(),
            })?;
        let differs = |what, expected: String, found: String| RecallError::FileMismatch {
            copy: copy.clone(),
            backend: name.clone(),
            path: f.path.clone(),
            what,
            expected,
            found,
        };
        let size = u64::try_from(f.size).unwrap_or(0);
        if let Some(s) = stored.size.filter(|s| *s != size) {
            return Err(differs("size", size.to_string(), s.to_string()));
        }
        if let Some(sha) = stored
            .sha256
            .as_ref()
            .filter(|s| !s.eq_ignore_ascii_case(&f.sha256))
        {
            return Err(differs("sha256", f.sha256.clone(), sha.clone()));
        }
        if let (Some(md5), Some(want)) = (&stored.md5, &f.md5) {
            if !md5.eq_ignore_ascii_case(want) {
                return Err(differs("md5", want.clone(), md5.clone()));
            }
        }
        files.push(StoredFile {
            source_sha256: Some(f.sha256.clone()),
            ..stored
        });
    }
    let (reference, volumes) = super::tape::recorded_place(tape_copy, &name, &run_ref.name);
    let receipt = Receipt {
        backend: name,
        run: run_ref,
        reference,
        volumes,
        files,
        written: 0,
    };
    Ok((backend, receipt))
}

/// Retrieves into a scratch directory, proves every file and the run digest, and moves the
/// files into `dir`. Returns the measured run digest. On failure nothing is left behind.
async fn restore(
    ctx: &Context,
    held: &Held<'_>,
    run: &RunDoc,
    digest: &str,
    backend: &dyn TapeBackend,
    receipt: &Receipt,
    dir: &Path,
) -> Result<String, RecallError> {
    let copy = held.copy();
    let io = |what, path: &Path| {
        let (copy, path) = (copy.clone(), path.to_path_buf());
        move |source| RecallError::Io {
            copy,
            what,
            path,
            source,
        }
    };
    let root = ctx.site.data_dir(&copy.data_type).ok_or_else(|| {
        copy::CopyError::from(datadir::PathError::NoDataDir {
            place: datadir::Place::new(run, &ctx.site.name, &copy.data_type),
        })
    })?;
    let scratch =
        Scratch::create(root, run.number).map_err(io("creating scratch directory in", root))?;
    let work = fetch_and_measure(run, digest, copy, backend, receipt, scratch.path());
    let measured = held.work(work).await?;
    let place = datadir::Place::new(run, &ctx.site.name, &copy.data_type);
    move_into_place(&place, root, scratch.path(), dir, run).map_err(|(what, path, source)| {
        RecallError::Io {
            copy: copy.clone(),
            what,
            path,
            source,
        }
    })?;
    drop(scratch);
    Ok(measured)
}

/// Retrieves the receipt's files into `scratch`, hashes each, compares with the manifest,
/// and returns the run digest of what was read, which must be `digest`.
async fn fetch_and_measure(
    run: &RunDoc,
    digest: &str,
    copy: &CopyRef,
    backend: &dyn TapeBackend,
    receipt: &Receipt,
    scratch: &Path,
) -> Result<String, RecallError> {
    let name = backend.name().to_owned();
    backend
        .retrieve(receipt, scratch)
        .await
        .map_err(|source| RecallError::Tape {
            copy: copy.clone(),
            backend: name.clone(),
            source,
        })?;
    let mut lines = Vec::with_capacity(run.files.len());
    for f in &run.files {
        let path = scratch.join(&f.path);
        let p = path.clone();
        let hashed = tokio::task::spawn_blocking(move || checksum::hash_file(&p))
            .await
            .map_err(|e| RecallError::Io {
                copy: copy.clone(),
                what: "hashing",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| RecallError::Checksum {
                copy: copy.clone(),
                path: f.path.clone(),
                source,
            })?;
        let differs = |what, expected: String, found: String| RecallError::FileMismatch {
            copy: copy.clone(),
            backend: name.clone(),
            path: f.path.clone(),
            what,
            expected,
            found,
        };
        let size = u64::try_from(f.size).unwrap_or(0);
        if hashed.size != size {
            return Err(differs("size", size.to_string(), hashed.size.to_string()));
        }
        let sha = hashed.sha256_hex();
        if !sha.eq_ignore_ascii_case(&f.sha256) {
            return Err(differs("sha256", f.sha256.clone(), sha));
        }
        lines.push((f.path.clone(), hashed.size, sha));
    }
    let measured = checksum::run_digest_of(&lines).map_err(|source| RecallError::Checksum {
        copy: copy.clone(),
        path: String::new(),
        source,
    })?;
    if measured != digest {
        return Err(RecallError::DigestMismatch {
            copy: copy.clone(),
            backend: name,
            measured,
            expected: digest.to_owned(),
        });
    }
    Ok(measured)
}

/// What failed while moving files into place: the operation, the path, the error.
type MoveFailure = (&'static str, PathBuf, std::io::Error);

/// Moves every manifest file from `scratch` into `dir` (same file system: renames), then
/// fsyncs the directories. Directories below the data directory `root` are made by
/// [`datadir::make_dirs`] (a planted link is refused, never followed). A failure puts back
/// nothing but removes what was moved.
fn move_into_place(
    place: &datadir::Place,
    root: &Path,
    scratch: &Path,
    dir: &Path,
    run: &RunDoc,
) -> Result<(), MoveFailure> {
    let mut moved: Vec<PathBuf> = Vec::with_capacity(run.files.len());
    let result = (|| -> Result<(), MoveFailure> {
        let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
        for f in &run.files {
            let from = scratch.join(&f.path);
            let to = dir.join(&f.path);
            let parent = to.parent().unwrap_or(dir).to_path_buf();
            datadir::make_dirs(place, root, &parent).map_err(|e| {
                (
                    "creating",
                    parent.clone(),
                    std::io::Error::other(e.to_string()),
                )
            })?;
            if to.symlink_metadata().is_ok() {
                return Err((
                    "moving into place",
                    to,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file appeared there during the recall",
                    ),
                ));
            }
            std::fs::rename(&from, &to).map_err(|e| ("moving into place", to.clone(), e))?;
            moved.push(to);
            if !dirs.contains(&parent) {
                dirs.push(parent);
            }
        }
        for d in &dirs {
            std::fs::File::open(d)
                .and_then(|h| h.sync_all())
                .map_err(|e| ("fsync", d.clone(), e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for f in &moved {
            let _ = std::fs::remove_file(f);
        }
        // Directories this recall created, deepest first; a directory with other files
        // stays (remove_dir refuses).
        let mut dirs: Vec<&Path> = moved
            .iter()
            .flat_map(|f| f.ancestors().skip(1))
            .filter(|d| d.starts_with(dir))
            .collect();
        dirs.sort_by(|a, b| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then_with(|| a.cmp(b))
        });
        dirs.dedup();
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
    result
}

/// A hidden scratch directory inside a data directory, removed with everything in it when
/// dropped (on success after the files were moved out, on failure with what was read).
struct Scratch(PathBuf);

impl Scratch {
    fn create(root: &Path, number: i64) -> std::io::Result<Scratch> {
        // The data directory itself is never created here (`datadir::roots` checked it).
        if !std::fs::metadata(root)?.is_dir() {
            return Err(std::io::Error::other(
                "the data directory is not a directory",
            ));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Scratch left by a recall of this run that was killed (its pid is gone).
        let prefix = format!(".ferry-recall-{number}-");
        for entry in std::fs::read_dir(root)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid.filter(|p| owner::process_start(*p).is_none()) {
                tracing::info!(path = %entry.path().display(), pid, "removing the scratch of a killed recall");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let path = root.join(format!(
            ".ferry-recall-{number}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), "cannot remove the recall scratch directory: {e}");
            }
        }
    }
}
