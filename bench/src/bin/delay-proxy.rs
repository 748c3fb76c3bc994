//! A TCP proxy that adds a fixed one-way delay in each direction, to simulate a long link on
//! loopback: `delay-proxy --listen 127.0.0.1:2300 --to 127.0.0.1:22 --delay-ms 10` gives a
//! 20 ms round trip.
//!
//! Bandwidth is kept: every chunk read is stamped with its arrival time and queued; a separate
//! writer task sends each chunk when its time has come. Chunks are delayed side by side, never
//! one after the other, so the link carries as much as it did without the proxy.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    let delay = Duration::from_millis(args.delay_ms);
    eprintln!(
        "delay-proxy {} -> {} ({} ms each way)",
        args.listen, args.to, args.delay_ms
    );
    loop {
        let (client, _) = listener.accept().await?;
        let to = args.to.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(client, &to, delay).await {
                eprintln!("delay-proxy: connection ended: {e}");
            }
        });
    }
}

async fn serve(client: TcpStream, to: &str, delay: Duration) -> anyhow::Result<()> {
    let server = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, delay));
    let down = tokio::spawn(pipe(sr, cw, delay));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Read from `from`, deliver to `to` `delay` after each chunk arrived.
///
/// Buffers go round between the two halves (reader → writer → back to the reader) instead of
/// being allocated per chunk: a fresh 256 KiB buffer per read costs page faults, and the proxy
/// shares the CPUs with the tools it measures, so its own cost must stay small.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
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
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf, n)).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
