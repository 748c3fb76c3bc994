//! The transfer scheduler end to end: one DAQ site's daemon (the real `ferry` binary) pushing
//! to three mirrors over real OpenSSH sshd, each behind a throttling proxy
//! ([`ThrottleProxy`]), one of them four times slower than the others, the catalogue in the
//! MongoDB-wire server.
//!
//! - The fast mirrors get every run while the slow mirror's copies are still in flight.
//! - A run written while the slow link is busy is started at the fast mirrors within one
//!   interval of its registration (the daemon does not wait for copies).
//! - Files in flight per link and in all, counted at the servers: every mirror's
//!   `sftp-server` logs each open and close to one shared file (`-l INFO`, appended in the
//!   order the servers handle the requests). A file is in flight at the server from its
//!   first open to its last close; the peaks are exactly the site map's limits: never
//!   above, and reached.
//! - SIGTERM with nothing in flight: the daemon exits 0. SIGTERM with copies in flight: no
//!   copy starts after it, the running ones are finished and recorded, the others stay
//!   wanted, and the daemon exits 0.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use ferry_tests::{unique_db_name, MongoServer, Shape, Sshd, SshdOptions, ThrottleProxy};
use futures::TryStreamExt;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const MARKER: &str = "RUN_COMPLETE";
const MIRRORS: [&str; 3] = ["fast-a", "fast-b", "slow"];
const FILES_PER_RUN: usize = 6;
const FILE_SIZE: usize = 256 << 10;
/// The slow link's bandwidth, each way.
const SLOW_RATE: u64 = 512 << 10;
/// The fast links' bandwidth, each way: four times the slow one's. Unthrottled loopback
/// finishes a fast file in a few milliseconds, no longer than the agent's own work between
/// two files, and the global limit was then reached at the servers only by luck of the
/// timing (seen on a loaded 2-core CI machine: a global peak of 4 of 5). At this rate a
/// file is in flight about a quarter of a second, long beside the gaps between files.
const FAST_RATE: u64 = 2 << 20;
const INTERVAL: Duration = Duration::from_secs(1);
/// The DAQ site's limits.
const FILES_IN_FLIGHT: usize = 2;
const PER_LINK: usize = 2;
const GLOBAL: usize = 5;

