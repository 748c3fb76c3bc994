//! The lifecycle of a copy this agent works on, in one place:
//!
//! ```text
//! take       claim a new copy, reclaim a stalled or abandoned one, take an unleased one,
//!            or move this site's own failed copy error → transferring (one conditional
//!            update each: exactly one agent wins); a copy whose verified record waits in
//!            the journal is replayed instead, never taken to be copied again
//! work       the caller's work (a transfer, a tape write, a retrieval) while the lease is
//!            renewed every third of it; a lost lease ends the work
//! record     conditional transitions in order (transferring → verifying → transferred);
//!            when the catalogue does not answer, the rest of the record goes to the
//!            journal (`replay`) and is replayed when it answers again
//! fail       → error with the failure's class (best effort: else the lease runs out and
//!            the retry task reclaims the copy)
//! ```
//!
//! Copy (push, pull and retry), tape, recall and verify build on [`Held`]; this module
//! builds on no task: only on the catalogue, the journal's side of the tasks (`replay`) and
//! the failure classes of the catalogue schema.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bson::DateTime;
use catalog_schema::{can_transition, CopyEntry, CopyStatus, Failure, FailureClass, RunDoc};

use super::{replay, Context};
use crate::catalog::{Cas, CatalogError, Claim, ClaimRequest, CopyRef, Protocol, Transition};
use crate::datadir::PathError;
use crate::journal::Stamp;
use crate::tape::TapeError;
use crate::transport::TransportError;

/// Why recording a copy's progress failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A conditional update found the copy changed: another agent took it over (our lease
    /// expired?) or an operator moved it.
    #[error("{copy}: {from} -> {to} lost: the copy changed under us (lease expired?)")]
    Lost {
        /// The copy.
        copy: CopyRef,
        /// The state the update expected.
        from: CopyStatus,
        /// The state it wanted.
        to: CopyStatus,
    },
    /// Renewing the lease found it held by another agent: the work was stopped.
    #[error("{copy}: lost the lease while working (another agent took the copy over)")]
    LeaseLost {
        /// The copy.
        copy: CopyRef,
    },
    /// The catalogue failed (and no journal took the record).
    #[error("{copy}: {source}")]
    Catalog {
        /// The copy.
        copy: CopyRef,
        /// The catalogue's error.
        #[source]
        source: CatalogError,
    },
    /// The bytes were verified but the catalogue did not take the record; it is kept in
    /// the journal ([`crate::journal`]) and replayed when the catalogue answers.
    #[error("{copy}: verified, but the catalogue did not take the record ({source}); kept in the journal {}, replayed when the catalogue answers", entry.display())]
    Journaled {
        /// The copy.
        copy: CopyRef,
        /// The journal entry.
        entry: PathBuf,
        /// The catalogue's error.
        #[source]
        source: CatalogError,
    },
}

impl RecordError {
    /// Whether trying the same again later may succeed: a catalogue that did not answer (a
    /// journaled record is replayed by itself); not a lost race.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Catalog { source, .. } => source.is_retryable(),
            Self::Journaled { .. } => true,
            Self::Lost { .. } | Self::LeaseLost { .. } => false,
        }
    }

    /// How the retry task treats the copy this failure leaves.
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Catalog { source, .. } if source.is_retryable() => FailureClass::Catalog,
            Self::Catalog { .. } => FailureClass::Fatal,
            Self::Journaled { .. } => FailureClass::Catalog,
            Self::Lost { .. } | Self::LeaseLost { .. } => FailureClass::Retryable,
        }
    }

    /// Whether the record waits in the journal: the copy is then left as it is (no
    /// failure recorded) for the replay.
    pub fn is_journaled(&self) -> bool {
        matches!(self, Self::Journaled { .. })
    }
}

