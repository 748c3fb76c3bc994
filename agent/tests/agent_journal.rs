//! The record journal in process, on the embedded catalogue behind the fault-injection
//! wrapper: a push whose record fails is journaled and the copy left as it is; the replay
//! finishes a record whose first step landed before the reply was lost, never overwrites a
//! copy changed meanwhile, and hashes again a file changed since it was verified.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::faults::{Fault, Faulty};
use ferry::catalog::{CopyStatus, Transition};
use ferry::daemon::CancellationToken;
use ferry::tasks::{self, Context};

/// Run 1 registered; the DAQ's agent on a catalogue that faults as planned.
async fn world(plan: &[Fault]) -> (World, Context) {
    let w = World::new().await;
    w.run_files(1);
    let t = CancellationToken::new();
    let r = tasks::register::run(&w.ctx("daq"), &t).await;
    assert!(r.failed().is_empty(), "{r:?}");
    let faulty = Faulty::new(
        EmbeddedCatalog::open(&w.path("catalog.sqlite"))
            .await
            .unwrap(),
    );
    for f in plan {
        faulty.inject("transition", *f);
    }
    let mut ctx = w.ctx("daq");
    ctx.catalog = Arc::new(faulty);
    (w, ctx)
}

fn entries(w: &World) -> usize {
    std::fs::read_dir(w.path("state/journal-daq"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Pushes run 1 on `ctx`: the record fails and is journaled.
async fn push_journaled(w: &World, ctx: &Context) {
    let p = tasks::push::run(ctx, &CancellationToken::new()).await;
    assert!(
        p.failed().iter().any(|l| l.contains("kept in the journal")),
        "{p:?}"
    );
    assert_eq!(entries(w), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_first_step_landed_before_the_reply_was_lost_is_finished_once() {
    let (w, ctx) = world(&[Fault::LoseReply]).await;
    push_journaled(&w, &ctx).await;
    assert_eq!(
        copy_at(&w.get(1).await, "mirror").status,
        CopyStatus::Verifying
    );
    let t = CancellationToken::new();
    let lines = tasks::replay::run(&w.ctx("daq"), &t).await;
    assert!(lines.is_empty(), "{lines:?}");
    let run = w.get(1).await;
    let c = copy_at(&run, "mirror");
    assert_eq!(c.status, CopyStatus::Transferred);
    assert_eq!(c.checksum, run.digest);
    assert_eq!(entries(&w), 0);
    let to_verifying = run
        .events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("transferring -> verifying"))
        .count();
    assert_eq!(to_verifying, 1, "{:#?}", run.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_changed_meanwhile_is_not_overwritten_by_the_replay() {
    let (w, ctx) = world(&[Fault::FailBefore]).await;
    push_journaled(&w, &ctx).await;
    // Another agent takes the copy and fails it.
    let mut change = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Error,
        None,
        "mirror@elsewhere:1",
    );
    change.record_failure(&ferry::catalog::Failure::new(
        ferry::catalog::FailureClass::Retryable,
        "someone else".into(),
    ));
    let taken = w
        .catalog
        .transition(&mirror_copy(1), &change)
        .await
        .unwrap();
    assert_eq!(taken, ferry::catalog::Cas::Done);
    let lines = tasks::replay::run(&w.ctx("daq"), &CancellationToken::new()).await;
    assert!(lines.is_empty(), "{lines:?}");
    let c = copy_at(&w.get(1).await, "mirror").clone();
    assert_eq!(c.status, CopyStatus::Error);
    assert_eq!(c.last_error.as_deref(), Some("[retryable] someone else"));
    assert_eq!(entries(&w), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_copy_whose_file_changed_is_hashed_again_and_not_recorded() {
    let (w, ctx) = world(&[Fault::FailBefore]).await;
    push_journaled(&w, &ctx).await;
    flip_byte(&w.path("mirror/raw/Run000001/a.evio"), 10);
    let lines = tasks::replay::run(&w.ctx("daq"), &CancellationToken::new()).await;
    assert!(lines.is_empty(), "{lines:?}");
    let c = copy_at(&w.get(1).await, "mirror").clone();
    assert_eq!(c.status, CopyStatus::Error, "{c:?}");
    let err = c.last_error.unwrap();
    assert!(
        err.starts_with("[retryable]") && err.contains("a.evio"),
        "{err}"
    );
    assert_eq!(entries(&w), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_copy_is_recorded_before_it_would_be_claimed_again_and_not_copied() {
    let (w, ctx) = world(&[Fault::FailBefore]).await;
    push_journaled(&w, &ctx).await;
    let file = w.path("mirror/raw/Run000001/a.evio");
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();
    // The whole cycle: the replay comes first, retry and push find nothing to copy.
    let report = tasks::run_cycle(&w.ctx("daq"), &[], &CancellationToken::new()).await;
    assert!(report.failed.is_empty(), "{report:?}");
    let run = w.get(1).await;
    assert_eq!(copy_at(&run, "mirror").status, CopyStatus::Transferred);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(entries(&w), 0);
}
