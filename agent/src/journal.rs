//! The record journal: a copy whose bytes were verified at the destination, but whose
//! record the catalogue could not take (unreachable), is written here, fsynced, and
//! replayed as the same conditional update once the catalogue answers again, so the bytes
//! are not sent a second time.
//!
//! One file per record in `journal-SITE/` in the agent's state directory, written as a
//! temporary file, fsynced, renamed into place and the directory fsynced: an entry is
//! either all there or not there. A crash before the rename leaves a `.tmp` file, which
//! is never read (the copy then stays leased by a dead process and the retry task
//! re-copies it, as before the journal). A file that does not parse is reported with its
//! path and line and left alone; nothing else changes because of it.
//!
//! Replay ([`replay`]) is conditional and idempotent: the copy is read first, and the
//! update is made only when the copy is still where the journaled process left it (same
//! status, same lease owner). A copy taken over or changed meanwhile is never overwritten:
//! the entry is dropped with a warning. A copy already recorded with the journaled digest
//! (the reply was lost, or an earlier replay died after its update) just drops the entry.
//! Before recording, the bytes at the destination are checked through [`Bytes`] (the
//! tasks' side: this module knows nothing of sites, sessions or tasks).
//!
//! Uses `catalog` and `catalog-schema` only.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bson::DateTime;
use catalog_schema::{CopyStatus, RunDoc, RunKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::catalog::{Cas, Catalog, CatalogError, CopyRef, Failure, FailureClass, Transition};

/// The entry format written by this version.
pub const VERSION: u32 = 1;

/// A temporary file older than this is a writer's leftover from a crash, removed by
/// [`Journal::open`].
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file or directory operation failed.
    #[error("journal {}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An entry file does not parse (cut short by a crash, or edited by hand). It is left
    /// as it is.
    #[error(
        "journal entry {} line {line} column {column}: {message} (left as it is; move it away once the copy is checked)",
        path.display()
    )]
    Malformed {
        /// The entry file.
        path: PathBuf,
        /// The line of the problem (1-based).
        line: usize,
        /// The column of the problem (1-based).
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl JournalError {
    /// An I/O error may pass (a full disk freed); a malformed entry needs a person.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}

/// One destination file as it was when its bytes were verified: its path in the manifest,
/// size and modification time (seconds since the epoch), so a replay can tell whether it
/// is still the file that was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Manifest path, below the copy's directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch (`None`: not known).
    pub mtime: Option<i64>,
    /// Modification and status-change times in nanoseconds, where the file is on this
    /// host's disk (SFTP gives whole seconds only, and no status-change time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ns: Option<(i64, i64)>,
}

/// One record the catalogue could not take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry format ([`VERSION`]).
    pub version: u32,
    /// The site whose agent wrote it.
    pub site: String,
    /// The run's number.
    pub number: i64,
    /// The run's detector.
    pub detector: String,
    /// The site holding the copy.
    pub host: String,
    /// The copy's data type.
    pub data_type: String,
    /// The copy's directory (or tape reference), as claimed.
    pub location: String,
    /// The status the copy was in when the record failed: the conditional update expects it.
    pub from: CopyStatus,
    /// The status the record moves it to: `transferred`, or `verifying` when the
    /// destination's own agent verifies (the lease is then released).
    pub to: CopyStatus,
    /// The lease owner the conditional update expects (the process that verified the bytes).
    pub owner: String,
    /// The run digest measured from the destination's bytes.
    pub checksum: String,
    /// When it was measured (RFC 3339).
    pub verified_at: String,
    /// The audit-trail reason of the last step.
    pub reason: String,
    /// The lease the first step renews (milliseconds).
    pub lease_ms: u64,
    /// A tape copy's receipt (canonical extended JSON of the `tape` document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape: Option<serde_json::Value>,
    /// The destination's files as verified (empty for a tape copy).
    #[serde(default)]
    pub files: Vec<Stamp>,
}

impl Entry {
    /// The copy this entry records.
    pub fn copy(&self) -> CopyRef {
        CopyRef::new(
            RunKey::new(&self.detector, self.number),
            &self.host,
            &self.data_type,
        )
    }

    /// The tape receipt as BSON.
    pub fn tape_doc(&self) -> Option<bson::Document> {
        let v = self.tape.clone()?;
        match bson::Bson::try_from(v) {
            Ok(bson::Bson::Document(d)) => Some(d),
            _ => None,
        }
    }

    /// The tape receipt as JSON, for [`Entry::tape`].
    pub fn tape_json(doc: &bson::Document) -> serde_json::Value {
        bson::Bson::Document(doc.clone()).into_canonical_extjson()
    }

