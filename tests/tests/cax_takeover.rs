//! A running cax collaboration switches to Ferry with nothing changed (issue: the cax
//! takeover). The test builds the world only from what a cax user has:
//!
//! - a legacy `cax.json` in the shape of XENON1T's (`../shared/fixtures/legacy-cax/`): host
//!   entries with `dir_raw`, `download_options`, `username` sometimes `null`, a `gfal-copy`
//!   site named in an `upload_options`, keys Ferry ignores;
//! - `~/.ssh/config` aliases as the transfer account has them: the site map's `hostname` is
//!   an alias whose `HostName`, `Port`, `User` and `IdentityFile` only the SSH config knows,
//!   and the DAQ host is reached through a `ProxyJump` bastion. Both are real sshd in a
//!   private network namespace: the DAQ host refuses a direct connection from the test (and
//!   from every agent), only the bastion's port is published on 127.0.0.1, and the bastion's
//!   log must show the forwarded connection;
//! - run documents written with pymongo as XENON1T's DAQ wrote them (`checksum: null`,
//!   `status: transferred`, naive datetimes, `end` set, `creation_time` sometimes a list);
//! - copies recorded earlier by cax with SHA-512 dirhashes (checksumdir), one whose bytes
//!   are good and one whose bytes rotted since.
//!
//! Every run must end `transferred` at every site with the run digest this test computes from
//! the DAQ's files, read back with pymongo; the rotted copy is found and copied again; the good
//! cax copy is adopted without its bytes being sent again (bytes counted from the sources'
//! sshd logs). A second test drives massive-cax's `--from-run/--to-run` through the same world.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_tests::netns::{assert_unreachable, Netns};
use ferry_tests::sshd::InNetns;
use ferry_tests::{unique_db_name, MongoServer, Sshd, SshdOptions};
use sha2::{Digest, Sha256, Sha512};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// The three transfer sites of the test, as cax named them: name, SSH alias.
const DAQ: &str = "xe1t-datamanager";
const MIDWAY: &str = "midway-login1";
const TEGNER: &str = "tegner-login-1";

struct World {
    sites: BTreeMap<&'static str, Sshd>,
    /// The bastion in front of the DAQ host (`ProxyJump gateway` in the SSH config).
    gateway: Sshd,
    /// The firewalled network the DAQ host and the bastion live in (dropped last).
    _behind_firewall: Arc<Netns>,
    home: tempfile::TempDir,
    uri: String,
    db: String,
}

/// sshd for a site; its log (`LogLevel VERBOSE`) ends every connection with the bytes it
/// sent, so the test counts bytes at the server.
fn counting_sshd(netns: Option<InNetns>) -> Sshd {
    Sshd::start_with(SshdOptions {
        netns,
        ..SshdOptions::default()
    })
    .unwrap()
}

