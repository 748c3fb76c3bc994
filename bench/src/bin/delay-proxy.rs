//! A TCP proxy that adds a fixed one-way delay in each direction, to simulate a long link on
//! loopback: `delay-proxy --listen 127.0.0.1:2300 --to 127.0.0.1:22 --delay-ms 10` gives a
//! 20 ms round trip.
//!
//! Bandwidth is kept: every chunk read is stamped with its arrival time and queued; a separate
//! writer task sends each chunk when its time has come. Chunks are delayed side by side, never
//! one after the other, so the link carries as much as it did without the proxy.
//!
//! `--rate BYTES` throttles the link as well: each direction is paced to that many bytes per
//! second, shared by every connection through the proxy (one slow WAN link), by a token
//! bucket the reader waits on before it queues a chunk.

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Address to forward to.
    #[arg(long)]
    to: String,
    /// One-way delay per direction, in milliseconds.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Bytes per second in each direction, shared by all connections; unlimited if unset.
    #[arg(long)]
    rate: Option<u64>,
}

/// A token bucket: `rate` bytes a second, bursts of at most a tenth of a second's worth.
struct Bucket {
    rate: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate: rate.max(1) as f64,
            state: std::sync::Mutex::new((0.0, Instant::now())),
        }
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate / 10.0);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

type Shared = Option<std::sync::Arc<Bucket>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    let delay = Duration::from_millis(args.delay_ms);
    eprintln!(
        "delay-proxy {} -> {} ({} ms each way, rate {:?} B/s)",
        args.listen, args.to, args.delay_ms, args.rate
    );
    let up: Shared = args.rate.map(|r| std::sync::Arc::new(Bucket::new(r)));
    let down: Shared = args.rate.map(|r| std::sync::Arc::new(Bucket::new(r)));
    loop {
        let (client, _) = listener.accept().await?;
        let to = args.to.clone();
        let (up, down) = (up.clone(), down.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(client, &to, delay, up, down).await {
                eprintln!("delay-proxy: connection ended: {e}");
            }
        });
    }
}

async fn serve(
    client: TcpStream,
    to: &str,
    delay: Duration,
    up: Shared,
    down: Shared,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, delay, up));
    let down = tokio::spawn(pipe(sr, cw, delay, down));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Read from `from`, deliver to `to` `delay` after each chunk arrived.
///
/// Buffers go round between the two halves (reader → writer → back to the reader) instead of
/// being allocated per chunk: a fresh 256 KiB buffer per read costs page faults, and the proxy
/// shares the CPUs with the tools it measures, so its own cost must stay small.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration, rate: Shared) {
    // Smaller reads when throttled, so the pacing is smooth.
    let buf_len: usize = if rate.is_some() {
        16 * 1024
    } else {
        256 * 1024
    };
    const BUF: usize = 256 * 1024;
    // Unbounded on purpose: the delay line must hold a full bandwidth-delay product; TCP's
    // own windows bound it.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, usize)>();
    let (free_tx, mut free_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk, n)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            let _ = free_tx.send(chunk);
        }
        let _ = to.shutdown().await;
    });
    loop {
        // Full-length buffers, so that none is zeroed again; the length read travels along.
        let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; BUF]);
        match from.read(&mut buf[..buf_len]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(bucket) = &rate {
                    bucket.take(n).await;
                }
                if tx.send((Instant::now() + delay, buf, n)).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
