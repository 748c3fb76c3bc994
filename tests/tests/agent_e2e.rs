//! The agent end to end, as operators run it: the real `ferry` binary (`ferry_under_test`,
//! the same `ferry::cli::main`), one `--once` per site, sites that are each their own
//! directory tree behind a real OpenSSH sshd (the harness's [`Sshd`]), and the real
//! MongoDB-wire server ([`MongoServer::shared`], a database of its own per test).
//!
//! - `three_sites_…`: origin → mirror-a by push (SFTP), mirror-b pulling from mirror-a (SFTP).
//!   Every run ends with three `transferred` copies whose digests match a digest this test
//!   computes itself with `sha2` from the origin's files, and the files at both mirrors hash
//!   to it too. Each agent opens one SSH connection for all its runs and files (counted in
//!   the sshd log).
//! - `two_agents_racing_…`: the origin pushes to the mirror while the mirror pulls from the
//!   origin, at the same time: every run is copied by exactly one of them.
//!
//! All sshd servers run on this machine, so the test reads every site's files directly.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use bson::{doc, Document};
use ferry_tests::{unique_db_name, MongoServer, Shape, Sshd, ThrottleProxy};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

mod agent_common;
use agent_common::kill_connections;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");
const MARKER: &str = "RUN_COMPLETE";

/// A collaboration of sites, each behind its own sshd, sharing one site map and catalogue.
struct World {
    sites: BTreeMap<String, Sshd>,
    /// Throttling proxies some sites are reached through ([`World::throttle`]).
    proxies: Vec<ThrottleProxy>,
    home: tempfile::TempDir,
    uri: String,
    db: String,
}

