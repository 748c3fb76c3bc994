//! The audit task on real files, the `local` method and the embedded catalogue: bit rot
//! found and re-copied, lost and dark data, the mis-mount alarm, the slow schedule (through
//! the `ferry` binary, as the daemon runs it) and the dry run.
//!
//! Runs are registered and pushed by the real register and push tasks; the re-copies are
//! made by the real retry task. A failure's backoff is put in the past by editing the stored
//! document ([`World::edit_run`]), as `agent_tasks` does.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use ferry::catalog::{CopyStatus, RunDoc};
use ferry::daemon::CancellationToken;
use ferry::tasks::{audit, retry, Context, RunScope, TaskReport};

use common::*;

/// SHA-256 of a file by coreutils' `sha256sum`, independent of Ferry's hasher.
fn sha256sum(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", file.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

async fn audit_as(ctx: &Context) -> TaskReport {
    audit::run(ctx, &CancellationToken::new()).await
}

/// The mirror's copy's status, checksum and last error.
async fn mirror_state(w: &World, number: i64) -> (CopyStatus, Option<String>, Option<String>) {
    let run = w.get(number).await;
    let c = copy_at(&run, "mirror");
    (c.status, c.checksum.clone(), c.last_error.clone())
}

/// The failed copy's backoff is over: the retry task at the DAQ (which pushes to the
/// mirror) copies it again now.
async fn retry_now(w: &World, number: i64) -> TaskReport {
    w.edit_run(number, |run| {
        run.copy_mut("mirror", "raw").unwrap().updated_time = Some(hours_ago(1));
    });
    retry::run(&w.ctx("daq"), &CancellationToken::new()).await
}

fn dark_lines(r: &TaskReport) -> Vec<String> {
    r.skipped()
        .into_iter()
        .filter(|l| l.contains("dark data"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_mirror_is_error_with_both_digests_then_recopied_from_the_origin() {
    let w = World::new().await;
    let run = w.registered_and_pushed(1).await;
    let digest = run.digest.clone().unwrap();
    let mirror_file = w.path("mirror/raw/Run000001/a.evio");
    let origin_file = w.path("daq/raw/Run000001/a.evio");
    flip_byte(&mirror_file, 17);

    let r = audit_as(&w.ctx("mirror")).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    let (status, _, err) = mirror_state(&w, 1).await;
    assert_eq!(status, CopyStatus::Error);
    let err = err.unwrap();
    assert!(err.starts_with("[checksum] audit at mirror"), "{err}");
    assert!(err.contains(&format!("manifest {digest}")), "{err}");
    assert_ne!(measured_digest(&err), digest);
    assert!(err.contains("a.evio ("), "{err}");
    assert!(
        !err.contains("sub/b.evio ("),
        "a good file named bad: {err}"
    );
    // The origin holds a verified copy: the bad file goes, the good one stays.
    assert!(!mirror_file.exists(), "the bad file is still there");
    assert!(w.path("mirror/raw/Run000001/sub/b.evio").exists());
    assert_eq!(
        copy_at(&w.get(1).await, "daq").status,
        CopyStatus::Transferred
    );

    // The next retry cycle re-copies it from the origin.
    let r = retry_now(&w, 1).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(r.done()[0].contains("[checksum]"), "{}", joined(&r));
    let (status, checksum, _) = mirror_state(&w, 1).await;
    assert_eq!(status, CopyStatus::Transferred);
    assert_eq!(checksum.as_deref(), Some(digest.as_str()));
    let manifest_sha = &run
        .files
        .iter()
        .find(|f| f.path == "a.evio")
        .unwrap()
        .sha256;
    assert_eq!(&sha256sum(&mirror_file), manifest_sha);
    assert_eq!(sha256sum(&mirror_file), sha256sum(&origin_file));

    // Audited again: good, and its verification time is refreshed.
    let before = copy_at(&w.get(1).await, "mirror").verified_time.unwrap();
    let r = audit_as(&w.ctx("mirror")).await;
    assert!(r.failed().is_empty(), "{}", joined(&r));
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(copy_at(&w.get(1).await, "mirror").verified_time.unwrap() >= before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_copy_with_no_other_verified_copy_is_reported_loudly_and_never_deleted() {
    let w = World::new().await;
    w.run_files(2);
    let daq = w.ctx("daq");
    let t = CancellationToken::new();
    assert!(ferry::tasks::register::run(&daq, &t)
        .await
        .failed()
        .is_empty());
    let file = w.path("daq/raw/Run000002/sub/b.evio");
    flip_byte(&file, 0);

    let r = audit_as(&daq).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    assert!(
        r.failed()[0].contains("bad files kept: no other verified copy"),
        "{}",
        joined(&r)
    );
    assert!(file.exists(), "the only copy's file was deleted");
    let run = w.get(2).await;
    assert_eq!(copy_at(&run, "daq").status, CopyStatus::Error);
    // The completion marker is not dark data.
    assert!(dark_lines(&r).is_empty(), "{}", joined(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_run_dir_and_lost_file_are_error_lost_then_recopied() {
    let w = World::new().await;
    let run = w.registered_and_pushed(3).await;
    w.registered_and_pushed(4).await;
    std::fs::remove_dir_all(w.path("mirror/raw/Run000003")).unwrap();
    // One file of the other run gone too.
    std::fs::remove_file(w.path("mirror/raw/Run000004/sub/b.evio")).unwrap();

    let r = audit_as(&w.ctx("mirror")).await;
    assert_eq!(r.failed().len(), 2, "{}", joined(&r));
    let (status, _, err) = mirror_state(&w, 3).await;
    assert_eq!(status, CopyStatus::Error);
    let err = err.unwrap();
    assert!(
        err.starts_with("[retryable] lost: audit at mirror"),
        "{err}"
    );
    assert!(err.contains("Run000003 is gone"), "{err}");
    let (status, _, err) = mirror_state(&w, 4).await;
    assert_eq!(status, CopyStatus::Error);
    let err = err.unwrap();
    assert!(err.starts_with("[retryable] lost: "), "{err}");
    assert!(err.contains("1 of 2 files missing"), "{err}");
    assert!(err.contains("sub/b.evio"), "{err}");

    let r = retry_now(&w, 3).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    let (status, checksum, _) = mirror_state(&w, 3).await;
    assert_eq!(status, CopyStatus::Transferred);
    assert_eq!(checksum, run.digest);
    for f in &run.files {
        let p = w.path(&format!("mirror/raw/Run000003/{}", f.path));
        assert_eq!(sha256sum(&p), f.sha256, "{}", f.path);
    }
}

/// At the origin, a run directory the DAQ is still writing (no completion marker yet) is a
/// run not registered yet, not dark data; a complete run directory no copy here knows is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_being_written_at_the_origin_is_not_dark_data() {
    let w = World::new().await;
    w.registered_and_pushed(1).await;
    let writing = w.path("daq/raw/Run000002");
    std::fs::create_dir_all(&writing).unwrap();
    std::fs::write(writing.join("a.evio"), b"half a run").unwrap();
    let complete = w.path("daq/raw/Run000003");
    std::fs::create_dir_all(&complete).unwrap();
    std::fs::write(complete.join("a.evio"), b"a whole run").unwrap();
    std::fs::write(complete.join("RUN_COMPLETE"), b"").unwrap();

    let r = audit_as(&w.ctx("daq")).await;
    assert!(r.failed().is_empty(), "{}", joined(&r));
    let dark = dark_lines(&r);
    assert_eq!(dark.len(), 1, "{}", joined(&r));
    assert!(dark[0].contains("Run000003"), "{dark:?}");
    let being_written: Vec<String> = r
        .skipped()
        .into_iter()
        .filter(|l| l.contains("Run000002"))
        .collect();
    assert_eq!(being_written.len(), 1, "{}", joined(&r));
    assert!(
        being_written[0].contains("still being written")
            && being_written[0].contains("no completion marker RUN_COMPLETE")
            && being_written[0].contains("registered once complete"),
        "{being_written:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dark_run_dir_and_extra_file_are_reported_and_left_alone() {
    let w = World::new().await;
    w.registered_and_pushed(5).await;
    let unknown = w.path("mirror/raw/Run000099");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::write(unknown.join("x.evio"), b"who wrote this").unwrap();
    let stray = w.path("mirror/raw/Run000005/notes.txt");
    std::fs::write(&stray, b"operator notes").unwrap();

    let r = audit_as(&w.ctx("mirror")).await;
    assert!(r.failed().is_empty(), "{}", joined(&r));
    let dark = dark_lines(&r);
    assert_eq!(dark.len(), 2, "{}", joined(&r));
    assert!(
        dark.iter()
            .any(|l| l.contains("Run000099") && l.contains("not in the catalogue")),
        "{dark:?}"
    );
    assert!(
        dark.iter()
            .any(|l| l.contains("run 5") && l.contains("notes.txt")),
        "{dark:?}"
    );
    assert!(unknown.join("x.evio").exists() && stray.exists());
    assert_eq!(mirror_state(&w, 5).await.0, CopyStatus::Transferred);
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
}

/// Every mirror copy's status and the number of audit-trail events of each run.
async fn snapshot(w: &World, numbers: &[i64]) -> Vec<(CopyStatus, usize, Option<String>)> {
    let mut out = Vec::new();
    for n in numbers {
        let run: RunDoc = w.get(*n).await;
        let c = copy_at(&run, "mirror");
        out.push((c.status, run.events.len(), c.last_error.clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_data_dir_raises_the_mismount_alarm_and_changes_nothing() {
    let w = World::new().await;
    for n in [6, 7] {
        w.registered_and_pushed(n).await;
    }
    let before = snapshot(&w, &[6, 7]).await;
    for n in [6, 7] {
        std::fs::remove_dir_all(w.path(&format!("mirror/raw/Run{n:06}"))).unwrap();
    }

    let r = audit_as(&w.ctx("mirror")).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    let alarm = &r.failed()[0];
    assert!(
        alarm.contains("ALARM") && alarm.contains("mis-mounted disk?"),
        "{alarm}"
    );
    assert!(
        alarm.contains(&w.path("mirror/raw").display().to_string()),
        "{alarm}"
    );
    assert!(alarm.contains("is empty"), "{alarm}");
    assert_eq!(snapshot(&w, &[6, 7]).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_copies_lost_at_once_raise_the_threshold_alarm_and_change_nothing() {
    let w = World::new().await;
    let numbers: Vec<i64> = (10..16).collect();
    for n in &numbers {
        w.registered_and_pushed(u32::try_from(*n).unwrap()).await;
    }
    let before = snapshot(&w, &numbers).await;
    // Five of six gone (one left, so the directory is not empty): above 10 % and 5.
    for n in &numbers[..5] {
        std::fs::remove_dir_all(w.path(&format!("mirror/raw/Run{n:06}"))).unwrap();
    }

    let r = audit_as(&w.ctx("mirror")).await;
    assert_eq!(r.failed().len(), 1, "{}", joined(&r));
    assert!(
        r.failed()[0].contains("5 of 6 transferred copies look lost or corrupt"),
        "{}",
        joined(&r)
    );
    assert!(
        r.failed()[0].contains("mis-mounted disk?"),
        "{}",
        joined(&r)
    );
    assert_eq!(snapshot(&w, &numbers).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_and_changes_nothing() {
    let w = World::new().await;
    for n in [20, 21, 22] {
        w.registered_and_pushed(n).await;
    }
    let bad = w.path("mirror/raw/Run000020/a.evio");
    flip_byte(&bad, 1);
    std::fs::remove_dir_all(w.path("mirror/raw/Run000021")).unwrap();
    std::fs::create_dir_all(w.path("mirror/raw/Run000077")).unwrap();
    let before = snapshot(&w, &[20, 21, 22]).await;
    let verified = copy_at(&w.get(22).await, "mirror").verified_time;

    let mut ctx = w.ctx("mirror");
    ctx.dry_run = true;
    ctx.audit.state_dir = Some(w.path("state"));
    let r = audit_as(&ctx).await;
    assert_eq!(r.failed().len(), 2, "{}", joined(&r));
    assert!(
        r.failed()
            .iter()
            .all(|l| l.contains("dry run: would record")),
        "{}",
        joined(&r)
    );
    assert_eq!(dark_lines(&r).len(), 1, "{}", joined(&r));
    assert_eq!(snapshot(&w, &[20, 21, 22]).await, before);
    assert_eq!(copy_at(&w.get(22).await, "mirror").verified_time, verified);
    assert!(bad.exists(), "a dry run removed a file");
    assert!(!audit::state_file(&w.path("state"), "mirror").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_audit_is_skipped_in_daemon_mode_and_forced_with_task_audit() {
    let w = World::new().await;
    w.registered_and_pushed(30).await;
    let mirror = ["--host", "mirror", "--once"];

    // The first cycle audits (no audit remembered yet) and remembers it. (The whole cycle
    // exits 5 while some tasks are not built; the audit's own line is what counts here.)
    let out = w.ferry(&mirror);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit: 1 done, 0 skipped, 0 failed"),
        "{}",
        text(&out)
    );
    assert!(audit::state_file(&w.path("state"), "mirror").exists());

    // Bit rot now: a cycle right after (a restart, say) does not audit, so does not see it.
    flip_byte(&w.path("mirror/raw/Run000030/sub/b.evio"), 2);
    let out = w.ferry(&mirror);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("audit: 0 done, 1 skipped, 0 failed"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("not due"), "{}", text(&out));
    assert_eq!(mirror_state(&w, 30).await.0, CopyStatus::Transferred);

    // Asked for by name: audits now and finds it.
    let out = w.ferry(&["--host", "mirror", "--once", "--task", "audit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit: 0 done, 0 skipped, 1 failed"),
        "{}",
        text(&out)
    );
    assert_eq!(mirror_state(&w, 30).await.0, CopyStatus::Error);

    // A short interval makes it due again in the daemon's cycle.
    let out = w.ferry(&["--host", "mirror", "--once", "--audit-every", "1ms"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("not due"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_budget_splits_a_pass_least_recently_verified_first() {
    let w = World::new().await;
    for n in [40, 41] {
        w.registered_and_pushed(n).await;
    }
    let mut ctx = w.ctx("mirror");
    ctx.audit.byte_budget = 1;
    ctx.audit.state_dir = Some(w.path("state"));
    let remembered = audit::state_file(&w.path("state"), "mirror");

    // One copy per pass: run 40 (verified first), then run 41, and the pass is not
    // complete, so nothing is remembered and the next cycle goes on.
    for expected in ["run 40 ", "run 41 "] {
        let r = audit_as(&ctx).await;
        assert_eq!(r.done().len(), 1, "{}", joined(&r));
        assert!(r.done()[0].starts_with(expected), "{}", joined(&r));
        assert!(
            r.skipped().iter().any(|l| l.contains("1 copies wait")),
            "{}",
            joined(&r)
        );
        assert!(!remembered.exists());
    }
    // The default budget covers both: complete, remembered; but not when one run was
    // asked for (`--run 40`): that audit did not cover the site.
    ctx.audit.byte_budget = audit::Settings::default().byte_budget;
    ctx.scope = RunScope::Number(40);
    let r = audit_as(&ctx).await;
    assert_eq!(r.done().len(), 1, "{}", joined(&r));
    assert!(!remembered.exists());
    ctx.scope = RunScope::All;
    let r = audit_as(&ctx).await;
    assert_eq!(r.done().len(), 2, "{}", joined(&r));
    assert!(remembered.exists());
}
