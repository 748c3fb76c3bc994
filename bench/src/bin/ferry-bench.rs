//! Drives Ferry's transport for the benchmark (`bench/transport.sh`): one file push or pull,
//! or a directory of files pushed with bounded concurrency. SHA-256 + MD5 are always
//! computed (the transport cannot copy without them). Prints one line:
//! `ferry MODE bytes=N seconds=S mb_per_s=R`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use ferry::transport::limits::{Gates, Limits};
use ferry::transport::run::{copy_run, FileJob, RunCopy};
use ferry::transport::{CopyOptions, HostKeyPolicy, SshSession, SshTarget, Verify};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Local file → remote path.
    Push,
    /// Remote path → local file.
    Pull,
    /// Every file of a local directory → remote directory.
    PushDir,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VerifyArg {
    Deferred,
    ReadBack,
    Sha256sum,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// Local file or directory.
    #[arg(long)]
    local: PathBuf,
    /// Remote file or directory.
    #[arg(long)]
    remote: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "root")]
    user: String,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    known_hosts: PathBuf,
    /// Cipher, e.g. aes128-gcm@openssh.com (default: Ferry's preference).
    #[arg(long)]
    cipher: Option<String>,
    #[arg(long, default_value_t = 4)]
    channels: usize,
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Files in flight for push-dir.
    #[arg(long, default_value_t = 4)]
    files: usize,
    #[arg(long, value_enum, default_value_t = VerifyArg::Deferred)]
    verify: VerifyArg,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut target = SshTarget::new(&args.host, args.port, &args.user);
    target.identity_files = vec![args.key.clone()];
    target.known_hosts_files = vec![args.known_hosts.clone()];
    target.host_key_policy = HostKeyPolicy::Strict;
    target.channels = args.channels;
    target.use_agent = false;
    target.connect_timeout = Duration::from_secs(30);
    if let Some(c) = &args.cipher {
        target.ciphers = vec![c.clone()];
    }
    let opts = CopyOptions {
        requests_in_flight: args.in_flight,
        resume: false,
        verify: match args.verify {
            VerifyArg::Deferred => Verify::Deferred,
            VerifyArg::ReadBack => Verify::ReadBack,
            VerifyArg::Sha256sum => Verify::sha256sum(),
        },
        ..CopyOptions::default()
    };
    let start = Instant::now();
    let session = Arc::new(SshSession::connect(&target).await.context("connect")?);
    let bytes = match args.mode {
        Mode::Push => {
            session
                .push(&args.local, &args.remote, &opts)
                .await?
                .digest
                .size
        }
        Mode::Pull => {
            session
                .pull(&args.remote, &args.local, &opts)
                .await?
                .digest
                .size
        }
        Mode::PushDir => {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&args.local)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    files.push(FileJob {
                        path: entry.file_name().to_string_lossy().into_owned(),
                        size: entry.metadata()?.len(),
                        sha256: None,
                    });
                }
            }
            let method = RunCopy::Push {
                session: session.clone(),
                local_root: args.local.clone(),
                remote_root: args.remote.clone(),
                // The remote directory's parent stands for the data directory: it must exist.
                remote_base: match args.remote.trim_end_matches('/').rsplit_once('/') {
                    Some((parent, _)) if !parent.is_empty() => parent.to_owned(),
                    _ => "/".to_owned(),
                },
            };
            let gates = Gates::new(Limits {
                files_per_run: args.files,
                transfers_per_link: args.files,
                global: args.files,
                bandwidth_per_link: None,
            });
            let results = copy_run(&method, &files, &opts, &gates, |_| {}).await;
            let mut total = 0;
            for r in results {
                total += r?.digest.size;
            }
            if total == 0 && !files.is_empty() {
                bail!("nothing copied");
            }
            total
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ferry {:?} bytes={bytes} seconds={secs:.3} mb_per_s={:.1}",
        args.mode,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