/// How a copy is taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Take {
    /// A new copy (none at the destination, or one only wanted): [`Catalog::claim_copy`].
    ///
    /// [`Catalog::claim_copy`]: crate::catalog::Catalog::claim_copy
    Claim {
        /// Its directory (or tape reference).
        location: String,
        /// How its bytes get there.
        protocol: Protocol,
    },
    /// A `transferring` copy whose lease held by `stale` expired.
    Stalled {
        /// The holder seen.
        stale: String,
    },
    /// A `transferring` copy whose holder `stale`, an agent of this site on this host, is
    /// gone (or is this agent, which left it in an earlier cycle); lease not expired.
    Abandoned {
        /// The holder seen.
        stale: String,
    },
    /// A `transferring` copy with no lease (cax's pending copies), idle since before
    /// `idle_before`.
    Unleased {
        /// The idle limit.
        idle_before: DateTime,
    },
    /// This site's own failed copy: `error → transferring`.
    Failed {
        /// Why, for the audit trail.
        reason: String,
    },
}

impl Take {
    /// Why the copy was left when another agent won (for the report).
    pub fn lost(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "claimed by another agent",
            Self::Stalled { .. } | Self::Abandoned { .. } | Self::Unleased { .. } => {
                "reclaimed by another agent"
            }
            Self::Failed { .. } => "taken by another agent",
        }
    }
}

/// What taking a copy gave.
pub enum Taken<'c> {
    /// This agent holds it now.
    Held(Held<'c>),
    /// Another agent took it first, or it changed meanwhile.
    Lost,
    /// Its verified bytes' record waited in the journal: replayed (or still waiting), the
    /// copy is not taken to be copied again. Why, for the report.
    Journaled(String),
}

/// A copy this agent holds (or has taken over, for verify): the conditional updates name
/// its lease owner, and the lease is renewed while [`Held::work`] runs.
pub struct Held<'c> {
    ctx: &'c Context,
    copy: CopyRef,
    lease: Duration,
    /// The lease owner the updates expect: this agent for a claim; for a take-over the
    /// owner seen (`None`: no lease).
    owner: Option<String>,
}

