//! [`Faulty`]: a [`Catalog`] wrapper that injects failures, for tests of what sits above a
//! catalogue (the [`Retrying`](super::Retrying) wrapper, the tasks).
//!
//! Two kinds of fault, queued per operation name (the names [`Retrying`](super::Retrying)
//! logs: `"transition"`, `"claim"`, `"remove copy"`, …) and used up in order:
//! - [`Fault::FailBefore`]: the call fails with a retryable error and changes nothing (the
//!   server was unreachable);
//! - [`Fault::LoseReply`]: the call is applied, then fails with a retryable error (the
//!   connection dropped before the reply came back). A retry then finds the state already
//!   changed — the case a careless caller reads as a lost race.
//!
//! And one way to line up a race: [`Faulty::meet`] holds the next calls of an operation
//! until all of them have arrived, then lets them go at once (two agents that both read
//! the run before either writes).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bson::DateTime;

use super::{
    Cas, Catalog, CatalogError, Claim, ClaimRequest, CopyRef, CopyStatus, Heartbeat, NewRun,
    OriginCopy, Protector, Registered, RunDoc, RunFilter, RunKey, RunScope, RunSelector,
    Transition,
};

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without applying the call.
    FailBefore,
    /// Apply the call, then fail as if the reply was lost.
    LoseReply,
}

/// A catalogue whose calls fail as planned.
#[derive(Debug)]
pub struct Faulty<C> {
    inner: C,
    plan: Mutex<HashMap<&'static str, VecDeque<Fault>>>,
    /// Per operation: the barrier its next calls wait at, and how many calls still join it.
    meetings: Mutex<HashMap<&'static str, (Arc<tokio::sync::Barrier>, usize)>>,
}

