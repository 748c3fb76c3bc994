//! A TCP proxy that makes a slow link on loopback: each direction is paced to a bandwidth
//! (one token bucket per direction, shared by every connection through the proxy, as one
//! WAN link would be) and may be delayed by a fixed time. It counts the connections it
//! accepted.
//!
//! [`ThrottleProxy::start`] is synchronous (the proxy runs on a thread of its own with its
//! own runtime), so it can be called from plain tests and from inside `#[tokio::test]`.
//! Dropping the proxy stops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How the proxy shapes the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per second in each direction; `None`: as fast as loopback.
    pub rate: Option<u64>,
    /// Added to each chunk in each direction (a round trip gets twice this).
    pub delay: Duration,
}

/// A running proxy to `127.0.0.1:to_port`; stopped on drop.
#[derive(Debug)]
pub struct ThrottleProxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A token bucket: `rate` bytes a second, bursts of at most a tenth of a second's worth.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate: rate.max(1) as f64,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate / 10.0);
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

impl ThrottleProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `to_port`.
    pub fn start(to_port: u16, shape: Shape) -> anyhow::Result<ThrottleProxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let count = Arc::clone(&accepted);
        let thread = std::thread::Builder::new()
            .name(format!("throttle-proxy-{port}"))
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let up = shape.rate.map(|r| Arc::new(Bucket::new(r)));
                    let down = shape.rate.map(|r| Arc::new(Bucket::new(r)));
                    let accepting = async {
                        while let Ok((client, _)) = listener.accept().await {
                            count.fetch_add(1, Ordering::SeqCst);
                            let (up, down) = (up.clone(), down.clone());
                            tokio::spawn(async move {
                                let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)).await
                                else {
                                    return;
                                };
                                let _ = client.set_nodelay(true);
                                let _ = server.set_nodelay(true);
                                let (cr, cw) = client.into_split();
                                let (sr, sw) = server.into_split();
                                let a = tokio::spawn(pipe(cr, sw, up, shape.delay));
                                let b = tokio::spawn(pipe(sr, cw, down, shape.delay));
                                let _ = tokio::join!(a, b);
                            });
                        }
                    };
                    tokio::select! {
                        () = accepting => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the proxy thread")?;
        Ok(ThrottleProxy {
            port,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards `from` to `to`, each chunk paced by `bucket` and held back `delay`. Chunks are
/// read at most 16 KiB at a time, so the pacing is smooth.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    bucket: Option<Arc<Bucket>>,
    delay: Duration,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(b) = &bucket {
            b.take(n).await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
