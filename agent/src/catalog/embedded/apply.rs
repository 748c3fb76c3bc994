//! The conditional updates of the embedded back end, as pure functions on a [`RunDoc`].
//!
//! Each function checks the state the caller expects and, only if it holds, changes the
//! document and returns `true`. The back end calls them inside one `BEGIN IMMEDIATE`
//! transaction, so check and write are atomic across threads and processes. They mirror the
//! filters and updates of the MongoDB back end one for one.

use bson::DateTime;
use catalog_schema::{want_tag, CopyEntry, CopyStatus, Event, Lease, RunDoc};

use crate::catalog::{
    abandoned_event, after, reclaim_event, unleased_event, ClaimRequest, CopyRef, Manifest,
    OriginCopy, Transition,
};

/// Sets the manifest if the run has none; `false` if it has a different one.
pub(super) fn set_manifest(run: &mut RunDoc, m: &Manifest) -> bool {
    match &run.digest {
        Some(d) if *d != m.digest => false,
        _ => {
            run.files.clone_from(&m.files);
            run.size = Some(m.size);
            run.digest = Some(m.digest.clone());
            true
        }
    }
}

/// Adds the origin copy unless a copy of that type at that site exists.
pub(super) fn add_origin(run: &mut RunDoc, o: &OriginCopy, now: DateTime) -> bool {
    if run.copy(&o.copy.host, &o.copy.data_type).is_some() || !set_manifest(run, &o.manifest) {
        return false;
    }
    run.data.push(o.entry(now));
    unwant(run, &o.copy);
    run.push_event(o.event());
    true
}

/// Removes `copy` from the run's wants (it exists now).
fn unwant(run: &mut RunDoc, copy: &CopyRef) {
    let tag = want_tag(&copy.host, &copy.data_type);
    run.want.retain(|w| *w != tag);
}

/// Wants a copy of `data_type` at `site` unless any copy of it exists or it is wanted.
pub(super) fn request(run: &mut RunDoc, site: &str, data_type: &str) -> bool {
    let tag = want_tag(site, data_type);
    if run.copy(site, data_type).is_some() || run.want.contains(&tag) {
        return false;
    }
    run.want.push(tag);
    true
}

/// Adds a `transferring` copy with a lease unless any copy of that type at that site exists.
pub(super) fn claim(run: &mut RunDoc, r: &ClaimRequest, now: DateTime) -> Option<Lease> {
    if run.copy(&r.copy.host, &r.copy.data_type).is_some() {
        return None;
    }
    let c = r.entry(now);
    let lease = c.lease.clone();
    run.data.push(c);
    unwant(run, &r.copy);
    run.push_event(r.event());
    lease
}

/// Renews (`Some(expires)`) or releases (`None`) a lease held by `owner`.
pub(super) fn set_lease(
    run: &mut RunDoc,
    copy: &CopyRef,
    owner: &str,
    expires: Option<DateTime>,
) -> bool {
    let Some(c) = run.copy_mut(&copy.host, &copy.data_type) else {
        return false;
    };
    if !c.leased_by(owner) {
        return false;
    }
    c.lease = expires.map(|e| Lease {
        owner: owner.to_string(),
        expires: e,
    });
    true
}

/// Moves a copy from `t.from` to `t.to` if it is in `t.from` (and leased by `t.owner`).
/// The caller has checked that the transition is legal.
pub(super) fn transition(
    run: &mut RunDoc,
    copy: &CopyRef,
    t: &Transition,
    action: &str,
    now: DateTime,
) -> bool {
    let Some(c) = run.copy_mut(&copy.host, &copy.data_type) else {
        return false;
    };
    let owner_mismatch = t.from.is_leased() && t.owner.as_deref().is_some_and(|o| !c.leased_by(o));
    if c.status != t.from || owner_mismatch {
        return false;
    }
    c.status = t.to;
    c.updated_time = Some(now);
    if let Some(sum) = &t.checksum {
        c.checksum = Some(sum.clone());
        c.verified_time = Some(now);
    }
    c.record_failure(t.error.as_ref());
    if let Some(tape) = &t.tape {
        c.tape = Some(tape.clone());
    }
    c.lease = match (&t.owner, t.to.is_leased()) {
        (Some(owner), true) => Some(Lease {
            owner: owner.clone(),
            expires: after(now, t.lease_for),
        }),
        _ => None,
    };
    if t.to == CopyStatus::Transferring {
        c.attempts += 1;
    }
    run.push_event(t.event(copy, action));
    true
}