impl<C: Catalog> Faulty<C> {
    /// Wraps a back end; no faults planned.
    pub fn new(inner: C) -> Self {
        Faulty {
            inner,
            plan: Mutex::new(HashMap::new()),
            meetings: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the next `parties` calls of `op` wait for each other: none goes on to the
    /// catalogue before all `parties` have been made.
    pub fn meet(&self, op: &'static str, parties: usize) {
        self.meetings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(op, (Arc::new(tokio::sync::Barrier::new(parties)), parties));
    }

    /// The barrier this call of `op` must wait at, if a meeting is planned.
    fn meeting(&self, op: &'static str) -> Option<Arc<tokio::sync::Barrier>> {
        let mut m = self.meetings.lock().unwrap_or_else(PoisonError::into_inner);
        let (barrier, left) = m.get_mut(op)?;
        let b = Arc::clone(barrier);
        *left = left.saturating_sub(1);
        if *left == 0 {
            m.remove(op);
        }
        Some(b)
    }

    /// Makes the next not yet faulted call of `op` fail with `fault`.
    pub fn inject(&self, op: &'static str, fault: Fault) {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(op)
            .or_default()
            .push_back(fault);
    }

    fn next_fault(&self, op: &'static str) -> Option<Fault> {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(op)
            .and_then(VecDeque::pop_front)
    }

    fn injected(&self, op: &str, fault: Fault) -> CatalogError {
        CatalogError::Unreachable {
            catalog: self.inner.describe(),
            op: op.to_string(),
            detail: format!("injected fault: {fault:?}"),
        }
    }

    async fn call<T, Fut>(&self, op: &'static str, f: Fut) -> Result<T, CatalogError>
    where
        Fut: Future<Output = Result<T, CatalogError>> + Send,
    {
        if let Some(barrier) = self.meeting(op) {
            barrier.wait().await;
        }
        match self.next_fault(op) {
            None => f.await,
            Some(Fault::FailBefore) => Err(self.injected(op, Fault::FailBefore)),
            Some(Fault::LoseReply) => {
                f.await?;
                Err(self.injected(op, Fault::LoseReply))
            }
        }
    }
}

#[async_trait]
impl<C: Catalog> Catalog for Faulty<C> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn quarantine(&self) -> &super::Quarantine {
        self.inner.quarantine()
    }

    async fn register_run(&self, run: &NewRun) -> Result<Registered, CatalogError> {
        self.call("register", self.inner.register_run(run)).await
    }

    async fn register_runs(&self, runs: &[NewRun]) -> Result<Vec<Registered>, CatalogError> {
        self.call("register many", self.inner.register_runs(runs))
            .await
    }

    async fn add_origin_copy(&self, origin: &OriginCopy) -> Result<Cas, CatalogError> {
        self.call("add origin copy", self.inner.add_origin_copy(origin))
            .await
    }

    async fn claim_copy(&self, req: &ClaimRequest) -> Result<Claim, CatalogError> {
        self.call("claim", self.inner.claim_copy(req)).await
    }

    async fn renew_lease(
        &self,
        copy: &CopyRef,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Cas, CatalogError> {
        self.call(
            "renew lease",
            self.inner.renew_lease(copy, owner, lease_for),
        )
        .await
    }

    async fn release_lease(&self, copy: &CopyRef, owner: &str) -> Result<Cas, CatalogError> {
        self.call("release lease", self.inner.release_lease(copy, owner))
            .await
    }

    async fn transition(&self, copy: &CopyRef, change: &Transition) -> Result<Cas, CatalogError> {
        self.call("transition", self.inner.transition(copy, change))
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
        let f = self
            .inner
            .record_checksum(copy, expected, owner, checksum, at);
        self.call("record checksum", f).await
    }

    async fn reclaim_stalled(
        &self,
        copy: &CopyRef,
        stale_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let f = self
            .inner
            .reclaim_stalled(copy, stale_owner, new_owner, lease_for);
        self.call("reclaim", f).await
    }

    async fn reclaim_abandoned(
        &self,
        copy: &CopyRef,
        dead_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let f = self
            .inner
            .reclaim_abandoned(copy, dead_owner, new_owner, lease_for);
        self.call("reclaim abandoned", f).await
    }

    async fn reclaim_unleased(
        &self,
        copy: &CopyRef,
        idle_before: DateTime,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let f = self
            .inner
            .reclaim_unleased(copy, idle_before, new_owner, lease_for);
        self.call("reclaim unleased", f).await
    }

    async fn mark_removing(
        &self,
        copy: &CopyRef,
        from: CopyStatus,
        protected_by: &[Protector],
        who: &str,
        why: &str,
    ) -> Result<Cas, CatalogError> {
        let f = self.inner.mark_removing(copy, from, protected_by, who, why);
        self.call("mark removing", f).await
    }

    async fn remove_copy(&self, copy: &CopyRef, who: &str, why: &str) -> Result<Cas, CatalogError> {
        self.call("remove copy", self.inner.remove_copy(copy, who, why))
            .await
    }

    async fn request_copy(
        &self,
        run: &RunKey,
        site: &str,
        data_type: &str,
    ) -> Result<Cas, CatalogError> {
        let f = self.inner.request_copy(run, site, data_type);
        self.call("request copy", f).await
    }

    async fn adopt_foreign_copies(&self, limit: u32) -> Result<u64, CatalogError> {
        self.call(
            "adopt foreign copies",
            self.inner.adopt_foreign_copies(limit),
        )
        .await
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CatalogError> {
        self.call("heartbeat", self.inner.heartbeat(beat)).await
    }

    async fn read_heartbeat(&self, site: &str) -> Result<Option<Heartbeat>, CatalogError> {
        self.call("read heartbeat", self.inner.read_heartbeat(site))
            .await
    }

    async fn copies_by_status(&self, host: &str) -> Result<Vec<(CopyStatus, u64)>, CatalogError> {
        self.call("count copies", self.inner.copies_by_status(host))
            .await
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
        let f = self
            .inner
            .runs_needing_copy_scoped(dest, data_type, sources, scope, after, limit);
        self.call("runs needing copy", f).await
    }

    async fn copies_in_status_scoped(
        &self,
        host: &str,
        status: CopyStatus,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let f = self
            .inner
            .copies_in_status_scoped(host, status, scope, after, limit);
        self.call("copies in status", f).await
    }

    async fn purge_candidates_scoped(
        &self,
        host: &str,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.call(
            "purge candidates",
            self.inner
                .purge_candidates_scoped(host, scope, after, limit),
        )
        .await
    }

    async fn stalled_copies_scoped(
        &self,
        host: Option<&str>,
        now: DateTime,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let f = self
            .inner
            .stalled_copies_scoped(host, now, scope, after, limit);
        self.call("stalled copies", f).await
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunDoc>, CatalogError> {
        self.call("get run", self.inner.get_run(key)).await
    }

    async fn find_runs(&self, sel: &RunSelector) -> Result<Vec<RunDoc>, CatalogError> {
        self.call("find runs", self.inner.find_runs(sel)).await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunDoc>, CatalogError> {
        self.call("list runs", self.inner.list_runs(filter)).await
    }
}
