//! The tasks' side of the record journal ([`crate::journal`]): write an entry when a
//! verified copy's record finds the catalogue unreachable ([`keep`]), replay every entry
//! at the start of each cycle ([`run`]) and before a copy that has one is claimed again
//! ([`before_claim`]), and look at the bytes where they are ([`SiteBytes`]) so a replay
//! records only what is still the verified copy.
//!
//! Checking the bytes on replay: each file's size and modification time were stamped when
//! the entry was written. All the same → recorded with the journaled digest and time, no
//! byte read again (nothing but the copy's lease holder writes there, and the lease is
//! still the journaled one, or the replay would not get this far). A file gone, resized or
//! touched → every file is hashed again at the destination (a local read, or a read-back
//! over SFTP) against the manifest: a match is recorded with the new digest, anything else
//! marks the copy `error` (`[retryable]`) for the retry task to copy again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use catalog_schema::{CopyStatus, FileEntry, RunDoc};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::catalog::{CatalogError, CopyRef};
use crate::checksum;
use crate::config::TransferMethod;
use crate::datadir::Place;
use crate::journal::{self, Bytes, BytesCheck, Entry, Journal, Replayed, Stamp, Stored};
use crate::transport::{CopyOptions, SshSession, TransportError};

/// What is needed to journal a record: the steps' ends and what the last one writes.
pub(super) struct Record<'a> {
    /// The copy.
    pub copy: &'a CopyRef,
    /// Its directory (or tape reference).
    pub location: &'a str,
    /// The status the failed step expected.
    pub from: CopyStatus,
    /// Where the record takes the copy.
    pub to: CopyStatus,
    /// The measured run digest.
    pub checksum: &'a str,
    /// The last step's audit reason.
    pub reason: &'a str,
    /// The lease the first step renews.
    pub lease: Duration,
    /// A tape copy's receipt.
    pub tape: Option<&'a bson::Document>,
    /// The destination's files as verified (empty for tape).
    pub files: Vec<Stamp>,
}

/// Writes `record` to the journal after its update found the catalogue unreachable
/// (`cause`). `Ok`: the entry's file, and the text for the failure line. `Err`: no journal
/// (none configured, or the write failed), with why; the caller then fails as before.
pub(super) fn keep(
    ctx: &Context,
    record: Record<'_>,
    cause: &CatalogError,
) -> Result<PathBuf, String> {
    let Some(journal) = &ctx.journal else {
        return Err("no journal (no state directory)".into());
    };
    let entry = Entry {
        version: journal::VERSION,
        site: ctx.site.name.clone(),
        number: record.copy.run.number,
        detector: record.copy.run.detector.clone(),
        host: record.copy.host.clone(),
        data_type: record.copy.data_type.clone(),
        location: record.location.to_owned(),
        from: record.from,
        to: record.to,
        owner: ctx.owner.clone(),
        checksum: record.checksum.to_owned(),
        verified_at: Entry::now(),
        reason: record.reason.to_owned(),
        lease_ms: u64::try_from(record.lease.as_millis()).unwrap_or(u64::MAX),
        tape: record.tape.map(Entry::tape_json),
        files: record.files,
    };
    match journal.write(&entry) {
        Ok(path) => {
            tracing::warn!(copy = %record.copy, journal = %path.display(),
                "the copy is verified but the catalogue did not take its record ({cause}); kept in the journal, replayed when the catalogue answers");
            Ok(path)
        }
        Err(e) => {
            tracing::error!(copy = %record.copy, "cannot journal the record: {e}");
            Err(e.to_string())
        }
    }
}

/// Stamps of files below a local directory (a missing file gets no mtime and size 0: a
/// replay then re-hashes).
pub(super) fn local_stamps(dir: &Path, files: &[FileEntry]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            use std::os::unix::fs::MetadataExt as _;
            let meta = std::fs::symlink_metadata(dir.join(&f.path))
                .ok()
                .filter(std::fs::Metadata::is_file);
            let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
            Stamp {
                path: f.path.clone(),
                size: meta.as_ref().map_or(0, |m| m.size()),
                mtime: meta.as_ref().map(|m| m.mtime()),
                local_ns: meta
                    .as_ref()
                    .map(|m| (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))),
            }
        })
        .collect()
}

