//! Tape verification benchmark: the `tar` backend verifying two copies of a batch in
//! parallel (one task per drive) against verifying the same two copies one after the other.
//!
//! Drives are the file-backed tapes of `tests/fixtures/tape-tools` (`mt` and `tape-dd`
//! shims), paced to a drive speed (`--drive-mb-s`, bytes per second written into each
//! device's `rate` file) so that reading a tape file takes the time a real drive would;
//! hashing is Ferry's own. Both timings go through the backend's public `verify`: the
//! sequential run verifies a receipt naming one volume, then one naming the other.
//!
//! ```sh
//! cargo run --release -p bench --bin tape-bench -- --files 4 --file-mib 64 --drive-mb-s 100
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry::tape::tar::{TarBackend, TarConfig};
use ferry::tape::{Batch, Receipt, RunRef, TapeBackend, TapeFile, VerifyLevel};

#[derive(Parser, Debug)]
#[command(about = "tar tape backend: parallel vs sequential verification of two copies")]
struct Args {
    /// Files in the batch.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 64)]
    file_mib: usize,
    /// Emulated drive speed in MB/s (0: as fast as the disk).
    #[arg(long, default_value_t = 100)]
    drive_mb_s: u64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Directory holding the `mt` and `tape-dd` shims.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tape-tools"))]
    tools: PathBuf,
    /// Scratch directory (a fresh temp directory when absent).
    #[arg(long)]
    work: Option<PathBuf>,
}

/// Deterministic filler bytes (xorshift), so no extra dependency is needed.
fn fill(buf: &mut [u8], mut state: u64) {
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn make_batch(dir: &Path, files: usize, mib: usize) -> Result<Batch> {
    let mut out = Vec::new();
    for i in 0..files {
        let local = dir.join(format!("run/raw/{i:03}.evio"));
        std::fs::create_dir_all(local.parent().context("parent")?)?;
        let mut data = vec![0u8; mib << 20];
        fill(&mut data, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
        std::fs::write(&local, &data)?;
        let d = ferry::checksum::hash_file(&local)?;
        out.push(TapeFile {
            path: format!("raw/{i:03}.evio"),
            local,
            size: d.size,
            sha256: d.sha256_hex(),
            md5: d.md5_hex(),
        });
    }
    Ok(Batch {
        run: RunRef {
            number: 1,
            name: "bench-run".into(),
            period: None,
            detector: "tpc".into(),
        },
        files: out,
    })
}

/// Bytes this process has read through `read` calls (`rchar` of `/proc/self/io`; 0 where
/// there is none).
fn read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("rchar:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time of this process, all threads (`/proc/self/stat` utime + stime; 0 where there
/// is none).
fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            // Fields after the command name (which may hold spaces) start at `) `.
            let rest = t.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    // USER_HZ is 100 on Linux.
    ticks.map_or(0.0, |t| t as f64 / 100.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_verify(tape: &TarBackend, receipt: &Receipt, level: VerifyLevel) -> Result<Duration> {
    let t = Instant::now();
    tape.verify(receipt, level).await?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp;
    let work = match &args.work {
        Some(w) => w.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("ferry-tape-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&work)?;
    let tool = |name: &str| args.tools.join(name).display().to_string();
    if !args.tools.join("mt").exists() {
        bail!("no mt shim in {}", args.tools.display());
    }
    let devices: Vec<PathBuf> = (0..2).map(|i| work.join(format!("dev/nst{i}"))).collect();
    for d in &devices {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let cfg = TarConfig {
        name: "bench-lto".into(),
        devices: devices.clone(),
        copies: 2,
        batch_size: 100_000_000_000,
        mt: vec![tool("mt")],
        write: vec![tool("tape-dd"), "of={device}".into()],
        read: vec![tool("tape-dd"), "if={device}".into()],
        labels: work.join("labels.json"),
        changer: None,
        lock_timeout: std::time::Duration::from_secs(60),
    };
    let (dir, files, mib) = (work.clone(), args.files, args.file_mib);
    let batch = tokio::task::spawn_blocking(move || make_batch(&dir, files, mib)).await??;
    // The put, on blank tapes each time (median of `repeat`); the last one's tapes are
    // verified below.
    let mut puts = Vec::new();
    let (mut put_reads, mut put_cpu) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..args.repeat.max(1) {
        for d in &devices {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(&cfg.labels);
        let tape = TarBackend::new(cfg.clone())?;
        let (io0, cpu0) = (read_bytes(), cpu_seconds());
        let t = Instant::now();
        let receipt = tape.put(&batch).await?;
        puts.push(t.elapsed());
        put_reads.push(read_bytes().saturating_sub(io0));
        put_cpu.push(cpu_seconds() - cpu0);
        last = Some((tape, receipt));
    }
    let put_time = median(puts);
    put_reads.sort_unstable();
    put_cpu.sort_by(f64::total_cmp);
    let (put_read, put_cpu) = (put_reads[put_reads.len() / 2], put_cpu[put_cpu.len() / 2]);
    let (tape, receipt) = last.context("no put")?;
    // Pace reads only: the put above ran at disk speed.
    if args.drive_mb_s > 0 {
        for d in &devices {
            std::fs::write(d.join("rate"), (args.drive_mb_s * 1_000_000).to_string())?;
        }
    }
    let copy_bytes = batch.size();
    let one = |i: usize| Receipt {
        volumes: vec![receipt.volumes[i].clone()],
        ..receipt.clone()
    };
    println!(
        "tape-bench: {} files x {} MiB = {} MiB per copy, 2 copies, drive {} MB/s; put (both copies, median) {:.2}s",
        args.files,
        args.file_mib,
        copy_bytes >> 20,
        args.drive_mb_s,
        put_time.as_secs_f64()
    );
    println!(
        "put: {} MiB read by this process (rchar), {put_cpu:.2}s CPU (user + system, all threads)",
        put_read >> 20
    );
    println!("level                 sequential  parallel  ratio");
    for (name, level) in [
        ("full", VerifyLevel::Full),
        (
            "sample 0.25 (seed 1)",
            VerifyLevel::Sample {
                fraction: 0.25,
                seed: Some(1),
            },
        ),
    ] {
        let mut seq = Vec::new();
        let mut par = Vec::new();
        for _ in 0..args.repeat {
            let a = time_verify(&tape, &one(0), level).await?;
            let b = time_verify(&tape, &one(1), level).await?;
            seq.push(a + b);
            par.push(time_verify(&tape, &receipt, level).await?);
        }
        let (s, p) = (median(seq), median(par));
        println!(
            "{name:<21} {:>9.2}s {:>8.2}s  {:.2}",
            s.as_secs_f64(),
            p.as_secs_f64(),
            p.as_secs_f64() / s.as_secs_f64()
        );
    }
    if args.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}
