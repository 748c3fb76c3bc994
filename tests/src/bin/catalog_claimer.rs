//! A claimer process for the catalogue concurrency tests (`tests/catalog_concurrency.rs`).
//!
//! ```text
//! catalog_claimer claim   URI SITE OWNER FIRST LAST TASKS START_MS
//! catalog_claimer hold    URI SITE OWNER FIRST LAST LEASE_MS
//! catalog_claimer reclaim URI SITE STALE OWNER FIRST LAST TASKS START_MS
//! ```
//!
//! `claim`: TASKS tasks (owners `OWNER-tI`) wait until the Unix time START_MS, then each
//! claims the raw copy at SITE of runs tpc/FIRST..=LAST in its own random order, printing
//! `WON N OWNER` for every claim won. `hold`: claims the runs with a lease of LEASE_MS,
//! prints `HELD`, and sleeps until killed (a crashed agent). `reclaim`: like `claim`, but
//! takes over copies stalled under STALE.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ferry::catalog::{self, CatalogUri, Claim, ClaimRequest, CopyRef, RunKey};
use rand::seq::SliceRandom;

const LEASE: Duration = Duration::from_secs(600);

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let raw = args
        .get(i)
        .with_context(|| format!("missing argument {what}"))?;
    raw.parse()
        .map_err(|e| anyhow::anyhow!("argument {what} = {raw:?}: {e}"))
}

fn request(site: &str, owner: &str, n: i64, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        copy: CopyRef::new(RunKey::new("tpc", n), site, "raw"),
        location: format!("/data/{site}/run{n}"),
        protocol: "sftp".into(),
        owner: owner.into(),
        lease_for: lease,
    }
}

async fn wait_until(start_ms: u64) -> Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let wait = u128::from(start_ms).saturating_sub(now);
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait)?)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode: String = arg(&args, 1, "MODE")?;
    let uri = CatalogUri::parse(&arg::<String>(&args, 2, "URI")?)?;
    let site: String = arg(&args, 3, "SITE")?;
    let cat = std::sync::Arc::new(catalog::open(&uri).await?);
    match mode.as_str() {
        "claim" | "reclaim" => {
            let off = usize::from(mode == "reclaim");
            let stale: String = if off == 1 {
                arg(&args, 4, "STALE")?
            } else {
                String::new()
            };
            let owner: String = arg(&args, 4 + off, "OWNER")?;
            let first: i64 = arg(&args, 5 + off, "FIRST")?;
            let last: i64 = arg(&args, 6 + off, "LAST")?;
            let tasks: usize = arg(&args, 7 + off, "TASKS")?;
            let start: u64 = arg(&args, 8 + off, "START_MS")?;
            wait_until(start).await?;
            let mut handles = Vec::new();
            for t in 0..tasks {
                let (cat, site, stale) = (cat.clone(), site.clone(), stale.clone());
                let me = format!("{owner}-t{t}");
                handles.push(tokio::spawn(async move {
                    let mut runs: Vec<i64> = (first..=last).collect();
                    runs.shuffle(&mut rand::rng());
                    let mut won = Vec::new();
                    for n in runs {
                        let outcome = if stale.is_empty() {
                            cat.claim_copy(&request(&site, &me, n, LEASE)).await?
                        } else {
                            let copy = CopyRef::new(RunKey::new("tpc", n), &site, "raw");
                            cat.reclaim_stalled(&copy, &stale, &me, LEASE).await?
                        };
                        if let Claim::Won(_) = outcome {
                            won.push(n);
                        }
                    }
                    anyhow::Ok((me, won))
                }));
            }
            for h in handles {
                let (me, won) = h.await??;
                for n in won {
                    println!("WON {n} {me}");
                }
            }
        }
        "hold" => {
            let owner: String = arg(&args, 4, "OWNER")?;
            let first: i64 = arg(&args, 5, "FIRST")?;
            let last: i64 = arg(&args, 6, "LAST")?;
            let lease_ms: u64 = arg(&args, 7, "LEASE_MS")?;
            for n in first..=last {
                let r = request(&site, &owner, n, Duration::from_millis(lease_ms));
                if cat.claim_copy(&r).await? == Claim::Lost {
                    bail!("hold: claim of run {n} lost");
                }
            }
            println!("HELD");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        other => bail!("unknown mode {other:?} (claim, hold, reclaim)"),
    }
    Ok(())
}