/// Stamps of files below a remote directory, one round trip.
pub(super) async fn remote_stamps(
    session: &SshSession,
    dir: &str,
    files: &[FileEntry],
) -> Vec<Stamp> {
    let paths: Vec<String> = files.iter().map(|f| remote_path(dir, &f.path)).collect();
    let got = session.file_stamps(&paths).await;
    files
        .iter()
        .zip(got)
        .map(|(f, r)| {
            let (size, mtime) = r.ok().flatten().unwrap_or((0, None));
            Stamp {
                path: f.path.clone(),
                size,
                mtime,
                local_ns: None,
            }
        })
        .collect()
}

fn remote_path(dir: &str, path: &str) -> String {
    format!("{}/{path}", dir.trim_end_matches('/'))
}

/// Replays this site's journal: every entry, oldest first, until the catalogue stops
/// answering. Lines for the cycle report's failures: entries still waiting, and entry
/// files that cannot be read (each named with its line; left as they are).
pub async fn run(ctx: &Context, token: &CancellationToken) -> Vec<String> {
    let Some(journal) = &ctx.journal else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut waiting = 0usize;
    for stored in journal.entries() {
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                lines.push(e.to_string());
                continue;
            }
        };
        if token.is_cancelled() || waiting > 0 || ctx.dry_run {
            waiting += 1;
            continue;
        }
        if replay_one(ctx, journal, &stored).await.is_some() {
            waiting += 1;
        }
    }
    if waiting > 0 {
        let why = if ctx.dry_run {
            "dry run: not replayed"
        } else {
            "the catalogue or the destination does not answer yet"
        };
        lines.push(format!(
            "journal {}: {waiting} verified cop{} waiting to be recorded ({why})",
            journal.dir().display(),
            if waiting == 1 { "y" } else { "ies" }
        ));
    }
    lines
}

/// Replays one entry and removes it unless it must wait; `Some(why)` when it waits.
async fn replay_one(ctx: &Context, journal: &Journal, stored: &Stored) -> Option<String> {
    let bytes = SiteBytes { ctx };
    let copy = stored.entry.copy();
    let outcome = journal::replay(ctx.catalog.as_ref(), &bytes, &stored.entry, &ctx.owner).await;
    match &outcome {
        Replayed::Pending(why) => {
            tracing::info!(%copy, entry = %stored.path.display(), "journal entry waits: {why}");
            return Some(why.clone());
        }
        Replayed::Recorded => {
            tracing::info!(%copy, entry = %stored.path.display(), "recorded from the journal")
        }
        Replayed::AlreadyRecorded => {
            tracing::info!(%copy, entry = %stored.path.display(), "already recorded; journal entry removed")
        }
        Replayed::Dropped(why) => {
            tracing::warn!(%copy, entry = %stored.path.display(), "journal entry dropped: {why}")
        }
        Replayed::Failed(why) => {
            tracing::error!(%copy, entry = %stored.path.display(), "journal entry not recorded, the copy marked error: {why}")
        }
    }
    if let Err(e) = journal.remove(stored) {
        tracing::error!(%copy, "{e}");
    }
    None
}

/// Before `copy` is claimed (or reclaimed) again: a journal entry for it is replayed
/// first, so verified bytes are not copied again. `Some(why)`: leave the copy this time
/// (recorded now, or its record still waits).
pub(super) async fn before_claim(ctx: &Context, copy: &CopyRef) -> Option<String> {
    let journal = ctx.journal.as_ref()?;
    let pending = journal.pending(copy);
    if pending.is_empty() {
        return None;
    }
    for stored in &pending {
        if let Some(why) = replay_one(ctx, journal, stored).await {
            return Some(format!(
                "its verified copy waits in the journal to be recorded ({why})"
            ));
        }
    }
    Some("its journaled record was replayed".into())
}

/// The bytes of a journaled copy, where the site map puts them.
pub struct SiteBytes<'a> {
    ctx: &'a Context,
}

