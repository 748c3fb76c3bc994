//! The daemon's Prometheus endpoint (DESIGN §8): `GET /metrics` in the text exposition
//! format (version 0.0.4) of the agent's [`Metrics`] (the typed handle in
//! [`crate::metrics`], fed by the tasks and the cycle loop), on axum.
//!
//! [`serve`] answers `GET /metrics` (and `/` pointing there); any other path is 404, any
//! other method 405. It stops when its shutdown future resolves. The CLI binds it before
//! the agent reaches its catalogue, so it answers from the agent's first second, with
//! `ferry_catalog_up 0` while the catalogue does not.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

pub use crate::metrics::{Metrics, Quarantined, TaskCounts};

/// The endpoint's routes over `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "ferry agent: metrics at /metrics\n" }))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.render(),
    )
}

/// Serves `metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let ask = |head: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let close = "Host: x\r\nConnection: close\r\n\r\n";
        let ok = ask(format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("ferry_up{site=\"daq\"} 1"), "{ok}");
        let nope = ask(format!("GET /nope HTTP/1.1\r\n{close}")).await;
        assert!(nope.starts_with("HTTP/1.1 404"), "{nope}");
        let post = ask(format!(
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}"
        ))
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
