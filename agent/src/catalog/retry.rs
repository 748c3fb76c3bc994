//! [`Retrying`]: a [`Catalog`] wrapper that retries transient errors with exponential
//! backoff. Back ends never retry by themselves; they report
//! [`CatalogError::is_retryable`] and this wrapper decides.
//!
//! A retried write may have been applied by the attempt that failed (the reply was lost).
//! That is resolved here for every conditional write on a copy: when a retry reports
//! [`Claim::Lost`] / [`Cas::Lost`] after an ambiguous failure, the wrapper reads the copy
//! back and reports success if the copy is in exactly the state the write produces (the
//! lease is ours; the status, checksum, error text and tape details are the ones written; a removed
//! entry is gone). A copy is only ever changed by the agent that holds it or, for its
//! `removing`/removal, by its own site's single agent, so that state is our write's.
//! `tests`: [`super::faults::Faulty`] loses replies on purpose.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bson::DateTime;

use catalog_schema::CopyEntry;

use super::{
    Cas, Catalog, CatalogError, Claim, ClaimRequest, CopyRef, CopyStatus, Heartbeat, LeaseHeld,
    NewRun, OriginCopy, Protector, Registered, RunDoc, RunFilter, RunKey, RunScope, RunSelector,
    Transition,
};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub initial: Duration,
    /// Upper bound of one delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 4,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before retry number `n` (1-based), with ±25 % jitter.
    fn delay(&self, n: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter)
    }
}

/// A catalogue that retries transient failures of `C`.
#[derive(Debug)]
pub struct Retrying<C> {
    inner: C,
    backoff: Backoff,
}

impl<C: Catalog> Retrying<C> {
    /// Wraps a back end.
    pub fn new(inner: C, backoff: Backoff) -> Self {
        Retrying { inner, backoff }
    }

    /// The wrapped back end.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Runs `f` until it succeeds, fails for good, or attempts run out. Returns the result
    /// and whether an earlier attempt failed in a way that may have applied a write.
    async fn run<T, F, Fut>(&self, op: &str, mut f: F) -> (Result<T, CatalogError>, bool)
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, CatalogError>> + Send,
    {
        let mut ambiguous = false;
        let mut n = 1;
        loop {
            match f().await {
                Err(e) if e.is_retryable() && n < self.backoff.attempts => {
                    let wait = self.backoff.delay(n);
                    tracing::warn!(
                        catalog = %self.inner.describe(),
                        "{op}: {e}; retry {n} in {wait:?}"
                    );
                    ambiguous = true;
                    n += 1;
                    tokio::time::sleep(wait).await;
                }
                other => return (other, ambiguous),
            }
        }
    }

    /// After an ambiguous failure, a `Lost` claim may be our own earlier win.
    async fn settle_claim(
        &self,
        result: (Result<Claim, CatalogError>, bool),
        copy: &CopyRef,
        owner: &str,
    ) -> Result<Claim, CatalogError> {
        match result {
            (Ok(Claim::Lost), true) => {
                let run = self.inner.get_run(&copy.run).await?;
                let lease = run
                    .as_ref()
                    .and_then(|r| r.copy(&copy.host, &copy.data_type))
                    .and_then(|c| c.lease.clone())
                    .filter(|l| l.owner == owner);
                Ok(match lease {
                    Some(l) => Claim::Won(LeaseHeld {
                        owner: l.owner,
                        expires: l.expires,
                    }),
                    None => Claim::Lost,
                })
            }
            (other, _) => other,
        }
    }

