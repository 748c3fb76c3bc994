//! Catalogue benchmark (not a test): bulk registration rate and the time to compute an idle
//! cycle's work list for one site, with 100,000 runs × 4 copies, on the MongoDB-wire server
//! (started by the harness) and on the embedded catalogue.
//!
//! ```text
//! cargo run -p ferry-tests --bin catalog_bench [-- RUNS [both|mongo|embedded]]
//! ```
//!
//! Registration: `Catalog::register_runs` in batches of 1,000, 4 batches in flight, into an
//! empty catalogue (indexes in place). Work list: the queries of one idle cycle at site
//! `lngs` when every run already has its 4 copies (`daq`, `lngs`, `nikhef`, `ccin2p3`, all
//! transferred, `want` empty as the claims left it): copies written by other tools to adopt
//! (none), runs needing a copy from `daq`, copies verifying at `lngs`, stalled copies at
//! `lngs`. Median of 7 cycles (after one warm-up). Results go to stdout as a Markdown
//! table. On stderr, per query, and the cost of a long work list walked in pages (the purge
//! candidates at `lngs`, every run: first page, then 20 pages).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{DateTime, Document};
use catalog_schema::{CopyEntry, CopyStatus, FileEntry, RunDoc, RunKey};
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::mongo::{MongoCatalog, MongoConfig};
use ferry::catalog::{page_after, Catalog, CatalogUri, Manifest, NewRun};
use futures::stream::{self, StreamExt, TryStreamExt};

const BATCH: usize = 1000;
const IN_FLIGHT: usize = 4;
const SITES: [&str; 4] = ["daq", "lngs", "nikhef", "ccin2p3"];

fn manifest(n: i64) -> Manifest {
    let files: Vec<FileEntry> = (0..4)
        .map(|i| FileEntry {
            path: format!("raw/{i:03}.evio"),
            size: 1 << 30,
            sha256: format!("{n:0>60}{i:04}"),
            md5: Some(format!("{n:0>28}{i:04}")),
            adler32: None,
        })
        .collect();
    Manifest {
        files,
        size: 4 << 30,
        digest: format!("{n:f>64}"),
    }
}

fn new_run(n: i64) -> NewRun {
    NewRun {
        key: RunKey::new("tpc", n),
        name: Some(format!("run_{n:06}")),
        start: Some(DateTime::from_millis(1_500_000_000_000 + n * 3_600_000)),
        end: Some(DateTime::from_millis(
            1_500_000_000_000 + n * 3_600_000 + 3_000_000,
        )),
        manifest: Some(manifest(n)),
        // Registered at `daq`: the three other sites want a copy.
        want: SITES[1..].iter().map(|s| format!("{s}/raw")).collect(),
        who: "bench".into(),
    }
}

/// Run N with its four transferred copies and, as the agents leave it once every copy is
/// made, no `want`.
fn full_doc(n: i64) -> Result<Document> {
    let m = manifest(n);
    let now = DateTime::now();
    let mut run = RunDoc::new("tpc", n, Some(&format!("run_{n:06}")));
    run.start = Some(DateTime::from_millis(1_500_000_000_000 + n * 3_600_000));
    run.files = m.files;
    run.size = Some(m.size);
    run.digest = Some(m.digest.clone());
    for site in SITES {
        let mut c = CopyEntry::new(site, "raw", CopyStatus::Transferred, now);
        c.location = Some(format!("/data/{site}/run_{n:06}"));
        c.protocol = Some("sftp".into());
        c.checksum = Some(m.digest.clone());
        c.verified_time = Some(now);
        run.data.push(c);
    }
    let mut d = run.to_document()?;
    // Created over the years before now (a run every 10 minutes from 2017), as in a real
    // catalogue; an ObjectId starts with its creation second.
    let secs = u32::try_from(1_500_000_000 + n * 600)?;
    let count = u32::try_from(n)?.to_be_bytes();
    d.insert(
        "_id",
        bson::oid::ObjectId::from_parts(secs, [0; 5], [count[1], count[2], count[3]]),
    );
    // As the MongoDB back end stores Ferry's copies: with their `host_status` index field.
    if let Ok(data) = d.get_array_mut("data") {
        for (entry, site) in data.iter_mut().zip(SITES) {
            if let bson::Bson::Document(e) = entry {
                e.insert("host_status", format!("{site}/transferred"));
            }
        }
    }
    Ok(d)
}

