//! The worlds of `trust_boundary.rs` (issue 12, "Trust boundary"), and [`Snapshot`]: what a
//! hostile case compares before and after its commands.
//!
//! A [`World`] is a collaboration of three sites under one temp root:
//!
//! ```text
//! ROOT/
//!   sites/daq/raw/      origin: runs 1–4 (Run000001 …), push_to mirror, tape backend `vault`
//!   sites/mirror/raw/   holds runs 1–3 (`transferred`), wants run 4
//!   sites/backup/raw/   pulls from mirror; holds nothing yet (wants runs 1–4)
//!   tape/               the `vault` directory tape backend (empty)
//!   outside/            not a data directory: `secret-key` (mode 600), `Run000002/` (a look-alike
//!                       of run 2, same files and bytes)
//!   agent/              map.json, state/, home/, catalog.sqlite, command output (not hashed:
//!                       the agent's own)
//! ```
//!
//! Sites are reached over SFTP (each site behind its own real OpenSSH sshd, shared by every row
//! of the group; the sshd is only a door: all data directories live under ROOT) or `local`.
//! The catalogue is the MongoDB-wire server (a database per row) or the embedded SQLite store.
//!
//! The world is built once per group by the real `ferry` binary (register, push, a heartbeat per
//! site) and copied aside ("golden"); [`World::reset`] puts the copy back (same absolute paths,
//! so every `location` stays right) and gives the catalogue a fresh database holding the golden
//! documents, so each row starts from the same state in milliseconds.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};
use ferry_tests::{unique_db_name, MongoServer, Sshd};
use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};

/// The binary under test: the same `ferry::cli::main` as `ferry`.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
pub const MARKER: &str = "RUN_COMPLETE";
pub const SITES: [&str; 3] = ["daq", "mirror", "backup"];
/// The tape backend of `daq`.
pub const TAPE: &str = "vault";
/// Longest any one command may take before it counts as hung (and is killed).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Files the agent itself keeps in a data directory (its per-site lock) whose contents may
/// change from one command to the next; only their contents are exempt, and only directly in
/// a site's data directory.
pub const AGENT_FILES: &[&str] = &[".ferry-lock", ".ferry.lock"];
/// The files of every run (path, size); the bytes differ per run.
pub const FILES: [(&str, usize); 3] = [("a.evio", 6000), ("sub/b.evio", 1500), ("empty", 0)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Every site behind its own sshd.
    Sftp,
    /// Every site `method: local`.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Mongo,
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub transport: Transport,
    pub store: Store,
}

/// What one command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub label: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// For failure messages: the command, its exit code and the tails of its output.
    pub fn show(&self) -> String {
        format!(
            "`{}` exit {:?}\n    stdout: {}\n    stderr: {}",
            self.label,
            self.code,
            tail(&self.stdout, 1500).replace('\n', "\n            "),
            tail(&self.stderr, 2500).replace('\n', "\n            ")
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.trim_end().to_string();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", s[start..].trim_end())
}

/// One command a user runs: arguments after `ferry`, environment changes.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub args: Vec<String>,
    /// `(name, Some(value))` sets, `(name, None)` removes.
    pub env: Vec<(String, Option<String>)>,
}

