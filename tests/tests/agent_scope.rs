//! `--run N` and `--from-run/--to-run` reach their runs however many runs come first in a
//! work list: run 601 behind 600 runs on every list (a verified copy here and elsewhere,
//! a `verifying` copy at the mirror, a stalled one at the backup), through
//! `ferry --once --task tape|verify|retry|purge --run 601` and a tape range, on the
//! embedded catalogue and on the MongoDB-wire server. Before the scope was part of the
//! catalogue query, each task read its first 500 runs and filtered them: run 601 was never
//! reached.

#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use catalog_common::{Backend, Fixture};
use ferry::catalog::{
    Cas, Catalog, Claim, ClaimRequest, CopyRef, CopyStatus, FileEntry, Manifest, NewRun,
    OriginCopy, RunDoc, RunKey, Transition,
};
use serde_json::json;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const FILLERS: i64 = 600;
const GONE: &str = "gone@nowhere.example:1";

struct Lab {
    dir: tempfile::TempDir,
    f: Fixture,
}

impl Lab {
    async fn new(backend: Backend, name: &str) -> Lab {
        let f = Fixture::new(backend, name).await;
        let dir = tempfile::tempdir().unwrap();
        for d in ["daq/raw", "mirror/raw", "backup/raw", "tape", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let site = |name: &str| {
            json!({ "name": name, "method": "local",
                    "data_dirs": { "raw": dir.path().join(name).join("raw") },
                    "layout": "Run{number:06}" })
        };
        let mut daq = site("daq");
        for (k, v) in [
            ("origin", json!(true)),
            ("completion", json!({ "marker": "RUN_COMPLETE" })),
            ("push_to", json!(["mirror", "backup"])),
            (
                "tape",
                json!([{ "name": "dir-tape", "kind": "directory",
                         "path": dir.path().join("tape") }]),
            ),
            (
                "purge",
                json!({ "enabled": true, "min_copies": 1, "retention": "1s",
                        "high_water_mark": 100 }),
            ),
        ] {
            daq[k] = v;
        }
        let map = json!({
            "version": 1,
            "catalog": { "uri": f.uri },
            "sites": [daq, site("mirror"), site("backup")],
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        Lab { dir, f }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn catalog(&self) -> &dyn Catalog {
        &*self.f.catalog
    }

    fn ferry(&self, site: &str, args: &[&str]) -> Output {
        Command::new(FERRY)
            .env_remove("FERRY_CATALOG")
            .env("FERRY_STATE_DIR", self.path("state"))
            .arg("--config")
            .arg(self.path("map.json"))
            .args(["--host", site, "--once"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, site: &str, args: &[&str]) {
        let out = self.ferry(site, args);
        assert!(
            out.status.success(),
            "ferry {args:?} at {site}: {}",
            text(&out)
        );
    }

    async fn get(&self, n: i64) -> RunDoc {
        self.catalog()
            .get_run(&RunKey::new("tpc", n))
            .await
            .unwrap()
            .unwrap()
    }

    /// The 600 runs before run 601 on every list: a verified copy at the DAQ and at a
    /// vault (purge candidates, transferred copies here), a `verifying` copy at the mirror
    /// left by a gone agent, a stalled one at the backup. None of their files exist: a task
    /// that touched one would fail.
    async fn fillers(&self) {
        let c = self.catalog();
        let runs: Vec<NewRun> = (1..=FILLERS).map(filler).collect();
        c.register_runs(&runs).await.unwrap();
        for n in 1..=FILLERS {
            let origin = OriginCopy {
                copy: copy(n, "daq"),
                location: format!("/nonexistent/daq/Run{n:06}"),
                protocol: "local".into(),
                manifest: filler_manifest(n),
                who: "test".into(),
            };
            assert_eq!(c.add_origin_copy(&origin).await.unwrap(), Cas::Done);
            claim_gone(c, n, "vault", Duration::from_secs(600)).await;
            to_verifying(c, n, "vault").await;
            let mut done = Transition::new(
                CopyStatus::Verifying,
                CopyStatus::Transferred,
                Some(GONE),
                "test",
            );
            done.checksum = Some(filler_manifest(n).digest);
            assert_eq!(
                c.transition(&copy(n, "vault"), &done).await.unwrap(),
                Cas::Done
            );
            claim_gone(c, n, "mirror", Duration::from_millis(1)).await;
            to_verifying(c, n, "mirror").await;
            claim_gone(c, n, "backup", Duration::from_millis(1)).await;
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy(n: i64, site: &str) -> CopyRef {
    CopyRef::new(RunKey::new("tpc", n), site, "raw")
}

fn filler_manifest(n: i64) -> Manifest {
    Manifest {
        files: vec![FileEntry {
            path: "a.evio".into(),
            size: 10,
            sha256: format!("{n:0>64}"),
            md5: Some(format!("{n:0>32}")),
            adler32: None,
        }],
        size: 10,
        digest: format!("{n:f>64}"),
    }
}

fn filler(n: i64) -> NewRun {
    NewRun {
        key: RunKey::new("tpc", n),
        name: Some(format!("filler{n}")),
        start: Some(bson::DateTime::from_millis(1_600_000_000_000 + n * 60_000)),
        end: None,
        manifest: Some(filler_manifest(n)),
        want: vec![],
        who: "test".into(),
    }
}

/// A copy of run `n` at `site` claimed by an agent that is gone, its lease `lease`.
async fn claim_gone(c: &dyn Catalog, n: i64, site: &str, lease: Duration) {
    let req = ClaimRequest {
        copy: copy(n, site),
        location: format!("/nonexistent/{site}/Run{n:06}"),
        protocol: "local".into(),
        owner: GONE.into(),
        lease_for: lease,
    };
    assert!(matches!(c.claim_copy(&req).await.unwrap(), Claim::Won(_)));
}

async fn to_verifying(c: &dyn Catalog, n: i64, site: &str) {
    let mut t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        Some(GONE),
        GONE,
    );
    t.lease_for = Duration::from_millis(1);
    assert_eq!(c.transition(&copy(n, site), &t).await.unwrap(), Cas::Done);
}

fn write_run(dir: &Path, n: i64) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("a.evio"),
        vec![u8::try_from(n % 251).unwrap(); 4000],
    )
    .unwrap();
    std::fs::write(dir.join("sub/b.evio"), format!("run {n}")).unwrap();
    std::fs::write(dir.join("RUN_COMPLETE"), b"").unwrap();
}

fn status(run: &RunDoc, host: &str) -> Option<CopyStatus> {
    run.copy(host, "raw").map(|c| c.status)
}

async fn every_task_reaches_run_601_behind_600_runs(backend: Backend, name: &str) {
    let lab = Lab::new(backend, name).await;
    lab.fillers().await;
    for n in 601..=603 {
        write_run(&lab.path(&format!("daq/raw/Run{n:06}")), n);
    }
    lab.ok("daq", &["--task", "register"]);

    // tape: one run, then a range.
    lab.ok("daq", &["--task", "tape", "--run", "601"]);
    assert_eq!(
        status(&lab.get(601).await, "dir-tape"),
        Some(CopyStatus::Transferred)
    );
    assert_eq!(status(&lab.get(602).await, "dir-tape"), None);
    lab.ok(
        "daq",
        &["--task", "tape", "--from-run", "602", "--to-run", "603"],
    );
    for n in 602..=603 {
        assert_eq!(
            status(&lab.get(n).await, "dir-tape"),
            Some(CopyStatus::Transferred),
            "run {n}"
        );
    }

    // verify: run 601's copy at the mirror, left `verifying` by a gone agent.
    let mirror = lab.path("mirror/raw/Run000601");
    write_run(&mirror, 601);
    let c = lab.catalog();
    let req = ClaimRequest {
        copy: copy(601, "mirror"),
        location: mirror.display().to_string(),
        protocol: "local".into(),
        owner: GONE.into(),
        lease_for: Duration::from_millis(1),
    };
    assert!(matches!(c.claim_copy(&req).await.unwrap(), Claim::Won(_)));
    to_verifying(c, 601, "mirror").await;
    // retry: run 601's copy at the backup, stalled.
    let backup = ClaimRequest {
        copy: copy(601, "backup"),
        location: lab.path("backup/raw/Run000601").display().to_string(),
        ..req
    };
    assert!(matches!(
        c.claim_copy(&backup).await.unwrap(),
        Claim::Won(_)
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;

    lab.ok("mirror", &["--task", "verify", "--run", "601"]);
    assert_eq!(
        status(&lab.get(601).await, "mirror"),
        Some(CopyStatus::Transferred)
    );
    lab.ok("daq", &["--task", "retry", "--run", "601"]);
    assert_eq!(
        status(&lab.get(601).await, "backup"),
        Some(CopyStatus::Transferred)
    );
    assert!(lab.path("backup/raw/Run000601/sub/b.evio").exists());

    // purge: asked for, with verified copies at the mirror, the backup and on tape.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.ok("daq", &["--task", "purge", "--run", "601"]);
    assert_eq!(status(&lab.get(601).await, "daq"), None);
    assert!(!lab.path("daq/raw/Run000601").exists());

    // The 600 runs before it were not touched.
    for n in [1, 300, 600] {
        let run = lab.get(n).await;
        assert_eq!(status(&run, "daq"), Some(CopyStatus::Transferred), "{n}");
        assert_eq!(status(&run, "mirror"), Some(CopyStatus::Verifying), "{n}");
        assert_eq!(
            status(&run, "backup"),
            Some(CopyStatus::Transferring),
            "{n}"
        );
        assert_eq!(status(&run, "dir-tape"), None, "{n}");
    }
}

#[tokio::test]
async fn every_task_reaches_run_601_behind_600_runs_embedded() {
    every_task_reaches_run_601_behind_600_runs(Backend::Embedded, "scope_embedded").await;
}

#[tokio::test]
async fn every_task_reaches_run_601_behind_600_runs_mongo() {
    every_task_reaches_run_601_behind_600_runs(Backend::Mongo, "scope_mongo").await;
}