impl SiteBytes<'_> {
    /// The session to the copy's host when it is a peer reached over SFTP.
    async fn session(&self, host: &str) -> Result<Option<Arc<SshSession>>, String> {
        if host == self.ctx.site.name {
            return Ok(None);
        }
        let Some(peer) = self.ctx.map.site(host) else {
            return Err(format!("site {host} is not in the site map"));
        };
        match peer.method {
            TransferMethod::Sftp => self
                .ctx
                .sessions
                .session(peer)
                .await
                .map(Some)
                .map_err(|e| format!("site {host}: no SSH session: {e}")),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl Bytes for SiteBytes<'_> {
    async fn check(&self, entry: &Entry, run: &RunDoc) -> BytesCheck {
        if entry.tape.is_some() {
            // Written and verified by the tape backend; a receipt has no files to stamp.
            return BytesCheck::Unchanged;
        }
        let session = match self.session(&entry.host).await {
            Ok(s) => s,
            Err(why) => return BytesCheck::Unreachable(why),
        };
        let now = match &session {
            Some(s) => remote_stamps(s, &entry.location, &run.files).await,
            None => local_stamps(Path::new(&entry.location), &run.files),
        };
        let same = now.len() == entry.files.len()
            && now.iter().zip(&entry.files).all(|(a, b)| {
                a.path == b.path
                    && a.size == b.size
                    && a.mtime.is_some()
                    && a.mtime == b.mtime
                    && a.local_ns == b.local_ns
            });
        if same {
            return BytesCheck::Unchanged;
        }
        tracing::warn!(copy = %entry.copy(), "files changed since they were verified; hashing them again");
        let measured = match &session {
            Some(s) => match rehash_remote(s, &entry.location, &run.files).await {
                Err(Rehashed::Unreachable(why)) => return BytesCheck::Unreachable(why),
                Err(Rehashed::Bad(why)) => Err(why),
                Ok(sum) => Ok(sum),
            },
            None => {
                let place = Place::new(run, &entry.host, &entry.data_type);
                let dir = PathBuf::from(&entry.location);
                let files = run.files.clone();
                match tokio::task::spawn_blocking(move || {
                    super::rehash::rehash(&place, &dir, &files)
                })
                .await
                {
                    Ok(r) if r.bad.is_empty() => {
                        r.digest.ok_or_else(|| "no run digest".to_string())
                    }
                    Ok(r) => Err(r
                        .bad
                        .iter()
                        .map(|b| format!("{}: {}", b.path, b.why))
                        .collect::<Vec<_>>()
                        .join("; ")),
                    Err(e) => Err(format!("hashing: {e}")),
                }
            }
        };
        let expected = run.digest.as_deref();
        match measured {
            Ok(sum) if Some(sum.as_str()) == expected => BytesCheck::Reverified { checksum: sum },
            Ok(sum) => BytesCheck::Bad(format!(
                "run digest now {sum}, manifest {}",
                expected.unwrap_or("(none)")
            )),
            Err(why) => BytesCheck::Bad(why),
        }
    }
}

/// Why a remote re-hash gave no digest.
enum Rehashed {
    /// The connection failed: try again later.
    Unreachable(String),
    /// Files missing or different.
    Bad(String),
}

/// Reads every file back over SFTP and hashes it; the run digest, or which files differ.
async fn rehash_remote(
    session: &SshSession,
    dir: &str,
    files: &[FileEntry],
) -> Result<String, Rehashed> {
    let opts = CopyOptions::default();
    let mut hex = Vec::with_capacity(files.len());
    let mut bad = Vec::new();
    for f in files {
        match session.read_back(&remote_path(dir, &f.path), &opts).await {
            Ok(d) if i64::try_from(d.size).ok() == Some(f.size) && d.sha256_hex() == f.sha256 => {
                hex.push((f.path.clone(), d.size, d.sha256_hex()));
            }
            Ok(d) => bad.push(format!(
                "{}: {} bytes sha256 {}",
                f.path,
                d.size,
                d.sha256_hex()
            )),
            Err(
                e @ (TransportError::Connect { .. }
                | TransportError::ConnectionLost { .. }
                | TransportError::Ssh { .. }
                | TransportError::Timeout { .. }),
            ) => return Err(Rehashed::Unreachable(format!("{}: {e}", f.path))),
            Err(e) => bad.push(format!("{}: {e}", f.path)),
        }
    }
    if !bad.is_empty() {
        return Err(Rehashed::Bad(bad.join("; ")));
    }
    checksum::run_digest_of(&hex).map_err(|e| Rehashed::Bad(e.to_string()))
}
