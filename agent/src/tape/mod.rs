//! Tape backends: one trait, three implementations.
//!
//! Layout:
//!
//! | file / folder  | what it holds                                                         |
//! |----------------|-----------------------------------------------------------------------|
//! | `mod.rs`       | the [`TapeBackend`] trait, the batch/receipt types, [`build`]         |
//! | `error.rs`     | [`TapeError`], with [`TapeError::is_retryable`]                       |
//! | `sample.rs`    | seeded sampling shared by the verifiers                               |
//! | `needs.rs`     | which operations the tasks call, what each backend's entry must hold for them |
//! | [`directory`]  | a directory tree (HSM-mounted file system, NAS): temp, fsync, rename, sidecar |
//! | [`command`]    | argv templates (JLab `jput`, TSM `dsmc`, HPSS `hsi`), locally or via a gateway |
//! | [`tar`]        | papertape: tar archives on tape drives, N copies in parallel          |
//!
//! Each backend folder has the same shape: `config.rs` (settings from the site map),
//! `backend.rs` (the trait implementation), `verify.rs` (its verification levels).
//!
//! The contract every backend keeps (and `tests/tests/tape_behaviour.rs` checks):
//!
//! - writes are idempotent on (key, digest): [`TapeBackend::put`] of a file that is already
//!   stored with the same SHA-256 (or, where the tape system records only MD5, the same MD5)
//!   returns it in the receipt without writing again; a different digest is
//!   [`TapeError::Conflict`] and nothing is written;
//! - a receipt is returned only when every file of the batch is stored; a failure in the
//!   middle of a batch is an error and the receipt is never produced;
//! - [`TapeBackend::verify`] fails with [`TapeError::Mismatch`] when what the tape system
//!   holds differs from the receipt; callers record a copy only after a successful verify.
//!
//! This module uses [`crate::transport`] (SSH exec and SFTP staging on a gateway) and
//! [`crate::checksum`] only; it knows nothing of tasks, the catalogue or the command line.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{TapeBackendConfig, TapeKind};
use crate::transport::SshTarget;

pub mod command;
pub mod directory;
mod error;
mod io;
pub mod needs;
mod sample;
pub mod tar;

pub use error::{CommandRun, TapeError};
pub use sample::sample_indices;

/// The run a batch belongs to: what templates may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// Run number.
    pub number: i64,
    /// Run name (cax's `name`, such as `170330_1234`).
    pub name: String,
    /// Run period, where the collaboration has them (`2019-11`).
    pub period: Option<String>,
    /// Detector (`tpc`).
    pub detector: String,
}

/// One file to put on tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeFile {
    /// Path relative to the run directory, `/`-separated (the manifest's `path`).
    pub path: String,
    /// Where the bytes are on this machine.
    pub local: PathBuf,
    /// Size in bytes (from the manifest).
    pub size: u64,
    /// SHA-256, lowercase hex (from the manifest).
    pub sha256: String,
    /// MD5, lowercase hex (from the manifest).
    pub md5: String,
}

/// A batch: files of one run, written together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The run.
    pub run: RunRef,
    /// Its files.
    pub files: Vec<TapeFile>,
}

impl Batch {
    /// The stable tape key of a file of this batch: `<run name>/<path>`.
    pub fn key(&self, file: &TapeFile) -> String {
        key_of(&self.run.name, &file.path)
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The stable tape key of a run's file: `<run name>/<path>`.
pub fn key_of(run_name: &str, path: &str) -> String {
    format!("{run_name}/{path}")
}

/// One file as the tape system reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// `<run name>/<path>`.
    pub key: String,
    /// Size in bytes, when the tape side reports it (`hsi hashlist` does not).
    pub size: Option<u64>,
    /// SHA-256 as recorded by the tape side, when it records one.
    pub sha256: Option<String>,
    /// MD5 as recorded by the tape side, when it records one.
    pub md5: Option<String>,
    /// CRC-32 as recorded by the tape side (JLab stubs), when it records one.
    pub crc32: Option<u32>,
    /// Where the file is, in the backend's terms (a path, an HSM name, `LABEL:file/member`).
    pub location: String,
    /// SHA-256 of the bytes that were put (the manifest's), kept for read-back checks where
    /// the tape side records a weaker checksum. `None` in [`TapeBackend::stat`] answers.
    pub source_sha256: Option<String>,
}

impl StoredFile {
    /// Whether this stored file holds `file`'s bytes, by the strongest digest both sides
    /// have: SHA-256, else MD5, else (a tape system recording neither) size alone is not
    /// enough and the answer is `None`.
    pub fn same_digest(&self, file: &TapeFile) -> Option<bool> {
        if self.size.is_some_and(|s| s != file.size) {
            return Some(false);
        }
        if let Some(sha) = &self.sha256 {
            return Some(sha.eq_ignore_ascii_case(&file.sha256));
        }
        self.md5
            .as_ref()
            .map(|md5| md5.eq_ignore_ascii_case(&file.md5))
    }
}

/// What [`TapeBackend::put`] returns: proof of where a batch went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The backend's name from the site map.
    pub backend: String,
    /// The run.
    pub run: RunRef,
    /// The tape reference recorded in the catalogue as the copy's `location`.
    pub reference: String,
    /// Volumes (tape labels) holding the batch; empty where the tape system hides them.
    pub volumes: Vec<String>,
    /// Every file of the batch as the tape side reports it, in batch order.
    pub files: Vec<StoredFile>,
    /// How many files this put actually wrote (0 when everything was already stored).
    pub written: usize,
}