impl World {
    fn new(test: &str) -> World {
        let mongo = MongoServer::shared().unwrap();
        let db = unique_db_name(test);
        let uri = match mongo.uri().split_once("/?") {
            Some((head, opts)) => format!("{head}/{db}?{opts}"),
            None => format!("{}/{db}", mongo.uri()),
        };
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("state")).unwrap();
        std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
        let firewall = Netns::create().unwrap();
        let inside = |publish| {
            Some(InNetns {
                netns: Arc::clone(&firewall),
                publish,
            })
        };
        let mut sites = BTreeMap::new();
        for name in [DAQ, MIDWAY, TEGNER] {
            let sshd = counting_sshd(if name == DAQ { inside(false) } else { None });
            std::fs::create_dir_all(sshd.root().join("raw")).unwrap();
            sites.insert(name, sshd);
        }
        let world = World {
            sites,
            gateway: counting_sshd(inside(true)),
            _behind_firewall: Arc::clone(&firewall),
            home,
            uri,
            db,
        };
        // The DAQ host is behind the firewall: a direct connection is refused.
        assert_unreachable(SocketAddr::from(([127, 0, 0, 1], world.sites[DAQ].port()))).unwrap();
        world.write_ssh_config();
        world.write_cax_json();
        world
    }

    fn raw(&self, site: &str) -> PathBuf {
        self.sites[site].root().join("raw")
    }

    /// `~/.ssh/config` as a transfer account has it: one alias per site; everything about
    /// where the host is lives here, not in cax.json.
    fn write_ssh_config(&self) {
        let ssh = self.home.path().join(".ssh");
        let mut known = String::new();
        let mut config = String::new();
        let hosts = self
            .sites
            .iter()
            .map(|(name, sshd)| (alias(name), sshd))
            .chain([("gateway", &self.gateway)]);
        for (alias, sshd) in hosts {
            known.push_str(&std::fs::read_to_string(sshd.known_hosts_path()).unwrap());
            let jump = if alias == "datamanager" {
                "    ProxyJump gateway\n"
            } else {
                ""
            };
            config.push_str(&format!(
                "Host {alias}\n    HostName {host}\n    Port {port}\n    User {user}\n    \
                 IdentityFile {key}\n    IdentitiesOnly yes\n{jump}\n",
                host = sshd.host(),
                port = sshd.port(),
                user = sshd.user(),
                key = sshd.user_key_path().display(),
            ));
        }
        config.push_str(&format!(
            "Host *\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    \
             ServerAliveInterval 30\n",
            ssh.join("known_hosts").display()
        ));
        std::fs::write(ssh.join("known_hosts"), known).unwrap();
        std::fs::write(ssh.join("config"), config).unwrap();
    }

    /// A cax.json in the shape XENON1T used: `hostname` is the SSH alias, `username` set
    /// at one site (the same user the SSH config names) and `null` at the others.
    fn write_cax_json(&self) {
        let entry = |name: &str, username: serde_json::Value, download: serde_json::Value| {
            serde_json::json!({
                "name": name,
                "method": "rsync",
                "hostname": alias(name),
                "username": username,
                "dir_raw": self.raw(name),
                "dir_processed": null,
                "upload_options": null,
                "download_options": download,
                "purge": 2,
            })
        };
        let mut daq = entry(DAQ, serde_json::Value::Null, serde_json::Value::Null);
        daq["dir_tsm"] = serde_json::json!("/data/xenon/tsm/");
        let midway = entry(
            MIDWAY,
            serde_json::json!(self.sites[MIDWAY].user()),
            serde_json::json!([DAQ]),
        );
        let mut tegner = entry(
            TEGNER,
            serde_json::Value::Null,
            serde_json::json!([DAQ, MIDWAY]),
        );
        tegner["upload_options"] = serde_json::json!(["lfc"]);
        let lfc = serde_json::json!({
            "name": "lfc",
            "method": "gfal-copy",
            "hostname": "lfn:",
            "dir_raw": "/grid/xenon.biggrid.nl/xenon1t/raw",
            "dir_processed": null,
            "username": null,
        });
        let map = serde_json::json!([daq, midway, tegner, lfc]);
        std::fs::write(
            self.home.path().join("cax.json"),
            serde_json::to_string_pretty(&map).unwrap(),
        )
        .unwrap();
    }

    /// `ferry --once --host SITE` as a cax user runs it: `--config cax.json`, HOME with the
    /// SSH config, no FERRY_* variables but the state directory.
    fn once(&self, site: &str, args: &[&str]) -> Output {
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
            .arg(self.home.path().join("cax.json"))
            .args(["--host", site, "--catalog", &self.uri, "--once"])
            .args(args);
        cmd.output().unwrap()
    }

    /// Runs python3 with pymongo on `script`, with the catalogue in `URI` and `DB`.
    fn python(&self, script: &str, input: &serde_json::Value) -> String {
        let mut child = Command::new("python3")
            .args(["-c", script])
            .env("URI", &self.uri)
            .env("DB", &self.db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("python3 not runnable ({e}): install python3 and `pip install pymongo`")
            });
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python3 failed (needs pymongo: `pip install pymongo`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Bytes the site's sshd sent over all its connections so far (its log's
    /// `Transferred: sent N, received M bytes` line per connection).
    /// Waits (at most 10 s) until every site's sshd has logged the end of every connection it
    /// accepted: a session process writes its "Transferred" line after the client has gone,
    /// which may be after the agent's process has exited.
    fn sessions_closed(&self) {
        let start = std::time::Instant::now();
        for (site, sshd) in &self.sites {
            loop {
                let log = std::fs::read_to_string(sshd.log_path()).unwrap();
                let opened = log.matches("Accepted publickey").count();
                let closed = log.matches("Transferred: sent ").count();
                if closed >= opened {
                    break;
                }
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(10),
                    "{site}: {opened} connections accepted, {closed} ended: {log}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    fn bytes_sent(&self, site: &str) -> u64 {
        sent_in_log(&std::fs::read_to_string(self.sites[site].log_path()).unwrap())
    }
}

fn sent_in_log(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.strip_prefix("Transferred: sent "))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<u64>().ok())
        .sum()
}