    /// When the bytes were verified.
    pub fn verified_time(&self) -> Option<DateTime> {
        DateTime::parse_rfc3339_str(&self.verified_at).ok()
    }

    /// The time now, as [`Entry::verified_at`] is written.
    pub fn now() -> String {
        DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
    }
}

/// An entry read back, with its file.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The entry file.
    pub path: PathBuf,
    /// What it holds.
    pub entry: Entry,
}

/// The journal directory of one site.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal of `site` in `state_dir`: `state_dir/journal-SITE`. Nothing is created
    /// until the first entry is written.
    pub fn in_state_dir(state_dir: &Path, site: &str) -> Self {
        Self {
            dir: state_dir.join(format!("journal-{}", safe(site))),
        }
    }

    /// [`Journal::in_state_dir`], and removes temporary files a writer left when it died
    /// (older than an hour; an entry being written now is never touched).
    pub fn open(state_dir: &Path, site: &str) -> Self {
        let journal = Self::in_state_dir(state_dir, site);
        if let Ok(dir) = std::fs::read_dir(&journal.dir) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let old = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TMP);
                if name.ends_with(".tmp") && old {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        journal
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io<'a>(
        path: &'a Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
        move |source| JournalError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// Writes `entry` durably: a temporary file, fsynced, renamed to its name, the
    /// directory fsynced. Returns the entry's file. An entry for the same copy and owner is
    /// replaced.
    pub fn write(&self, entry: &Entry) -> Result<PathBuf, JournalError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir, "create"))?;
        let name = file_name(entry);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(entry).map_err(|e| JournalError::Io {
            path: path.clone(),
            op: "encode",
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(Self::io(&tmp, "create"))?;
            f.write_all(text.as_bytes())
                .map_err(Self::io(&tmp, "write"))?;
            f.sync_all().map_err(Self::io(&tmp, "fsync"))?;
            std::fs::rename(&tmp, &path).map_err(Self::io(&path, "rename into place"))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Every entry, oldest file first; a file that cannot be read or parsed is an `Err`
    /// naming it (and its line), the others are still returned.
    pub fn entries(&self) -> Vec<Result<Stored, JournalError>> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => return vec![Err(Self::io(&self.dir, "list")(e))],
        };
        let mut files: Vec<(SystemTime, PathBuf)> = dir
            .flatten()
            .filter(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .map(|f| {
                let at = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (at, f.path())
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, path)| read_entry(&path))
            .collect()
    }

    /// The entries recording `copy` (readable ones only).
    pub fn pending(&self, copy: &CopyRef) -> Vec<Stored> {
        self.entries()
            .into_iter()
            .flatten()
            .filter(|s| &s.entry.copy() == copy)
            .collect()
    }

    /// Removes a replayed (or dropped) entry; one already gone is fine.
    pub fn remove(&self, stored: &Stored) -> Result<(), JournalError> {
        match std::fs::remove_file(&stored.path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&stored.path, "remove")(e)),
        }
    }
}

fn read_entry(path: &Path) -> Result<Stored, JournalError> {
    let text = std::fs::read_to_string(path).map_err(Journal::io(path, "read"))?;
    let malformed = |line: usize, column: usize, message: String| JournalError::Malformed {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let entry: Entry =
        serde_json::from_str(&text).map_err(|e| malformed(e.line(), e.column(), e.to_string()))?;
    if entry.version != VERSION {
        return Err(malformed(
            1,
            1,
            format!(
                "entry format {} (this ferry reads {VERSION})",
                entry.version
            ),
        ));
    }
    if entry.verified_time().is_none() {
        return Err(malformed(
            1,
            1,
            format!(
                "verified_at {:?} is not an RFC 3339 time",
                entry.verified_at
            ),
        ));
    }
    Ok(Stored {
        path: path.to_path_buf(),
        entry,
    })
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Journal::io(dir, "fsync the directory"))
}

/// `[A-Za-z0-9._-]` kept, anything else `_`.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `NUMBER-DETECTOR-TYPE@HOST-HASH.json`: readable, and unique per copy and owner (the
/// hash is of both, unsanitised), so a replay never removes an entry written after it read.
fn file_name(e: &Entry) -> String {
    let mut h = Sha256::new();
    for part in [
        e.number.to_string().as_str(),
        &e.detector,
        &e.host,
        &e.data_type,
        &e.owner,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hash = hex::encode(&h.finalize()[..8]);
    format!(
        "{:06}-{}-{}@{}-{hash}.json",
        e.number,
        safe(&e.detector),
        safe(&e.data_type),
        safe(&e.host)
    )
}

/// What the destination's bytes are now, as [`Bytes::check`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytesCheck {
    /// Every file is there, of the size and modification time recorded when verified.
    Unchanged,
    /// Some file changed, and hashing the files again matched the manifest: this digest.
    Reverified {
        /// The run digest measured now.
        checksum: String,
    },
    /// Gone or changed, and not the manifest's bytes: never recorded.
    Bad(String),
    /// The destination could not be asked (its host unreachable): try again later.
    Unreachable(String),
}