impl Cmd {
    pub fn new<S: AsRef<str>>(args: &[S]) -> Cmd {
        Cmd {
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: Option<&str>) -> Cmd {
        self.env.push((k.to_string(), v.map(str::to_string)));
        self
    }

    pub fn arg(mut self, a: impl AsRef<str>) -> Cmd {
        self.args.push(a.as_ref().to_string());
        self
    }

    pub fn label(&self) -> String {
        let mut s = String::from("ferry");
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        for (k, v) in &self.env {
            s.push_str(&format!(" [{k}={}]", v.as_deref().unwrap_or("<unset>")));
        }
        s
    }
}

/// The catalogue of the current row.
#[derive(Debug, Clone)]
pub enum Catalogue {
    Mongo { uri: String, db: String },
    Sqlite { path: PathBuf },
}

/// One group's collaboration; see the module docs.
pub struct World {
    pub spec: Spec,
    base: tempfile::TempDir,
    /// `base/w`: the live tree of the current row.
    pub root: PathBuf,
    /// `base/golden`: the tree as built.
    golden: PathBuf,
    sshd: BTreeMap<String, Sshd>,
    mongo: Option<&'static MongoServer>,
    client: Option<mongodb::Client>,
    golden_docs: Vec<RawDocumentBuf>,
    pub catalogue: Catalogue,
    rt: tokio::runtime::Runtime,
    /// Processes a row started in the background (a daemon); stopped by `reset`.
    pub background: Mutex<Vec<Child>>,
    counter: Mutex<u32>,
}

impl World {
    /// Builds a group's world with the real `ferry` (see the module docs).
    pub fn build(spec: Spec) -> World {
        let base = tempfile::Builder::new()
            .prefix("ferry-trust-")
            .tempdir()
            .unwrap();
        let root = base.path().join("w");
        let golden = base.path().join("golden");
        let mut sshd = BTreeMap::new();
        if spec.transport == Transport::Sftp {
            for site in SITES {
                sshd.insert(site.to_string(), Sshd::start().unwrap());
            }
        }
        let mongo = (spec.store == Store::Mongo).then(|| MongoServer::shared().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let catalogue = match spec.store {
            Store::Mongo => {
                let db = unique_db_name("trust_golden");
                Catalogue::Mongo {
                    uri: with_database(&mongo.unwrap().uri(), &db),
                    db,
                }
            }
            Store::Sqlite => Catalogue::Sqlite {
                path: root.join("agent/catalog.sqlite"),
            },
        };
        let client = mongo.map(|m| rt.block_on(mongodb::Client::with_uri_str(m.uri())).unwrap());
        let mut w = World {
            spec,
            base,
            root,
            golden,
            sshd,
            mongo,
            client,
            golden_docs: Vec::new(),
            catalogue,
            rt,
            background: Mutex::new(Vec::new()),
            counter: Mutex::new(0),
        };
        w.build_golden();
        w
    }

    fn build_golden(&mut self) {
        for site in SITES {
            mkdir(&self.data_dir(site));
        }
        for d in ["tape", "outside", "agent/state", "agent/home"] {
            mkdir(&self.root.join(d));
        }
        let secret = self.outside().join("secret-key");
        std::fs::write(
            &secret,
            "-----BEGIN OPENSSH PRIVATE KEY-----\ndecoy: nothing may copy, move or change me\n",
        )
        .unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        self.write_map(self.base_map());
        for n in 1..=3 {
            self.write_run_files(&self.data_dir("daq").join(run_name(n)), n);
        }
        self.golden_step("daq", &["--task", "register"]);
        self.golden_step("daq", &["--task", "push"]);
        self.write_run_files(&self.data_dir("daq").join(run_name(4)), 4);
        // Look-alikes: directories outside every data directory with runs 2 and 4's exact bytes.
        self.write_run_files(&self.outside().join(run_name(2)), 2);
        self.write_run_files(&self.outside().join(run_name(4)), 4);
        self.golden_step("daq", &["--task", "register"]);
        for site in SITES {
            self.golden_step(site, &["--task", "heartbeat"]);
        }
        // Purge rows need the runs older than daq's 1 s retention.
        std::thread::sleep(Duration::from_millis(1100));
        let runs = self.docs();
        assert_eq!(runs.len(), 4, "golden world: {runs:#?}");
        copy_tree(&self.root, &self.golden);
        if let Catalogue::Mongo { .. } = self.catalogue {
            self.golden_docs = self.raw_docs().into_iter().map(|(_, d)| d).collect();
        }
    }

    fn golden_step(&self, site: &str, args: &[&str]) {
        let out = self.exec(&self.agent(site, args));
        assert_eq!(out.code, Some(0), "building the world: {}", out.show());
    }

    /// Puts the golden world back: files, site map, a fresh catalogue; stops what a row left
    /// running.
    pub fn reset(&mut self) {
        self.stop_background();
        if self.root.exists() {
            make_writable(&self.root);
            std::fs::remove_dir_all(&self.root).unwrap();
        }
        copy_tree(&self.golden, &self.root);
        if let Catalogue::Mongo { .. } = self.catalogue {
            let db = unique_db_name("trust");
            let uri = with_database(&self.mongo.unwrap().uri(), &db);
            self.catalogue = Catalogue::Mongo {
                uri,
                db: db.clone(),
            };
            let docs = self.golden_docs.clone();
            let coll = self.raw_collection();
            self.rt.block_on(async {
                coll.insert_many(docs).await.unwrap();
            });
            let map = self.base_map();
            self.write_map(map);
        }
    }

    pub fn stop_background(&self) {
        for mut child in self.background.lock().unwrap().drain(..) {
            let pid = i32::try_from(child.id()).unwrap();
            // SIGTERM: the agent's own clean stop.
            unsafe_free_kill(pid);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    // ---- paths -------------------------------------------------------------------------

    /// `site`'s `raw` data directory.
    pub fn data_dir(&self, site: &str) -> PathBuf {
        self.root.join("sites").join(site).join("raw")
    }

    /// Where the layout puts run `n` at `site` (`Run{number:06}`).
    pub fn run_dir(&self, site: &str, n: i64) -> PathBuf {
        self.data_dir(site).join(run_name(n))
    }

    pub fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    pub fn map_path(&self) -> PathBuf {
        self.root.join("agent/map.json")
    }

    pub fn tape_dir(&self) -> PathBuf {
        self.root.join("tape")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("agent/state")
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("agent/home")
    }

    /// The directory the snapshot leaves out: the agent's own (map, state, home, catalogue
    /// file, command output).
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }

    pub fn catalogue_uri(&self) -> String {
        match &self.catalogue {
            Catalogue::Mongo { uri, .. } => uri.clone(),
            Catalogue::Sqlite { path } => format!("sqlite:{}", path.display()),
        }
    }

    /// Files of run `n` written by the test (deterministic bytes per run), with the marker.
    pub fn write_run_files(&self, dir: &Path, n: i64) {
        for (i, (rel, size)) in FILES.iter().enumerate() {
            let p = dir.join(rel);
            mkdir(p.parent().unwrap());
            let seed = u64::try_from(n).unwrap() << 8 | i as u64;
            std::fs::write(&p, pseudo_random(seed, *size)).unwrap();
        }
        std::fs::write(dir.join(MARKER), b"").unwrap();
    }

    // ---- the site map ------------------------------------------------------------------

    /// The site map every row starts from.
    pub fn base_map(&self) -> serde_json::Value {
        let mut sites = Vec::new();
        for name in SITES {
            let mut site = serde_json::json!({
                "name": name,
                "data_dirs": { "raw": self.data_dir(name) },
                "layout": "Run{number:06}",
                "completion": { "marker": MARKER },
            });
            match self.spec.transport {
                Transport::Local => site["method"] = "local".into(),
                Transport::Sftp => {
                    let s = &self.sshd[name];
                    for (k, v) in [
                        ("method", serde_json::json!("sftp")),
                        ("hostname", s.host().into()),
                        ("port", s.port().into()),
                        ("username", s.user().into()),
                        (
                            "identity_file",
                            s.user_key_path().display().to_string().into(),
                        ),
                        (
                            "known_hosts",
                            s.known_hosts_path().display().to_string().into(),
                        ),
                        ("strict_host_key_checking", "yes".into()),
                    ] {
                        site[k] = v;
                    }
                }
            }
            match name {
                "daq" => {
                    site["origin"] = true.into();
                    site["push_to"] = serde_json::json!(["mirror"]);
                    site["tape"] = serde_json::json!([
                        { "name": TAPE, "kind": "directory", "path": self.tape_dir() }
                    ]);
                    site["purge"] = serde_json::json!({
                        "enabled": true, "min_copies": 1, "retention": "1s",
                        "high_water_mark": 100
                    });
                }
                "backup" => site["pull_from"] = serde_json::json!(["mirror"]),
                _ => {}
            }
            sites.push(site);
        }
        serde_json::json!({
            "version": 1,
            "catalog": { "uri": self.catalogue_uri() },
            "sites": sites,
        })
    }

    pub fn map(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.map_path()).unwrap()).unwrap()
    }