/// Sets checksum and verification time if the copy is in `expected` (leased by `owner`).
pub(super) fn record_checksum(
    run: &mut RunDoc,
    copy: &CopyRef,
    expected: CopyStatus,
    owner: Option<&str>,
    checksum: &str,
    at: DateTime,
) -> bool {
    let Some(c) = run.copy_mut(&copy.host, &copy.data_type) else {
        return false;
    };
    if c.status != expected || owner.is_some_and(|o| !c.leased_by(o)) {
        return false;
    }
    c.checksum = Some(checksum.to_string());
    c.verified_time = Some(at);
    c.updated_time = Some(DateTime::now());
    true
}

/// Takes over a `transferring` copy whose lease, held by `stale`, expired before `now`.
pub(super) fn reclaim(
    run: &mut RunDoc,
    copy: &CopyRef,
    stale: &str,
    new_owner: &str,
    expires: DateTime,
    now: DateTime,
) -> Option<Lease> {
    let c = run.copy_mut(&copy.host, &copy.data_type)?;
    if !c.leased_by(stale) || !c.is_stalled(now) {
        return None;
    }
    let lease = hand_over(c, new_owner, expires, now);
    run.push_event(reclaim_event(copy, stale, new_owner));
    Some(lease)
}

/// Gives copy `c` to `new_owner` until `expires`, counting an attempt.
fn hand_over(c: &mut CopyEntry, new_owner: &str, expires: DateTime, now: DateTime) -> Lease {
    let lease = Lease {
        owner: new_owner.to_string(),
        expires,
    };
    c.lease = Some(lease.clone());
    c.attempts += 1;
    c.updated_time = Some(now);
    lease
}

/// Takes over a `transferring` copy leased by `dead`, whatever the lease's expiry.
pub(super) fn reclaim_abandoned(
    run: &mut RunDoc,
    copy: &CopyRef,
    dead: &str,
    new_owner: &str,
    expires: DateTime,
    now: DateTime,
) -> Option<Lease> {
    let c = run.copy_mut(&copy.host, &copy.data_type)?;
    if c.status != CopyStatus::Transferring || !c.leased_by(dead) {
        return None;
    }
    let lease = hand_over(c, new_owner, expires, now);
    run.push_event(abandoned_event(copy, dead, new_owner));
    Some(lease)
}

/// Takes over a `transferring` copy with no lease, idle since before `idle_before`.
pub(super) fn reclaim_unleased(
    run: &mut RunDoc,
    copy: &CopyRef,
    idle_before: DateTime,
    new_owner: &str,
    expires: DateTime,
    now: DateTime,
) -> Option<Lease> {
    let c = run.copy_mut(&copy.host, &copy.data_type)?;
    if !crate::catalog::unleased_and_idle(c, idle_before) {
        return None;
    }
    let lease = hand_over(c, new_owner, expires, now);
    run.push_event(unleased_event(copy, new_owner));
    Some(lease)
}

/// Deletes a `removing` copy's entry.
pub(super) fn remove(run: &mut RunDoc, copy: &CopyRef, who: &str, why: &str) -> bool {
    let before = run.data.len();
    run.data
        .retain(|c| !(c.is(&copy.host, &copy.data_type) && c.status == CopyStatus::Removing));
    if run.data.len() == before {
        return false;
    }
    run.push_event(Event::copy(
        who,
        "removed",
        &copy.host,
        &copy.data_type,
        Some(why.to_string()),
    ));
    true
}
