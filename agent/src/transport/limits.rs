//! Concurrency and bandwidth limits.
//!
//! - [`Limits`]: the numbers from the site map (files in flight per run, transfers per link,
//!   global transfers, bandwidth per link).
//! - [`Gates`]: the semaphores built from them; [`Gates::admit`] waits for a slot at every
//!   level (run → link → global: a file takes a global slot only once its link has room)
//!   and returns a [`Permit`] that frees them when dropped.
//! - [`RateLimiter`]: a token bucket shared by the copies of one link. It is applied as a
//!   wrapper around the byte stream ([`throttle`] for async chunk streams, [`ThrottledRead`]
//!   for blocking readers), never inside a copy loop.
//! - [`ByteMeter`]: how far one file's copy has got, counted by the same wrappers
//!   ([`metered`], [`ThrottledRead::metered`]) for progress bars.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits as configured in the site map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files of one run copied at the same time.
    pub files_per_run: usize,
    /// Files copied at the same time over one link (site pair).
    pub transfers_per_link: usize,
    /// Files copied at the same time by this agent.
    pub global: usize,
    /// Bytes per second over one link; `None` = unlimited.
    pub bandwidth_per_link: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            files_per_run: 4,
            transfers_per_link: 4,
            global: 8,
            bandwidth_per_link: None,
        }
    }
}

/// Semaphores enforcing [`Limits`] across runs and links. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gates {
    limits: Limits,
    global: Arc<Semaphore>,
    links: Arc<Mutex<HashMap<String, LinkGate>>>,
}

#[derive(Debug, Clone)]
struct LinkGate {
    transfers: Arc<Semaphore>,
    bandwidth: Option<Arc<RateLimiter>>,
}

/// Slots held by one file copy; released when dropped.
#[derive(Debug)]
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _link: OwnedSemaphorePermit,
    _run: OwnedSemaphorePermit,
}

impl Gates {
    /// Build the gates (a limit of 0 is taken as 1).
    pub fn new(limits: Limits) -> Self {
        Gates {
            limits,
            global: Arc::new(Semaphore::new(limits.global.max(1))),
            links: Arc::default(),
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn link(&self, link: &str) -> LinkGate {
        let mut links = match self.links.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        links
            .entry(link.to_owned())
            .or_insert_with(|| LinkGate {
                transfers: Arc::new(Semaphore::new(self.limits.transfers_per_link.max(1))),
                bandwidth: self
                    .limits
                    .bandwidth_per_link
                    .map(|rate| Arc::new(RateLimiter::new(rate))),
            })
            .clone()
    }

    /// The bandwidth limiter of a link, if one is configured.
    pub fn bandwidth(&self, link: &str) -> Option<Arc<RateLimiter>> {
        self.link(link).bandwidth
    }

    /// A semaphore for the files of one run (create one per run copy).
    pub fn run_gate(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.limits.files_per_run.max(1)))
    }

    /// Wait for a slot globally, on `link` and in the run's gate.
    pub async fn admit(&self, link: &str, run: &Arc<Semaphore>) -> Permit {
        async fn take(sem: Arc<Semaphore>) -> OwnedSemaphorePermit {
            match sem.acquire_owned().await {
                Ok(p) => p,
                Err(_) => unreachable!("Gates never close their semaphores"),
            }
        }
        let run = take(run.clone()).await;
        let link = take(self.link(link).transfers).await;
        let global = take(self.global.clone()).await;
        Permit {
            _global: global,
            _link: link,
            _run: run,
        }
    }
}