    pub fn write_map(&self, map: serde_json::Value) {
        std::fs::write(self.map_path(), serde_json::to_string_pretty(&map).unwrap()).unwrap();
    }

    /// Changes `site`'s entry of the site map.
    pub fn edit_site(&self, site: &str, change: impl FnOnce(&mut serde_json::Value)) {
        let mut map = self.map();
        let entry = map["sites"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|s| s["name"] == site)
            .unwrap();
        change(entry);
        self.write_map(map);
    }

    // ---- commands ----------------------------------------------------------------------

    /// `ferry --config MAP --host SITE --once ARGS`.
    pub fn agent(&self, site: &str, args: &[&str]) -> Cmd {
        let mut cmd = Cmd::new(&[
            "--config",
            self.map_path().to_str().unwrap(),
            "--host",
            site,
            "--once",
        ]);
        for a in args {
            cmd = cmd.arg(a);
        }
        cmd
    }

    /// `ferry ARGS` as given.
    pub fn ferry(&self, args: &[&str]) -> Cmd {
        Cmd::new(args)
    }

    fn command(&self, cmd: &Cmd, tag: &str) -> (Command, PathBuf, PathBuf) {
        let n = {
            let mut c = self.counter.lock().unwrap();
            *c += 1;
            *c
        };
        let out = self.agent_dir().join(format!("out-{tag}{n}.stdout"));
        let err = self.agent_dir().join(format!("out-{tag}{n}.stderr"));
        let mut c = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") || k == "RUST_LOG" || k.starts_with("XDG_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.home())
            .env("FERRY_STATE_DIR", self.state_dir())
            .env("NO_COLOR", "1")
            .current_dir(&self.root)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        for (k, v) in &cmd.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        (c, out, err)
    }