impl<'c> Held<'c> {
    /// Takes `copy` as `how` says, in one conditional update, with a lease of `lease`.
    pub async fn take(
        ctx: &'c Context,
        copy: CopyRef,
        how: Take,
        lease: Duration,
    ) -> Result<Taken<'c>, RecordError> {
        if let Some(why) = replay::before_claim(ctx, &copy).await {
            return Ok(Taken::Journaled(why));
        }
        let catalog = |source| RecordError::Catalog {
            copy: copy.clone(),
            source,
        };
        let me = ctx.owner.as_str();
        let won = match how {
            Take::Claim { location, protocol } => {
                let claim = ClaimRequest {
                    copy: copy.clone(),
                    location,
                    protocol,
                    owner: ctx.owner.clone(),
                    lease_for: lease,
                };
                let claimed = ctx.catalog.claim_copy(&claim).await.map_err(catalog)?;
                matches!(claimed, Claim::Won(_))
            }
            Take::Stalled { stale } => {
                let taken = ctx.catalog.reclaim_stalled(&copy, &stale, me, lease).await;
                matches!(taken.map_err(catalog)?, Claim::Won(_))
            }
            Take::Abandoned { stale } => {
                let taken = ctx
                    .catalog
                    .reclaim_abandoned(&copy, &stale, me, lease)
                    .await;
                matches!(taken.map_err(catalog)?, Claim::Won(_))
            }
            Take::Unleased { idle_before } => {
                let taken = ctx
                    .catalog
                    .reclaim_unleased(&copy, idle_before, me, lease)
                    .await;
                matches!(taken.map_err(catalog)?, Claim::Won(_))
            }
            Take::Failed { reason } => {
                let mut change =
                    Transition::new(CopyStatus::Error, CopyStatus::Transferring, Some(me), me);
                change.lease_for = lease;
                change.reason = Some(reason);
                let moved = ctx.catalog.transition(&copy, &change).await;
                moved.map_err(catalog)? == Cas::Done
            }
        };
        Ok(if won {
            Taken::Held(Held {
                ctx,
                copy,
                lease,
                owner: Some(ctx.owner.clone()),
            })
        } else {
            Taken::Lost
        })
    }

    /// A copy taken over without a claim (verify: a copy no live process works on); the
    /// updates name `owner`, the lease owner seen (`None`: the copy has no lease).
    pub fn taken_over(ctx: &'c Context, copy: CopyRef, owner: Option<String>) -> Self {
        let lease = ctx.site.limits.lease;
        Held {
            ctx,
            copy,
            lease,
            owner,
        }
    }

    /// The copy.
    pub fn copy(&self) -> &CopyRef {
        &self.copy
    }

    /// A transition of this copy, naming its lease owner, by this agent.
    pub fn change(&self, from: CopyStatus, to: CopyStatus) -> Transition {
        let mut change = Transition::new(from, to, self.owner.as_deref(), &self.ctx.owner);
        change.lease_for = self.lease;
        change
    }

    /// Runs `work` while renewing the lease every third of it. A lease found held by
    /// another agent stops the work ([`RecordError::LeaseLost`]); a catalogue that does
    /// not answer a renewal is only logged (the next renewal tries again).
    pub async fn work<T, E: From<RecordError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let mut work = std::pin::pin!(work);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.tick().await;
        let copy = &self.copy;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renew.tick() => {
                    match self.ctx.catalog.renew_lease(copy, &self.ctx.owner, self.lease).await {
                        Ok(Cas::Done) => {}
                        Ok(Cas::Lost) => {
                            return Err(RecordError::LeaseLost { copy: copy.clone() }.into())
                        }
                        Err(e) => tracing::warn!(%copy, "cannot renew the lease: {e}"),
                    }
                }
            }
        }
    }

    /// One conditional update; finding the copy changed is [`RecordError::Lost`].
    pub async fn step(&self, change: &Transition) -> Result<(), RecordError> {
        match self.ctx.catalog.transition(&self.copy, change).await {
            Ok(Cas::Done) => Ok(()),
            Ok(Cas::Lost) => Err(self.lost(change)),
            Err(source) => Err(RecordError::Catalog {
                copy: self.copy.clone(),
                source,
            }),
        }
    }

    /// The record of verified bytes: `steps` in order. When the catalogue does not answer
    /// one of them, the rest of the record (from the state that step expected to the last
    /// step's, with its digest, reason and tape details) goes to the journal with `stamps`
    /// (the files as verified at `location`; awaited only then), and the copy is left as
    /// it is for the replay: [`RecordError::Journaled`].
    pub async fn record(
        &self,
        steps: &[&Transition],
        location: &str,
        stamps: impl Future<Output = Vec<Stamp>>,
    ) -> Result<(), RecordError> {
        let copy = &self.copy;
        for step in steps {
            let source = match self.ctx.catalog.transition(copy, step).await {
                Ok(Cas::Done) => continue,
                Ok(Cas::Lost) => return Err(self.lost(step)),
                Err(source) => source,
            };
            if !source.is_retryable() {
                return Err(RecordError::Catalog {
                    copy: copy.clone(),
                    source,
                });
            }
            let last = steps.last().copied().unwrap_or(step);
            let record = replay::Record {
                copy,
                location,
                from: step.from,
                to: last.to,
                checksum: last.checksum.as_deref().unwrap_or_default(),
                reason: last.reason.as_deref().unwrap_or_default(),
                lease: self.lease,
                tape: last.tape.as_ref(),
                files: stamps.await,
            };
            return Err(match replay::keep(self.ctx, record, &source) {
                Ok(entry) => RecordError::Journaled {
                    copy: copy.clone(),
                    entry,
                    source,
                },
                Err(_) => RecordError::Catalog {
                    copy: copy.clone(),
                    source,
                },
            });
        }
        Ok(())
    }

    /// `transferring → verifying → transferred` with the digest `measured` at the copy and
    /// `reason` for the audit trail; `tape` (a tape copy's `{ backend, reference, volumes,
    /// verified }`) is set by the last step, in the same conditional update. Journaled as
    /// [`Held::record`] says.
    pub async fn finish(
        &self,
        measured: &str,
        reason: String,
        tape: Option<bson::Document>,
        location: &str,
        stamps: impl Future<Output = Vec<Stamp>>,
    ) -> Result<(), RecordError> {
        let mut to_verifying = self.change(CopyStatus::Transferring, CopyStatus::Verifying);
        to_verifying.checksum = Some(measured.to_owned());
        let mut to_done = self.change(CopyStatus::Verifying, CopyStatus::Transferred);
        to_done.checksum = Some(measured.to_owned());
        to_done.reason = Some(reason);
        to_done.tape = tape;
        self.record(&[&to_verifying, &to_done], location, stamps)
            .await
    }

    /// Gives the lease up (a copy left `verifying` for the destination's own agent). If
    /// the catalogue does not answer, the lease runs out by itself.
    pub async fn release(&self) {
        if let Err(e) = self
            .ctx
            .catalog
            .release_lease(&self.copy, &self.ctx.owner)
            .await
        {
            tracing::warn!(copy = %self.copy, "cannot release the lease: {e}");
        }
    }

    /// Records the failed copy as `error` (from `transferring`), the classified text in
    /// `last_error` and in the audit trail (where the retry task counts checksum
    /// mismatches). Best effort: if this fails too, the lease expires and the retry task
    /// reclaims the copy.
    pub async fn fail(&self, why: &Failure) {
        self.ctx.metrics.failure(why.class);
        let mut change = self.change(CopyStatus::Transferring, CopyStatus::Error);
        change.record_failure(why);
        if let Err(e) = self.ctx.catalog.transition(&self.copy, &change).await {
            tracing::warn!(copy = %self.copy, "cannot record the failure ({why}): {e}");
        }
    }

    fn lost(&self, change: &Transition) -> RecordError {
        RecordError::Lost {
            copy: self.copy.clone(),
            from: change.from,
            to: change.to,
        }
    }
}