fn alias(site: &str) -> &'static str {
    match site {
        DAQ => "datamanager",
        MIDWAY => "midway",
        _ => "tegner",
    }
}

/// Writes run documents the way XENON1T's DAQ and cax wrote them, with pymongo: naive UTC
/// datetimes, `checksum: None`, the legacy `update()`-era shapes.
const INSERT: &str = r#"
import json, os, sys, datetime
from pymongo import MongoClient
runs = json.load(sys.stdin)
coll = MongoClient(os.environ["URI"])[os.environ["DB"]]["runs_new"]
def when(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S")
for r in runs:
    r["start"] = when(r["start"]); r["end"] = when(r["end"])
    for d in r["data"]:
        c = d["creation_time"]
        d["creation_time"] = [when(x) for x in c] if isinstance(c, list) else when(c)
    coll.insert_one(r)
print(coll.count_documents({}))
"#;

/// Every run as pymongo reads it: number → [(host, type, status, checksum)].
const READ: &str = r#"
import json, os, sys
from pymongo import MongoClient
coll = MongoClient(os.environ["URI"])[os.environ["DB"]]["runs_new"]
out = {}
for r in coll.find({}).sort("number", 1):
    out[str(r["number"])] = [
        {"host": d.get("host"), "type": d.get("type"), "status": d.get("status"),
         "checksum": d.get("checksum"), "location": d.get("location")}
        for d in r.get("data", [])
    ]
print(json.dumps(out))
"#;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Files below `dir`, relative and `/`-separated, sorted by bytes.
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
                out.push((rel, p));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out
}

/// Ferry's run digest (DESIGN §3.2), computed here: SHA-256 over `path \0 size \0 sha256 \n`.
fn run_digest(dir: &Path) -> String {
    let mut manifest = Vec::new();
    for (rel, path) in files_below(dir) {
        let bytes = read_all(&path);
        manifest.extend_from_slice(
            format!("{rel}\0{}\0{}\n", bytes.len(), hex(&Sha256::digest(&bytes))).as_bytes(),
        );
    }
    hex(&Sha256::digest(&manifest))
}