impl World {
    /// Starts one sshd per site and writes the site map; `links(name)` gives a site's
    /// `origin`, `push_to` and `pull_from` settings.
    fn new(test: &str, names: &[&str], links: impl Fn(&str) -> serde_json::Value) -> World {
        let mongo = MongoServer::shared().unwrap();
        let db = unique_db_name(test);
        let uri = match mongo.uri().split_once("/?") {
            Some((head, opts)) => format!("{head}/{db}?{opts}"),
            None => format!("{}/{db}", mongo.uri()),
        };
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("state")).unwrap();
        let mut sites = BTreeMap::new();
        let mut json = Vec::new();
        for name in names {
            let sshd = Sshd::start().unwrap();
            std::fs::create_dir_all(sshd.root().join("raw")).unwrap();
            let mut site = serde_json::json!({
                "name": name,
                "method": "sftp",
                "hostname": sshd.host(),
                "port": sshd.port(),
                "username": sshd.user(),
                "identity_file": sshd.user_key_path(),
                "known_hosts": sshd.known_hosts_path(),
                "strict_host_key_checking": "yes",
                "data_dirs": { "raw": sshd.root().join("raw") },
                "layout": "Run{number:06}",
                "completion": { "marker": MARKER },
                "limits": { "files_in_flight": 4, "transfers_per_link": 4, "global_transfers": 8 },
            });
            let extra = links(name);
            for (k, v) in extra.as_object().unwrap() {
                site[k] = v.clone();
            }
            json.push(site);
            sites.insert(name.to_string(), sshd);
        }
        let map = serde_json::json!({ "version": 1, "sites": json });
        std::fs::write(home.path().join("map.json"), map.to_string()).unwrap();
        World {
            sites,
            proxies: Vec::new(),
            home,
            uri,
            db,
        }
    }

    /// From now on `site` is reached through a proxy at `rate` bytes a second each way: the
    /// site map names the proxy's port, and a known_hosts file lists the site's key under it.
    fn throttle(&mut self, site: &str, rate: u64) {
        let sshd = &self.sites[site];
        let proxy = ThrottleProxy::start(
            sshd.port(),
            Shape {
                rate: Some(rate),
                delay: std::time::Duration::ZERO,
            },
        )
        .unwrap();
        let key = std::fs::read_to_string(sshd.known_hosts_path()).unwrap();
        let key = key.split_once(' ').unwrap().1.trim().to_string();
        let hosts = self.home.path().join(format!("known_hosts_{site}"));
        std::fs::write(&hosts, format!("[127.0.0.1]:{} {key}\n", proxy.port())).unwrap();
        let path = self.home.path().join("map.json");
        let mut map: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for entry in map["sites"].as_array_mut().unwrap() {
            if entry["name"] == site {
                entry["port"] = proxy.port().into();
                entry["known_hosts"] = hosts.display().to_string().into();
            }
        }
        std::fs::write(&path, map.to_string()).unwrap();
        self.proxies.push(proxy);
    }

    fn root(&self, site: &str) -> PathBuf {
        self.sites[site].root().join("raw")
    }

    /// `ferry --once --host SITE ARGS` with a clean environment (no FERRY_*, HOME in the
    /// test's temp dir so no ~/.ssh/config applies).
    fn command(&self, site: &str, args: &[&str]) -> Command {
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
            .args(["--host", site, "--catalog", &self.uri, "--once"])
            .args(args);
        cmd
    }

    fn once(&self, site: &str, args: &[&str]) -> Output {
        let out = self.command(site, args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{site}: {}", text(&out));
        out
    }

    fn spawn(&self, site: &str, args: &[&str]) -> Child {
        self.command(site, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A complete run at `site`: files of the given paths and sizes, then the marker.
    fn run(&self, site: &str, number: u32, files: &[(&str, usize)]) -> PathBuf {
        let dir = self.root(site).join(format!("Run{number:06}"));
        for (i, (path, size)) in files.iter().enumerate() {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(
                file,
                pseudo_random(u64::from(number) << 8 | i as u64, *size),
            )
            .unwrap();
        }
        std::fs::write(dir.join(MARKER), b"").unwrap();
        dir
    }

    /// Every run document, by number, read with the MongoDB driver.
    fn runs(&self) -> Vec<Document> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
            let runs = client
                .database(&self.db)
                .collection::<Document>("runs")
                .find(doc! {})
                .sort(doc! { "number": 1 })
                .await
                .unwrap();
            runs.try_collect().await.unwrap()
        })
    }

    /// Logins the site's sshd accepted so far.
    fn logins(&self, site: &str) -> usize {
        std::fs::read_to_string(self.sites[site].log_path())
            .unwrap()
            .matches("Accepted publickey")
            .count()
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Deterministic bytes (xorshift64), different per seed.
fn pseudo_random(seed: u64, size: usize) -> Vec<u8> {
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

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files below `dir` (relative, `/`-separated), without the completion marker.
fn files_below(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                if rel != MARKER {
                    out.push((rel, p));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out
}

/// The run digest of DESIGN §3.2, computed here: SHA-256 over the lines
/// `path \0 size \0 sha256 \n` sorted by path.
fn run_digest(dir: &Path) -> String {
    let mut manifest = Vec::new();
    for (rel, path) in files_below(dir) {
        let size = std::fs::metadata(&path).unwrap().len();
        manifest.extend_from_slice(format!("{rel}\0{size}\0{}\n", sha256_file(&path)).as_bytes());
    }
    hex(&Sha256::digest(&manifest))
}

/// Any `.part` file below `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    files_below(dir)
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| rel.ends_with(".part"))
        .collect()
}

fn copies(run: &Document) -> Vec<&Document> {
    run.get_array("data")
        .unwrap()
        .iter()
        .map(|c| c.as_document().unwrap())
        .collect()
}

fn copy_at<'a>(run: &'a Document, site: &str) -> Vec<&'a Document> {
    copies(run)
        .into_iter()
        .filter(|c| c.get_str("host") == Ok(site))
        .collect()
}