    /// Runs `cmd` to its end (killed after [`COMMAND_TIMEOUT`]).
    pub fn exec(&self, cmd: &Cmd) -> Outcome {
        let (mut c, out, err) = self.command(cmd, "");
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut hung = false;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                hung = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = child.wait().unwrap();
        let mut stderr = std::fs::read_to_string(&err).unwrap_or_default();
        if hung {
            stderr.push_str(&format!("\n[test: killed after {COMMAND_TIMEOUT:?}]"));
        }
        Outcome {
            label: cmd.label(),
            code: if hung { None } else { status.code() },
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr,
        }
    }

    /// Starts `cmd` in the background (stopped by `reset`); returns its pid and the path of its
    /// stdout, once `ready(stdout and stderr)` holds (or panics after 60 s).
    pub fn spawn(&self, cmd: &Cmd, ready: impl Fn(&str) -> bool) -> (u32, PathBuf) {
        let (mut c, out, err) = self.command(cmd, "bg");
        let mut child = c.spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut text = std::fs::read_to_string(&out).unwrap_or_default();
            text.push_str(&std::fs::read_to_string(&err).unwrap_or_default());
            if ready(&text) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "background `{}` ended ({status}) before it was ready: {text}\n{}",
                    cmd.label(),
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "background `{}` never ready",
                cmd.label()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.background.lock().unwrap().push(child);
        (pid, out)
    }