/// How thoroughly [`TapeBackend::verify`] checks a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum VerifyLevel {
    /// Ask the tape system what it holds (size, recorded checksums); read no data.
    Metadata,
    /// Read back and hash a random sample: at least one file per tape file or batch.
    Sample {
        /// Share of the files to read, 0 < fraction ≤ 1.
        fraction: f64,
        /// Seed of the random choice; `None` draws one (recorded in the report).
        seed: Option<u64>,
    },
    /// Read back and hash every file.
    Full,
}

/// Which verification levels a backend offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyKind {
    /// [`VerifyLevel::Metadata`].
    Metadata,
    /// [`VerifyLevel::Sample`].
    Sample,
    /// [`VerifyLevel::Full`].
    Full,
}

/// Human words for reports and logs: "a 10% sample (seed 42)", "every file read back".
impl std::fmt::Display for VerifyLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Metadata => f.write_str("the tape system's metadata (no data read)"),
            Self::Sample { fraction, seed } => {
                let percent = fraction * 100.0;
                if (percent - percent.round()).abs() < 1e-9 {
                    write!(f, "a {percent:.0}% sample")?;
                } else {
                    write!(f, "a {percent:.1}% sample")?;
                }
                match seed {
                    Some(seed) => write!(f, " (seed {seed})"),
                    None => f.write_str(" (seed drawn at random)"),
                }
            }
            Self::Full => f.write_str("every file read back"),
        }
    }
}

/// The level's name as the site map spells it: `metadata`, `sample`, `full`.
impl std::fmt::Display for VerifyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Metadata => "metadata",
            Self::Sample => "sample",
            Self::Full => "full",
        })
    }
}

impl VerifyLevel {
    /// The level without its parameters.
    pub fn kind(&self) -> VerifyKind {
        match self {
            Self::Metadata => VerifyKind::Metadata,
            Self::Sample { .. } => VerifyKind::Sample,
            Self::Full => VerifyKind::Full,
        }
    }
}

/// The result of a successful verification (a failed one is an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The level checked, with the seed actually used for a sample.
    pub level: VerifyLevel,
    /// Keys whose data was read back and hashed (all keys for metadata checks, which read
    /// none), per copy for backends that keep several.
    pub checked: Vec<String>,
    /// Copies checked (1 except for `tar` with several drives).
    pub copies: u32,
    /// Bytes read back from tape.
    pub bytes_read: u64,
}

/// What a backend can do; callers branch on this, never on a backend's kind or name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Verification levels offered.
    pub verify: Vec<VerifyKind>,
    /// Whether [`TapeBackend::retrieve`] works.
    pub retrieve: bool,
    /// Most bytes per batch the backend wants (`None` = no limit); larger batches are split
    /// by the backend itself, this is a hint for callers that group runs.
    pub batch_bytes: Option<u64>,
    /// Copies written by one put (tar: one per drive).
    pub copies: u32,
    /// Whether the tape side records SHA-256 (else only MD5/CRC-32/size).
    pub records_sha256: bool,
    /// Whether [`TapeBackend::catalogue`] can list what is stored.
    pub catalogue: bool,
}

/// A backend's state for monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Whether puts can be expected to work now.
    pub ok: bool,
    /// What was checked and what was found, for people.
    pub detail: String,
}