/// The class of a transport failure.
pub fn class_of_transport(e: &TransportError) -> FailureClass {
    match e {
        TransportError::ChecksumMismatch { .. } => FailureClass::Checksum,
        TransportError::UnsafePath { .. } => FailureClass::Refused,
        e if e.is_retryable() => FailureClass::Retryable,
        _ => FailureClass::Fatal,
    }
}

/// The class of a failed tape operation: the tape side holding other bytes is a checksum
/// failure; a drive, a gateway or a command that may answer later is retryable.
pub fn class_of_tape(e: &TapeError) -> FailureClass {
    match e {
        TapeError::Mismatch { .. } | TapeError::Checksum { .. } => FailureClass::Checksum,
        e if e.is_retryable() => FailureClass::Retryable,
        _ => FailureClass::Fatal,
    }
}

/// Flags a copy whose path was refused ([`crate::datadir`]: a recorded location that is not
/// the run's own directory, a planted link): `STATUS → error` with a `[refused]` failure
/// naming the run, the site and the paths, in one conditional update on the status seen.
/// Nothing on disk is touched. Returns the text for the task report (and logs it loudly).
pub async fn refuse(ctx: &Context, run: &RunDoc, c: &CopyEntry, e: &PathError) -> String {
    let copy = CopyRef::new(run.key(), &c.host, &c.data_type);
    tracing::error!(site = %ctx.site.name, run = run.number, copy = %copy, "{e}");
    let why = Failure::new(FailureClass::Refused, e.to_string());
    if ctx.dry_run {
        return format!("{e} (dry run: not flagged)");
    }
    if !can_transition(c.status, CopyStatus::Error) {
        return format!("{e} (left {}, not flagged)", c.status);
    }
    let mut change = Transition::new(c.status, CopyStatus::Error, None, &ctx.owner);
    change.record_failure(&why);
    match ctx.catalog.transition(&copy, &change).await {
        Ok(Cas::Done) => format!("{e}; flagged {} -> error [refused]", c.status),
        Ok(Cas::Lost) => format!("{e} (the copy changed meanwhile; not flagged)"),
        Err(err) => format!("{e} (cannot flag it: {err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog_schema::RunKey;

    fn copy() -> CopyRef {
        CopyRef::new(RunKey::new("tpc", 7), "mirror", "raw")
    }

    #[test]
    fn a_lost_race_is_not_retried_and_a_journaled_record_waits() {
        let lost = RecordError::LeaseLost { copy: copy() };
        assert!(!lost.is_retryable() && !lost.is_journaled());
        assert_eq!(lost.class(), FailureClass::Retryable);
        let text = lost.to_string();
        assert!(text.contains("lost the lease"), "{text}");
        let moved = RecordError::Lost {
            copy: copy(),
            from: CopyStatus::Transferring,
            to: CopyStatus::Verifying,
        };
        assert!(
            moved.to_string().contains("transferring -> verifying lost"),
            "{moved}"
        );
    }
}
