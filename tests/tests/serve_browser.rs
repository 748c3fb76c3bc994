//! `ferry serve` in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, the `fantoccini` client), against the real binary (`ferry_under_test`
//! `serve`) on a catalogue filled by real agent cycles (`ferry --once` of a DAQ site pushing
//! to a mirror, both local directories), on both back ends.
//!
//! - the runs table lists the runs; the filter form narrows it; a run's page shows its
//!   copies and events; the sites page shows the agent whose heartbeat is an hour old as
//!   silent and the other as alive; the transfers page shows the link;
//! - a run written with pymongo, as another tool would, whose name, location and last
//!   error hold `<script>` and quotes, renders as text (no script element, no alert);
//! - no request changes the catalogue: every method but GET and HEAD is answered 405 on
//!   every kind of path, every link of every page is followed (a crawl), and the catalogue
//!   (`ferry runs list --json` and every heartbeat) is the same before and after;
//! - every response carries the Content-Security-Policy and `nosniff`.
//!
//! Screenshots of the four pages are taken on the MongoDB back end; with
//! `FERRY_UPDATE_SCREENSHOTS=1` they are written to `docs/images/` (the ones
//! `docs/operations.md` shows), otherwise to a temp dir.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use ferry::catalog::{CatalogUri, RunFilter};
use ferry_tests::{unique_db_name, ChromeDriver, MongoServer};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

/// What the hostile run holds, as another tool wrote it.
const HOSTILE_NAME: &str = "<script>alert(\"name\")</script>'x\"";
const HOSTILE_ERROR: &str = "<script>alert('error')</script> it's \"quoted\" & <b>bold</b>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Mongo,
}

/// A DAQ site with runs 1-3 complete on disk, pushing to a mirror on the same machine.
fn sites(dir: &Path) {
    for n in 1..=3 {
        let run = dir.join(format!("daq/raw/Run{n:06}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("a.evio"),
            format!("bytes of run {n}").repeat(100 * n),
        )
        .unwrap();
        std::fs::write(run.join("b.evio"), format!("more of run {n}")).unwrap();
        std::fs::write(run.join("RUN_COMPLETE"), b"").unwrap();
    }
    std::fs::create_dir_all(dir.join("mirror/raw")).unwrap();
    let map = serde_json::json!({
        "version": 1,
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.join("daq/raw") },
              "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
              "push_to": ["mirror"] },
            { "name": "mirror", "method": "local",
              "data_dirs": { "raw": dir.join("mirror/raw") },
              "layout": "Run{number:06}" }
        ]
    });
    std::fs::write(dir.join("map.json"), map.to_string()).unwrap();
}

fn command(dir: &Path, uri: &str) -> Command {
    let mut cmd = Command::new(FERRY);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", dir)
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env("NO_COLOR", "1")
        .args(["--catalog", uri]);
    cmd
}