/// A tape system Ferry writes runs to. Implementations: [`directory`], [`command`], [`tar`].
#[async_trait]
pub trait TapeBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name from the site map (recorded as the copy's `host`).
    fn name(&self) -> &str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Whether the backend is usable now (directory writable, gateway reachable, drives
    /// loaded). An error means the check itself could not run.
    async fn health(&self) -> Result<Health, TapeError>;

    /// The stored file for `path` of `run` (key `<run name>/<path>`), or `None`: the
    /// idempotency probe. Takes the run, not only the key, because tape-side names may be
    /// built from the run's number or period.
    async fn stat(&self, run: &RunRef, path: &str) -> Result<Option<StoredFile>, TapeError>;

    /// Write a batch; idempotent on (key, digest) (see the module docs).
    async fn put(&self, batch: &Batch) -> Result<Receipt, TapeError>;

    /// Check that the tape side holds what `receipt` says.
    async fn verify(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError>;

    /// Read a receipt's files back into `to_dir` (as `to_dir/<path>`), checking each against
    /// the receipt's checksums. Returns the paths written.
    async fn retrieve(&self, receipt: &Receipt, to_dir: &Path) -> Result<Vec<PathBuf>, TapeError>;

    /// Everything this backend holds, as far as it can list it.
    async fn catalogue(&self) -> Result<Vec<StoredFile>, TapeError>;
}

/// How a backend reaches the machines named by its settings.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// The SSH target of a `command` backend's `gateway` site (resolved by the caller
    /// from the site map and `~/.ssh/config`); required when the backend names one.
    pub gateway: Option<SshTarget>,
}

/// The backend a site-map entry describes.
pub fn build(
    cfg: &TapeBackendConfig,
    cx: &BuildContext,
) -> Result<Box<dyn TapeBackend>, TapeError> {
    match &cfg.kind {
        TapeKind::Directory { .. } => Ok(Box::new(directory::DirectoryBackend::new(
            directory::DirectoryConfig::from_site_map(cfg)?,
        ))),
        TapeKind::Command { .. } => Ok(Box::new(command::CommandBackend::new(
            command::CommandConfig::from_site_map(cfg)?,
            cx.gateway.clone(),
        )?)),
        TapeKind::Tar { .. } => Ok(Box::new(tar::TarBackend::new(
            tar::TarConfig::from_site_map(cfg)?,
        )?)),
    }
}

/// The idempotency check shared by every backend: `Ok(true)` when `stored` already holds
/// `file` (skip the write), `Ok(false)` when nothing is stored, [`TapeError::Conflict`] when
/// something else is.
pub(crate) fn check_existing(
    backend: &str,
    key: &str,
    file: &TapeFile,
    stored: Option<&StoredFile>,
) -> Result<bool, TapeError> {
    let Some(stored) = stored else {
        return Ok(false);
    };
    match stored.same_digest(file) {
        Some(true) => Ok(true),
        Some(false) => Err(TapeError::Conflict {
            backend: backend.to_owned(),
            key: key.to_owned(),
            stored: describe(stored.size, stored.sha256.as_deref(), stored.md5.as_deref()),
            offered: describe(Some(file.size), Some(&file.sha256), Some(&file.md5)),
        }),
        None => Err(TapeError::Conflict {
            backend: backend.to_owned(),
            key: key.to_owned(),
            stored: format!(
                "{}, no checksum recorded by the tape system",
                size_text(stored.size)
            ),
            offered: describe(Some(file.size), Some(&file.sha256), Some(&file.md5)),
        }),
    }
}

fn describe(size: Option<u64>, sha256: Option<&str>, md5: Option<&str>) -> String {
    let size = size_text(size);
    match (sha256, md5) {
        (Some(s), _) => format!("{size}, sha256 {s}"),
        (None, Some(m)) => format!("{size}, md5 {m}"),
        (None, None) => size,
    }
}

/// A size the tape side may not report: "1234 bytes", or "size unknown".
pub(crate) fn size_text(size: Option<u64>) -> String {
    size.map_or_else(|| "size unknown".to_owned(), |s| format!("{s} bytes"))
}

/// A checksum the tape side may not report: the hex digits, or "none recorded".
pub(crate) fn hash_text(hash: Option<&str>) -> &str {
    hash.unwrap_or("none recorded")
}

/// Compare a read-back digest with what a receipt says of a file.
pub(crate) fn check_read_back(
    backend: &str,
    stored: &StoredFile,
    got: &crate::checksum::FileDigest,
) -> Result<(), TapeError> {
    let mismatch = |what: &'static str, expected: String, found: String| TapeError::Mismatch {
        backend: backend.to_owned(),
        key: stored.key.clone(),
        what,
        expected,
        found,
    };
    if let Some(size) = stored.size.filter(|s| *s != got.size) {
        return Err(mismatch("size", size.to_string(), got.size.to_string()));
    }
    for sha in [&stored.sha256, &stored.source_sha256]
        .into_iter()
        .flatten()
    {
        if !sha.eq_ignore_ascii_case(&got.sha256_hex()) {
            return Err(mismatch("sha256", sha.clone(), got.sha256_hex()));
        }
    }
    if let Some(md5) = &stored.md5 {
        if !md5.eq_ignore_ascii_case(&got.md5_hex()) {
            return Err(mismatch("md5", md5.clone(), got.md5_hex()));
        }
    }
    Ok(())
}