    /// Waits until no copy is `transferring` or `verifying`: a daemon's copies run behind
    /// its cycle (the transfer scheduler), so "its first cycle has ended" is not "it is
    /// idle".
    pub fn wait_until_no_copy_in_flight(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Quiet for a second: a job the cycle planned may claim its copy just after the
        // cycle's last line, so one idle look is not enough.
        let mut idle_since: Option<Instant> = None;
        loop {
            let busy = self.raw_docs().iter().any(|(_, d)| {
                let Ok(doc) = d.to_document() else {
                    return false;
                };
                doc.get_array("data").is_ok_and(|data| {
                    data.iter().any(|c| {
                        c.as_document()
                            .and_then(|c| c.get_str("status").ok())
                            .is_some_and(|s| s == "transferring" || s == "verifying")
                    })
                })
            });
            if busy {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed()
                >= Duration::from_secs(1)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "copies still in flight after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- the catalogue -----------------------------------------------------------------

    fn raw_collection(&self) -> mongodb::Collection<RawDocumentBuf> {
        let Catalogue::Mongo { db, .. } = &self.catalogue else {
            panic!("not a MongoDB world");
        };
        self.client
            .as_ref()
            .unwrap()
            .database(db)
            .collection("runs")
    }

    /// Every run document as stored, keyed by `_id` (MongoDB) or row id (SQLite), in key
    /// order.
    pub fn raw_docs(&self) -> Vec<(String, RawDocumentBuf)> {
        match &self.catalogue {
            Catalogue::Mongo { .. } => {
                let coll = self.raw_collection();
                let docs: Vec<RawDocumentBuf> = self.rt.block_on(async {
                    coll.find(doc! {})
                        .sort(doc! { "_id": 1 })
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .unwrap()
                });
                docs.into_iter()
                    .map(|d| {
                        let key = match d.get("_id") {
                            Ok(Some(id)) => format!("{:?}", id),
                            _ => "<no _id>".to_string(),
                        };
                        (key, d)
                    })
                    .collect()
            }
            Catalogue::Sqlite { path } => {
                let db = sqlite(path);
                let mut st = db
                    .prepare("SELECT id, detector, number, name, doc FROM runs ORDER BY id")
                    .unwrap();
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ))
                    })
                    .unwrap();
                rows.map(|r| {
                    let (id, det, num, name, blob) = r.unwrap();
                    let doc = RawDocumentBuf::from_bytes(blob).unwrap();
                    (format!("row {id} ({det}, {num}, {name:?})"), doc)
                })
                .collect()
            }
        }
    }

    /// Every run document, decoded.
    pub fn docs(&self) -> Vec<Document> {
        self.raw_docs()
            .into_iter()
            .map(|(_, d)| d.to_document().unwrap())
            .collect()
    }

    /// Run `n`'s document.
    pub fn run_doc(&self, n: i64) -> Document {
        self.docs()
            .into_iter()
            .find(|d| number(d) == Some(n))
            .unwrap_or_else(|| panic!("no run {n}"))
    }

    /// The copy of run `n` at `site`, if any.
    pub fn copy(&self, n: i64, site: &str) -> Option<Document> {
        copy_in(&self.run_doc(n), site)
    }

    /// Rewrites run `n`'s document as another tool could (the whole document replaced; the
    /// embedded store's copy index re-projected from it).
    pub fn edit_run(&self, n: i64, change: impl FnOnce(&mut Document)) {
        let mut doc = self.run_doc(n);
        change(&mut doc);
        match &self.catalogue {
            Catalogue::Mongo { .. } => {
                let id = doc.get("_id").unwrap().clone();
                let coll = self.raw_collection().clone_with_type::<Document>();
                self.rt.block_on(async {
                    let r = coll.replace_one(doc! { "_id": id }, doc).await.unwrap();
                    assert_eq!(r.matched_count, 1);
                });
            }
            Catalogue::Sqlite { path } => {
                let db = sqlite(path);
                let id: i64 = db
                    .query_row("SELECT id FROM runs WHERE number = ?1", [n], |r| r.get(0))
                    .unwrap();
                let mut blob = Vec::new();
                doc.to_writer(&mut blob).unwrap();
                db.execute(
                    "UPDATE runs SET doc = ?1 WHERE id = ?2",
                    rusqlite::params![blob, id],
                )
                .unwrap();
                db.execute("DELETE FROM copies WHERE run_id = ?1", [id])
                    .unwrap();
                db.execute("DELETE FROM wants WHERE run_id = ?1", [id])
                    .unwrap();
                for c in doc.get_array("data").into_iter().flatten() {
                    let c = c.as_document().unwrap();
                    let expires = c
                        .get_document("lease")
                        .ok()
                        .and_then(|l| l.get_datetime("expires").ok())
                        .map(|d| d.timestamp_millis());
                    db.execute(
                        "INSERT INTO copies (run_id, host, type, status, lease_expires)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![
                            id,
                            c.get_str("host").unwrap(),
                            c.get_str("type").unwrap_or("raw"),
                            c.get_str("status").unwrap(),
                            expires
                        ],
                    )
                    .unwrap();
                }
                for w in doc.get_array("want").into_iter().flatten() {
                    db.execute(
                        "INSERT INTO wants (want, run_id) VALUES (?1, ?2)",
                        rusqlite::params![w.as_str().unwrap(), id],
                    )
                    .unwrap();
                }
            }
        }
    }

    /// Changes the copy of run `n` at `site` (its `host_status` kept in step with `status`).
    pub fn edit_copy(&self, n: i64, site: &str, change: impl FnOnce(&mut Document)) {
        self.edit_run(n, |run| {
            let data = run.get_array_mut("data").unwrap();
            let copy = data
                .iter_mut()
                .filter_map(Bson::as_document_mut)
                .find(|c| c.get_str("host") == Ok(site))
                .unwrap_or_else(|| panic!("run {n} has no copy at {site}"));
            change(copy);
            let status = copy.get_str("status").unwrap().to_string();
            if copy.contains_key("host_status") {
                copy.insert("host_status", format!("{site}/{status}"));
            }
        });
    }

    /// Inserts a document as another tool would (MongoDB only).
    pub fn insert_raw(&self, doc: Document) {
        let coll = self.raw_collection().clone_with_type::<Document>();
        self.rt.block_on(async {
            coll.insert_one(doc).await.unwrap();
        });
    }

    /// A MongoDB client of the shared server (MongoDB worlds).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_background();
        make_writable(self.base.path());
    }
}

