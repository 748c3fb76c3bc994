//! *verify*: re-hash this site's copies in `verifying` and mark them `transferred` or
//! `error`.
//!
//! Copies reach `verifying` when a copy finished writing but its agent did not record the
//! result (it died between the two steps), when the audit task sends a `transferred` copy
//! back for a re-hash, and when the retry task suspects a source. For each one:
//!
//! 1. **take over** only a copy no live process is working on: no lease, an expired
//!    lease, this agent's own lease, or the lease of a process of this host that is gone
//!    ([`owner::is_dead_local_process`]: its pid is not alive or started at another time). A lease held by a live process or
//!    by another host, not expired, is left alone: a push holds its copy in `verifying`
//!    between its read-back and its record. The final update names the lease owner seen, so
//!    if anyone changed the copy meanwhile it is lost, not overwritten;
//! 2. **re-hash** every file of the manifest below the copy's directory (which must lie in
//!    the site's data directory for the type; symbolic links are never followed) with
//!    [`checksum::hash_file`], and compute the run digest over what was measured;
//! 3. **record**: `verifying → transferred` with the measured digest when every file and
//!    the digest match; otherwise `verifying → error` with `[checksum]`, both digests and
//!    the bad files named. The bad files are then removed so the re-copy starts clean, but
//!    only when another verified copy of the run exists to restore them from: the last
//!    copy of a run is never made smaller, even when it is damaged.
//!
//! Tape copies are verified by the tape task, not here. A copy's directory and files are
//! found through [`crate::datadir`] (its recorded location must be the run's own directory;
//! a refused one is flagged `[refused]` and never touched); `copies_in` and the re-hash are
//! shared with the purge and audit tasks.

use crate::metrics::Check;
use std::path::Path;

use bson::DateTime;
use catalog_schema::{CopyEntry, CopyStatus, Failure, FailureClass, RunDoc};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{self, Held, RecordError};
use super::owner;
use super::rehash::{rehash, Rehash};
use super::{copies_in, Context, Subject, TaskReport};
use crate::catalog::CopyRef;
use crate::datadir::{self, Place};

/// Runs the task.
pub async fn run(ctx: &Context, token: &CancellationToken) -> TaskReport {
    let mut report = TaskReport::default();
    let me = &ctx.site.name;
    let copies = match copies_in(ctx, me, CopyStatus::Verifying).await {
        Ok(copies) => copies,
        Err(e) => {
            report.fail(Subject::Whole, e);
            return report;
        }
    };
    for (run, c) in &copies {
        if token.is_cancelled() {
            break;
        }
        let subject = Subject::copy(run, &c.data_type, me);
        match verify_one(ctx, run, c).await {
            Ok(Verdict::Good(what)) => report.did(subject, what),
            Ok(Verdict::Skipped(why)) => report.skip(subject, why),
            Ok(Verdict::Bad(why)) | Err(why) => report.fail(subject, why),
        }
    }
    report
}

/// The outcome for one copy.
enum Verdict {
    /// Matched; recorded `transferred`.
    Good(String),
    /// Did not match; recorded `error`.
    Bad(String),
    /// Left alone.
    Skipped(String),
}