/// Run numbers named on the report's `done` lines.
fn done_runs(stdout: &[u8]) -> BTreeSet<i64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("done"))
        .filter_map(|l| l.trim_start().strip_prefix("run "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn three_sites_push_then_pull_every_run_ends_with_three_verified_copies() {
    let world = World::new(
        "agent_e2e",
        &["origin", "mirror-a", "mirror-b"],
        |name| match name {
            "origin" => serde_json::json!({ "origin": true, "push_to": ["mirror-a"] }),
            "mirror-b" => serde_json::json!({ "pull_from": ["mirror-a"] }),
            _ => serde_json::json!({}),
        },
    );
    let runs: Vec<(u32, Vec<(&str, usize)>)> = vec![
        (
            1,
            vec![
                ("empty", 0),
                ("one byte.bin", 1),
                ("sub dir/ü 1MiB+1.evio", (1 << 20) + 1),
            ],
        ),
        (
            2,
            vec![("raw/big.evio", (64 << 20) + 1), ("raw/small.evio", 4096)],
        ),
        (
            3,
            vec![("a.evio", 100_000), ("b.evio", 200_000), ("c/d.evio", 3)],
        ),
    ];
    let mut expected = BTreeMap::new();
    for (number, files) in &runs {
        let dir = world.run("origin", *number, files);
        expected.insert(i64::from(*number), run_digest(&dir));
    }

    // One --once per site, in a loop, until a round changes nothing. The tasks are named:
    // a whole cycle exits 5 while this version lacks some of its tasks.
    let tasks = ["--task", "register", "--task", "push", "--task", "pull"];
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 3,
            "not stable after 3 rounds: {:#?}",
            world.runs()
        );
        let mut done = 0;
        for site in ["origin", "mirror-a", "mirror-b"] {
            let out = world.once(site, &tasks);
            let stdout = String::from_utf8_lossy(&out.stdout);
            if rounds == 1 && site == "origin" {
                // Not a terminal: progress comes as log lines, one per file, no bars.
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains("file copied") && stderr.contains("raw/big.evio"),
                    "{stderr}"
                );
                assert!(!stderr.contains("total ["), "{stderr}");
            }
            done += stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("done"))
                .count();
        }
        if done == 0 {
            break;
        }
    }
    // Registration, push and pull all happen in the first round; the second finds nothing.
    assert_eq!(rounds, 2);

    let docs = world.runs();
    assert_eq!(docs.len(), runs.len());
    for run in &docs {
        let number = run
            .get_i64("number")
            .or_else(|_| run.get_i32("number").map(i64::from));
        let number = number.unwrap();
        let want = &expected[&number];
        assert_eq!(run.get_str("digest").unwrap(), want, "run {number}");
        for site in ["origin", "mirror-a", "mirror-b"] {
            let at = copy_at(run, site);
            assert_eq!(at.len(), 1, "run {number} at {site}: {run:#?}");
            assert_eq!(at[0].get_str("status").unwrap(), "transferred", "{run:#?}");
            assert_eq!(at[0].get_str("checksum").unwrap(), want, "{run:#?}");
            // The bytes really are there: hashed here, from the site's own disk.
            let dir = PathBuf::from(at[0].get_str("location").unwrap());
            assert!(dir.starts_with(world.root(site)), "{dir:?}");
            assert_eq!(&run_digest(&dir), want, "run {number} at {site}");
        }
        for site in ["mirror-a", "mirror-b"] {
            assert_eq!(copy_at(run, site)[0].get_str("protocol").unwrap(), "sftp");
        }
    }
    for site in ["mirror-a", "mirror-b"] {
        assert!(leftovers(&world.root(site)).is_empty(), "{site}");
    }
    // One SSH connection per agent process that copied: the origin's push and mirror-b's
    // pull each logged in to mirror-a once for all 3 runs and 8 files; nobody else was
    // reached.
    assert_eq!(
        world.logins("mirror-a"),
        2,
        "{}",
        world.sites["mirror-a"].log_tail()
    );
    assert_eq!(world.logins("origin"), 0);
    assert_eq!(world.logins("mirror-b"), 0);
}

/// The time of the first event of `action` for the copy at `site`, in ms since the epoch.
fn event_at(run: &Document, action: &str, site: &str, reason_part: &str) -> i64 {
    run.get_array("events")
        .unwrap()
        .iter()
        .map(|e| e.as_document().unwrap())
        .find(|e| {
            e.get_str("action").ok() == Some(action)
                && e.get_str("host").ok() == Some(site)
                && e.get_str("reason").unwrap_or("").contains(reason_part)
        })
        .unwrap_or_else(|| panic!("no {action} {reason_part:?} event at {site}: {run:#?}"))
        .get_datetime("time")
        .unwrap()
        .timestamp_millis()
}

