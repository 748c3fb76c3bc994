//! `/api/…`: the same data as JSON.
//!
//! - `GET /api/runs?…` (the runs table's filters, `limit` up to 1000): an array of run
//!   documents exactly as `ferry runs list --json` prints them (relaxed extended JSON,
//!   [`crate::catalog::run_json`]); when the page is full, a `Link: <…>; rel="next"` header
//!   names the next page.
//! - `GET /api/runs/{detector}/{number}`: one document, as `ferry runs show --json`.
//! - `GET /api/sites`: the sites page's summaries ([`super::sites::SiteSummary`]).
//! - `GET /api/transfers?hours=N`: per link, copies and bytes finished in the window.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::runs::RunQuery;
use super::transfers::Window;
use super::{AppState, ServeError};
use crate::catalog::{page_after, run_json, RunKey};

/// An API error: `{"error": "…"}` with the status of [`ServeError`], scrubbed.
pub(crate) struct ApiError(ServeError, AppState);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let message = self.1.scrub(&self.0.to_string());
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

trait OrApi<T> {
    fn or_api(self, state: &AppState) -> Result<T, ApiError>;
}

impl<T, E: Into<ServeError>> OrApi<T> for Result<T, E> {
    fn or_api(self, state: &AppState) -> Result<T, ApiError> {
        self.map_err(|e| ApiError(e.into(), state.clone()))
    }
}

fn shape(e: catalog_schema::ShapeError) -> ServeError {
    ServeError::Plot(format!("serialising a run document: {e}"))
}

/// `GET /api/runs`.
pub(crate) async fn runs(State(state): State<AppState>, Query(q): Query<RunQuery>) -> ApiResult {
    let filter = q.filter(state.options().page_size).or_api(&state)?;
    let limit = filter.limit.unwrap_or(state.options().page_size);
    let found = state.catalog().list_runs(&filter).await.or_api(&state)?;
    let docs = found
        .iter()
        .map(run_json)
        .collect::<Result<Vec<_>, _>>()
        .map_err(shape)
        .or_api(&state)?;
    let mut resp = Json(docs).into_response();
    if let Some(k) = page_after(&found, limit) {
        let link = format!("<{}>; rel=\"next\"", q.next_href("/api/runs", &k));
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// `GET /api/runs/{detector}/{number}`.
pub(crate) async fn run(
    State(state): State<AppState>,
    Path((detector, number)): Path<(String, i64)>,
) -> ApiResult {
    let found = super::run::read(&state, &RunKey::new(&detector, number))
        .await
        .or_api(&state)?;
    let doc = run_json(&found).map_err(shape).or_api(&state)?;
    Ok(Json(doc).into_response())
}

/// `GET /api/sites`.
pub(crate) async fn sites(State(state): State<AppState>) -> ApiResult {
    let sites = super::sites::summarise(&state).await.or_api(&state)?;
    Ok(Json(sites).into_response())
}

/// `GET /api/transfers`.
pub(crate) async fn transfers(State(state): State<AppState>, Query(w): Query<Window>) -> ApiResult {
    let hours = w.hours().or_api(&state)?;
    let done = super::transfers::finished(&state, hours)
        .await
        .or_api(&state)?;
    let links = super::transfers::summarise(&done);
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "hours": hours, "links": links })),
    )
        .into_response())
}
