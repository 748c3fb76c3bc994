//! Concurrency proofs, on both back ends:
//!
//! - 100 runs, 8 claimer tasks in this process and 4 claimer processes with 2 tasks each
//!   (16 claimers, released at the same instant): every run's copy at the destination is
//!   claimed exactly once, the claim logs hold exactly 100 wins, and the catalogue's lease
//!   owner of each copy is the one claimer that logged the win.
//! - a claimer process takes 10 runs and is SIGKILLed (a crashed agent); after its lease
//!   expires, 8 tasks and 2 processes race to reclaim: each copy is reclaimed exactly once.
//!
//! The processes are `catalog_claimer` (`src/bin/catalog_claimer.rs`).

// Helpers and case bodies here are test code, called from the `#[tokio::test]`s below.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog_common::{claim, key, seed_run, Backend, Fixture};
use ferry::catalog::{Catalog, Claim, CopyRef};

const RUNS: i64 = 100;
const DEST: &str = "lngs";
const CLAIMER: &str = env!("CARGO_BIN_EXE_catalog_claimer");

/// A Unix time in ms far enough ahead that every claimer is connected and waiting.
fn start_in(d: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from((now + d).as_millis()).unwrap()
}

fn spawn(args: &[String]) -> Child {
    Command::new(CLAIMER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a claimer process and returns its `WON N OWNER` lines.
fn wins_of(child: Child) -> Vec<(i64, String)> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "claimer failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("WON")).then(|| {
                let n = parts.next().unwrap().parse().unwrap();
                (n, parts.next().unwrap().to_string())
            })
        })
        .collect()
}

/// Checks that every run 1..=runs was won exactly once, and that the catalogue agrees.
async fn check_exactly_once(c: &dyn Catalog, wins: &[(i64, String)], runs: i64) {
    let mut by_run: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (n, owner) in wins {
        by_run.entry(*n).or_default().push(owner);
    }
    assert_eq!(wins.len(), usize::try_from(runs).unwrap(), "total wins");
    for n in 1..=runs {
        let owners = by_run.get(&n).cloned().unwrap_or_default();
        assert_eq!(owners.len(), 1, "run {n} won by {owners:?}");
        let run = c.get_run(&key(n)).await.unwrap().unwrap();
        let copies: Vec<_> = run.data.iter().filter(|d| d.host == DEST).collect();
        assert_eq!(
            copies.len(),
            1,
            "run {n}: {} copies at {DEST}",
            copies.len()
        );
        assert!(
            copies[0].leased_by(owners[0]),
            "run {n}: lease {:?}",
            copies[0].lease
        );
    }
}

/// What one in-process claimer does for one run: claim or reclaim, as owner `me`.
type Attempt = fn(Arc<Box<dyn Catalog>>, i64, String) -> futures::future::BoxFuture<'static, Claim>;

/// Races in-process tasks; returns their wins.
async fn race_tasks(
    c: Arc<Box<dyn Catalog>>,
    tasks: usize,
    start_ms: u64,
    act: Attempt,
) -> Vec<(i64, String)> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let now = u64::try_from(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now))).await;
            let me = format!("task{t}");
            let mut order: Vec<i64> = (1..=RUNS).collect();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut rand::rng());
            let mut won = Vec::new();
            for n in order {
                if let Claim::Won(_) = act(c.clone(), n, me.clone()).await {
                    won.push((n, me.clone()));
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

async fn each_copy_claimed_exactly_once(backend: Backend) {
    let f = Fixture::new(backend, "claim_race").await;
    for n in 1..=RUNS {
        seed_run(&*f.catalog, n, "daq").await;
    }
    let start = start_in(Duration::from_millis(2500));
    let children: Vec<Child> = (0..4)
        .map(|p| {
            spawn(&[
                "claim".into(),
                f.uri.clone(),
                DEST.into(),
                format!("proc{p}"),
                "1".into(),
                RUNS.to_string(),
                "2".into(),
                start.to_string(),
            ])
        })
        .collect();
    let catalog = Arc::new(f.catalog);
    let mut wins = race_tasks(catalog.clone(), 8, start, |c, n, me| {
        Box::pin(async move {
            c.claim_copy(&claim(n, DEST, &me, Duration::from_secs(600)))
                .await
                .unwrap()
        })
    })
    .await;
    let in_process = wins.len();
    for child in children {
        wins.extend(wins_of(child));
    }
    check_exactly_once(&**catalog, &wins, RUNS).await;
    eprintln!(
        "wins: {in_process} in-process, {} by processes",
        wins.len() - in_process
    );
}

async fn crashed_owner_reclaimed_exactly_once(backend: Backend) {
    const HELD: i64 = 10;
    let f = Fixture::new(backend, "reclaim_race").await;
    for n in 1..=RUNS {
        seed_run(&*f.catalog, n, "daq").await;
    }
    // The "crashed" agent: claims 10 runs with a 3 s lease, then is killed.
    let mut holder = spawn(&[
        "hold".into(),
        f.uri.clone(),
        DEST.into(),
        "crashed".into(),
        "1".into(),
        HELD.to_string(),
        "3000".into(),
    ]);
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "HELD", "holder did not claim its runs");
    holder.kill().unwrap();
    holder.wait().unwrap();

    // Nobody can reclaim before the lease runs out (run HELD was claimed last).
    let early = f
        .catalog
        .reclaim_stalled(
            &CopyRef::new(key(HELD), DEST, "raw"),
            "crashed",
            "early",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(early, Claim::Lost, "reclaimed a live lease");

    let start = start_in(Duration::from_millis(3500));
    let children: Vec<Child> = (0..2)
        .map(|p| {
            spawn(&[
                "reclaim".into(),
                f.uri.clone(),
                DEST.into(),
                "crashed".into(),
                format!("proc{p}"),
                "1".into(),
                HELD.to_string(),
                "2".into(),
                start.to_string(),
            ])
        })
        .collect();
    let catalog = Arc::new(f.catalog);
    let mut wins = race_tasks(catalog.clone(), 8, start, |c, n, me| {
        Box::pin(async move {
            let copy = CopyRef::new(key(n), DEST, "raw");
            c.reclaim_stalled(&copy, "crashed", &me, Duration::from_secs(600))
                .await
                .unwrap()
        })
    })
    .await;
    for child in children {
        wins.extend(wins_of(child));
    }
    check_exactly_once(&**catalog, &wins, HELD).await;
    for n in 1..=HELD {
        let run = catalog.get_run(&key(n)).await.unwrap().unwrap();
        assert_eq!(run.copy(DEST, "raw").unwrap().attempts, 2, "run {n}");
    }
    // Runs the crashed agent never claimed stay unclaimed.
    let run = catalog.get_run(&key(HELD + 1)).await.unwrap().unwrap();
    assert!(run.copy(DEST, "raw").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_each_copy_claimed_exactly_once() {
    each_copy_claimed_exactly_once(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_each_copy_claimed_exactly_once() {
    each_copy_claimed_exactly_once(Backend::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_crashed_owner_reclaimed_exactly_once() {
    crashed_owner_reclaimed_exactly_once(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_crashed_owner_reclaimed_exactly_once() {
    crashed_owner_reclaimed_exactly_once(Backend::Mongo).await;
}
