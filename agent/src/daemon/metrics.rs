//! A Prometheus metrics endpoint for the daemon (DESIGN §8): `GET /metrics` in the text
//! exposition format (version 0.0.4), from the reports of the cycles run so far.
//!
//! - [`Metrics`]: the figures, updated once per cycle by [`Metrics::record_cycle`] (cheap: a
//!   mutex held for a few counters), rendered on demand by [`Metrics::render`].
//! - [`serve`]: a deliberately small HTTP/1.1 responder on a `TcpListener` — one request per
//!   connection, `GET /metrics` (and `/` pointing there), anything else 404/405 — which stops
//!   when its shutdown future resolves. Enough for a Prometheus scraper; no HTTP library.
//!
//! Every series carries `site="<name>"`. Counters are totals since the agent started;
//! gauges describe the last cycle.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What one task did in a cycle: done, skipped, failed.
pub type TaskCounts = (u64, u64, u64);

/// Run documents the catalogue could not read ([`crate::catalog::Quarantine`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quarantined {
    /// Skips since the agent started (every read that left a document out counts).
    pub skips: u64,
    /// Distinct documents seen unreadable since the agent started.
    pub documents: u64,
}

#[derive(Debug, Default)]
struct Inner {
    cycles: u64,
    cycles_with_failures: u64,
    last_cycle_seconds: f64,
    last_cycle_end: Option<f64>,
    last_transfer: Option<f64>,
    tasks: BTreeMap<String, TaskCounts>,
    disks: BTreeMap<String, (u64, u64)>,
    quarantined: Quarantined,
}