async fn verify_one(ctx: &Context, run: &RunDoc, c: &CopyEntry) -> Result<Verdict, String> {
    if c.is_tape() {
        return Ok(Verdict::Skipped(
            "a tape copy: verified by the tape task".into(),
        ));
    }
    let Some(digest) = run.digest.clone() else {
        return Ok(Verdict::Skipped("no manifest to verify against".into()));
    };
    if ctx
        .scheduler
        .holds(&CopyRef::new(run.key(), &c.host, &c.data_type))
    {
        return Ok(Verdict::Skipped("being copied by this agent".into()));
    }
    let lease_owner = match may_take(ctx, c, DateTime::now()) {
        Ok(owner) => owner,
        Err(why) => return Ok(Verdict::Skipped(why)),
    };
    let dir = match datadir::copy_dir(&ctx.site, run, c) {
        Ok(dir) => dir,
        Err(e) if e.is_refusal() => return Err(lifecycle::refuse(ctx, run, c, &e).await),
        Err(e) => return Err(e.to_string()),
    };
    if ctx.dry_run {
        return Ok(Verdict::Skipped(format!(
            "dry run: would re-hash {} files in {}",
            run.files.len(),
            dir.display()
        )));
    }
    let files = run.files.clone();
    let place = Place::new(run, &ctx.site.name, &c.data_type);
    let hash_dir = dir.clone();
    let rehash = tokio::task::spawn_blocking(move || rehash(&place, &hash_dir, &files))
        .await
        .map_err(|e| format!("re-hash task failed: {e}"))?;
    let copy = CopyRef::new(run.key(), &ctx.site.name, &c.data_type);
    // The updates name the lease owner seen: a holder that came back meanwhile wins.
    let held = Held::taken_over(ctx, copy, lease_owner);
    let changed = || Verdict::Skipped("changed by another agent while it was hashed".into());
    if rehash.bad.is_empty() && rehash.digest.as_deref() == Some(digest.as_str()) {
        let mut change = held.change(CopyStatus::Verifying, CopyStatus::Transferred);
        change.checksum = Some(digest.clone());
        change.reason = Some(format!(
            "re-hashed {} files at {}: run digest matches",
            run.files.len(),
            ctx.site.name
        ));
        return match held.step(&change).await {
            Ok(()) => Ok(Verdict::Good(format!(
                "{} files re-hashed in {}, digest {digest}",
                run.files.len(),
                dir.display()
            ))),
            Err(RecordError::Lost { .. }) => Ok(changed()),
            Err(e) => Err(e.to_string()),
        };
    }
    let restorable = verified_elsewhere(run, c, &digest).next().is_some();
    let failure = mismatch(
        &format!("verify at {}", ctx.site.name),
        &dir,
        &rehash,
        &digest,
        restorable,
    );
    ctx.metrics.checksum_mismatch(Check::Verify);
    ctx.metrics.failure(failure.class);
    let mut change = held.change(CopyStatus::Verifying, CopyStatus::Error);
    change.record_failure(&failure);
    match held.step(&change).await {
        Ok(()) => {}
        Err(RecordError::Lost { .. }) => return Ok(changed()),
        Err(e) => return Err(e.to_string()),
    }
    if restorable {
        let place = Place::new(run, &ctx.site.name, &c.data_type);
        let problems = remove_bad(&place, &dir, &rehash);
        if !problems.is_empty() {
            return Ok(Verdict::Bad(format!(
                "{failure}; but removing failed: {}",
                problems.join("; ")
            )));
        }
    }
    Ok(Verdict::Bad(failure.to_string()))
}

/// The `[checksum]` failure of a copy whose re-hash did not match: who found it (`what`),
/// where, both run digests, the bad files, and whether they are removed for the re-copy
/// (`restorable`: another verified copy exists).
pub(super) fn mismatch(
    what: &str,
    dir: &Path,
    rehash: &Rehash,
    digest: &str,
    restorable: bool,
) -> Failure {
    let bad: Vec<String> = rehash
        .bad
        .iter()
        .map(|b| format!("{} ({})", b.path, b.why))
        .collect();
    Failure::new(
        FailureClass::Checksum,
        format!(
            "{what}: {}: run digest measured {}, manifest {digest}; bad files: {}; {}",
            dir.display(),
            rehash.digest.as_deref().unwrap_or("(no file readable)"),
            if bad.is_empty() {
                "none (the digest differs)".to_string()
            } else {
                bad.join(", ")
            },
            if restorable {
                "bad files removed for the re-copy"
            } else {
                "bad files kept: no other verified copy of the run exists"
            }
        ),
    )
}

/// Removes the bad files a re-hash found below `dir`; returns what could not be removed.
pub(super) fn remove_bad(place: &Place, dir: &Path, rehash: &Rehash) -> Vec<String> {
    rehash
        .bad
        .iter()
        .filter_map(|b| datadir::remove_file_in(place, dir, &b.path).err())
        .map(|e| e.to_string())
        .collect()
}

/// The lease owner to name in the final update (`None`: the copy has no lease), or why the
/// copy must be left alone.
fn may_take(ctx: &Context, c: &CopyEntry, now: DateTime) -> Result<Option<String>, String> {
    let Some(lease) = &c.lease else {
        return Ok(None);
    };
    let taken = lease.expires < now
        || lease.owner == ctx.owner
        || owner::is_dead_local_process(&lease.owner, &ctx.owner);
    if taken {
        Ok(Some(lease.owner.clone()))
    } else {
        Err(format!(
            "held by {} until {} (a live agent is working on it)",
            lease.owner,
            lease.expires.try_to_rfc3339_string().unwrap_or_default()
        ))
    }
}

/// The other copies of `c`'s type that are `transferred` with the run's digest.
pub(super) fn verified_elsewhere<'r>(
    run: &'r RunDoc,
    c: &CopyEntry,
    digest: &str,
) -> impl Iterator<Item = &'r CopyEntry> + 'r {
    let (host, data_type, digest) = (c.host.clone(), c.data_type.clone(), digest.to_string());
    run.data.iter().filter(move |o| {
        o.data_type == data_type
            && o.host != host
            && o.status == CopyStatus::Transferred
            && o.checksum.as_deref() == Some(digest.as_str())
    })
}