/// cax's checksum of a run directory: python `checksumdir.dirhash(dir, "sha512")`, the
/// sha512 of each file, the hex digests sorted, the sha512 of their concatenation.
fn cax_dirhash(dir: &Path) -> String {
    let mut digests: Vec<String> = files_below(dir)
        .into_iter()
        .map(|(_, p)| hex(&Sha512::digest(read_all(&p))))
        .collect();
    digests.sort();
    hex(&Sha512::digest(digests.concat().as_bytes()))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_cax_collaboration_switches_to_ferry_with_nothing_changed() {
    let world = World::new("cax_takeover");

    // Three runs the DAQ wrote at the datamanager (cax run names, files in the run
    // directory as the event builder left them).
    let runs: [(i64, &str, usize); 3] = [
        (1000, "170101_0000", 3),
        (1001, "170101_0100", 2),
        (1002, "170101_0200", 4),
    ];
    let mut digest = BTreeMap::new();
    let mut size = BTreeMap::new();
    for (number, name, files) in runs {
        let dir = world.raw(DAQ).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut total = 0;
        for i in 0..files {
            let len = 300_000 + i * 77_777;
            let bytes = pseudo_random((number as u64) << 8 | i as u64, len);
            std::fs::write(dir.join(format!("XENON1T-{number}-{i:09}.zip")), bytes).unwrap();
            total += len as u64;
        }
        digest.insert(number, run_digest(&dir));
        size.insert(number, total);
    }
    // cax had copied run 1001 to midway and run 1002 to tegner, and recorded them with
    // their dirhash; tegner's copy has rotted since (one byte flipped).
    let copy_tree = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for (rel, p) in files_below(from) {
            std::fs::write(to.join(rel), read_all(&p)).unwrap();
        }
    };
    let daq_1001 = world.raw(DAQ).join("170101_0100");
    let daq_1002 = world.raw(DAQ).join("170101_0200");
    let midway_1001 = world.raw(MIDWAY).join("170101_0100");
    let tegner_1002 = world.raw(TEGNER).join("170101_0200");
    copy_tree(&daq_1001, &midway_1001);
    copy_tree(&daq_1002, &tegner_1002);
    let good_dirhash_1001 = cax_dirhash(&midway_1001);
    let good_dirhash_1002 = cax_dirhash(&tegner_1002);
    let rotten = files_below(&tegner_1002)[1].1.clone();
    let mut bytes = read_all(&rotten);
    bytes[1234] ^= 0x40;
    std::fs::write(&rotten, bytes).unwrap();
    assert_ne!(cax_dirhash(&tegner_1002), good_dirhash_1002);
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let midway_before: Vec<_> = files_below(&midway_1001)
        .iter()
        .map(|(_, p)| inode(p))
        .collect();

    // The documents, as the DAQ and cax wrote them.
    let daq_entry = |name: &str| {
        serde_json::json!({
            "type": "raw", "host": DAQ, "status": "transferred", "checksum": null,
            "location": world.raw(DAQ).join(name), "creation_time": "2017-01-01T03:00:00",
        })
    };
    let docs = serde_json::json!([
        { "number": 1000, "name": "170101_0000", "detector": "tpc",
          "start": "2017-01-01T00:00:00", "end": "2017-01-01T00:59:59",
          "trigger": { "events_built": 1000 },
          "data": [daq_entry("170101_0000")] },
        { "number": 1001, "name": "170101_0100", "detector": "tpc",
          "start": "2017-01-01T01:00:00", "end": "2017-01-01T01:59:59",
          "data": [daq_entry("170101_0100"),
                   { "type": "raw", "host": MIDWAY, "status": "transferred",
                     "checksum": good_dirhash_1001, "location": midway_1001,
                     "creation_time": ["2017-01-02T00:00:00", "2017-01-02T00:10:00"] }] },
        { "number": 1002, "name": "170101_0200", "detector": "tpc",
          "start": "2017-01-01T02:00:00", "end": "2017-01-01T02:59:59",
          "data": [daq_entry("170101_0200"),
                   { "type": "raw", "host": TEGNER, "status": "transferred",
                     "checksum": good_dirhash_1002, "location": tegner_1002,
                     "creation_time": "2017-01-03T00:00:00" }] },
    ]);
    assert_eq!(world.python(INSERT, &docs).trim(), "3");

    // The map loads as cax wrote it; the gfal-copy link is a warning, not an error.
    let out = world.once(DAQ, &["--dry-run"]);
    assert!(
        matches!(out.status.code(), Some(0)),
        "dry run at the DAQ: {}",
        text(&out)
    );

    // Agents at every site, round after round, as their daemons would run them.
    let mut rounds = 0;
    let final_state = loop {
        rounds += 1;
        for site in [DAQ, MIDWAY, TEGNER] {
            let out = world.once(site, &[]);
            assert!(
                matches!(out.status.code(), Some(0) | Some(1)),
                "{site}, round {rounds}: {}",
                text(&out)
            );
        }
        let state: serde_json::Value =
            serde_json::from_str(&world.python(READ, &serde_json::json!({}))).unwrap();
        let settled = runs.iter().all(|(number, _, _)| {
            let copies = state[number.to_string()].as_array().unwrap();
            [DAQ, MIDWAY, TEGNER].iter().all(|site| {
                copies.iter().any(|c| {
                    c["host"] == *site
                        && c["status"] == "transferred"
                        && c["checksum"] == digest[number].as_str()
                })
            })
        });
        if settled {
            break state;
        }
        assert!(
            rounds < 6,
            "not every run verified at every site after {rounds} rounds: {state:#}"
        );
    };

    // The DAQ host was reached through the bastion: it logged the logins, and the bytes it
    // relayed ("Transferred: sent N") hold at least one copy of a run only the DAQ had.
    let gateway_log = std::fs::read_to_string(world.gateway.log_path()).unwrap();
    let relayed = sent_in_log(&gateway_log);
    assert!(
        gateway_log.contains("Accepted publickey") && relayed >= size[&1000],
        "the bastion relayed {relayed} bytes, less than run 1000 ({}): {gateway_log}",
        size[&1000]
    );

    // Every site's files hash to the DAQ's run digest, computed here.
    for (number, name, _) in runs {
        for site in [DAQ, MIDWAY, TEGNER] {
            let dir = world.raw(site).join(name);
            assert_eq!(run_digest(&dir), digest[&number], "{site} run {number}");
        }
        let copies = final_state[number.to_string()].as_array().unwrap();
        assert_eq!(
            copies.len(),
            3,
            "run {number}: one entry per site: {copies:#?}"
        );
    }
    // The rotted copy was found and copied again: its file is the DAQ's again.
    assert_eq!(
        read_all(&rotten),
        read_all(&daq_1002.join(rotten.file_name().unwrap()))
    );
    // The good cax copy at midway was adopted in place: same files, and midway never
    // pulled run 1001; tegner's one copy of it is all the servers sent.
    let midway_after: Vec<_> = files_below(&midway_1001)
        .iter()
        .map(|(_, p)| inode(p))
        .collect();
    assert_eq!(
        midway_before, midway_after,
        "midway's cax copy was rewritten"
    );
    // Counted at the servers: the sources' sshd sent every wanted copy once (1000 to midway
    // and tegner, 1001 to tegner, 1002 to midway and again to tegner for the rotted copy),
    // plus protocol overhead; pulling 1001 to midway again would add 677 kB.
    world.sessions_closed();
    let sent = world.bytes_sent(DAQ) + world.bytes_sent(MIDWAY);
    let wanted = 2 * size[&1000] + size[&1001] + 2 * size[&1002];
    assert!(
        sent >= wanted && sent < wanted + size[&1001] / 2,
        "the servers sent {sent} bytes; the wanted copies are {wanted} bytes, run 1001 {}",
        size[&1001]
    );
}