struct World {
    sites: BTreeMap<String, Sshd>,
    _proxies: Vec<ThrottleProxy>,
    home: tempfile::TempDir,
    sftp_log: PathBuf,
    uri: String,
    db: String,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let mongo = MongoServer::shared().unwrap();
        let db = unique_db_name("scheduler_links");
        let uri = match mongo.uri().split_once("/?") {
            Some((head, opts)) => format!("{head}/{db}?{opts}"),
            None => format!("{}/{db}", mongo.uri()),
        };
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("state")).unwrap();
        let sftp_log = home.path().join("sftp.log");
        let mut sites = BTreeMap::new();
        for name in ["daq", "fast-a", "fast-b", "slow"] {
            let sshd = Sshd::start_with(SshdOptions {
                sftp_command: Some(format!(
                    "/usr/lib/openssh/sftp-server -e -l INFO 2>>{}",
                    sftp_log.display()
                )),
                ..SshdOptions::default()
            })
            .unwrap();
            std::fs::create_dir_all(sshd.root().join("raw")).unwrap();
            sites.insert(name.to_string(), sshd);
        }
        // Every mirror is reached through a throttling proxy: its host key under the
        // proxy's port.
        let mut proxies = Vec::new();
        let mut proxied: BTreeMap<String, (u16, PathBuf)> = BTreeMap::new();
        for name in MIRRORS {
            let rate = if name == "slow" { SLOW_RATE } else { FAST_RATE };
            let sshd = &sites[name];
            let proxy = ThrottleProxy::start(
                sshd.port(),
                Shape {
                    rate: Some(rate),
                    delay: Duration::ZERO,
                },
            )
            .unwrap();
            let key = std::fs::read_to_string(sshd.known_hosts_path()).unwrap();
            let key = key.split_once(' ').unwrap().1.trim().to_string();
            let hosts = home.path().join(format!("known_hosts_{name}"));
            std::fs::write(&hosts, format!("[127.0.0.1]:{} {key}\n", proxy.port())).unwrap();
            proxied.insert(name.to_string(), (proxy.port(), hosts));
            proxies.push(proxy);
        }
        let mut json = Vec::new();
        for (name, sshd) in &sites {
            let (port, known_hosts) = match proxied.get(name) {
                Some((port, hosts)) => (*port, hosts.clone()),
                None => (sshd.port(), sshd.known_hosts_path().to_path_buf()),
            };
            let mut site = serde_json::json!({
                "name": name,
                "method": "sftp",
                "hostname": sshd.host(),
                "port": port,
                "username": sshd.user(),
                "identity_file": sshd.user_key_path(),
                "known_hosts": known_hosts,
                "strict_host_key_checking": "yes",
                "data_dirs": { "raw": sshd.root().join("raw") },
                "layout": "Run{number:06}",
                "completion": { "marker": MARKER },
            });
            if name == "daq" {
                site["origin"] = true.into();
                site["push_to"] = serde_json::json!(MIRRORS);
                site["limits"] = serde_json::json!({
                    "files_in_flight": FILES_IN_FLIGHT,
                    "transfers_per_link": PER_LINK,
                    "global_transfers": GLOBAL,
                });
            }
            json.push(site);
        }
        let map = serde_json::json!({ "version": 1, "sites": json });
        std::fs::write(home.path().join("map.json"), map.to_string()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        World {
            sites,
            _proxies: proxies,
            home,
            sftp_log,
            uri,
            db,
            rt,
        }
    }

    fn root(&self, site: &str) -> PathBuf {
        self.sites[site].root().join("raw")
    }

    /// The DAQ site's daemon.
    fn daemon(&self) -> Child {
        let mut cmd = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.home.path())
            .env("FERRY_STATE_DIR", self.home.path().join("state"))
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.home.path().join("map.json"))
            .args(["--host", "daq", "--catalog", &self.uri])
            .args(["--interval", "1s", "--log-file"])
            .arg(self.home.path().join("daq.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A complete run at the DAQ site.
    fn run(&self, number: u32) {
        let dir = self.root("daq").join(format!("Run{number:06}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..FILES_PER_RUN {
            let bytes: Vec<u8> = (0..FILE_SIZE)
                .map(|j| {
                    (j as u32)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(number * 97 + i as u32) as u8
                })
                .collect();
            std::fs::write(dir.join(format!("f{i}.evio")), bytes).unwrap();
        }
        std::fs::write(dir.join(MARKER), b"").unwrap();
    }

    /// Status of every copy: (run, site) → status.
    fn statuses(&self) -> HashMap<(i64, String), String> {
        self.rt.block_on(async {
            let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
            let runs: Vec<Document> = client
                .database(&self.db)
                .collection::<Document>("runs")
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut out = HashMap::new();
            for run in runs {
                let number = run
                    .get_i64("number")
                    .or_else(|_| run.get_i32("number").map(i64::from))
                    .unwrap();
                out.insert((number, "registered".to_string()), String::new());
                for tag in run
                    .get_array("want")
                    .map(|a| a.to_vec())
                    .unwrap_or_default()
                {
                    out.insert(
                        (number, format!("want {}", tag.as_str().unwrap())),
                        String::new(),
                    );
                }
                for c in run.get_array("data").unwrap() {
                    let c = c.as_document().unwrap();
                    out.insert(
                        (number, c.get_str("host").unwrap().to_string()),
                        c.get_str("status").unwrap().to_string(),
                    );
                }
            }
            out
        })
    }

    fn daq_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("daq.log")).unwrap_or_default()
    }
}

fn transferred(s: &HashMap<(i64, String), String>, run: i64, site: &str) -> bool {
    s.get(&(run, site.to_string())).map(String::as_str) == Some("transferred")
}

