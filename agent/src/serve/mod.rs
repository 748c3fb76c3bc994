//! `ferry serve`: a read-only web view and JSON API of the run catalogue.
//!
//! Rendered on the server (askama templates under `agent/templates/serve/`, compiled into
//! the binary and HTML-escaped; plots drawn as SVG with plotters), usable without
//! JavaScript and without any file from outside the binary: the CSS is inline.
//!
//! - [`runs`]: `/`, the paged runs table with its filters (keyset paging on the list's
//!   `(number, detector)` order, [`crate::catalog::page_after`]);
//! - [`run`]: `/runs/{detector}/{number}`, one run: identity, manifest, copies, tape
//!   references, events;
//! - [`sites`]: `/sites`, per site what it holds, its backlog and its agent's heartbeat;
//! - [`transfers`]: `/transfers`, copies finished per link, with SVG plots;
//! - [`api`]: `/api/…`, the same data as JSON (the documents as `ferry runs --json` prints
//!   them).
//!
//! Safe by construction: the catalogue is only read (no route writes; every method but GET
//! and HEAD is answered 405 before routing), every response carries a strict
//! Content-Security-Policy and `X-Content-Type-Options: nosniff`, the catalogue is shown
//! by its redacted description and error texts are scrubbed of its password, and
//! [`auth`] optionally asks for HTTP basic credentials checked against bcrypt hashes.

pub mod api;
pub mod auth;
pub mod run;
pub mod runs;
pub mod sites;
pub mod transfers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bson::DateTime;

use crate::catalog::{Catalog, CatalogError, CatalogTarget, RunDoc, RunFilter, RunKey};

/// The Content-Security-Policy of every response: nothing may load but the page's own
/// inline styles and images from this server (the SVG plots) or `data:`; no script at all.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How `ferry serve` behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// An agent whose last heartbeat is older than this is shown as silent.
    pub silent_after: Duration,
    /// Runs per page of the runs table (and of `/api/runs` unless `limit` is given).
    pub page_size: u32,
    /// Basic-auth users; `None`: no authentication.
    pub users: Option<auth::Users>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            silent_after: Duration::from_secs(600),
            page_size: 50,
            users: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Box<dyn Catalog>,
    target: Option<CatalogTarget>,
    shown: String,
    options: Options,
}

impl AppState {
    /// The state over an opened catalogue; `target` (when known) scrubs its password out
    /// of error texts.
    pub fn new(catalog: Box<dyn Catalog>, target: Option<CatalogTarget>, options: Options) -> Self {
        let shown = catalog.describe();
        AppState {
            inner: Arc::new(Inner {
                catalog,
                target,
                shown,
                options,
            }),
        }
    }

    pub(crate) fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog.as_ref()
    }

    /// The catalogue's location, password redacted.
    pub(crate) fn shown(&self) -> &str {
        &self.inner.shown
    }

    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    /// `text` with the catalogue password taken out.
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.inner.target {
            Some(t) => t.scrub(text),
            None => text.to_string(),
        }
    }
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The catalogue failed (a retry may help when it is unreachable).
    #[error("catalogue: {0}")]
    Catalog(#[from] CatalogError),
    /// A query parameter does not parse; the same request will fail again.
    #[error("{field}: {detail}")]
    BadQuery {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No such run (or page).
    #[error("{0}")]
    NotFound(String),
    /// A template failed to render (a bug).
    #[error("rendering the page: {0}")]
    Render(#[from] askama::Error),
    /// A plot failed to draw (a bug).
    #[error("drawing the plot: {0}")]
    Plot(String),
}

impl ServeError {
    fn status(&self) -> StatusCode {
        match self {
            ServeError::BadQuery { .. } => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Catalog(e) if e.is_connection() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error page, the message escaped and scrubbed.
pub(crate) struct PageError {
    error: ServeError,
    state: AppState,
}

#[derive(Template)]
#[template(path = "serve/error.html")]
struct ErrorPage<'a> {
    nav: &'static str,
    catalogue: &'a str,
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let message = self.state.scrub(&self.error.to_string());
        if status.is_server_error() {
            tracing::warn!("ferry serve: {message}");
        }
        let page = ErrorPage {
            nav: "",
            catalogue: self.state.shown(),
            status: status.as_u16(),
            message: &message,
        };
        match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}

/// What a page handler returns.
pub(crate) type PageResult = Result<Response, PageError>;

/// Attaches the state to an error, for [`PageError`].
pub(crate) trait OrPage<T> {
    fn or_page(self, state: &AppState) -> Result<T, PageError>;
}

impl<T, E: Into<ServeError>> OrPage<T> for Result<T, E> {
    fn or_page(self, state: &AppState) -> Result<T, PageError> {
        self.map_err(|e| PageError {
            error: e.into(),
            state: state.clone(),
        })
    }
}

/// A rendered template as an HTML response.
pub(crate) fn html(state: &AppState, page: &impl Template) -> PageResult {
    let body = page.render().or_page(state)?;
    Ok(Html(body).into_response())
}

/// The router: every page and API route, the method guard, the security headers and
/// (when configured) basic auth.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(runs::page))
        .route("/runs/{detector}/{number}", get(run::page))
        .route("/sites", get(sites::page))
        .route("/transfers", get(transfers::page))
        .route("/transfers/copies.svg", get(transfers::copies_svg))
        .route("/transfers/bytes.svg", get(transfers::bytes_svg))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{detector}/{number}", get(api::run))
        .route("/api/sites", get(api::sites))
        .route("/api/transfers", get(api::transfers))
        .fallback(not_found)
        .with_state(state.clone());
    let routes = match state.options().users.clone() {
        Some(users) => routes.layer(middleware::from_fn_with_state(
            Arc::new(users),
            auth::require,
        )),
        None => routes,
    };
    routes
        .layer(middleware::from_fn(read_only))
        .layer(middleware::from_fn(security_headers))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Every method but GET and HEAD is refused before any route sees it.
async fn read_only(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::METHOD_NOT_ALLOWED,
        "ferry serve is read-only: only GET and HEAD are answered\n",
    )
        .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every run matching `filter`, read in keyset pages of `chunk` (the sites and transfers
/// pages summarise the whole catalogue without holding it in memory), `each` called per
/// run.
pub(crate) async fn scan(
    catalog: &dyn Catalog,
    filter: &RunFilter,
    chunk: u32,
    mut each: impl FnMut(&RunDoc),
) -> Result<(), CatalogError> {
    let mut f = filter.clone();
    f.limit = Some(chunk);
    loop {
        let page = catalog.list_runs(&f).await?;
        for r in &page {
            each(r);
        }
        match crate::catalog::page_after(&page, chunk) {
            Some(k) => f.after = Some(k),
            None => return Ok(()),
        }
    }
}

/// `2017-05-01 12:00:00Z`.
pub(crate) fn date(d: DateTime) -> String {
    d.to_chrono().format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `1.2 GiB`.
pub(crate) fn size(bytes: i64) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(0)).to_string()
}

/// The page of one run: `/runs/DETECTOR/NUMBER`, the detector percent-encoded.
pub(crate) fn run_href(key: &RunKey) -> String {
    format!("/runs/{}/{}", segment(&key.detector), key.number)
}

/// A path segment, percent-encoded.
pub(crate) fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// How long ago `t` was, in words (`3m 12s ago`).
pub(crate) fn ago(t: DateTime, now: DateTime) -> String {
    let ms = now.timestamp_millis().saturating_sub(t.timestamp_millis());
    if ms < 0 {
        return "in the future".into();
    }
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}
