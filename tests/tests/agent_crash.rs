//! Crash trials (issue 5, "Crashes"): the real `ferry` binary is killed with SIGKILL at a
//! random moment of a copy, a verification or a purge, then restarted until a cycle finds
//! nothing left to do; the invariants are then checked with code independent of the agent.
//!
//! Each trial builds its own world: an embedded catalogue, the origin `daq` pushing to
//! `mirror` (both `local`), purge enabled at `daq` (`min_copies` 1, retention 200 ms, high-water
//! mark 1 %: every run may go once the mirror holds a verified copy), a bandwidth limit so a
//! copy lasts long enough to be cut in the middle, and two runs of several files (an empty
//! one, a small one, a few MiB ones) whose bytes come from the trial's seeded generator.
//!
//! - **copy**: the runs registered, `ferry --once --host daq` (push, then purge) is killed
//!   during its cycle;
//! - **verify**: both runs copied, then the mirror copies are sent back to `verifying` (as
//!   the audit task does) and `ferry --once --host mirror` is killed while it re-hashes;
//! - **purge**: both runs copied, then `ferry --once --host daq --task purge` is killed
//!   while it removes the origin copies.
//!
//! Right after each kill, and again at the end, the test checks (files hashed with the
//! `sha2` crate against the hashes it recorded when it wrote them; the catalogue read with
//! `ferry runs list --json`): every `transferred` copy's files hash to the manifest; an
//! origin file is gone only when the mirror holds a `transferred` copy whose files hash
//! right. At the end also: every run's mirror copy is `transferred` with the run digest, the
//! origin copies are purged, no copy is left `transferring`, `verifying`, `removing` or
//! `error`, and no `*.part` file exists anywhere.
//!
//! The seed is printed; `FERRY_CRASH_SEED=N` replays it, `FERRY_CRASH_TRIALS=N` sets the
//! trials per phase (default 7, so 21 in all). `deploy/crash-trials.sh` runs 100+ and sums
//! the `crash-summary` lines. The world, the invariants and the trial loop are shared with
//! the same trials over SFTP (`agent_crash_sftp.rs`) in `crash_common`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry::catalog::embedded::EmbeddedCatalog;
use rand::rngs::StdRng;
use rand::SeedableRng;

mod crash_common;
use crash_common::{origin_purge, text, trials, Phase, World};

/// Both sites `local`, in one temporary directory; the embedded catalogue.
fn world(rng: &mut StdRng, _trial: Option<u64>) -> World {
    World::new(
        rng,
        |dir| (dir.join("daq/raw"), dir.join("mirror/raw")),
        None,
        [
            serde_json::json!({
                "method": "local", "origin": true,
                "completion": { "marker": "RUN_COMPLETE" },
                "push_to": ["mirror"],
                "purge": origin_purge(),
                "limits": { "bandwidth_per_link": "20MB/s", "lease": "10m" } }),
            serde_json::json!({ "method": "local" }),
        ],
    )
}

/// The embedded catalogue opened in-process, with a runtime to drive it.
fn catalog(w: &World) -> (tokio::runtime::Runtime, EmbeddedCatalog) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cat = rt
        .block_on(EmbeddedCatalog::open(&w.path("catalog.sqlite")))
        .unwrap();
    (rt, cat)
}

/// Sends the mirror copies back to `verifying` (no lease), as the audit task does.
fn to_verifying(w: &World) {
    let (rt, cat) = catalog(w);
    rt.block_on(async {
        use ferry::catalog::{Cas, Catalog, CopyRef, CopyStatus, RunKey, Transition};
        for run in w.runs() {
            let key = RunKey::new(
                run["detector"].as_str().unwrap(),
                run["number"].as_i64().unwrap(),
            );
            let copy = CopyRef::new(key, "mirror", "raw");
            let mut t = Transition::new(
                CopyStatus::Transferred,
                CopyStatus::Verifying,
                None,
                "crash-test",
            );
            t.reason = Some("re-hash requested by the crash test".into());
            assert_eq!(cat.transition(&copy, &t).await.unwrap(), Cas::Done);
        }
    });
}

/// Regression: a killed push's copy stayed `transferring` until its 10 min lease expired.
#[test]
fn restarted_agent_takes_back_a_killed_push_without_waiting_for_the_lease() {
    let w = world(&mut StdRng::seed_from_u64(7), None);
    let out = w.cycle("daq", &["--task", "register"]);
    assert!(out.status.success(), "{}", text(&out));
    // The mirror copy claimed by a daq agent of this host that is gone, lease 10 min.
    let host = gethostname::gethostname().to_string_lossy().to_string();
    let dead = format!("daq@{host}:4194305/1/0000dead");
    let (rt, cat) = catalog(&w);
    rt.block_on(async {
        use ferry::catalog::{Catalog, Claim, ClaimRequest, CopyRef, RunKey};
        let detector = w.runs()[0]["detector"].as_str().unwrap().to_string();
        let claim = ClaimRequest {
            copy: CopyRef::new(RunKey::new(&detector, 1), "mirror", "raw"),
            location: w.root("mirror").join("Run000001").display().to_string(),
            protocol: "local".into(),
            owner: dead.clone(),
            lease_for: Duration::from_secs(600),
        };
        assert!(matches!(
            cat.claim_copy(&claim).await.unwrap(),
            Claim::Won(_)
        ));
    });
    let out = w.cycle("daq", &["--task", "retry", "--task", "push"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.dead_holder_reclaims(), 1, "{}", text(&out));
    let runs = w.runs();
    for r in &runs {
        let mirror = r["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["host"] == "mirror");
        assert_eq!(mirror.unwrap()["status"], "transferred", "{r:#}");
    }
    assert!(w.check_always().is_empty(), "{:?}", w.check_always());
}

/// Registered first (hashing the origin takes most of a first cycle), so the kills land in
/// the copy; then the cycle that pushes and purges.
fn prepare_copy(w: &World) -> (&'static str, &'static [&'static str]) {
    w.cycle_ok("daq", &["--task", "register"]);
    ("daq", &[])
}

/// Both runs copied and sent back to `verifying`; the mirror's cycle re-hashes them.
fn prepare_verify(w: &World) -> (&'static str, &'static [&'static str]) {
    w.copied("transferred");
    to_verifying(w);
    ("mirror", &[])
}

/// Both runs copied and past the 200 ms retention; the origin's purge.
fn prepare_purge(w: &World) -> (&'static str, &'static [&'static str]) {
    w.copied("transferred");
    std::thread::sleep(Duration::from_millis(250));
    ("daq", &["--task", "purge"])
}

#[test]
fn kill_during_copy_then_restart_keeps_every_invariant() {
    trials(&Phase {
        name: "Copy",
        salt: 0,
        world: &world,
        prepare: &prepare_copy,
    });
}

#[test]
fn kill_during_verify_then_restart_keeps_every_invariant() {
    trials(&Phase {
        name: "Verify",
        salt: 1,
        world: &world,
        prepare: &prepare_verify,
    });
}

#[test]
fn kill_during_purge_then_restart_keeps_every_invariant() {
    trials(&Phase {
        name: "Purge",
        salt: 2,
        world: &world,
        prepare: &prepare_purge,
    });
}
