//! The verify, retry, purge and heartbeat tasks on real files, the `local` method and the
//! embedded catalogue.
//!
//! Most tests drive the tasks in-process (`ferry::tasks::*::run`) with a [`Context`] built
//! from a real site map, so a test can set what the validator forbids (`min_copies: 0`) and
//! run two agents of one site at once; the purge dry run goes through the `ferry` binary as
//! an operator runs it. Runs are registered and copied by the real register and push tasks.
//!
//! State in the past (a copy that failed an hour ago, a verification 40 days old, a run
//! from last week, five attempts used) is written **straight into the embedded SQLite
//! file** ([`World::edit_run`]: the BSON document in `runs.doc` decoded, changed, written
//! back), because the `Catalog` API only ever writes "now". Only fields the `copies` index
//! table does not mirror are edited that way (times, checksums, attempts); every status
//! change goes through the `Catalog` API.

// Helpers outside #[test] functions may unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::faults::Faulty;
use ferry::catalog::{
    Cas, Claim, ClaimRequest, CopyRef, CopyStatus, Failure, FailureClass, Manifest, NewRun,
    OriginCopy, RunKey, Transition,
};
use ferry::config::PurgePolicy;
use ferry::daemon::CancellationToken;
use ferry::tasks::{self, retry, Context, RunScope, Task};

use common::*;

/// Sends the mirror's transferred copy back to `verifying` as the audit task does, under a
/// lease of `lease_owner`.
async fn to_verifying(w: &World, number: i64, lease_owner: &str) {
    let mut t = Transition::new(
        CopyStatus::Transferred,
        CopyStatus::Verifying,
        Some(lease_owner),
        lease_owner,
    );
    t.reason = Some("audit re-hash".into());
    assert_eq!(
        w.catalog
            .transition(&mirror_copy(number), &t)
            .await
            .unwrap(),
        Cas::Done
    );
}