/// The tasks' side of a replay: how to look at a copy's bytes where they are.
#[async_trait]
pub trait Bytes: Send + Sync {
    /// Whether the files of `entry` are still the bytes that were verified; `run` is the
    /// run as the catalogue has it now (its manifest).
    async fn check(&self, entry: &Entry, run: &RunDoc) -> BytesCheck;
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The record was made now.
    Recorded,
    /// The catalogue already had it (a lost reply, an earlier replay cut short).
    AlreadyRecorded,
    /// Not recorded: the copy changed meanwhile, or the run is gone. The entry is removed.
    Dropped(String),
    /// The bytes are gone or changed: the copy was marked `error` (retryable), the entry
    /// removed.
    Failed(String),
    /// The catalogue (or the destination) did not answer: the entry stays.
    Pending(String),
}

/// Replays one entry as the conditional update(s) it stands for (see the module's doc).
/// `who` names the replaying process in the audit trail. The entry file is not touched:
/// the caller removes it unless the outcome is [`Replayed::Pending`].
pub async fn replay(
    catalog: &dyn Catalog,
    bytes: &dyn Bytes,
    entry: &Entry,
    who: &str,
) -> Replayed {
    let copy = entry.copy();
    let run = match catalog.get_run(&copy.run).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            return Replayed::Dropped(format!("{copy}: the run is no longer in the catalogue"))
        }
        Err(e) => return pending(&e),
    };
    let Some(now) = run.copy(&copy.host, &copy.data_type) else {
        return Replayed::Dropped(format!("{copy}: the copy is no longer in the catalogue"));
    };
    let ours = now.lease.as_ref().is_some_and(|l| l.owner == entry.owner);
    let same_sum = now.checksum.as_deref() == Some(entry.checksum.as_str());
    // Where to start from: the journaled state, or the step after it if that step landed
    // (its reply lost) under the same lease.
    let start = match now.status {
        s if s == entry.to
            && same_sum
            && (entry.to != CopyStatus::Verifying || ours || now.lease.is_none()) =>
        {
            if entry.to == CopyStatus::Verifying && ours {
                let _ = catalog.release_lease(&copy, &entry.owner).await;
            }
            return Replayed::AlreadyRecorded;
        }
        s if s == entry.from && ours => s,
        CopyStatus::Verifying if entry.from == CopyStatus::Transferring && ours && same_sum => {
            CopyStatus::Verifying
        }
        s => {
            let holder = now
                .lease
                .as_ref()
                .map_or_else(|| "no lease".to_string(), |l| format!("lease {}", l.owner));
            return Replayed::Dropped(format!(
                "{copy}: the copy changed meanwhile ({s}, {holder}; the journal expected {} leased by {}): not overwritten",
                entry.from, entry.owner
            ));
        }
    };
    let lease_for = Duration::from_millis(entry.lease_ms);
    let mut checksum = entry.checksum.clone();
    let mut verified_at = entry.verified_time();
    let mut reason = format!(
        "{} (replayed from the journal: verified {} by {})",
        entry.reason, entry.verified_at, entry.owner
    );
    match bytes.check(entry, &run).await {
        BytesCheck::Unchanged => {}
        BytesCheck::Reverified { checksum: sum } => {
            checksum = sum;
            verified_at = None;
            reason = format!(
                "{} (replayed from the journal; the files had changed since {} and were hashed again)",
                entry.reason, entry.verified_at
            );
        }
        BytesCheck::Unreachable(why) => return Replayed::Pending(format!("{copy}: {why}")),
        BytesCheck::Bad(why) => {
            let failure = Failure::new(
                FailureClass::Retryable,
                format!(
                    "the files changed at the destination after they were verified and before their record was replayed from the journal: {why}"
                ),
            );
            let mut change = Transition::new(start, CopyStatus::Error, Some(&entry.owner), who);
            change.record_failure(&failure);
            return match catalog.transition(&copy, &change).await {
                Ok(Cas::Done) => Replayed::Failed(format!("{copy}: {why}")),
                Ok(Cas::Lost) => Replayed::Dropped(format!(
                    "{copy}: the copy changed meanwhile: not overwritten"
                )),
                Err(e) => pending(&e),
            };
        }
    }
    let owner = Some(entry.owner.as_str());
    if start == CopyStatus::Transferring {
        let mut to_verifying =
            Transition::new(CopyStatus::Transferring, CopyStatus::Verifying, owner, who);
        to_verifying.checksum = Some(checksum.clone());
        to_verifying.lease_for = lease_for;
        if entry.to == CopyStatus::Verifying {
            to_verifying.reason = Some(reason.clone());
        }
        match step(catalog, &copy, &to_verifying).await {
            Ok(()) => {}
            Err(r) => return r,
        }
        if entry.to == CopyStatus::Verifying {
            let _ = catalog.release_lease(&copy, &entry.owner).await;
            return Replayed::Recorded;
        }
    }
    let mut to_done = Transition::new(CopyStatus::Verifying, CopyStatus::Transferred, owner, who);
    to_done.checksum = Some(checksum.clone());
    to_done.reason = Some(reason);
    to_done.tape = entry.tape_doc();
    if let Err(r) = step(catalog, &copy, &to_done).await {
        return r;
    }
    // The catalogue stamps the update's own time; the bytes were verified earlier.
    if let Some(at) = verified_at {
        let _ = catalog
            .record_checksum(&copy, CopyStatus::Transferred, None, &checksum, at)
            .await;
    }
    Replayed::Recorded
}