async fn register(cat: Arc<dyn Catalog>, runs: i64) -> Result<f64> {
    let batches: Vec<Vec<NewRun>> = (1..=runs)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| c.iter().map(|n| new_run(*n)).collect())
        .collect();
    let t0 = Instant::now();
    stream::iter(batches)
        .map(|b| {
            let cat = cat.clone();
            async move { cat.register_runs(&b).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    #[allow(clippy::cast_precision_loss)]
    Ok(runs as f64 / t0.elapsed().as_secs_f64())
}

/// One idle cycle's queries at `lngs`; returns the time and the number of runs found.
async fn idle_cycle(cat: &dyn Catalog) -> Result<(Duration, usize)> {
    let sources = vec!["daq".to_string()];
    let t0 = Instant::now();
    let adopted = cat.adopt_foreign_copies(1000).await?;
    let ta = Instant::now();
    let need = cat
        .runs_needing_copy("lngs", "raw", &sources, None, 100)
        .await?;
    let t1 = Instant::now();
    let verifying = cat
        .copies_in_status("lngs", CopyStatus::Verifying, None, 100)
        .await?;
    let t2 = Instant::now();
    let stalled = cat
        .stalled_copies(Some("lngs"), DateTime::now(), None, 100)
        .await?;
    // Per query, on stderr, to see which query dominates.
    eprintln!(
        "adopt {} ({adopted}) | needing {} | verifying {} | stalled {}",
        ms(ta - t0),
        ms(t1 - ta),
        ms(t2 - t1),
        ms(t2.elapsed())
    );
    Ok((t0.elapsed(), need.len() + verifying.len() + stalled.len()))
}

/// A long work list: the purge candidates at `lngs` (every run has a verified copy there and
/// elsewhere), read as the purge task walks it, 20 pages of 100. On stderr: the first page
/// and the whole walk.
async fn long_list(cat: &dyn Catalog) -> Result<()> {
    let t0 = Instant::now();
    let mut after = None;
    let mut first = None;
    let mut seen = 0;
    for _ in 0..20 {
        let page = cat.purge_candidates("lngs", after.as_ref(), 100).await?;
        first.get_or_insert_with(|| t0.elapsed());
        seen += page.len();
        match page_after(&page, 100) {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    eprintln!(
        "purge candidates at lngs, walked in pages of 100: first page {}, {seen} runs in {}",
        ms(first.unwrap_or_default()),
        ms(t0.elapsed())
    );
    Ok(())
}

async fn median_cycle(cat: &dyn Catalog) -> Result<(Duration, usize)> {
    let (_, found) = idle_cycle(cat).await?;
    let mut times = Vec::new();
    for _ in 0..7 {
        times.push(idle_cycle(cat).await?.0);
    }
    times.sort();
    Ok((times[times.len() / 2], found))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs: i64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("RUNS must be a number")?,
        None => 100_000,
    };
    let which = std::env::args().nth(2).unwrap_or_else(|| "both".into());
    println!("| back end | runs × copies | registration (runs/s) | idle work list (median of 7) | fill time |");
    println!("|---|---|---|---|---|");
    if which != "embedded" {
        mongo(runs).await?;
    }
    if which != "mongo" {
        embedded(runs).await?;
    }
    Ok(())
}

async fn mongo(runs: i64) -> Result<()> {
    let server = ferry_tests::MongoServer::start()?;

    // MongoDB-wire server.
    let connect = |db: &str| {
        let uri = server.uri().replace("/?", &format!("/{db}?"));
        async move { MongoCatalog::connect(MongoConfig::new(CatalogUri::parse(&uri)?)).await }
    };
    let reg_rate = register(Arc::new(connect("bench_register").await?), runs).await?;
    let cat = connect("bench_worklist").await?;
    let client = mongodb::Client::with_uri_str(server.uri()).await?;
    let coll = client
        .database("bench_worklist")
        .collection::<Document>("runs");
    let t0 = Instant::now();
    let chunks: Vec<Vec<i64>> = (1..=runs)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[i64]>::to_vec)
        .collect();
    stream::iter(chunks)
        .map(|c| {
            let coll = coll.clone();
            async move {
                let docs = c.into_iter().map(full_doc).collect::<Result<Vec<_>>>()?;
                coll.insert_many(docs).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let fill = t0.elapsed();
    let (idle, found) = median_cycle(&cat).await?;
    anyhow::ensure!(found == 0, "idle cycle found {found} runs of work");
    long_list(&cat).await?;
    println!(
        "| MongoDB-wire ({:?}) | {runs} × 4 | {reg_rate:.0} | {} | {:.1} s |",
        server.kind(),
        ms(idle),
        fill.as_secs_f64()
    );
    Ok(())
}

async fn embedded(runs: i64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let reg = EmbeddedCatalog::open(&tmp.path().join("register.sqlite")).await?;
    let reg_rate = register(Arc::new(reg), runs).await?;
    let cat = EmbeddedCatalog::open(&tmp.path().join("worklist.sqlite")).await?;
    let t0 = Instant::now();
    for chunk in (1..=runs).collect::<Vec<_>>().chunks(BATCH * 10) {
        let docs = chunk
            .iter()
            .map(|n| full_doc(*n))
            .collect::<Result<Vec<_>>>()?;
        cat.import_documents(docs).await?;
    }
    let fill = t0.elapsed();
    let (idle, found) = median_cycle(&cat).await?;
    anyhow::ensure!(found == 0, "idle cycle found {found} runs of work");
    long_list(&cat).await?;
    println!(
        "| embedded (SQLite, WAL) | {runs} × 4 | {reg_rate:.0} | {} | {:.1} s |",
        ms(idle),
        fill.as_secs_f64()
    );
    Ok(())
}