fn ferry(dir: &Path, uri: &str, args: &[&str]) -> Output {
    let out = command(dir, uri)
        .arg("--config")
        .arg(dir.join("map.json"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "ferry {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ferry serve` on a free port; killed on drop.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(dir: &Path, uri: &str) -> Served {
        let mut child = command(dir, uri)
            .args(["serve", "--listen", "127.0.0.1:0", "--silent-after", "10m"])
            .args(["--page-size", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("ferry serve exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("ferry serve: listening on ") {
                let url = rest.split_whitespace().next().unwrap();
                break url.trim_end_matches('/').to_string();
            }
        };
        // Keep reading its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served { child, base }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request: status, head (lower-cased), body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = if matches!(method, "POST" | "PUT" | "PATCH") {
        "status=removing"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

/// The catalogue as another reader sees it: every run document and every heartbeat.
async fn snapshot(dir: &Path, uri: &str) -> String {
    let runs = ferry(dir, uri, &["runs", "list", "--json"]);
    let catalog = ferry::catalog::open_for_reading(&CatalogUri::parse(uri).unwrap())
        .await
        .unwrap();
    let mut out = String::from_utf8(runs.stdout).unwrap();
    for site in ["daq", "mirror", "archive"] {
        out.push_str(&format!(
            "{:?}\n",
            catalog.read_heartbeat(site).await.unwrap()
        ));
    }
    assert!(
        catalog
            .list_runs(&RunFilter::default())
            .await
            .unwrap()
            .len()
            >= 3
    );
    out
}

/// The DAQ's agent stopped an hour ago: its heartbeat is made an hour old.
async fn silence_daq(uri: &str) {
    let catalog = ferry::catalog::open(&CatalogUri::parse(uri).unwrap())
        .await
        .unwrap();
    let mut beat = catalog.read_heartbeat("daq").await.unwrap().unwrap();
    beat.time = bson::DateTime::from_millis(beat.time.timestamp_millis() - 3_600_000);
    catalog.heartbeat(&beat).await.unwrap();
}

/// Writes run 900 with pymongo, as a collaborator's script would: markup and quotes in its
/// name, a copy's location and last error, and in an event's reason.
fn write_hostile_run(uri: &str, db: &str) {
    let script = r#"
import sys, datetime, pymongo
uri, db, name, error = sys.argv[1:5]
c = pymongo.MongoClient(uri)[db].runs
now = datetime.datetime.now(datetime.timezone.utc)
c.insert_one({
    "number": 900, "detector": "tpc", "name": name, "start": now,
    "data": [{"type": "raw", "host": "archive", "status": "error",
              "location": "/data/<img src=x onerror=alert(1)>", "last_error": error,
              "attempts": 3}],
    "want": ["archive/raw"],
    "events": [{"time": now, "who": "script\"<b>", "action": "<i>edited</i>",
                "host": "archive", "type": "raw", "reason": error}],
})
"#;
    let out = Command::new("python3")
        .args(["-c", script, uri, db, HOSTILE_NAME, HOSTILE_ERROR])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pymongo (python3-pymongo, deploy/install-test-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The number of body rows of the table `id` on the current page.
async fn rows(c: &Client, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in c
        .find_all(Locator::Css(&format!("table#{id} tbody tr")))
        .await
        .unwrap()
    {
        out.push(r.text().await.unwrap());
    }
    out
}

/// Follows every same-origin link and image of every page reached from `/` (at most 300
/// pages), in the browser. Returns the paths visited.
async fn crawl(c: &Client, base: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = VecDeque::from(["/".to_string()]);
    while let Some(path) = todo.pop_front() {
        if !seen.insert(path.clone()) || seen.len() > 300 {
            continue;
        }
        c.goto(&format!("{base}{path}")).await.unwrap();
        if path.starts_with("/api/") || path.ends_with(".svg") {
            continue;
        }
        let mut found = Vec::new();
        for a in c.find_all(Locator::Css("a[href]")).await.unwrap() {
            found.push(a.attr("href").await.unwrap().unwrap_or_default());
        }
        for i in c.find_all(Locator::Css("img[src]")).await.unwrap() {
            found.push(i.attr("src").await.unwrap().unwrap_or_default());
        }
        for href in found {
            let local = href
                .strip_prefix(base)
                .map(str::to_string)
                .unwrap_or(href.clone());
            assert!(local.starts_with('/'), "a link leaves the server: {href}");
            if !seen.contains(&local) {
                todo.push_back(local);
            }
        }
    }
    seen
}

async fn browse(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sites(d);
    let (uri, db) = match backend {
        Backend::Embedded => (
            format!("sqlite:{}", d.join("catalog.sqlite").display()),
            None,
        ),
        Backend::Mongo => {
            let mongo = MongoServer::shared().unwrap();
            let db = unique_db_name("serve_browser");
            let uri = match mongo.uri().split_once("/?") {
                Some((head, opts)) => format!("{head}/{db}?{opts}"),
                None => format!("{}/{db}", mongo.uri()),
            };
            (uri, Some(db))
        }
    };
    // Real agent cycles: the DAQ registers and pushes, then the mirror runs its own.
    ferry(d, &uri, &["--host", "daq", "--once"]);
    ferry(d, &uri, &["--host", "mirror", "--once"]);
    silence_daq(&uri).await;
    if let Some(db) = &db {
        write_hostile_run(&uri, db);
    }
    let before = snapshot(d, &uri).await;

    let served = Served::start(d, &uri);
    let base = served.base.clone();
    let driver = ChromeDriver::start().unwrap();
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(driver.capabilities().unwrap());
    let c = builder.connect(&driver.url()).await.unwrap();
    let shots = match std::env::var_os("FERRY_UPDATE_SCREENSHOTS") {
        Some(_) if backend == Backend::Mongo => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/images")
        }
        _ => d.join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let shoot = |name: &'static str| {
        let c = c.clone();
        let path = shots.join(format!("serve-{name}.png"));
        async move {
            let png = c.screenshot().await.unwrap();
            assert_eq!(&png[1..4], b"PNG");
            std::fs::write(path, png).unwrap();
        }
    };

    // The runs table lists the runs, two to a page (`--page-size 2`), then the next page.
    c.goto(&format!("{base}/")).await.unwrap();
    let first = rows(&c, "runs").await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first[0].starts_with("1 tpc run") || first[0].starts_with("1 tpc"),
        "{first:?}"
    );
    assert!(first[0].contains("daq transferred") && first[0].contains("mirror transferred"));
    c.find(Locator::Css("a[rel=next]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let second = rows(&c, "runs").await;
    assert!(second[0].starts_with('3'), "{second:?}");
    assert_eq!(second.len(), if backend == Backend::Mongo { 2 } else { 1 });

    // A filter narrows it: typed into the form, submitted with its button.
    c.goto(&format!("{base}/")).await.unwrap();
    let field = c.find(Locator::Css("input[name=run]")).await.unwrap();
    field.send_keys("2").await.unwrap();
    c.find(Locator::Css("form.filters button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let narrowed = rows(&c, "runs").await;
    assert_eq!(narrowed.len(), 1, "{narrowed:?}");
    assert!(narrowed[0].starts_with('2'), "{narrowed:?}");
    assert!(c.current_url().await.unwrap().as_str().contains("run=2"));
    c.goto(&format!("{base}/?missing_at=mirror")).await.unwrap();
    let missing = rows(&c, "runs").await;
    assert_eq!(
        missing.len(),
        usize::from(backend == Backend::Mongo),
        "{missing:?}"
    );
    c.goto(&format!("{base}/?run=1..2")).await.unwrap();
    shoot("runs").await;

    // A run's page: its copies and its events.
    c.goto(&format!("{base}/")).await.unwrap();
    c.find(Locator::Css("table#runs tbody tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/runs/tpc/1"));
    let copies = rows(&c, "copies").await;
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(
        copies.iter().any(|r| r.starts_with("daq raw transferred")),
        "{copies:?}"
    );
    assert!(
        copies.iter().any(
            |r| r.starts_with("mirror raw transferred") && r.contains("matches the run digest")
        ),
        "{copies:?}"
    );
    let events: Vec<String> = {
        let mut v = Vec::new();
        for e in c.find_all(Locator::Css("ol#events li")).await.unwrap() {
            v.push(e.text().await.unwrap());
        }
        v
    };
    for action in ["registered", "copy-added", "claimed"] {
        assert!(
            events.iter().any(|e| e.contains(action)),
            "{action}: {events:?}"
        );
    }
    assert!(rows(&c, "files").await.len() >= 2);
    shoot("run").await;

    // The sites page: the DAQ's agent is silent, the mirror's alive.
    c.goto(&format!("{base}/sites")).await.unwrap();
    let state = |site: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Css(&format!("tr[data-site={site}] .agent-state")))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(state("daq").await, "silent");
    assert_eq!(state("mirror").await, "alive");
    if backend == Backend::Mongo {
        assert_eq!(state("archive").await, "no heartbeat");
    }
    shoot("sites").await;

    // The transfers page: the link, and its plots.
    c.goto(&format!("{base}/transfers")).await.unwrap();
    let links = rows(&c, "links").await;
    assert!(
        links.iter().any(|l| l.starts_with("daq → mirror 3")),
        "{links:?}"
    );
    let (status, head, svg) = http(served.addr(), "GET", "/transfers/copies.svg");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: image/svg+xml") && svg.contains("<svg"),
        "{head}"
    );
    shoot("transfers").await;

    // The hostile run renders as text.
    if backend == Backend::Mongo {
        c.goto(&format!("{base}/runs/tpc/900")).await.unwrap();
        let name = c.find(Locator::Css("#run-name")).await.unwrap();
        assert_eq!(name.text().await.unwrap(), HOSTILE_NAME);
        let error = c.find(Locator::Css("#copies td.last-error")).await.unwrap();
        assert_eq!(error.text().await.unwrap(), HOSTILE_ERROR);
        assert!(c
            .find_all(Locator::Css("script, img, i"))
            .await
            .unwrap()
            .is_empty());
        assert!(c.get_alert_text().await.is_err(), "an alert opened");
        c.goto(&format!("{base}/")).await.unwrap();
        let all = c.source().await.unwrap();
        assert!(!all.contains("<script>"), "{all}");
        assert!(c.find_all(Locator::Css("script")).await.unwrap().is_empty());
    }

    // No request changes the catalogue.
    for path in [
        "/",
        "/runs/tpc/1",
        "/sites",
        "/api/runs",
        "/api/runs/tpc/1",
        "/nowhere",
    ] {
        for method in [
            "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND",
        ] {
            let (status, head, _) = http(served.addr(), method, path);
            assert_eq!(status, 405, "{method} {path}: {head}");
            assert!(head.contains("allow: get, head"), "{method} {path}: {head}");
        }
        let (status, head, _) = http(served.addr(), "GET", path);
        let expected = if path == "/nowhere" { 404 } else { 200 };
        assert_eq!(status, expected, "GET {path}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let (status, _, body) = http(served.addr(), "HEAD", path);
        assert_eq!((status, body.as_str()), (expected, ""), "HEAD {path}");
    }
    let visited = crawl(&c, &base).await;
    for page in [
        "/",
        "/sites",
        "/transfers",
        "/runs/tpc/2",
        "/api/runs/tpc/2",
    ] {
        assert!(visited.contains(page), "{page} not reached: {visited:?}");
    }
    c.close().await.unwrap();
    drop(driver);
    drop(served);
    let after = snapshot(d, &uri).await;
    assert_eq!(before, after, "the catalogue changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_shows_runs_copies_and_a_silent_agent_and_writes_nothing_embedded() {
    browse(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_shows_runs_copies_and_a_silent_agent_and_writes_nothing_mongo() {
    browse(Backend::Mongo).await;
}