/// SIGTERM to a child this test started.
fn unsafe_free_kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

pub fn sqlite(path: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

pub fn with_database(uri: &str, db: &str) -> String {
    match uri.split_once("/?") {
        Some((head, opts)) => format!("{head}/{db}?{opts}"),
        None => format!("{uri}/{db}"),
    }
}

pub fn run_name(n: i64) -> String {
    format!("Run{n:06}")
}

/// The run number of a document (int32, int64 or a whole double).
pub fn number(doc: &Document) -> Option<i64> {
    match doc.get("number")? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

pub fn copy_in(run: &Document, site: &str) -> Option<Document> {
    run.get_array("data")
        .ok()?
        .iter()
        .filter_map(Bson::as_document)
        .find(|c| c.get_str("host") == Ok(site))
        .cloned()
}

pub fn mkdir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
}

/// `cp -a`: modes, times and symbolic links kept.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Gives the owner write permission on every directory below `p` (a row may have made one
/// read-only), so it can be removed.
fn make_writable(p: &Path) {
    let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(p).status();
}

/// Deterministic bytes (xorshift64), different per seed.
pub fn pseudo_random(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

// ---- the snapshot ----------------------------------------------------------------------

/// One path below the root, as `lstat` sees it (links never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { mode: u32, sha256: String },
    Dir { mode: u32 },
    Link { target: PathBuf },
    Other { mode: u32 },
}

/// A change a case expects; anything else that differs is a failure.
#[derive(Debug, Clone)]
pub enum Allow {
    /// The copy at `site` of run `run` may change, appear or disappear; with it the run's
    /// `events` and its `want` entry for the site.
    Copy { run: i64, site: String },
    /// Run `run`'s document may change in any way, or appear.
    Run(i64),
    /// This field may change in any copy (e.g. `verified_time` refreshed by a re-hash).
    CopyField(String),
    /// Anything at or below this path may change, appear or disappear.
    Path(PathBuf),
}

/// Every file below the world's root (its agent directory left out) and every run document.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub files: BTreeMap<PathBuf, Entry>,
    pub docs: BTreeMap<String, (Vec<u8>, Document)>,
}