/// The daemon's figures, shared between the cycle loop and the endpoint.
#[derive(Debug)]
pub struct Metrics {
    site: String,
    inner: Mutex<Inner>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Figures for `site`, all zero.
    pub fn new(site: &str) -> Arc<Self> {
        Arc::new(Metrics {
            site: site.to_owned(),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one finished cycle: its length, each task's counts, whether it copied anything
    /// (`copied`), and the data directories' (total, free) bytes.
    pub fn record_cycle(
        &self,
        took: Duration,
        tasks: &[(String, TaskCounts)],
        copied: bool,
        disks: &[(String, (u64, u64))],
    ) {
        self.record_cycle_with(took, tasks, copied, disks, None);
    }

    /// [`Metrics::record_cycle`], with the catalogue's unreadable documents as they stand
    /// at the end of the cycle (totals since start-up, so they replace the last figures).
    pub fn record_cycle_with(
        &self,
        took: Duration,
        tasks: &[(String, TaskCounts)],
        copied: bool,
        disks: &[(String, (u64, u64))],
        quarantined: Option<Quarantined>,
    ) {
        let mut m = self.inner();
        let now = unix_now();
        m.cycles += 1;
        if tasks.iter().any(|(_, (_, _, failed))| *failed > 0) {
            m.cycles_with_failures += 1;
        }
        m.last_cycle_seconds = took.as_secs_f64();
        m.last_cycle_end = Some(now);
        if copied {
            m.last_transfer = Some(now);
        }
        for (task, (d, s, f)) in tasks {
            let e = m.tasks.entry(task.clone()).or_default();
            e.0 += d;
            e.1 += s;
            e.2 += f;
        }
        for (data_type, sizes) in disks {
            m.disks.insert(data_type.clone(), *sizes);
        }
        if let Some(q) = quarantined {
            m.quarantined = q;
        }
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let m = self.inner();
        let site = label(&self.site);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{{site=\"{site}\"{labels}}} {value}");
            }
        };
        metric(
            "ferry_up",
            "gauge",
            "1 while the agent runs.",
            &[(String::new(), 1.0)],
        );
        metric(
            "ferry_cycles_total",
            "counter",
            "Cycles run since the agent started.",
            &[(String::new(), m.cycles as f64)],
        );
        metric(
            "ferry_cycles_with_failures_total",
            "counter",
            "Cycles in which some task failed on some run.",
            &[(String::new(), m.cycles_with_failures as f64)],
        );
        metric(
            "ferry_last_cycle_seconds",
            "gauge",
            "Length of the last cycle.",
            &[(String::new(), m.last_cycle_seconds)],
        );
        if let Some(t) = m.last_cycle_end {
            metric(
                "ferry_last_cycle_end_timestamp_seconds",
                "gauge",
                "When the last cycle ended (Unix time).",
                &[(String::new(), t)],
            );
        }
        if let Some(t) = m.last_transfer {
            metric(
                "ferry_last_transfer_timestamp_seconds",
                "gauge",
                "When a cycle last made a copy (push, pull, retry; Unix time).",
                &[(String::new(), t)],
            );
        }
        for (name, help, pick) in [
            (
                "ferry_task_done_total",
                "Runs a task completed work on.",
                0usize,
            ),
            ("ferry_task_skipped_total", "Runs a task left alone.", 1),
            ("ferry_task_failed_total", "Runs a task failed on.", 2),
        ] {
            let lines: Vec<(String, f64)> = m
                .tasks
                .iter()
                .map(|(task, c)| {
                    let v = [c.0, c.1, c.2][pick];
                    (format!(",task=\"{}\"", label(task)), v as f64)
                })
                .collect();
            metric(name, "counter", help, &lines);
        }
        metric(
            "ferry_catalog_quarantined_total",
            "counter",
            "Reads that skipped a run document that does not decode (never written to).",
            &[(String::new(), m.quarantined.skips as f64)],
        );
        metric(
            "ferry_catalog_quarantined_documents",
            "gauge",
            "Distinct run documents found unreadable since the agent started.",
            &[(String::new(), m.quarantined.documents as f64)],
        );
        let free: Vec<(String, f64)> = m
            .disks
            .iter()
            .map(|(t, (_, free))| (format!(",data_type=\"{}\"", label(t)), *free as f64))
            .collect();
        metric(
            "ferry_disk_free_bytes",
            "gauge",
            "Free bytes of each data directory's file system.",
            &free,
        );
        let total: Vec<(String, f64)> = m
            .disks
            .iter()
            .map(|(t, (total, _))| (format!(",data_type=\"{}\"", label(t)), *total as f64))
            .collect();
        metric(
            "ferry_disk_total_bytes",
            "gauge",
            "Size of each data directory's file system.",
            &total,
        );
        out
    }
}

/// Serves `metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        // A scraper that stalls or sends garbage only loses its own answer.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            answer(stream, &metrics),
                        )
                        .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Reads one request head (at most 8 KiB) and writes one response.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > 8192 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "ferry agent: metrics at /metrics\n".to_owned(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_escaped_labels() {
        let m = Metrics::new("da\"q");
        m.record_cycle(
            Duration::from_millis(1500),
            &[("push".into(), (2, 1, 0)), ("purge".into(), (0, 3, 1))],
            true,
            &[("raw".into(), (1000, 400))],
        );
        m.record_cycle(
            Duration::from_millis(500),
            &[("push".into(), (1, 0, 0))],
            false,
            &[("raw".into(), (1000, 300))],
        );
        let text = m.render();
        assert!(
            text.contains("ferry_cycles_total{site=\"da\\\"q\"} 2"),
            "{text}"
        );
        assert!(text.contains("ferry_cycles_with_failures_total{site=\"da\\\"q\"} 1"));
        assert!(text.contains("ferry_task_done_total{site=\"da\\\"q\",task=\"push\"} 3"));
        assert!(text.contains("ferry_task_failed_total{site=\"da\\\"q\",task=\"purge\"} 1"));
        assert!(text.contains("ferry_disk_free_bytes{site=\"da\\\"q\",data_type=\"raw\"} 300"));
        assert!(text.contains("ferry_last_cycle_seconds{site=\"da\\\"q\"} 0.5"));
        assert!(text.contains("# TYPE ferry_task_done_total counter"));
        assert!(text.contains("ferry_last_transfer_timestamp_seconds"));
        assert!(text.contains("ferry_catalog_quarantined_total{site=\"da\\\"q\"} 0"));
    }

    #[test]
    fn quarantined_documents_are_exported() {
        let m = Metrics::new("daq");
        let q = |skips, documents| Some(Quarantined { skips, documents });
        m.record_cycle_with(Duration::from_secs(1), &[], false, &[], q(3, 2));
        m.record_cycle_with(Duration::from_secs(1), &[], false, &[], q(5, 2));
        let text = m.render();
        assert!(
            text.contains("ferry_catalog_quarantined_total{site=\"daq\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("ferry_catalog_quarantined_documents{site=\"daq\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE ferry_catalog_quarantined_total counter"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new("daq");
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(serve(listener, Arc::clone(&m), async move {
            stopped.cancelled().await;
        }));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("ferry_up{site=\"daq\"} 1"), "{ok}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