/// Polls `until` every 50 ms for at most `limit`; the statuses that satisfied it.
fn wait_for(
    w: &World,
    what: &str,
    limit: Duration,
    until: impl Fn(&HashMap<(i64, String), String>) -> bool,
) -> HashMap<(i64, String), String> {
    let start = Instant::now();
    loop {
        let s = w.statuses();
        if until(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {s:?}\nlog:\n{}",
            w.daq_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files in flight at the servers, from the shared sftp-server log: a file (its `.part`
/// and final name are one file) is in flight from its first open to its last close. The
/// peaks: per mirror, per run directory, and in all.
struct Peaks {
    per_link: BTreeMap<String, usize>,
    per_run: usize,
    global: usize,
    files: usize,
}

fn peaks(log: &str, roots: &BTreeMap<String, PathBuf>) -> Peaks {
    // (first open, last close) per file, as line numbers.
    let mut spans: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, line) in log.lines().enumerate() {
        let (is_open, rest) = if let Some(r) = line.strip_prefix("open \"") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("close \"") {
            (false, r)
        } else {
            continue;
        };
        let Some((path, _)) = rest.split_once('"') else {
            continue;
        };
        let file = path.strip_suffix(".part").unwrap_or(path).to_string();
        let span = spans.entry(file).or_insert((i, i));
        if is_open {
            span.0 = span.0.min(i);
        } else {
            span.1 = span.1.max(i);
        }
    }
    let site_of = |file: &str| {
        roots
            .iter()
            .find(|(_, root)| Path::new(file).starts_with(root))
            .map(|(s, _)| s.clone())
    };
    let run_of = |file: &str| Path::new(file).parent().unwrap().display().to_string();
    // Sweep: +1 at the first open, -1 after the last close.
    let mut events: Vec<(usize, i32, String)> = Vec::new();
    for (file, (open, close)) in &spans {
        if site_of(file).is_none() {
            continue;
        }
        events.push((*open, 1, file.clone()));
        events.push((*close, -1, file.clone()));
    }
    events.sort_by_key(|(at, delta, _)| (*at, *delta));
    let mut now_link: HashMap<String, i64> = HashMap::new();
    let mut now_run: HashMap<String, i64> = HashMap::new();
    let mut now = 0i64;
    let mut p = Peaks {
        per_link: BTreeMap::new(),
        per_run: 0,
        global: 0,
        files: spans.len(),
    };
    for (_, delta, file) in events {
        let site = site_of(&file).unwrap();
        let l = now_link.entry(site.clone()).or_default();
        *l += i64::from(delta);
        let r = now_run.entry(run_of(&file)).or_default();
        *r += i64::from(delta);
        now += i64::from(delta);
        let peak = p.per_link.entry(site).or_default();
        *peak = (*peak).max(usize::try_from(*l).unwrap_or(0));
        p.per_run = p.per_run.max(usize::try_from(*r).unwrap_or(0));
        p.global = p.global.max(usize::try_from(now).unwrap_or(0));
    }
    p
}

#[test]
fn fast_mirrors_get_every_run_while_the_slow_link_is_busy_within_the_limits() {
    let w = World::new();
    for number in 1..=4 {
        w.run(number);
    }
    let started = Instant::now();
    let mut daemon = w.daemon();
    let fast = ["fast-a", "fast-b"];

    // Every run at both fast mirrors while the slow mirror still copies.
    let s = wait_for(
        &w,
        "runs 1-4 at the fast mirrors",
        Duration::from_secs(60),
        |s| (1..=4).all(|r| fast.iter().all(|m| transferred(s, r, m))),
    );
    let fast_done = started.elapsed();
    let slow_left: Vec<i64> = (1..=4).filter(|r| !transferred(&s, *r, "slow")).collect();
    assert!(
        slow_left.len() >= 2,
        "the slow mirror should still be copying when the fast ones are done \
         ({fast_done:?}); not yet there: {slow_left:?}"
    );
    assert!(
        (1..=4)
            .any(|r| s.get(&(r, "slow".to_string())).map(String::as_str) == Some("transferring")),
        "a slow copy in flight: {s:?}"
    );

    // A run written now is started at the fast mirrors within one interval of its
    // registration, while the slow link is still busy.
    w.run(5);
    let registered = wait_for(&w, "run 5 registered", Duration::from_secs(10), |s| {
        s.contains_key(&(5, "registered".to_string()))
    });
    let t_registered = Instant::now();
    assert!(registered.contains_key(&(5, "registered".to_string())));
    let s = wait_for(
        &w,
        "run 5 started at the fast mirrors",
        Duration::from_secs(10),
        |s| fast.iter().all(|m| s.contains_key(&(5, m.to_string()))),
    );
    let waited = t_registered.elapsed();
    assert!(
        waited <= INTERVAL,
        "run 5 waited {waited:?} after its registration, more than one interval ({INTERVAL:?})"
    );
    assert!(
        (1..=4).any(|r| !transferred(&s, r, "slow")),
        "the slow link should still be busy with the older runs: {s:?}"
    );

    // Everything arrives everywhere.
    wait_for(
        &w,
        "every run at every mirror",
        Duration::from_secs(120),
        |s| (1..=5).all(|r| MIRRORS.iter().all(|m| transferred(s, r, m))),
    );
    let total = started.elapsed();
    for m in MIRRORS {
        for number in 1..=5u32 {
            let run = format!("Run{number:06}");
            for i in 0..FILES_PER_RUN {
                let name = format!("f{i}.evio");
                assert_eq!(
                    std::fs::read(w.root(m).join(&run).join(&name)).unwrap(),
                    std::fs::read(w.root("daq").join(&run).join(&name)).unwrap(),
                    "{m} {run} {name}"
                );
            }
        }
    }

    // SIGTERM with nothing in flight: a clean stop.
    kill_term(daemon.id());
    let stop = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(30),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "log:\n{}", w.daq_log());

    // The limits, counted at the servers.
    let log = std::fs::read_to_string(&w.sftp_log).unwrap();
    let _ = std::fs::write("/tmp/sftp-debug.log", &log);
    let roots: BTreeMap<String, PathBuf> =
        MIRRORS.iter().map(|m| (m.to_string(), w.root(m))).collect();
    let p = peaks(&log, &roots);
    eprintln!(
        "fast mirrors done after {fast_done:?}, all after {total:?}; run 5 started {waited:?} \
         after registration; peaks at the servers: per link {:?}, per run {}, global {} \
         ({} files)",
        p.per_link, p.per_run, p.global, p.files
    );
    assert_eq!(
        p.files,
        MIRRORS.len() * 5 * FILES_PER_RUN,
        "files seen at the servers"
    );
    for m in MIRRORS {
        assert_eq!(
            p.per_link[m], PER_LINK,
            "{m}: transfers_per_link: {:?}",
            p.per_link
        );
    }
    assert_eq!(p.per_run, FILES_IN_FLIGHT, "files_in_flight");
    assert_eq!(p.global, GLOBAL, "global_transfers: {:?}", p.per_link);
}

/// SIGTERM to a child process this test started.
fn kill_term(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_finishes_the_running_copies_and_leaves_the_rest_wanted() {
    let w = World::new();
    for number in 1..=4 {
        w.run(number);
    }
    let mut daemon = w.daemon();
    // The fast mirrors are done at once; the slow link has its first runs in flight.
    wait_for(&w, "a slow copy in flight", Duration::from_secs(30), |s| {
        (1..=4).any(|r| s.get(&(r, "slow".to_string())).map(String::as_str) == Some("transferring"))
    });
    // The link's first runs are claimed together; the next starts only when one ends.
    std::thread::sleep(Duration::from_millis(300));
    let s = w.statuses();
    let in_flight: Vec<i64> = (1..=4)
        .filter(|r| s.contains_key(&(*r, "slow".to_string())))
        .collect();
    kill_term(daemon.id());
    let stop = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(60),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "log:\n{}", w.daq_log());
    let s = w.statuses();
    let started: Vec<i64> = (1..=4)
        .filter(|r| s.contains_key(&(*r, "slow".to_string())))
        .collect();
    assert_eq!(
        started, in_flight,
        "no slow copy started after SIGTERM: {s:?}"
    );
    for r in &started {
        assert!(
            transferred(&s, *r, "slow"),
            "run {r}: finished within the grace period: {s:?}"
        );
    }
    let left: Vec<i64> = (1..=4).filter(|r| !started.contains(r)).collect();
    assert!(
        !left.is_empty(),
        "some slow copies should not have started: {s:?}"
    );
    for r in left {
        assert!(
            s.contains_key(&(r, "want slow/raw".to_string())),
            "run {r}: still wanted at the slow mirror: {s:?}"
        );
    }
}