/// `--once` at a site that both pushes and pulls: the pull does not wait for the push. Both
/// copy tasks hand their jobs to the scheduler, and the cycle waits for all of them together
/// before the tasks that count copies; each task's report still lists its own copies.
#[test]
fn once_at_a_site_that_pushes_and_pulls_runs_both_links_at_once() {
    let mut world = World::new(
        "agent_e2e_both",
        &["up", "hub", "down"],
        |name| match name {
            "up" => serde_json::json!({ "origin": true }),
            "hub" => serde_json::json!({
                "origin": true, "push_to": ["down"], "pull_from": ["up"]
            }),
            _ => serde_json::json!({}),
        },
    );
    // The push goes over a slow link: 4 MiB at 1 MiB/s, about four seconds; the pull
    // (256 KiB, unthrottled) takes a fraction of that.
    world.throttle("down", 1 << 20);
    let pushed = world.run("hub", 1, &[("a.evio", 2 << 20), ("b.evio", 2 << 20)]);
    let pulled = world.run("up", 2, &[("c.evio", 256 << 10)]);
    world.once("up", &["--task", "register"]);
    let out = world.once(
        "hub",
        &["--task", "register", "--task", "push", "--task", "pull"],
    );
    // Each task reports its own copy, completed after both ended.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        done_runs(&out.stdout),
        BTreeSet::from([1, 2]),
        "{}",
        text(&out)
    );
    let push_at = stdout.find("push").unwrap_or(usize::MAX);
    let pull_at = stdout.find("pull").unwrap_or(usize::MAX);
    assert!(push_at < pull_at, "push reported before pull: {stdout}");

    let docs = world.runs();
    let (one, two) = (&docs[0], &docs[1]);
    for (run, site, dir) in [(one, "down", &pushed), (two, "hub", &pulled)] {
        let at = copy_at(run, site);
        assert_eq!(at[0].get_str("status").unwrap(), "transferred", "{run:#?}");
        let location = PathBuf::from(at[0].get_str("location").unwrap());
        assert_eq!(run_digest(&location), run_digest(dir), "{site}");
    }
    // The pull was claimed, and recorded, while the push was still on the wire.
    let push_done = event_at(one, "status", "down", "-> transferred");
    let pull_claimed = event_at(two, "claimed", "hub", "");
    let pull_done = event_at(two, "status", "hub", "-> transferred");
    assert!(
        pull_claimed < push_done && pull_done < push_done,
        "the pull (claimed at {pull_claimed}, done at {pull_done}) waited for the push \
         (done at {push_done})"
    );
}

#[test]
fn two_agents_racing_for_the_same_mirror_copy_exactly_one_copies_each_run() {
    let world = World::new("agent_race", &["origin", "mirror"], |name| match name {
        "origin" => serde_json::json!({ "origin": true, "push_to": ["mirror"] }),
        _ => serde_json::json!({ "pull_from": ["origin"] }),
    });
    let numbers = 1..=4_u32;
    let mut expected = BTreeMap::new();
    for number in numbers.clone() {
        let files = [("a.evio", 1 << 20), ("b.evio", 512 << 10), ("c/d.evio", 10)];
        let dir = world.run("origin", number, &files);
        expected.insert(i64::from(number), run_digest(&dir));
    }
    world.once("origin", &["--task", "register"]);

    // Both agents want the mirror's copies: the origin by push, the mirror by pull.
    let pusher = world.spawn("origin", &["--task", "push"]);
    let puller = world.spawn("mirror", &["--task", "pull"]);
    let (pushed, pulled) = (
        pusher.wait_with_output().unwrap(),
        puller.wait_with_output().unwrap(),
    );
    assert_eq!(pushed.status.code(), Some(0), "{}", text(&pushed));
    assert_eq!(pulled.status.code(), Some(0), "{}", text(&pulled));
    let (by_push, by_pull) = (done_runs(&pushed.stdout), done_runs(&pulled.stdout));
    assert!(
        by_push.is_disjoint(&by_pull),
        "both copied {:?}\npush:\n{}\npull:\n{}",
        by_push.intersection(&by_pull).collect::<Vec<_>>(),
        text(&pushed),
        text(&pulled)
    );
    let all: BTreeSet<i64> = by_push.union(&by_pull).copied().collect();
    assert_eq!(all, expected.keys().copied().collect::<BTreeSet<_>>());

    for run in world.runs() {
        let number = run
            .get_i64("number")
            .or_else(|_| run.get_i32("number").map(i64::from));
        let want = &expected[&number.unwrap()];
        assert_eq!(copies(&run).len(), 2, "{run:#?}");
        let at = copy_at(&run, "mirror");
        assert_eq!(at.len(), 1, "{run:#?}");
        assert_eq!(at[0].get_str("status").unwrap(), "transferred", "{run:#?}");
        assert_eq!(at[0].get_str("checksum").unwrap(), want);
        assert_eq!(
            &run_digest(Path::new(at[0].get_str("location").unwrap())),
            want
        );
    }
    assert!(leftovers(&world.root("mirror")).is_empty());
}