/// Refuse batch paths that would escape a directory or make keys ambiguous.
pub(crate) fn check_batch(backend: &str, batch: &Batch) -> Result<(), TapeError> {
    let bad = |path: &str, reason: &str| TapeError::BadInput {
        backend: backend.to_owned(),
        run: batch.run.name.clone(),
        reason: format!("{path:?}: {reason}"),
    };
    if batch.files.is_empty() {
        return Err(bad("", "empty batch"));
    }
    if let Err(why) = catalog_schema::check_run_name(&batch.run.name) {
        return Err(bad(&batch.run.name, why));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &batch.files {
        if f.path.is_empty()
            || f.path.starts_with('/')
            || f.path.contains('\0')
            || f.path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad(&f.path, "not a plain relative path"));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(bad(&f.path, "listed twice"));
        }
    }
    Ok(())
}

/// Hash a local file off the async executor.
pub(crate) async fn hash_local(
    backend: &str,
    path: &Path,
) -> Result<crate::checksum::FileDigest, TapeError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::checksum::hash_file(&p))
        .await
        .map_err(|e| TapeError::Internal {
            backend: backend.to_owned(),
            reason: format!("hashing task: {e}"),
        })?
        .map_err(|e| TapeError::Checksum {
            backend: backend.to_owned(),
            source: e,
        })
}

/// Run blocking file or drive work off the executor, turning a panicked task into an error.
pub(crate) async fn blocking<T: Send + 'static>(
    backend: &str,
    f: impl FnOnce() -> Result<T, TapeError> + Send + 'static,
) -> Result<T, TapeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TapeError::Internal {
            backend: backend.to_owned(),
            reason: format!("blocking task: {e}"),
        })?
}

#[cfg(test)]
mod text_tests {
    use super::*;

    /// Reports said `verified Sample { fraction: 0.1, seed: Some(42) }`.
    #[test]
    fn a_verification_level_reads_as_words_not_rust_debug() {
        let shown = [
            (
                VerifyLevel::Sample {
                    fraction: 0.1,
                    seed: Some(42),
                },
                "a 10% sample (seed 42)",
            ),
            (
                VerifyLevel::Sample {
                    fraction: 0.125,
                    seed: None,
                },
                "a 12.5% sample (seed drawn at random)",
            ),
            (VerifyLevel::Full, "every file read back"),
            (
                VerifyLevel::Metadata,
                "the tape system's metadata (no data read)",
            ),
        ];
        for (level, words) in shown {
            let text = level.to_string();
            assert_eq!(text, words);
            assert!(!text.contains('{') && !text.contains("Some("), "{text}");
            assert!(!level.kind().to_string().contains(['{', ' ']));
        }
        assert_eq!(VerifyKind::Sample.to_string(), "sample");
    }

    #[test]
    fn a_conflict_with_an_unknown_size_says_so_in_words() {
        let text = describe(None, None, Some("abc"));
        assert_eq!(text, "size unknown, md5 abc");
        assert_eq!(describe(Some(5), Some("ff"), None), "5 bytes, sha256 ff");
    }

    #[test]
    fn a_failed_command_names_its_command_line_and_exit_status_in_words() {
        let err = TapeError::Command {
            backend: "tsm".into(),
            context: "run 7: put".into(),
            argv: vec!["dsmc".into(), "archive".into(), "/data/run 7/a".into()],
            status: Some(12),
            stderr_tail: "ANS1017E".into(),
            retryable: false,
        };
        let text = err.to_string();
        assert!(
            text.contains("command `dsmc archive '/data/run 7/a'` failed with exit status 12"),
            "{text}"
        );
        assert!(!text.contains("Some(") && !text.contains("[\""), "{text}");
        let run = CommandRun {
            argv: vec!["mt".into(), "status".into()],
            status: None,
            stderr_tail: String::new(),
        };
        assert_eq!(
            run.to_string(),
            "command `mt status` ended with no exit status: "
        );
    }
}