    /// After an ambiguous failure, a `Lost` write may be our own earlier success: reads the
    /// copy back and reports `Done` when `applied` recognises the state the write produces.
    async fn settle_cas(
        &self,
        result: (Result<Cas, CatalogError>, bool),
        copy: &CopyRef,
        applied: impl Fn(Option<&CopyEntry>) -> bool + Send,
    ) -> Result<Cas, CatalogError> {
        match result {
            (Ok(Cas::Lost), true) => {
                let run = self.inner.get_run(&copy.run).await?;
                let entry = run
                    .as_ref()
                    .and_then(|r| r.copy(&copy.host, &copy.data_type));
                if run.is_some() && applied(entry) {
                    tracing::info!(%copy, "an earlier attempt whose reply was lost applied the change");
                    Ok(Cas::Done)
                } else {
                    Ok(Cas::Lost)
                }
            }
            (other, _) => other,
        }
    }
}

/// Whether `entry` is what `t` leaves behind.
fn shows_transition(entry: Option<&CopyEntry>, t: &Transition) -> bool {
    let Some(e) = entry else { return false };
    let lease_ok = if t.to.is_leased() {
        e.lease.as_ref().map(|l| &l.owner) == t.owner.as_ref()
    } else {
        e.lease.is_none()
    };
    e.status == t.to
        && lease_ok
        && (t.checksum.is_none() || e.checksum == t.checksum)
        && match &t.error {
            Some(f) => e.error_class == Some(f.class) && e.last_error == Some(f.to_string()),
            None => e.error_class.is_none(),
        }
        && (t.tape.is_none() || e.tape == t.tape)
}