impl Snapshot {
    pub fn take(world: &World) -> Snapshot {
        let mut files = BTreeMap::new();
        let skip = world.agent_dir();
        let mut stack = vec![world.root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p == skip {
                    continue;
                }
                let md = std::fs::symlink_metadata(&p).unwrap();
                let mode = md.mode() & 0o7777;
                let entry = if md.file_type().is_symlink() {
                    Entry::Link {
                        target: std::fs::read_link(&p).unwrap(),
                    }
                } else if md.is_dir() {
                    stack.push(p.clone());
                    Entry::Dir { mode }
                } else if md.is_file() {
                    Entry::File {
                        mode,
                        sha256: sha256_file(&p),
                    }
                } else {
                    Entry::Other { mode }
                };
                files.insert(p, entry);
            }
        }
        let docs = world
            .raw_docs()
            .into_iter()
            .map(|(k, raw)| {
                let doc = raw.to_document().unwrap();
                (k, (raw.into_bytes(), doc))
            })
            .collect();
        Snapshot { files, docs }
    }

    /// Takes a new snapshot of `world` and fails, listing every difference, unless all of
    /// them are covered by `allow`.
    pub fn assert_unchanged_except(&self, world: &World, allow: &[Allow]) {
        let bad = self.differences(&Snapshot::take(world), allow);
        assert!(bad.is_empty(), "changed:\n{}", bad.join("\n"));
    }

    /// Every difference between `self` (before) and `after` that `allow` does not cover.
    pub fn differences(&self, after: &Snapshot, allow: &[Allow]) -> Vec<String> {
        let mut out = Vec::new();
        let path_allowed = |p: &Path| {
            allow
                .iter()
                .any(|a| matches!(a, Allow::Path(q) if p.starts_with(q)))
        };
        let keys: BTreeSet<&PathBuf> = self.files.keys().chain(after.files.keys()).collect();
        for p in keys {
            let (b, a) = (self.files.get(p), after.files.get(p));
            if b == a || path_allowed(p) || agent_file(p, b, a) {
                continue;
            }
            out.push(match (b, a) {
                (None, Some(a)) => format!("appeared: {} {a:?}", p.display()),
                (Some(_), None) => format!("vanished: {}", p.display()),
                (Some(b), Some(a)) => format!("changed: {} {b:?} -> {a:?}", p.display()),
                (None, None) => unreachable!(),
            });
        }
        let keys: BTreeSet<&String> = self.docs.keys().chain(after.docs.keys()).collect();
        for k in keys {
            let (b, a) = (self.docs.get(k), after.docs.get(k));
            if let (Some(b), Some(a)) = (b, a) {
                if b.0 == a.0 {
                    continue;
                }
            }
            let run = a.or(b).and_then(|d| number(&d.1));
            if run.is_some_and(|n| allow.iter().any(|x| matches!(x, Allow::Run(m) if *m == n))) {
                continue;
            }
            match (b, a) {
                (None, Some(a)) => out.push(format!("document appeared: {k}: {}", a.1)),
                (Some(b), None) => out.push(format!("document vanished: {k}: {}", b.1)),
                (Some(b), Some(a)) => {
                    let (mut b, mut a) = (b.1.clone(), a.1.clone());
                    let n = number(&a).or(number(&b));
                    for x in allow {
                        match x {
                            Allow::Copy { run, site } if Some(*run) == n => {
                                for d in [&mut a, &mut b] {
                                    d.remove("events");
                                    drop_copy(d, site);
                                    drop_want(d, site);
                                }
                            }
                            Allow::CopyField(f) => {
                                for d in [&mut a, &mut b] {
                                    drop_copy_field(d, f);
                                }
                            }
                            _ => {}
                        }
                    }
                    if a != b {
                        out.push(format!(
                            "document changed: {k}:\n      before {b}\n      after  {a}"
                        ));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        out
    }
}

/// An [`AGENT_FILES`] file directly in a site's data directory, a file before and after.
fn agent_file(p: &Path, b: Option<&Entry>, a: Option<&Entry>) -> bool {
    let named = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        AGENT_FILES.contains(&n) || (n.starts_with(".ferry-") && n.ends_with(".lock"))
    });
    let in_data_dir = p
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|n| n == "sites");
    let files = |e: Option<&Entry>| matches!(e, None | Some(Entry::File { .. }));
    named && in_data_dir && files(b) && files(a)
}

fn drop_copy(d: &mut Document, site: &str) {
    if let Ok(data) = d.get_array_mut("data") {
        data.retain(|c| c.as_document().and_then(|c| c.get_str("host").ok()) != Some(site));
    }
}

fn drop_want(d: &mut Document, site: &str) {
    if let Ok(want) = d.get_array_mut("want") {
        want.retain(|w| {
            !w.as_str()
                .is_some_and(|w| w.starts_with(&format!("{site}/")))
        });
    }
}

fn drop_copy_field(d: &mut Document, field: &str) {
    if let Ok(data) = d.get_array_mut("data") {
        for c in data.iter_mut().filter_map(Bson::as_document_mut) {
            c.remove(field);
        }
    }
}
