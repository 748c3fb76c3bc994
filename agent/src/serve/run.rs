//! `/runs/{detector}/{number}`: one run, everything the catalogue knows of it.

use askama::Template;
use axum::extract::{Path, State};
use bson::{Bson, Document};

use super::{date, html, size, AppState, OrPage, PageResult, ServeError};
use crate::catalog::{CopyEntry, RunDoc, RunKey};

/// One copy, as shown.
pub(crate) struct CopyRow {
    pub(crate) host: String,
    pub(crate) data_type: String,
    pub(crate) status: &'static str,
    pub(crate) protocol: String,
    pub(crate) location: String,
    /// `matches the digest`, `differs: …`, `none`.
    pub(crate) digest: String,
    pub(crate) digest_ok: bool,
    pub(crate) verified: String,
    pub(crate) lease: String,
    pub(crate) attempts: i64,
    pub(crate) last_error: String,
    pub(crate) error_class: String,
}

impl CopyRow {
    fn of(c: &CopyEntry, digest: Option<&str>) -> Self {
        let (digest, digest_ok) = match (c.checksum.as_deref(), digest) {
            (None, _) => ("none recorded".to_string(), false),
            (Some(s), Some(d)) if s == d => ("matches the run digest".to_string(), true),
            (Some(s), Some(_)) => (format!("differs: {s}"), false),
            (Some(s), None) => (format!("{s} (the run has no digest)"), false),
        };
        CopyRow {
            host: c.host.clone(),
            data_type: c.data_type.clone(),
            status: c.status.as_str(),
            protocol: c
                .protocol
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            location: c.location.clone().unwrap_or_default(),
            digest,
            digest_ok,
            verified: c.verified_time.map(date).unwrap_or_else(|| "-".into()),
            lease: c
                .lease
                .as_ref()
                .map(|l| format!("{} until {}", l.owner, date(l.expires)))
                .unwrap_or_else(|| "-".into()),
            attempts: c.attempts,
            last_error: c.last_error.clone().unwrap_or_default(),
            error_class: c.error_class.map(|k| k.to_string()).unwrap_or_default(),
        }
    }
}

/// A tape copy's reference.
pub(crate) struct TapeRow {
    pub(crate) host: String,
    pub(crate) backend: String,
    pub(crate) reference: String,
    pub(crate) volumes: String,
    pub(crate) verified: String,
}

fn text(d: &Document, k: &str) -> String {
    match d.get(k) {
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl TapeRow {
    fn of(c: &CopyEntry, t: &Document) -> Self {
        let volumes = t
            .get_array("volumes")
            .map(|v| {
                v.iter()
                    .map(|b| b.as_str().map_or_else(|| b.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let verified = match t.get_document("verified") {
            Ok(v) => format!(
                "{} (seed {}): {} files, {} bytes read",
                text(v, "level"),
                text(v, "seed"),
                text(v, "files"),
                text(v, "bytes")
            ),
            Err(_) => String::new(),
        };
        TapeRow {
            host: c.host.clone(),
            backend: text(t, "backend"),
            reference: text(t, "reference"),
            volumes,
            verified,
        }
    }
}

/// One event of the timeline.
pub(crate) struct EventRow {
    pub(crate) time: String,
    pub(crate) who: String,
    pub(crate) action: String,
    pub(crate) copy: String,
    pub(crate) reason: String,
    pub(crate) error_class: String,
}

/// One manifest file.
pub(crate) struct FileRow {
    pub(crate) path: String,
    pub(crate) size: String,
    pub(crate) bytes: i64,
    pub(crate) sha256: String,
    pub(crate) md5: String,
}

#[derive(Template)]
#[template(path = "serve/run.html")]
struct RunPage<'a> {
    nav: &'static str,
    catalogue: &'a str,
    title: String,
    number: i64,
    detector: String,
    name: String,
    start: String,
    end: String,
    size: String,
    digest: String,
    want: Vec<String>,
    files: Vec<FileRow>,
    copies: Vec<CopyRow>,
    tapes: Vec<TapeRow>,
    events: Vec<EventRow>,
    json_href: String,
}

fn page_of<'a>(state: &'a AppState, r: &RunDoc) -> RunPage<'a> {
    let key = r.key();
    let digest = r.digest.as_deref();
    RunPage {
        nav: "runs",
        catalogue: state.shown(),
        title: match &r.name {
            Some(n) => format!("Run {} ({n})", r.number),
            None => format!("Run {}", r.number),
        },
        number: r.number,
        detector: r.detector.clone(),
        name: r.name.clone().unwrap_or_default(),
        start: r.start.map(date).unwrap_or_default(),
        end: r.end.map(date).unwrap_or_default(),
        size: r
            .size
            .map(|b| format!("{} ({b} bytes)", size(b)))
            .unwrap_or_default(),
        digest: r.digest.clone().unwrap_or_default(),
        want: r.want.clone(),
        files: r
            .files
            .iter()
            .map(|f| FileRow {
                path: f.path.clone(),
                size: size(f.size),
                bytes: f.size,
                sha256: f.sha256.clone(),
                md5: f.md5.clone().unwrap_or_default(),
            })
            .collect(),
        copies: r.data.iter().map(|c| CopyRow::of(c, digest)).collect(),
        tapes: r
            .data
            .iter()
            .filter_map(|c| c.tape.as_ref().map(|t| TapeRow::of(c, t)))
            .collect(),
        events: r
            .events
            .iter()
            .map(|e| EventRow {
                time: date(e.time),
                who: e.who.clone(),
                action: e.action.clone(),
                copy: match (&e.data_type, &e.host) {
                    (Some(t), Some(h)) => format!("{t}@{h}"),
                    (None, Some(h)) => h.clone(),
                    _ => String::new(),
                },
                reason: e.reason.clone().unwrap_or_default(),
                error_class: e.error_class.map(|k| k.to_string()).unwrap_or_default(),
            })
            .collect(),
        json_href: format!("/api{}", super::run_href(&key)),
    }
}

/// Reads one run; `NotFound` when there is none.
pub(crate) async fn read(state: &AppState, key: &RunKey) -> Result<RunDoc, ServeError> {
    match state.catalog().get_run(key).await? {
        Some(r) => Ok(r),
        None => Err(ServeError::NotFound(format!(
            "no run {key} in catalogue {}",
            state.shown()
        ))),
    }
}

/// `GET /runs/{detector}/{number}`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Path((detector, number)): Path<(String, i64)>,
) -> PageResult {
    let run = read(&state, &RunKey::new(&detector, number))
        .await
        .or_page(&state)?;
    html(&state, &page_of(&state, &run))
}