#[async_trait]
impl<C: Catalog> Catalog for Retrying<C> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn quarantine(&self) -> &super::Quarantine {
        self.inner.quarantine()
    }

    async fn register_run(&self, run: &NewRun) -> Result<Registered, CatalogError> {
        self.run("register", || self.inner.register_run(run))
            .await
            .0
    }

    async fn register_runs(&self, runs: &[NewRun]) -> Result<Vec<Registered>, CatalogError> {
        self.run("register many", || self.inner.register_runs(runs))
            .await
            .0
    }

    async fn add_origin_copy(&self, origin: &OriginCopy) -> Result<Cas, CatalogError> {
        let r = self
            .run("add origin copy", || self.inner.add_origin_copy(origin))
            .await;
        let digest = &origin.manifest.digest;
        self.settle_cas(r, &origin.copy, |e| {
            e.is_some_and(|e| e.checksum.as_ref() == Some(digest))
        })
        .await
    }

    async fn claim_copy(&self, req: &ClaimRequest) -> Result<Claim, CatalogError> {
        let r = self.run("claim", || self.inner.claim_copy(req)).await;
        self.settle_claim(r, &req.copy, &req.owner).await
    }

    async fn renew_lease(
        &self,
        copy: &CopyRef,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Cas, CatalogError> {
        self.run("renew lease", || {
            self.inner.renew_lease(copy, owner, lease_for)
        })
        .await
        .0
    }

    async fn release_lease(&self, copy: &CopyRef, owner: &str) -> Result<Cas, CatalogError> {
        self.run("release lease", || self.inner.release_lease(copy, owner))
            .await
            .0
    }

    async fn transition(&self, copy: &CopyRef, change: &Transition) -> Result<Cas, CatalogError> {
        let r = self
            .run("transition", || self.inner.transition(copy, change))
            .await;
        self.settle_cas(r, copy, |e| shows_transition(e, change))
            .await
    }

    async fn record_checksum(
        &self,
        copy: &CopyRef,
        expected: CopyStatus,
        owner: Option<&str>,
        checksum: &str,
        at: DateTime,
    ) -> Result<Cas, CatalogError> {
        let r = self
            .run("record checksum", || {
                self.inner
                    .record_checksum(copy, expected, owner, checksum, at)
            })
            .await;
        self.settle_cas(r, copy, |e| {
            e.is_some_and(|e| {
                e.status == expected
                    && e.checksum.as_deref() == Some(checksum)
                    && e.verified_time == Some(at)
            })
        })
        .await
    }

    async fn reclaim_stalled(
        &self,
        copy: &CopyRef,
        stale_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let r = self
            .run("reclaim", || {
                self.inner
                    .reclaim_stalled(copy, stale_owner, new_owner, lease_for)
            })
            .await;
        self.settle_claim(r, copy, new_owner).await
    }

    async fn reclaim_abandoned(
        &self,
        copy: &CopyRef,
        dead_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let r = self
            .run("reclaim abandoned", || {
                self.inner
                    .reclaim_abandoned(copy, dead_owner, new_owner, lease_for)
            })
            .await;
        self.settle_claim(r, copy, new_owner).await
    }

    async fn reclaim_unleased(
        &self,
        copy: &CopyRef,
        idle_before: DateTime,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let r = self
            .run("reclaim unleased", || {
                self.inner
                    .reclaim_unleased(copy, idle_before, new_owner, lease_for)
            })
            .await;
        self.settle_claim(r, copy, new_owner).await
    }

    async fn mark_removing(
        &self,
        copy: &CopyRef,
        from: CopyStatus,
        protected_by: &[Protector],
        who: &str,
        why: &str,
    ) -> Result<Cas, CatalogError> {
        let r = self
            .run("mark removing", || {
                self.inner.mark_removing(copy, from, protected_by, who, why)
            })
            .await;
        self.settle_cas(r, copy, |e| {
            e.is_some_and(|e| e.status == CopyStatus::Removing)
        })
        .await
    }

    async fn remove_copy(&self, copy: &CopyRef, who: &str, why: &str) -> Result<Cas, CatalogError> {
        let r = self
            .run("remove copy", || self.inner.remove_copy(copy, who, why))
            .await;
        self.settle_cas(r, copy, |e| e.is_none()).await
    }

    async fn request_copy(
        &self,
        run: &RunKey,
        site: &str,
        data_type: &str,
    ) -> Result<Cas, CatalogError> {
        self.run("request copy", || {
            self.inner.request_copy(run, site, data_type)
        })
        .await
        .0
    }

    async fn adopt_foreign_copies(&self, limit: u32) -> Result<u64, CatalogError> {
        self.run("adopt foreign copies", || {
            self.inner.adopt_foreign_copies(limit)
        })
        .await
        .0
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CatalogError> {
        self.run("heartbeat", || self.inner.heartbeat(beat)).await.0
    }

    async fn read_heartbeat(&self, site: &str) -> Result<Option<Heartbeat>, CatalogError> {
        self.run("read heartbeat", || self.inner.read_heartbeat(site))
            .await
            .0
    }

    async fn copies_by_status(&self, host: &str) -> Result<Vec<(CopyStatus, u64)>, CatalogError> {
        self.run("count copies", || self.inner.copies_by_status(host))
            .await
            .0
    }

    async fn runs_needing_copy_scoped(
        &self,
        dest: &str,
        data_type: &str,
        sources: &[String],
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("runs needing copy", || {
            self.inner
                .runs_needing_copy_scoped(dest, data_type, sources, scope, after, limit)
        })
        .await
        .0
    }

    async fn copies_in_status_scoped(
        &self,
        host: &str,
        status: CopyStatus,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("copies in status", || {
            self.inner
                .copies_in_status_scoped(host, status, scope, after, limit)
        })
        .await
        .0
    }

    async fn purge_candidates_scoped(
        &self,
        host: &str,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("purge candidates", || {
            self.inner
                .purge_candidates_scoped(host, scope, after, limit)
        })
        .await
        .0
    }

    async fn stalled_copies_scoped(
        &self,
        host: Option<&str>,
        now: DateTime,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("stalled copies", || {
            self.inner
                .stalled_copies_scoped(host, now, scope, after, limit)
        })
        .await
        .0
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunDoc>, CatalogError> {
        self.run("get run", || self.inner.get_run(key)).await.0
    }

    async fn find_runs(&self, sel: &RunSelector) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("find runs", || self.inner.find_runs(sel)).await.0
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunDoc>, CatalogError> {
        self.run("list runs", || self.inner.list_runs(filter))
            .await
            .0
    }
}