async fn step(catalog: &dyn Catalog, copy: &CopyRef, change: &Transition) -> Result<(), Replayed> {
    match catalog.transition(copy, change).await {
        Ok(Cas::Done) => Ok(()),
        Ok(Cas::Lost) => Err(Replayed::Dropped(format!(
            "{copy}: {} -> {} lost: the copy changed meanwhile; not overwritten",
            change.from, change.to
        ))),
        Err(e) => Err(pending(&e)),
    }
}

fn pending(e: &CatalogError) -> Replayed {
    Replayed::Pending(format!("catalogue: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            version: VERSION,
            site: "daq".into(),
            number: 7,
            detector: "tpc".into(),
            host: "mirror".into(),
            data_type: "raw".into(),
            location: "/data/raw/Run000007".into(),
            from: CopyStatus::Transferring,
            to: CopyStatus::Transferred,
            owner: "daq@host:1/2/abc".into(),
            checksum: "00ff".into(),
            verified_at: Entry::now(),
            reason: "read back".into(),
            lease_ms: 600_000,
            tape: Some(Entry::tape_json(
                &bson::doc! { "volumes": ["A1"], "n": 3_i64 },
            )),
            files: vec![Stamp {
                path: "a.evio".into(),
                size: 14,
                mtime: Some(1_700_000_000),
                local_ns: Some((1_700_000_000_000_000_001, 1_700_000_000_000_000_002)),
            }],
        }
    }

    #[test]
    fn an_entry_is_written_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "daq");
        let e = entry();
        let path = j.write(&e).unwrap();
        assert!(path.starts_with(dir.path().join("journal-daq")));
        let all = j.entries();
        assert_eq!(all.len(), 1);
        let stored = all.into_iter().next().unwrap().unwrap();
        assert_eq!(stored.entry, e);
        assert_eq!(
            stored.entry.tape_doc(),
            Some(bson::doc! { "volumes": ["A1"], "n": 3_i64 })
        );
        assert_eq!(j.pending(&e.copy()).len(), 1);
        let other = CopyRef::new(RunKey::new("tpc", 8), "mirror", "raw");
        assert!(j.pending(&other).is_empty());
        // The same copy and owner again replaces the entry.
        j.write(&e).unwrap();
        assert_eq!(j.entries().len(), 1);
        j.remove(&stored).unwrap();
        j.remove(&stored).unwrap();
        assert!(j.entries().is_empty());
    }

    #[test]
    fn a_truncated_entry_is_named_with_its_line_and_the_others_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "daq");
        let good = j.write(&entry()).unwrap();
        let text = std::fs::read_to_string(&good).unwrap();
        let bad = j.dir().join("000009-tpc-raw@mirror-0000000000000000.json");
        std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
        // A writer's leftover is not an entry.
        std::fs::write(j.dir().join(".x.json.1.tmp"), "{").unwrap();
        let all = j.entries();
        assert_eq!(all.len(), 2);
        let err = all
            .iter()
            .find_map(|r| r.as_ref().err())
            .unwrap()
            .to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains("line "), "{err}");
        assert!(all.iter().any(|r| r.as_ref().is_ok_and(|s| s.path == good)));
        // Reading changed nothing.
        assert_eq!(
            std::fs::read_to_string(&bad).unwrap(),
            text[..text.len() / 2]
        );
    }

    #[test]
    fn an_entry_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "daq");
        let mut e = entry();
        e.version = 99;
        let path = j.write(&e).unwrap();
        let err = j.entries().remove(0).unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("format 99"), "{err}");
    }
}
