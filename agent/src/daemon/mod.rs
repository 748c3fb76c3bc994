//! Running the agent: the cycle loop, shutdown, the single-instance lock.
//!
//! - [`lock`]: one agent per site (an OS file lock naming its holder's pid).
//! - [`metrics`]: the Prometheus endpoint (`--metrics-listen`), fed from each cycle's report.
//! - [`run_cycles`]: runs a cycle now, then every `interval`, until the shutdown future
//!   resolves. The shutdown signal is a future (SIGTERM/SIGINT in the binary, anything in
//!   tests). Once it fires, nothing new starts: the running cycle sees its
//!   [`CancellationToken`] cancelled and should finish what it has begun; if it is still
//!   running after `grace`, it is dropped — every state change is a conditional catalogue
//!   update, so what was cut short is picked up again by the next agent's retry task.
//!   Copies are not part of the cycle: the agent's transfer scheduler
//!   (`tasks::scheduler`) runs them behind it, so a cycle stays short while copies are in
//!   flight; the CLI closes the scheduler when the shutdown future fires and gives its
//!   running copies the same grace period after the loop has returned.

pub mod lock;
pub mod metrics;

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    /// Time between the start of one cycle and the next one's.
    pub interval: Duration,
    /// Run one cycle and return.
    pub once: bool,
    /// How long a running cycle may go on after shutdown was asked for.
    pub grace: Duration,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `once` was set and the cycle finished.
    Once,
    /// Shutdown was asked for; the running cycle (if any) finished within the grace period.
    Shutdown,
    /// Shutdown was asked for and the running cycle was cut off after the grace period.
    GraceExpired,
}

/// Runs `cycle` now and then every `opts.interval` until `shutdown` resolves (or once).
/// Returns why it stopped and the outcome of the last cycle that finished.
pub async fn run_cycles<C, Fut, T>(
    opts: LoopOptions,
    mut cycle: C,
    shutdown: impl Future<Output = ()>,
) -> (Stopped, Option<T>)
where
    C: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let token = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last = None;
    loop {
        let started = tokio::time::Instant::now();
        let running = cycle(token.child_token());
        let mut running = std::pin::pin!(running);
        let outcome = tokio::select! {
            out = &mut running => Some(out),
            () = &mut shutdown => {
                tracing::info!(grace = ?opts.grace, "shutdown asked for: starting nothing new, letting running work finish");
                token.cancel();
                match tokio::time::timeout(opts.grace, &mut running).await {
                    Ok(out) => return (Stopped::Shutdown, Some(out)),
                    Err(_) => {
                        tracing::warn!(grace = ?opts.grace, "grace period over: stopping the running cycle");
                        return (Stopped::GraceExpired, last);
                    }
                }
            }
        };
        last = outcome;
        if opts.once {
            return (Stopped::Once, last);
        }
        let next = started + opts.interval;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = &mut shutdown => {
                tracing::info!("shutdown asked for between cycles");
                return (Stopped::Shutdown, last);
            }
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now, and returns a future that resolves on the
/// first of them. Installing before the agent takes its lock means a signal can never find
/// the process with its default (fatal) disposition while it holds state. Must be called
/// inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn opts(once: bool) -> LoopOptions {
        LoopOptions {
            interval: Duration::from_millis(20),
            once,
            grace: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn once_runs_exactly_one_cycle() {
        let n = Arc::new(AtomicU32::new(0));
        let c = n.clone();
        let (why, out) = run_cycles(
            opts(true),
            move |_| {
                let c = c.clone();
                async move { c.fetch_add(1, Ordering::SeqCst) + 1 }
            },
            std::future::pending(),
        )
        .await;
        assert_eq!((why, out), (Stopped::Once, Some(1)));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn daemon_repeats_until_shutdown_and_starts_nothing_after() {
        let n = Arc::new(AtomicU32::new(0));
        let c = n.clone();
        let (why, _) = run_cycles(
            opts(false),
            move |_| {
                let c = c.clone();
                async move { c.fetch_add(1, Ordering::SeqCst) }
            },
            tokio::time::sleep(Duration::from_millis(110)),
        )
        .await;
        assert_eq!(why, Stopped::Shutdown);
        let after_stop = n.load(Ordering::SeqCst);
        // Paused clock: cycles start at 0, 20, 40, 60, 80 and 100 ms.
        assert_eq!(after_stop, 6);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            n.load(Ordering::SeqCst),
            after_stop,
            "a cycle started after shutdown"
        );
    }

    #[tokio::test]
    async fn running_cycle_sees_cancel_and_finishes_within_grace() {
        let (why, out) = run_cycles(
            opts(false),
            |token: CancellationToken| async move {
                token.cancelled().await;
                // Finishing the file in flight after being told to stop.
                tokio::time::sleep(Duration::from_millis(20)).await;
                "finished cleanly"
            },
            tokio::time::sleep(Duration::from_millis(30)),
        )
        .await;
        assert_eq!((why, out), (Stopped::Shutdown, Some("finished cleanly")));
    }

    #[tokio::test(start_paused = true)]
    async fn cycle_ignoring_cancel_is_cut_after_grace() {
        let started = tokio::time::Instant::now();
        let (why, out) = run_cycles(
            opts(false),
            |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
            },
            tokio::time::sleep(Duration::from_millis(10)),
        )
        .await;
        assert_eq!((why, out), (Stopped::GraceExpired, None));
        // Shutdown at 10 ms plus 200 ms of grace, not the cycle's 60 s.
        assert_eq!(started.elapsed(), Duration::from_millis(210));
    }
}
