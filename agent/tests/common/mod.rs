//! Helpers shared by the agent's task tests: a [`World`] of two local sites (`daq`, the
//! origin, pushing to `mirror`) on real files with an embedded catalogue, and small
//! assertions. Each test binary uses some of them.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bson::DateTime;
use ferry::agent::{Agent, AgentSpec};
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::{Catalog, CopyRef, RunDoc, RunKey};
use ferry::config::{LoadOptions, SshEnvironment};
use ferry::daemon::CancellationToken;
use ferry::tasks::copy::LogProgress;
use ferry::tasks::scheduler::Mode;
use ferry::tasks::{self, Context, RunScope, TaskReport};

/// A pid no Linux process can have (above the kernel's hard `pid_max`).
pub const DEAD_PID: u32 = 4_194_305;

pub struct World {
    pub dir: tempfile::TempDir,
    pub catalog: Arc<dyn Catalog>,
}

impl World {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["daq/raw", "mirror/raw", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let map = serde_json::json!({
            "version": 1,
            "catalog": { "uri": format!("sqlite:{}", dir.path().join("catalog.sqlite").display()) },
            "sites": [
                { "name": "daq", "method": "local", "origin": true,
                  "data_dirs": { "raw": dir.path().join("daq/raw") },
                  "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
                  "push_to": ["mirror"],
                  "purge": { "enabled": true, "min_copies": 1, "retention": "1s",
                             "high_water_mark": 100 } },
                { "name": "mirror", "method": "local",
                  "data_dirs": { "raw": dir.path().join("mirror/raw") },
                  "layout": "Run{number:06}" }
            ]
        });
        std::fs::write(dir.path().join("map.json"), map.to_string()).unwrap();
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.sqlite"))
            .await
            .unwrap();
        World {
            dir,
            catalog: Arc::new(catalog),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The agent of `site` (owner id with this host and this live process's pid).
    pub fn ctx(&self, site: &str) -> Context {
        self.ctx_as(site, std::process::id())
    }

    pub fn ctx_as(&self, site: &str, pid: u32) -> Context {
        let loaded = ferry::config::load(
            &self.path("map.json"),
            &LoadOptions {
                host: Some(site.into()),
                ssh_config: None,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let site_model = loaded.map.site(site).unwrap().clone();
        Agent::build(AgentSpec {
            map: Arc::new(loaded.map),
            site: site_model,
            catalog: self.catalog.clone(),
            owner: owner(site, pid),
            scope: RunScope::All,
            dry_run: false,
            mode: Mode::Waiting,
            // Local sites only: no SSH session is ever opened.
            ssh: SshEnvironment::from_text("", self.dir.path(), "ferry").unwrap(),
            progress: Arc::new(LogProgress::new()),
            state_dir: Some(self.path("state")),
            audit_every: None,
            metrics: None,
        })
        .context()
        .clone()
    }

    /// A complete run at the DAQ site: files `a.evio` and `sub/b.evio`.
    pub fn run_files(&self, number: u32) -> PathBuf {
        let run = self.path(&format!("daq/raw/Run{number:06}"));
        std::fs::create_dir_all(run.join("sub")).unwrap();
        std::fs::write(run.join("a.evio"), vec![number as u8; 5000]).unwrap();
        std::fs::write(run.join("sub/b.evio"), b"second file").unwrap();
        std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
        run
    }

    /// Registers run `number` at the DAQ and pushes it to the mirror.
    pub async fn registered_and_pushed(&self, number: u32) -> RunDoc {
        self.run_files(number);
        let daq = self.ctx("daq");
        let t = CancellationToken::new();
        let r = tasks::register::run(&daq, &t).await;
        assert!(r.failed().is_empty(), "{r:?}");
        let p = tasks::push::run(&daq, &t).await;
        assert!(p.failed().is_empty(), "{p:?}");
        self.get(i64::from(number)).await
    }

    pub async fn get(&self, number: i64) -> RunDoc {
        self.catalog
            .get_run(&RunKey::new("tpc", number))
            .await
            .unwrap()
            .unwrap()
    }

    /// Changes run `number`'s stored document directly in the SQLite file.
    pub fn edit_run(&self, number: i64, change: impl FnOnce(&mut RunDoc)) {
        let db = rusqlite::Connection::open(self.path("catalog.sqlite")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let (id, blob): (i64, Vec<u8>) = db
            .query_row(
                "SELECT id, doc FROM runs WHERE number = ?1",
                [number],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        let mut run =
            RunDoc::from_document(bson::Document::from_reader(blob.as_slice()).unwrap()).unwrap();
        change(&mut run);
        let mut out = Vec::new();
        run.to_document().unwrap().to_writer(&mut out).unwrap();
        db.execute(
            "UPDATE runs SET doc = ?1 WHERE id = ?2",
            rusqlite::params![out, id],
        )
        .unwrap();
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .env_remove("FERRY_CATALOG")
            .env("FERRY_STATE_DIR", self.path("state"))
            .arg("--config")
            .arg(self.path("map.json"))
            .args(args)
            .output()
            .unwrap()
    }
}

pub fn owner(site: &str, pid: u32) -> String {
    format!(
        "{site}@{}:{pid}",
        gethostname::gethostname().to_string_lossy()
    )
}

pub fn hours_ago(h: i64) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() - h * 3_600_000)
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn copy_at<'r>(run: &'r RunDoc, host: &str) -> &'r ferry::catalog::CopyEntry {
    run.copy(host, "raw")
        .unwrap_or_else(|| panic!("no copy at {host}: {run:#?}"))
}

pub fn mirror_copy(number: i64) -> CopyRef {
    CopyRef::new(RunKey::new("tpc", number), "mirror", "raw")
}

pub fn joined(r: &TaskReport) -> String {
    r.entries
        .iter()
        .map(|e| format!("{} {e}", e.outcome))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn flip_byte(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

/// The run digest measured, from a `[checksum]` failure text ("run digest measured HEX,");
/// asserts it is a SHA-256.
pub fn measured_digest(err: &str) -> &str {
    let measured = err
        .split("run digest measured ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no measured digest in {err}"));
    assert_eq!(measured.len(), 64, "{err}");
    measured
}