/// Token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (0 is taken as 1).
    pub fn new(rate: u64) -> Self {
        RateLimiter {
            rate: rate.max(1),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Take `n` bytes from the bucket; returns how long the caller must wait before sending.
    /// The bucket may go into debt, so chunks larger than the burst still pass.
    fn take(&self, n: usize) -> Duration {
        let mut b = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let rate = self.rate as f64;
        let refill = now.duration_since(b.last).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(rate);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Wait until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        let wait = self.take(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Blocking [`acquire`](Self::acquire), for copy threads.
    pub fn blocking_acquire(&self, n: usize) {
        let wait = self.take(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Pace a stream of chunks through a limiter (no-op without one).
pub fn throttle<S, E>(
    stream: S,
    limiter: Option<Arc<RateLimiter>>,
) -> impl Stream<Item = Result<bytes::Bytes, E>>
where
    S: Stream<Item = Result<bytes::Bytes, E>>,
{
    stream.then(move |item| {
        let limiter = limiter.clone();
        async move {
            if let (Some(l), Ok(chunk)) = (&limiter, &item) {
                l.acquire(chunk.len()).await;
            }
            item
        }
    })
}

/// How far one file's copy has got, in bytes: written by the copy loop (one relaxed atomic
/// add per chunk), read by whoever shows progress. Cloning shares the count.
#[derive(Debug, Clone, Default)]
pub struct ByteMeter(Arc<AtomicU64>);

impl ByteMeter {
    /// A meter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes done so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Starts (or restarts) an attempt at `at` bytes: a kept prefix counts as done.
    pub fn restart(&self, at: u64) {
        self.0.store(at, Ordering::Relaxed);
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts the bytes of a chunk stream on `meter` as they pass (no-op without one).
pub fn metered<S, E>(
    stream: S,
    meter: Option<ByteMeter>,
) -> impl Stream<Item = Result<bytes::Bytes, E>>
where
    S: Stream<Item = Result<bytes::Bytes, E>>,
{
    stream.inspect(move |item| {
        if let (Some(m), Ok(chunk)) = (&meter, item) {
            m.add(chunk.len() as u64);
        }
    })
}

/// A reader paced by a limiter (no-op without one), counting what it reads on a meter.
pub struct ThrottledRead<R> {
    inner: R,
    limiter: Option<Arc<RateLimiter>>,
    meter: Option<ByteMeter>,
}

impl<R: Read> ThrottledRead<R> {
    /// Wrap `inner`.
    pub fn new(inner: R, limiter: Option<Arc<RateLimiter>>) -> Self {
        ThrottledRead {
            inner,
            limiter,
            meter: None,
        }
    }

    /// Also count the bytes read on `meter`.
    pub fn metered(mut self, meter: Option<ByteMeter>) -> Self {
        self.meter = meter;
        self
    }
}

impl<R: Read> Read for ThrottledRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(l) = &self.limiter {
            l.blocking_acquire(n);
        }
        if let Some(m) = &self.meter {
            m.add(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rate_limiter_paces_a_stream() {
        let limiter = Arc::new(RateLimiter::new(1_000_000));
        let chunks = (0..5).map(|_| Ok::<_, ()>(bytes::Bytes::from(vec![0u8; 100_000])));
        let start = Instant::now();
        let n: usize = throttle(futures::stream::iter(chunks), Some(limiter))
            .map(|c| c.map(|b| b.len()).unwrap_or(0))
            .fold(0, |a, b| async move { a + b })
            .await;
        let took = start.elapsed();
        assert_eq!(n, 500_000);
        // 500 kB at 1 MB/s from an empty bucket: ~0.5 s.
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn throttled_read_paces_a_reader() {
        let data = vec![1u8; 200_000];
        let mut r = ThrottledRead::new(&data[..], Some(Arc::new(RateLimiter::new(1_000_000))));
        let start = Instant::now();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 200_000);
        assert!(start.elapsed() >= Duration::from_millis(180));
    }

    #[tokio::test]
    async fn gates_bound_files_per_run_and_per_link() {
        let gates = Gates::new(Limits {
            files_per_run: 2,
            transfers_per_link: 3,
            global: 10,
            bandwidth_per_link: None,
        });
        let run = gates.run_gate();
        let _a = gates.admit("x", &run).await;
        let _b = gates.admit("x", &run).await;
        // Third file of the same run must wait.
        let third = tokio::time::timeout(Duration::from_millis(50), gates.admit("x", &run)).await;
        assert!(third.is_err());
        // Another run on the same link gets the link's last slot, then the link is full.
        let run2 = gates.run_gate();
        let _c = gates.admit("x", &run2).await;
        let fourth = tokio::time::timeout(Duration::from_millis(50), gates.admit("x", &run2)).await;
        assert!(fourth.is_err());
        // Another link is independent.
        let _d = gates.admit("y", &run2).await;
    }
}