#[test]
fn a_mirror_copy_corrupted_after_its_transfer_is_never_pulled_as_transferred() {
    let world = World::new(
        "agent_e2e_rot",
        &["origin", "mirror-a", "mirror-b"],
        |name| match name {
            "origin" => serde_json::json!({ "origin": true, "push_to": ["mirror-a"] }),
            "mirror-b" => serde_json::json!({ "pull_from": ["mirror-a"] }),
            _ => serde_json::json!({}),
        },
    );
    world.run(
        "origin",
        7,
        &[("good.evio", 300_000), ("rot.evio", 200_000)],
    );
    world.once("origin", &["--task", "register", "--task", "push"]);
    // Bit rot at mirror-a after its copy was verified and recorded.
    let at_a = world.root("mirror-a").join("Run000007/rot.evio");
    let mut bytes = std::fs::read(&at_a).unwrap();
    bytes[12_345] ^= 0x10;
    std::fs::write(&at_a, bytes).unwrap();

    let out = world
        .command("mirror-b", &["--task", "pull"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = world.runs().pop().unwrap();
    let at_b = copy_at(&run, "mirror-b");
    assert_eq!(at_b.len(), 1, "{run:#?}");
    assert_eq!(at_b[0].get_str("status").unwrap(), "error", "{run:#?}");
    assert!(
        at_b[0].get_str("last_error").unwrap().contains("rot.evio"),
        "{run:#?}"
    );
    // The bad bytes never get the file's name. (The transport keeps their `.part` when the
    // stream's digest fails the manifest check, which a later resume would keep: reported
    // to the transport's owner, not asserted here.)
    let b_run = world.root("mirror-b").join("Run000007");
    assert!(!b_run.join("rot.evio").exists());
}

#[test]
fn a_connection_cut_mid_copy_is_resumed_on_a_new_session_under_the_same_claim() {
    // 4 MB/s: the 24 MiB file takes about 6 s, time enough to cut the connection under it.
    let world = World::new("agent_e2e_cut", &["origin", "mirror"], |name| match name {
        "origin" => serde_json::json!({
            "origin": true,
            "push_to": ["mirror"],
            "limits": { "files_in_flight": 2, "transfers_per_link": 2, "global_transfers": 2,
                        "bandwidth_per_link": "4MB/s" },
        }),
        _ => serde_json::json!({}),
    });
    let dir = world.run("origin", 1, &[("big.evio", 24 << 20), ("small.evio", 1000)]);
    let want = run_digest(&dir);
    world.once("origin", &["--task", "register"]);

    let pusher = world.spawn("origin", &["--task", "push"]);
    let part = world.root("mirror").join("Run000001/big.evio.part");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 4 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_connections(&world.sites["mirror"]);
    let out = pusher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconnecting to resume"), "{stderr}");
    // The big file went on from its `.part`, not from zero.
    let resumed: u64 = stderr
        .lines()
        .find(|l| l.contains("file copied") && l.contains("big.evio"))
        .and_then(|l| l.split("resumed_from=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed_from for big.evio: {stderr}"));
    assert!(resumed >= 4 << 20, "resumed from {resumed}: {stderr}");
    assert_eq!(
        world.logins("mirror"),
        2,
        "{}",
        world.sites["mirror"].log_tail()
    );

    let run = world.runs().pop().unwrap();
    let at = copy_at(&run, "mirror");
    assert_eq!(at[0].get_str("status").unwrap(), "transferred", "{run:#?}");
    assert_eq!(at[0].get_str("checksum").unwrap(), want);
    assert_eq!(run_digest(&world.root("mirror").join("Run000001")), want);
    assert!(leftovers(&world.root("mirror")).is_empty());
}

#[test]
fn one_run_asked_for_by_hand_is_copied_even_beyond_the_first_batch_of_wanted_runs() {
    let world = World::new("agent_e2e_one", &["origin", "mirror"], |name| match name {
        "origin" => serde_json::json!({ "origin": true, "push_to": ["mirror"] }),
        _ => serde_json::json!({}),
    });
    // More runs waiting than the 100 a copy task asks the catalogue for at once.
    for number in 1..=105 {
        world.run("origin", number, &[("a.evio", 10)]);
    }
    world.once("origin", &["--task", "register"]);
    let out = world.once("origin", &["--task", "push", "--run", "105"]);
    assert_eq!(
        done_runs(&out.stdout),
        BTreeSet::from([105]),
        "{}",
        text(&out)
    );
    let mirror: Vec<String> = std::fs::read_dir(world.root("mirror"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(mirror, ["Run000105"]);
}

#[test]
fn a_push_to_a_site_verifying_with_its_own_agent_stays_verifying_until_that_agent_hashes_it() {
    let world = World::new(
        "agent_e2e_vagent",
        &["origin", "mirror"],
        |name| match name {
            "origin" => serde_json::json!({ "origin": true, "push_to": ["mirror"] }),
            _ => serde_json::json!({ "verify": "agent" }),
        },
    );
    world.run("origin", 1, &[("a.evio", 300_000), ("b.evio", 1)]);
    world.run("origin", 2, &[("c.evio", 200_000)]);
    let out = world.once("origin", &["--task", "register", "--task", "push"]);
    // Regression: every SSH session used to log "ERROR Maximum packet size (65536) should
    // not larger than a TCP packet" (russh's limit is 65535); a clean cycle logs no error.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains(" ERROR "), "{log}");
    // Sent, not yet proven: `verifying` with the sent digest, no lease, files in place.
    for run in world.runs() {
        let at = copy_at(&run, "mirror");
        assert_eq!(at.len(), 1, "{run:#?}");
        assert_eq!(at[0].get_str("status").unwrap(), "verifying", "{run:#?}");
        assert_eq!(
            at[0].get_str("checksum").unwrap(),
            run.get_str("digest").unwrap()
        );
        assert!(
            at[0].get_document("lease").is_err(),
            "the lease must be released for the destination's agent: {run:#?}"
        );
    }
    // A byte flipped at the mirror before its agent looks: that copy must not pass.
    let bad = world.root("mirror").join("Run000002/c.evio");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[99] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    let out = world
        .command("mirror", &["--task", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let runs = world.runs();
    let status = |n: usize| copy_at(&runs[n], "mirror")[0].get_str("status").unwrap();
    assert_eq!(status(0), "transferred", "{:#?}", runs[0]);
    assert_eq!(status(1), "error", "{:#?}", runs[1]);
    assert_eq!(
        run_digest(&world.root("mirror").join("Run000001")),
        run_digest(&world.root("origin").join("Run000001"))
    );
}

#[test]
fn a_push_to_a_site_verifying_by_command_is_transferred_only_when_the_command_agrees() {
    let world = World::new(
        "agent_e2e_vcmd",
        &["origin", "good", "bad"],
        |name| match name {
            "origin" => serde_json::json!({ "origin": true, "push_to": ["good", "bad"] }),
            "good" => serde_json::json!({ "verify": { "command": ["sha256sum", "--"] } }),
            // Prints an MD5, not a SHA-256: never accepted as proof.
            _ => serde_json::json!({ "verify": { "command": ["md5sum", "--"] } }),
        },
    );
    world.run("origin", 1, &[("a b.evio", 123_456), ("empty", 0)]);
    let out = world
        .command("origin", &["--task", "register", "--task", "push"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = world.runs().pop().unwrap();
    let good = copy_at(&run, "good");
    assert_eq!(
        good[0].get_str("status").unwrap(),
        "transferred",
        "{run:#?}"
    );
    assert_eq!(
        run_digest(&world.root("good").join("Run000001")),
        run_digest(&world.root("origin").join("Run000001"))
    );
    let bad = copy_at(&run, "bad");
    assert_eq!(bad[0].get_str("status").unwrap(), "error", "{run:#?}");
    assert!(!world.root("bad").join("Run000001/a b.evio").exists());
}