// ---------------------------------------------------------------- verify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_marks_a_good_copy_transferred_and_leaves_a_live_lease_alone() {
    let w = World::new().await;
    let run = w.registered_and_pushed(1).await;
    let digest = run.digest.clone().unwrap();
    let t = CancellationToken::new();

    // Held by a live process (this one, as another site's agent): not taken.
    to_verifying(&w, 1, &owner("daq", std::process::id())).await;
    let r = tasks::verify::run(&w.ctx("mirror"), &t).await;
    assert!(r.done().is_empty(), "{}", joined(&r));
    assert!(r.skipped()[0].contains("held by daq@"), "{}", joined(&r));
    assert_eq!(
        copy_at(&w.get(1).await, "mirror").status,
        CopyStatus::Verifying
    );

    // Its process gone (same host, dead pid): taken over and re-hashed.
    let mut back = Transition::new(CopyStatus::Verifying, CopyStatus::Transferred, None, "test");
    back.checksum = Some(digest.clone());
    assert_eq!(
        w.catalog.transition(&mirror_copy(1), &back).await.unwrap(),
        Cas::Done
    );
    to_verifying(&w, 1, &owner("audit", DEAD_PID)).await;
    let before = copy_at(&w.get(1).await, "mirror").verified_time.unwrap();
    let r = tasks::verify::run(&w.ctx("mirror"), &t).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    let after = w.get(1).await;
    let c = copy_at(&after, "mirror");
    assert_eq!(c.status, CopyStatus::Transferred);
    assert_eq!(c.checksum.as_deref(), Some(digest.as_str()));
    assert!(c.verified_time.unwrap() >= before);
    assert!(c.lease.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_flipped_byte_is_error_with_both_digests_and_the_bad_file_removed() {
    let w = World::new().await;
    let run = w.registered_and_pushed(2).await;
    let digest = run.digest.clone().unwrap();
    let bad = w.path("mirror/raw/Run000002/sub/b.evio");
    let good = w.path("mirror/raw/Run000002/a.evio");
    flip_byte(&bad, 3);
    to_verifying(&w, 2, &owner("audit", DEAD_PID)).await;

    let r = tasks::verify::run(&w.ctx("mirror"), &w_token()).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    let after = w.get(2).await;
    let c = copy_at(&after, "mirror");
    assert_eq!(c.status, CopyStatus::Error);
    let err = c.last_error.clone().unwrap();
    assert!(err.starts_with("[checksum] "), "{err}");
    assert!(err.contains(&format!("manifest {digest}")), "{err}");
    assert_ne!(measured_digest(&err), digest);
    assert!(err.contains("sub/b.evio"), "{err}");
    assert!(!bad.exists(), "the bad file is still there");
    assert!(good.exists(), "a good file was removed");
    // The origin is untouched.
    assert_eq!(copy_at(&after, "daq").status, CopyStatus::Transferred);
    assert!(w.path("daq/raw/Run000002/sub/b.evio").exists());
}

fn w_token() -> CancellationToken {
    CancellationToken::new()
}

// ---------------------------------------------------------------- retry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reclaims_a_stalled_copy_exactly_once_and_finishes_it() {
    let w = World::new().await;
    w.run_files(3);
    let daq = w.ctx("daq");
    let r = tasks::register::run(&daq, &w_token()).await;
    assert!(r.failed().is_empty(), "{r:?}");
    // A push that claimed the mirror copy and died: its lease is already over.
    let claim = ClaimRequest {
        copy: mirror_copy(3),
        location: w.path("mirror/raw/Run000003").display().to_string(),
        protocol: "local".into(),
        owner: owner("daq", DEAD_PID),
        lease_for: Duration::ZERO,
    };
    assert!(matches!(
        w.catalog.claim_copy(&claim).await.unwrap(),
        Claim::Won(_)
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Two agents for the DAQ site at once (as after a restart race): one reclaims.
    let (a, b) = (w.ctx_as("daq", 1), w.ctx_as("daq", 2));
    let t = w_token();
    let (ra, rb) = tokio::join!(retry::run(&a, &t), retry::run(&b, &t));
    let done: Vec<String> = ra.done().into_iter().chain(rb.done()).collect();
    assert_eq!(done.len(), 1, "{ra:#?} {rb:#?}");
    assert!(done[0].contains("reclaimed from daq@"), "{done:?}");
    assert!(
        ra.failed().is_empty() && rb.failed().is_empty(),
        "{ra:#?} {rb:#?}"
    );

    let run = w.get(3).await;
    let c = copy_at(&run, "mirror");
    assert_eq!(c.status, CopyStatus::Transferred, "{c:#?}");
    assert_eq!(c.attempts, 2);
    assert_eq!(c.checksum, run.digest);
    let reclaims = run
        .events
        .iter()
        .filter(|e| e.action == "reclaimed")
        .count();
    assert_eq!(reclaims, 1);
    assert!(w.path("mirror/raw/Run000003/sub/b.evio").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_waits_for_the_backoff_then_copies_again_to_transferred() {
    let w = World::new().await;
    let src = w.run_files(4);
    let daq = w.ctx("daq");
    let t = w_token();
    assert!(tasks::register::run(&daq, &t).await.failed().is_empty());
    // Bit rot at the origin after registration: the push fails with a checksum error.
    flip_byte(&src.join("a.evio"), 10);
    let p = tasks::push::run(&daq, &t).await;
    assert_eq!(p.failed().len(), 1, "{p:?}");
    let c = copy_at(&w.get(4).await, "mirror").clone();
    assert_eq!(c.status, CopyStatus::Error);
    assert!(
        c.last_error
            .as_deref()
            .unwrap()
            .starts_with("[checksum] from daq: "),
        "{c:?}"
    );
    // The source is repaired (restored from elsewhere).
    flip_byte(&src.join("a.evio"), 10);

    // Within the backoff: left alone, with when it will be tried.
    let r = retry::run(&daq, &t).await;
    assert!(r.done().is_empty(), "{}", joined(&r));
    assert!(r.skipped()[0].contains("backoff"), "{}", joined(&r));

    // The failure an hour ago: retried now, and the copy completes.
    w.edit_run(4, |run| {
        run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(1));
    });
    let r = retry::run(&daq, &t).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(r.done()[0].contains("attempt 2"), "{}", joined(&r));
    let run = w.get(4).await;
    let c = copy_at(&run, "mirror");
    assert_eq!(c.status, CopyStatus::Transferred);
    assert_eq!(c.attempts, 2);
    assert_eq!(c.checksum, run.digest);
}

/// An `error` copy written through the Catalog API: claimed, then failed with `why`
/// (`[class] text`), recorded as an agent records it: the class typed, the text tagged.
async fn failed_copy(w: &World, number: i64, why: &str) {
    let claim = ClaimRequest {
        copy: mirror_copy(number),
        location: w
            .path(&format!("mirror/raw/Run{number:06}"))
            .display()
            .to_string(),
        protocol: "local".into(),
        owner: "test".into(),
        lease_for: Duration::from_secs(60),
    };
    assert!(matches!(
        w.catalog.claim_copy(&claim).await.unwrap(),
        Claim::Won(_)
    ));
    let mut fail = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        Some("test"),
        "test",
    );
    let class = FailureClass::classify(why);
    let text = why.strip_prefix(class.tag()).unwrap_or(why).trim_start();
    fail.record_failure(&Failure::new(class, text.into()));
    assert_eq!(
        w.catalog
            .transition(&mirror_copy(number), &fail)
            .await
            .unwrap(),
        Cas::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_never_hammers_a_permission_error_and_gives_up_loudly_at_the_limit() {
    let w = World::new().await;
    w.run_files(5);
    w.run_files(6);
    let daq = w.ctx("daq");
    let t = w_token();
    assert!(tasks::register::run(&daq, &t).await.failed().is_empty());
    failed_copy(
        &w,
        5,
        "[fatal] from daq: local: /m/Run000005/a.evio: permission denied (while create)",
    )
    .await;
    failed_copy(
        &w,
        6,
        "[retryable] from daq: mirror: connection lost while writing a.evio",
    )
    .await;
    w.edit_run(5, |run| {
        run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(48));
    });
    w.edit_run(6, |run| {
        let c = run.copy_mut("mirror", "raw").unwrap();
        c.updated_time = Some(hours_ago(48));
        c.attempts = retry::MAX_ATTEMPTS;
    });
    for _cycle in 0..2 {
        let r = retry::run(&daq, &t).await;
        assert!(r.done().is_empty(), "{}", joined(&r));
        assert_eq!(r.failed().len(), 2, "reported every cycle: {}", joined(&r));
        assert!(r.failed()[0].contains("run 5") && r.failed()[0].contains("not retried"));
        assert!(
            r.failed()[0].contains("--task retry --run 5"),
            "{}",
            joined(&r)
        );
        assert!(
            r.failed()[0].contains("permission denied"),
            "{}",
            joined(&r)
        );
        assert!(r.failed()[1].contains("run 6") && r.failed()[1].contains("gave up after 5"));
    }
    for (n, attempts) in [(5, 1), (6, retry::MAX_ATTEMPTS)] {
        let c = copy_at(&w.get(n).await, "mirror").clone();
        assert_eq!(
            (c.status, c.attempts),
            (CopyStatus::Error, attempts),
            "{c:?}"
        );
    }
    assert!(!w.path("mirror/raw/Run000005").exists());

    // The operator fixed the permissions and asks for the run: retried at once.
    let mut asked = w.ctx("daq");
    asked.scope = RunScope::Number(5);
    let r = retry::run(&asked, &t).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    let c = copy_at(&w.get(5).await, "mirror").clone();
    assert_eq!(
        (c.status, c.attempts),
        (CopyStatus::Transferred, 2),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_checksum_mismatches_send_the_source_to_verifying() {
    let w = World::new().await;
    let src = w.run_files(7);
    let daq = w.ctx("daq");
    let t = w_token();
    assert!(tasks::register::run(&daq, &t).await.failed().is_empty());
    flip_byte(&src.join("a.evio"), 1); // the source rots and stays rotten
    assert_eq!(tasks::push::run(&daq, &t).await.failed().len(), 1);
    for _ in 0..2 {
        w.edit_run(7, |run| {
            run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(24));
        });
        let r = retry::run(&daq, &t).await;
        if r.failed().is_empty() {
            // The second pass: two mismatches from the origin make it suspect.
            assert!(
                r.skipped()[0].contains("source suspected"),
                "{}",
                joined(&r)
            );
        } else {
            assert!(r.failed()[0].contains("checksum"), "{}", joined(&r));
        }
    }
    let run = w.get(7).await;
    assert_eq!(copy_at(&run, "daq").status, CopyStatus::Verifying);
    // The origin's own verify finds the rot, and keeps the only copy's files.
    let r = tasks::verify::run(&daq, &t).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    assert!(r.failed()[0].contains("bad files kept"), "{}", joined(&r));
    assert!(src.join("a.evio").exists());
    assert_eq!(copy_at(&w.get(7).await, "daq").status, CopyStatus::Error);
}

/// Regression: retry asked for the first 100 `error` copies by number and no more, so 100
/// copies given up at the attempt limit hid every newer failure from the retry for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reaches_a_new_failure_behind_a_hundred_and_one_given_up_copies() {
    let w = World::new().await;
    for n in 1..=101 {
        run_at(&w, n, &["daq"]).await;
        failed_copy(&w, n, "[retryable] from daq: mirror: connection lost").await;
        w.edit_run(n, |run| {
            let c = run.copy_mut("mirror", "raw").unwrap();
            c.updated_time = Some(hours_ago(48));
            c.attempts = retry::MAX_ATTEMPTS;
        });
    }
    // A new run whose copy failed an hour ago: due for its second attempt.
    w.run_files(102);
    let daq = w.ctx("daq");
    let t = w_token();
    assert!(tasks::register::run(&daq, &t).await.failed().is_empty());
    failed_copy(&w, 102, "[retryable] from daq: mirror: connection lost").await;
    w.edit_run(102, |run| {
        run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(1));
    });

    let r = retry::run(&daq, &t).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(r.done()[0].contains("run 102"), "{}", joined(&r));
    let gave_up = r.failed().iter().filter(|l| l.contains("gave up")).count();
    assert_eq!(gave_up, 101, "{}", joined(&r));
    let run = w.get(102).await;
    assert_eq!(copy_at(&run, "mirror").status, CopyStatus::Transferred);
}

// ---------------------------------------------------------------- purge

fn allowed_policy() -> PurgePolicy {
    PurgePolicy {
        enabled: true,
        min_copies: 1,
        min_tape_copies: 0,
        max_verify_age: Duration::from_secs(30 * 86_400),
        retention: Duration::from_secs(7 * 86_400),
        high_water_mark: 100,
        low_water_mark: 100,
    }
}

/// The DAQ agent with `policy`, asked for run `number` unless `asked` is false.
fn purger(w: &World, policy: PurgePolicy, number: i64, asked: bool) -> Context {
    let mut ctx = w.ctx("daq");
    ctx.site.purge = policy;
    if asked {
        ctx.scope = RunScope::Number(number);
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_each_safety_condition_on_its_own_keeps_the_copy() {
    let w = World::new().await;
    w.registered_and_pushed(8).await;
    // A week and a day old.
    w.edit_run(8, |run| run.end = Some(hours_ago(8 * 24)));
    let t = w_token();
    let files = w.path("daq/raw/Run000008/a.evio");

    let mut too_many = allowed_policy();
    too_many.min_copies = 2;
    let mut tape = allowed_policy();
    tape.min_tape_copies = 1;
    let mut young = allowed_policy();
    young.retention = Duration::from_secs(30 * 86_400);
    let cases: Vec<(&str, PurgePolicy, bool)> = vec![
        ("policy needs 2", too_many, true),
        ("0 of them on tape, policy needs 1", tape, true),
        ("under the retention", young, true),
        (
            "not above the high-water mark 100%",
            allowed_policy(),
            false,
        ),
    ];
    for (expect, policy, asked) in cases {
        let r = tasks::purge::run(&purger(&w, policy, 8, asked), &t).await;
        assert!(r.done().is_empty(), "{expect}: {}", joined(&r));
        assert!(
            r.skipped()
                .iter()
                .any(|l| l.contains("kept") && l.contains(expect)),
            "{expect}: {}",
            joined(&r)
        );
    }

    // The mirror's verification is 40 days old.
    let verified = copy_at(&w.get(8).await, "mirror").verified_time;
    w.edit_run(8, |run| {
        run.copy_mut("mirror", "raw").unwrap().verified_time = Some(hours_ago(40 * 24));
    });
    let r = tasks::purge::run(&purger(&w, allowed_policy(), 8, true), &t).await;
    assert!(
        r.skipped()
            .iter()
            .any(|l| l.contains("0 verified copies elsewhere within 30days")),
        "{}",
        joined(&r)
    );
    // The mirror's copy disagrees with the run digest.
    w.edit_run(8, |run| {
        let c = run.copy_mut("mirror", "raw").unwrap();
        c.verified_time = verified;
        c.checksum = Some("0".repeat(64));
    });
    let r = tasks::purge::run(&purger(&w, allowed_policy(), 8, true), &t).await;
    assert!(
        r.skipped()
            .iter()
            .any(|l| l.contains("copies disagree: mirror")),
        "{}",
        joined(&r)
    );
    assert!(files.exists());
    assert_eq!(
        copy_at(&w.get(8).await, "daq").status,
        CopyStatus::Transferred
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_never_removes_the_last_verified_copy_even_with_min_copies_zero() {
    let w = World::new().await;
    let run = w.registered_and_pushed(9).await;
    w.edit_run(9, |run| run.end = Some(hours_ago(30 * 24)));
    // The only other transferred copy is of another data type: raw has no second copy.
    let processed = OriginCopy {
        copy: CopyRef::new(RunKey::new("tpc", 9), "mirror", "processed"),
        location: w.path("mirror/processed").display().to_string(),
        protocol: "local".into(),
        manifest: ferry::catalog::Manifest {
            files: run.files.clone(),
            size: run.size.unwrap(),
            digest: run.digest.clone().unwrap(),
        },
        who: "test".into(),
    };
    assert_eq!(
        w.catalog.add_origin_copy(&processed).await.unwrap(),
        Cas::Done
    );
    let mut m = Transition::new(CopyStatus::Transferred, CopyStatus::Error, None, "test");
    m.record_failure(&Failure::new(
        FailureClass::Fatal,
        "test: the mirror's raw copy is gone".into(),
    ));
    assert_eq!(
        w.catalog.transition(&mirror_copy(9), &m).await.unwrap(),
        Cas::Done
    );

    let mut reckless = allowed_policy();
    reckless.min_copies = 0;
    reckless.retention = Duration::ZERO;
    let r = tasks::purge::run(&purger(&w, reckless, 9, true), &w_token()).await;
    assert!(r.done().is_empty(), "{}", joined(&r));
    assert!(
        r.skipped().iter().any(|l| l.contains("last verified copy")),
        "{}",
        joined(&r)
    );
    assert!(w.path("daq/raw/Run000009/a.evio").exists());
    assert_eq!(
        copy_at(&w.get(9).await, "daq").status,
        CopyStatus::Transferred
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_dry_run_lists_every_deletion_and_changes_nothing() {
    let w = World::new().await;
    w.run_files(10);
    let out = w.ferry(&[
        "--host", "daq", "--once", "--task", "register", "--task", "push",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    tokio::time::sleep(Duration::from_millis(1100)).await; // the map's retention is 1 s
    let before = w.get(10).await;

    let out = w.ferry(&[
        "--host",
        "daq",
        "--once",
        "--task",
        "purge",
        "--run",
        "10",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("would remove this copy"), "{}", text(&out));
    assert!(
        stdout.contains("asked for by the operator"),
        "{}",
        text(&out)
    );
    for f in ["a.evio", "sub/b.evio", "RUN_COMPLETE"] {
        let p = w.path(&format!("daq/raw/Run000010/{f}"));
        assert!(
            stdout.contains(&format!("would delete {}", p.display())),
            "{f}: {}",
            text(&out)
        );
        assert!(p.exists(), "{f} was deleted by a dry run");
    }
    assert_eq!(
        w.get(10).await,
        before,
        "the catalogue changed in a dry run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_files_and_entry_with_an_audit_event_when_every_rule_holds() {
    let w = World::new().await;
    w.registered_and_pushed(11).await;
    w.edit_run(11, |run| run.end = Some(hours_ago(8 * 24)));
    // A stray file the manifest does not know keeps the run directory.
    let stray = w.path("daq/raw/Run000011/notes.txt");
    std::fs::write(&stray, b"operator notes").unwrap();

    let r = tasks::purge::run(&purger(&w, allowed_policy(), 11, true), &w_token()).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(
        r.done()[0].contains("1 verified copies elsewhere (mirror"),
        "{}",
        joined(&r)
    );
    for f in ["a.evio", "sub/b.evio", "RUN_COMPLETE", "sub"] {
        assert!(!w.path(&format!("daq/raw/Run000011/{f}")).exists(), "{f}");
    }
    assert!(stray.exists(), "a file outside the manifest was deleted");
    let run = w.get(11).await;
    assert!(run.copy("daq", "raw").is_none(), "{run:#?}");
    assert_eq!(copy_at(&run, "mirror").status, CopyStatus::Transferred);
    assert!(w.path("mirror/raw/Run000011/a.evio").exists());
    let removed: Vec<_> = run
        .events
        .iter()
        .filter(|e| e.host.as_deref() == Some("daq"))
        .map(|e| e.action.as_str())
        .collect();
    assert!(removed.ends_with(&["removing", "removed"]), "{removed:?}");

    // With the stray file gone, a later purge of a run leaves no directory behind.
    w.registered_and_pushed(12).await;
    w.edit_run(12, |run| run.end = Some(hours_ago(8 * 24)));
    let r = tasks::purge::run(&purger(&w, allowed_policy(), 12, true), &w_token()).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(!w.path("daq/raw/Run000012").exists());
}

/// Regression: two sites purging the same run at once both marked their copies
/// `removing`, each then saw the other's copy `removing`, and both stopped there ("an
/// operator must check the run"). The protection is now part of the conditional mark: the
/// second mark finds the first site's copy no longer `transferred` and loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_purging_one_run_at_once_remove_one_copy_and_leave_none_removing() {
    let w = World::new().await;
    w.registered_and_pushed(16).await;
    w.edit_run(16, |run| run.end = Some(hours_ago(8 * 24)));
    // Both agents' marks wait for each other, so each has read the run and decided to
    // purge before either writes: the race, every time.
    let faulty = Arc::new(Faulty::new(
        EmbeddedCatalog::open(&w.path("catalog.sqlite"))
            .await
            .unwrap(),
    ));
    faulty.meet("mark removing", 2);
    let mut daq = purger(&w, allowed_policy(), 16, true);
    daq.catalog = faulty.clone();
    let mut mirror = w.ctx("mirror");
    mirror.site.purge = allowed_policy();
    mirror.scope = RunScope::Number(16);
    mirror.catalog = faulty.clone();

    let t = w_token();
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(tasks::purge::run(&daq, &t), tasks::purge::run(&mirror, &t))
    })
    .await
    .expect("both purges reach the mark");
    let both = format!("daq: {}\nmirror: {}", joined(&a), joined(&b));
    assert!(a.failed().is_empty() && b.failed().is_empty(), "{both}");
    assert_eq!(
        a.done().len() + b.done().len(),
        1,
        "exactly one removed: {both}"
    );
    let (winner, loser) = if a.done().len() == 1 {
        ("daq", &b)
    } else {
        ("mirror", &a)
    };
    assert!(
        loser
            .skipped()
            .iter()
            .any(|l| l.contains("kept: another site is removing its copy")),
        "{both}"
    );
    let run = w.get(16).await;
    assert_eq!(run.data.len(), 1, "{run:#?}");
    let kept = &run.data[0];
    assert_ne!(kept.host, winner);
    assert_eq!(kept.status, CopyStatus::Transferred, "{run:#?}");
    assert!(
        !run.data.iter().any(|c| c.status == CopyStatus::Removing),
        "{run:#?}"
    );
    assert!(!w.path(&format!("{winner}/raw/Run000016/a.evio")).exists());
    assert!(w
        .path(&format!("{}/raw/Run000016/a.evio", kept.host))
        .exists());
}

/// Registers run `n` (no files on disk) with verified copies at the DAQ and the mirror, taken
/// just now: a purge candidate that is too young to purge.
async fn young_run_at_both(w: &World, n: i64) {
    run_at(w, n, &["daq", "mirror"]).await;
}

/// Registers run `n` (no files on disk) with verified copies, taken just now, at `sites`.
async fn run_at(w: &World, n: i64, sites: &[&str]) {
    let key = RunKey::new("tpc", n);
    let manifest = Manifest {
        files: Vec::new(),
        size: 0,
        digest: format!("{n:0>64}"),
    };
    let new = NewRun {
        key: key.clone(),
        name: None,
        start: None,
        end: None,
        manifest: Some(manifest.clone()),
        want: Vec::new(),
        who: "test".into(),
    };
    w.catalog.register_run(&new).await.unwrap();
    for site in sites {
        let at = OriginCopy {
            copy: CopyRef::new(key.clone(), site, "raw"),
            location: w
                .path(&format!("{site}/raw/Run{n:06}"))
                .display()
                .to_string(),
            protocol: "local".into(),
            manifest: manifest.clone(),
            who: "test".into(),
        };
        assert_eq!(w.catalog.add_origin_copy(&at).await.unwrap(), Cas::Done);
    }
}

/// Regression: the purge asked for the first 100 candidates by number and no more, so 100
/// runs too young to purge hid every newer run from the purge for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reaches_an_old_run_behind_a_hundred_young_ones() {
    let w = World::new().await;
    for n in 1..=100 {
        young_run_at_both(&w, n).await;
    }
    w.registered_and_pushed(101).await;
    w.edit_run(101, |run| run.end = Some(hours_ago(8 * 24)));
    // Not asked for: any disk usage is over this mark, as for an agent in its loop.
    let mut policy = allowed_policy();
    policy.high_water_mark = 0;
    let r = tasks::purge::run(&purger(&w, policy, 101, false), &w_token()).await;
    assert!(r.failed().is_empty(), "{}", joined(&r));
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(r.done()[0].starts_with("run 101 "), "{}", joined(&r));
    let young = r
        .skipped()
        .iter()
        .filter(|l| l.contains("under the retention"))
        .count();
    assert_eq!(young, 100, "{}", joined(&r));
    assert!(w.get(101).await.copy("daq", "raw").is_none());
    assert!(!w.path("daq/raw/Run000101/a.evio").exists());
}

/// A list longer than a cycle's budget (5 pages of 100) is read in turns: the next cycle
/// goes on after the last run the previous one read, then wraps around to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_walk_goes_on_next_cycle_where_the_last_stopped() {
    let w = World::new().await;
    let budget = i64::try_from(tasks::PAGE as usize * tasks::MAX_PAGES).unwrap();
    for n in 1..=budget {
        young_run_at_both(&w, n).await;
    }
    let old = u32::try_from(budget + 1).unwrap();
    w.registered_and_pushed(old).await;
    w.edit_run(i64::from(old), |run| {
        run.end = Some(hours_ago(8 * 24));
    });
    let mut policy = allowed_policy();
    policy.high_water_mark = 0;
    // One agent, its cursors kept from cycle to cycle.
    let ctx = purger(&w, policy, 0, false);
    let young = |r: &tasks::TaskReport| {
        r.skipped()
            .iter()
            .filter(|l| l.contains("under the retention"))
            .count()
    };

    let first = tasks::purge::run(&ctx, &w_token()).await;
    assert!(first.done().is_empty(), "{}", joined(&first));
    assert_eq!(young(&first), 500, "the budget: {}", joined(&first));

    let second = tasks::purge::run(&ctx, &w_token()).await;
    assert_eq!(second.done().len(), 1, "{}", joined(&second));
    assert!(second.done()[0].starts_with(&format!("run {old} ")));
    // After the old run, the walk wrapped around to the first runs with what was left of
    // the budget (4 pages).
    assert_eq!(young(&second), 400, "{}", joined(&second));
    assert!(second.skipped().iter().any(|l| l.starts_with("run 1 ")));
    assert!(!second.skipped().iter().any(|l| l.starts_with("run 401 ")));

    // The third cycle goes on at run 401, reaches the end (an empty page: the old run is
    // gone from the list) and wraps again: 401–500, then 1–300.
    let third = tasks::purge::run(&ctx, &w_token()).await;
    assert!(third.skipped().iter().any(|l| l.starts_with("run 401 ")));
    assert!(third.skipped().iter().any(|l| l.starts_with("run 1 ")));
    assert!(!third.skipped().iter().any(|l| l.starts_with("run 301 ")));
    assert_eq!(young(&third), 400, "{}", joined(&third));
}

// ---------------------------------------------------------------- heartbeat

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_document_carries_identity_cycle_counts_and_free_disk() {
    let w = World::new().await;
    w.run_files(13);
    let daq = w.ctx("daq");
    let report = tasks::run_cycle(&daq, &[Task::Register, Task::Heartbeat], &w_token()).await;
    assert_eq!(report.tasks.len(), 2, "{report:?}");
    let beat = w.catalog.read_heartbeat("daq").await.unwrap().unwrap();
    assert_eq!(beat.site, "daq");
    assert_eq!(beat.owner, daq.owner);
    assert_eq!(beat.pid, std::process::id());
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    assert!(!beat.hostname.is_empty());
    assert!(beat.cycle_seconds >= 0.0);
    let s = &beat.stats;
    let start = s.get_datetime("cycle_start").unwrap();
    let end = s.get_datetime("cycle_end").unwrap();
    assert!(start <= end);
    assert_eq!(s.get_i64("done").unwrap(), 1);
    let register = s
        .get_document("tasks")
        .unwrap()
        .get_document("register")
        .unwrap();
    assert_eq!(register.get_i64("done").unwrap(), 1);
    let raw = s
        .get_document("disks")
        .unwrap()
        .get_document("raw")
        .unwrap();
    assert_eq!(
        raw.get_str("path").unwrap(),
        w.path("daq/raw").display().to_string()
    );
    assert!(raw.get_i64("free_bytes").unwrap() > 0);
    assert!(raw.get_i64("total_bytes").unwrap() >= raw.get_i64("free_bytes").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_finishes_a_removal_cut_short_but_never_the_last_copy() {
    let w = World::new().await;
    w.registered_and_pushed(14).await;
    w.registered_and_pushed(15).await;
    let t = w_token();
    // An agent died after `removing` and one deleted file (run 14).
    let daq14 = CopyRef::new(RunKey::new("tpc", 14), "daq", "raw");
    assert_eq!(
        w.catalog
            .mark_removing(&daq14, CopyStatus::Transferred, &[], "test", "purge")
            .await
            .unwrap(),
        Cas::Done
    );
    std::fs::remove_file(w.path("daq/raw/Run000014/a.evio")).unwrap();
    // Run 15: the origin is `removing` but the mirror's copy has failed meanwhile.
    let daq15 = CopyRef::new(RunKey::new("tpc", 15), "daq", "raw");
    assert_eq!(
        w.catalog
            .mark_removing(&daq15, CopyStatus::Transferred, &[], "test", "purge")
            .await
            .unwrap(),
        Cas::Done
    );
    let mut m = Transition::new(CopyStatus::Transferred, CopyStatus::Error, None, "test");
    m.record_failure(&Failure::new(
        FailureClass::Checksum,
        "test: the mirror's copy rotted".into(),
    ));
    assert_eq!(
        w.catalog.transition(&mirror_copy(15), &m).await.unwrap(),
        Cas::Done
    );

    // Purging is even switched off: finishing (or refusing) cut-short removals still runs.
    let mut ctx = w.ctx("daq");
    ctx.site.purge.enabled = false;
    let r = tasks::purge::run(&ctx, &t).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(r.done()[0].contains("run 14") && r.done()[0].contains("removal finished"));
    assert!(!w.path("daq/raw/Run000014").exists());
    assert!(w.get(14).await.copy("daq", "raw").is_none());

    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    assert!(r.failed()[0].contains("run 15") && r.failed()[0].contains("last verified copy"));
    assert!(w.path("daq/raw/Run000015/a.evio").exists());
    assert_eq!(
        copy_at(&w.get(15).await, "daq").status,
        CopyStatus::Removing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_retry_dry_runs_change_nothing() {
    let w = World::new().await;
    w.registered_and_pushed(16).await;
    to_verifying(&w, 16, &owner("audit", DEAD_PID)).await;
    w.run_files(17);
    let daq = w.ctx("daq");
    assert!(tasks::register::run(&daq, &w_token())
        .await
        .failed()
        .is_empty());
    failed_copy(&w, 17, "[retryable] from daq: mirror: timed out").await;
    w.edit_run(17, |run| {
        run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(24));
    });
    let (before16, before17) = (w.get(16).await, w.get(17).await);

    let mut mirror = w.ctx("mirror");
    mirror.dry_run = true;
    let r = tasks::verify::run(&mirror, &w_token()).await;
    assert!(
        r.skipped()[0].contains("dry run: would re-hash 2 files"),
        "{}",
        joined(&r)
    );
    let mut daq = w.ctx("daq");
    daq.dry_run = true;
    let r = retry::run(&daq, &w_token()).await;
    assert!(
        r.skipped()[0].contains("dry run: would retry"),
        "{}",
        joined(&r)
    );

    assert_eq!(w.get(16).await, before16);
    assert_eq!(w.get(17).await, before17);
    assert!(!w.path("mirror/raw/Run000017").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_name_that_is_not_a_plain_name_is_refused_before_anything_changes() {
    let w = World::new().await;
    w.run_files(3);
    for bad in ["../x", "a/b", "", ".."] {
        let out = w.ferry(&["--host", "daq", "--once", "--name", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--name"), "{bad:?}: {err}");
        assert!(err.contains("a run name must not"), "{bad:?}: {err}");
    }
    let out = w.ferry(&["--host", "daq", "--once", "--run", "-4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Nothing was registered, no heartbeat was written.
    assert!(w
        .catalog
        .get_run(&RunKey::new("tpc", 3))
        .await
        .unwrap()
        .is_none());
    assert!(w.catalog.read_heartbeat("daq").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_asked_for_by_hand_that_exists_nowhere_is_a_failure_not_silence() {
    let w = World::new().await;
    w.run_files(5);
    // Run 5 exists at the origin: registered and copied, exit 0.
    let out = w.ferry(&["--host", "daq", "--once", "--run", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Run 6 exists nowhere: the cycle runs, and says so with exit 1.
    let out = w.ferry(&["--host", "daq", "--once", "--run", "6"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("run 6: not in the catalogue"),
        "{}",
        text(&out)
    );
    let out = w.ferry(&["--host", "mirror", "--once", "--name", "no-such-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run \"no-such-run\": not in the catalogue"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_check_reports_the_agent_as_a_nagios_plugin() {
    let w = World::new().await;
    // Disk thresholds of 0 %: the shared test machine's own free space does not count.
    let check = |extra: &[&str]| {
        let mut args = vec!["--host", "daq", "check"];
        if !extra.contains(&"--warn-free") {
            args.extend_from_slice(&["--warn-free", "0", "--critical-free", "0"]);
        }
        args.extend_from_slice(extra);
        let out = w.ferry(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The agent never ran: no heartbeat.
    let (code, line) = check(&[]);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("FERRY CRITICAL - daq: no heartbeat"),
        "{line}"
    );

    w.run_files(21);
    let out = w.ferry(&["--host", "daq", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (code, out) = check(&["--max-since-transfer", "1h"]);
    assert_eq!(code, Some(0), "{out}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("FERRY OK - daq: last cycle "), "{out}");
    assert!(first.contains(" | age=") && first.len() < 100, "{first}");
    assert!(
        out.contains("raw_used=") && out.contains("last copy made"),
        "{out}"
    );
    assert!(
        out.contains("this host is daq: its data directories and state directory passed"),
        "{out}"
    );

    // Old heartbeat, full disk, an unreachable catalogue.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (code, line) = check(&["--max-age", "10ms"]);
    assert_eq!(code, Some(2), "{line}");
    let (code, line) = check(&["--warn-free", "100", "--critical-free", "0"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("% free"), "{line}");
    let (code, line) = check(&[
        "--catalog",
        "mongodb://127.0.0.1:1/run?serverSelectionTimeoutMS=200",
    ]);
    assert_eq!(code, Some(3), "{line}");
    assert!(line.starts_with("FERRY UNKNOWN - "), "{line}");
}

/// `ferry check --config` on a monitoring host answered UNKNOWN (it ran the site's
/// host-local checks there), and `--max-since-transfer` always warned on a site that only
/// receives: `--site` judges from the catalogue alone, a receive-only site on what it
/// received, and the first line stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_check_on_a_monitoring_host_judges_a_receive_only_site_on_what_it_received() {
    let w = World::new().await;
    w.run_files(22);
    let out = w.ferry(&["--host", "daq", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The mirror's own agent copies nothing (the DAQ pushes to it); its cycle records what
    // it received.
    let out = w.ferry(&["--host", "mirror", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let beat = w.catalog.read_heartbeat("mirror").await.unwrap().unwrap();
    assert!(beat.stats.get_datetime("last_received").is_ok(), "{beat:?}");
    assert!(
        beat.stats.get_datetime("last_transfer").is_err(),
        "{beat:?}"
    );

    // The monitoring host: not the mirror's machine (its data directory is not there).
    std::fs::rename(w.path("mirror/raw"), w.path("mirror/raw.elsewhere")).unwrap();
    let uri = format!("sqlite:{}", w.path("catalog.sqlite").display());
    let check = |how: &[&str], extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.env_remove("FERRY_CATALOG").env_remove("FERRY_SITE");
        cmd.args(how).arg("check").args(extra);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let map = w.path("map.json").display().to_string();
    let by_map: &[&str] = &["--config", &map];
    let by_uri: &[&str] = &["--catalog", &uri];
    let base = [
        "--site",
        "mirror",
        "--warn-free",
        "0",
        "--critical-free",
        "0",
    ];
    // On the site's machine, --config runs its host-local checks: UNKNOWN here.
    let (code, out) = check(&["--config", &map, "--host", "mirror"], &base[2..]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("pass --site SITE"), "{out}");
    for how in [by_map, by_uri] {
        let (code, out) = check(how, &[&base[..], &["--max-since-transfer", "1h"]].concat());
        assert_eq!(code, Some(0), "{how:?}: {out}");
        let first = out.lines().next().unwrap();
        assert!(first.starts_with("FERRY OK - mirror: last cycle "), "{out}");
        assert!(
            first.contains(" | age=") && first.chars().count() < 100,
            "{first}"
        );
        assert!(out.contains("last copy received"), "{out}");
        assert!(out.contains("judged from the catalogue alone"), "{out}");
        assert!(out.contains("raw_used="), "{out}");
        // WARNING: a disk over its threshold, by the heartbeat's figures.
        let (code, out) = check(
            how,
            &[
                "--site",
                "mirror",
                "--warn-free",
                "100",
                "--critical-free",
                "0",
            ],
        );
        assert_eq!(code, Some(1), "{how:?}: {out}");
        assert!(out.starts_with("FERRY WARNING - mirror: raw has "), "{out}");
        // CRITICAL: the heartbeat is too old.
        let (code, out) = check(how, &[&base[..], &["--max-age", "1ms"]].concat());
        assert_eq!(code, Some(2), "{how:?}: {out}");
        assert!(
            out.starts_with("FERRY CRITICAL - mirror: last cycle "),
            "{out}"
        );
    }
    // Nothing received for longer than allowed: WARNING, said on the first line.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, out) = check(
        by_uri,
        &[&base[..], &["--max-since-transfer", "1s"]].concat(),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("FERRY WARNING - mirror: no copy received for "),
        "{out}"
    );
    // The DAQ sends: judged on the copies its agent made.
    let (code, out) = check(
        by_map,
        &[
            "--site",
            "daq",
            "--warn-free",
            "0",
            "--critical-free",
            "0",
            "--max-since-transfer",
            "1h",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("last copy made"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_prometheus_metrics_of_its_cycles() {
    use std::io::{Read, Write};
    let w = World::new().await;
    w.run_files(31);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    /// Killed when the test ends, passed or not.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env_remove("FERRY_CATALOG")
        .env("FERRY_STATE_DIR", w.path("state"))
        .arg("--config")
        .arg(w.path("map.json"))
        .args([
            "--host",
            "daq",
            "--interval",
            "1s",
            "--metrics-listen",
            &addr,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let scrape = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let t0 = std::time::Instant::now();
    let text = loop {
        if let Some(t) =
            scrape().filter(|t| t.contains("ferry_task_done_total{site=\"daq\",task=\"push\"} 1"))
        {
            break t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no cycle in the metrics: {:?}",
            scrape()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    assert!(
        text.contains("ferry_task_done_total{site=\"daq\",task=\"register\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferry_disk_free_bytes{site=\"daq\",data_type=\"raw\"}"),
        "{text}"
    );
    assert!(
        text.contains("ferry_last_transfer_timestamp_seconds{site=\"daq\"}"),
        "{text}"
    );
    let pid = daemon.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(daemon.0.wait().unwrap().code(), Some(0));
    assert!(scrape().is_none(), "the endpoint outlived the daemon");
}

/// A daemon started on `w`'s site map with `extra` arguments, its metrics at the returned
/// address; killed when dropped.
fn metrics_daemon(w: &World, extra: &[&str]) -> (MetricsDaemon, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env_remove("FERRY_CATALOG")
        .env("FERRY_STATE_DIR", w.path("state"))
        .arg("--config")
        .arg(w.path("map.json"))
        .args([
            "--host",
            "daq",
            "--interval",
            "1s",
            "--metrics-listen",
            &addr,
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (MetricsDaemon(child), addr)
}

/// Killed when the test ends, passed or not.
struct MetricsDaemon(std::process::Child);

impl Drop for MetricsDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The body of `GET /metrics` at `addr`, if it answers.
fn scrape_body(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_answer_while_the_catalogue_does_not() {
    let w = World::new().await;
    let (_daemon, addr) = metrics_daemon(
        &w,
        &[
            "--catalog",
            "mongodb://127.0.0.1:1/run?serverSelectionTimeoutMS=200",
        ],
    );
    let t0 = std::time::Instant::now();
    let body = loop {
        if let Some(b) = scrape_body(&addr) {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the endpoint never answered while the catalogue was unreachable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("ferry_catalog_up{site=\"daq\"} 0"), "{body}");
    assert!(body.contains("ferry_up{site=\"daq\"} 1"), "{body}");
    // Still waiting, still answering.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = scrape_body(&addr).expect("the endpoint stopped answering");
    assert!(
        later.contains("ferry_catalog_up{site=\"daq\"} 0"),
        "{later}"
    );
    assert!(
        later.contains("ferry_cycles_total{site=\"daq\"} 0"),
        "{later}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_text() {
    let Ok(promtool) = which_promtool() else {
        panic!(
            "promtool not installed: run deploy/install-test-deps.sh (Debian package prometheus)"
        );
    };
    let w = World::new().await;
    w.run_files(33);
    let (_daemon, addr) = metrics_daemon(&w, &[]);
    let t0 = std::time::Instant::now();
    let body = loop {
        if let Some(b) = scrape_body(&addr).filter(|b| b.contains("ferry_link_copied_files_total{"))
        {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no copy in the metrics: {:?}",
            scrape_body(&addr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("ferry_catalog_up{site=\"daq\"} 1"), "{body}");
    assert!(
        body.contains("ferry_link_last_transfer_timestamp_seconds{site=\"daq\",from=\"daq\""),
        "{body}"
    );
    use std::io::Write;
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the text:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which_promtool() -> Result<std::path::PathBuf, ()> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .ok_or(())
}