/// massive-cax's habit: `--from-run N --to-run M` at every site moves the runs in the range
/// and leaves the others as the DAQ wrote them, through the real catalogue.
#[test]
fn a_run_range_moves_the_runs_in_it_and_leaves_the_rest_untouched() {
    let world = World::new("cax_run_range");
    let mut digest = BTreeMap::new();
    let mut docs = Vec::new();
    for number in 2000..2004_i64 {
        let name = format!("170201_{:04}", number - 2000);
        let dir = world.raw(DAQ).join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2 {
            let bytes = pseudo_random((number as u64) << 8 | i, 100_000);
            std::fs::write(dir.join(format!("XENON1T-{number}-{i:09}.zip")), bytes).unwrap();
        }
        digest.insert(number, run_digest(&dir));
        docs.push(serde_json::json!({
            "number": number, "name": name, "detector": "tpc",
            "start": "2017-02-01T00:00:00", "end": "2017-02-01T00:59:59",
            "data": [{ "type": "raw", "host": DAQ, "status": "transferred", "checksum": null,
                       "location": dir, "creation_time": "2017-02-01T03:00:00" }],
        }));
    }
    assert_eq!(
        world.python(INSERT, &serde_json::Value::Array(docs)).trim(),
        "4"
    );
    let range = ["--from-run", "2001", "--to-run", "2002"];
    for round in 0..3 {
        for site in [DAQ, MIDWAY, TEGNER] {
            let out = world.once(site, &range);
            assert!(
                matches!(out.status.code(), Some(0) | Some(1)),
                "{site}, round {round}: {}",
                text(&out)
            );
        }
    }
    let state: serde_json::Value =
        serde_json::from_str(&world.python(READ, &serde_json::json!({}))).unwrap();
    for number in 2000..2004_i64 {
        let copies = state[number.to_string()].as_array().unwrap();
        if (2001..=2002).contains(&number) {
            for site in [DAQ, MIDWAY, TEGNER] {
                assert!(
                    copies.iter().any(|c| c["host"] == site
                        && c["status"] == "transferred"
                        && c["checksum"] == digest[&number].as_str()),
                    "run {number} in the range is not verified at {site}: {copies:#?}"
                );
            }
        } else {
            // Outside the range: the DAQ's entry as written, no copy anywhere else.
            assert_eq!(
                copies.len(),
                1,
                "run {number} outside the range: {copies:#?}"
            );
            assert_eq!(
                copies[0]["checksum"],
                serde_json::Value::Null,
                "run {number}"
            );
            for site in [MIDWAY, TEGNER] {
                assert!(
                    !world
                        .raw(site)
                        .join(format!("170201_{:04}", number - 2000))
                        .exists(),
                    "run {number} outside the range reached {site}"
                );
            }
        }
    }
}
