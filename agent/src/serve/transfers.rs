//! `/transfers`: copies finished per link over time, and bytes per hour, as SVG plots
//! drawn on the server (plotters' SVG back end; `/transfers/copies.svg`,
//! `/transfers/bytes.svg`).
//!
//! A copy is finished when its event `verifying -> transferred` was recorded (the run's
//! events are its history). Its link is `SOURCE → DESTINATION`: the destination is the
//! copy's site; the source is the site of the agent that recorded it when that is another
//! site (a push), else the run's origin (the site of its `copy-added` event: a pull or a
//! verification by the destination's own agent). A run keeps its last 100 events, so very
//! old copies of busy runs may be missing from the counts.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use bson::DateTime;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::{date, html, scan, size, AppState, OrPage, PageResult, ServeError};
use crate::catalog::{RunDoc, RunFilter};
use crate::tasks::owner::OwnerId;

/// `?hours=N`: the window, back from now.
#[derive(Debug, Default, Deserialize)]
pub struct Window {
    /// Hours (1 to 720; default 48).
    pub hours: Option<String>,
}

impl Window {
    pub(crate) fn hours(&self) -> Result<i64, ServeError> {
        match self
            .hours
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Ok(48),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|h| (1..=720).contains(h))
                .ok_or_else(|| ServeError::BadQuery {
                    field: "hours",
                    detail: format!("{s:?}: expected a whole number of hours from 1 to 720"),
                }),
        }
    }
}

/// One finished copy.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    /// `SOURCE → DEST`.
    pub link: String,
    /// When (milliseconds since the epoch).
    pub at_ms: i64,
    /// The run's bytes.
    pub bytes: i64,
}

/// One link's totals in the window.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSummary {
    /// `SOURCE → DEST`.
    pub link: String,
    /// Copies finished.
    pub copies: u64,
    /// Their bytes.
    pub bytes: i64,
    /// The last one (RFC 3339).
    pub last: String,
}

fn finished_of(r: &RunDoc, since_ms: i64, out: &mut Vec<Finished>) {
    let origin = r
        .events
        .iter()
        .find(|e| e.action == "copy-added")
        .and_then(|e| e.host.clone())
        .unwrap_or_else(|| "?".into());
    for e in &r.events {
        let done = e.action == "status"
            && e.reason
                .as_deref()
                .is_some_and(|why| why.starts_with("verifying -> transferred"));
        if !done || e.time.timestamp_millis() < since_ms {
            continue;
        }
        let Some(dest) = e.host.clone() else { continue };
        let actor = OwnerId::parse(&e.who).map(|o| o.site.to_string());
        let source = match actor {
            Some(site) if site != dest => site,
            _ => origin.clone(),
        };
        out.push(Finished {
            link: format!("{source} → {dest}"),
            at_ms: e.time.timestamp_millis(),
            bytes: r.size.unwrap_or(0),
        });
    }
}

/// Every copy finished in the last `hours`, oldest first.
pub async fn finished(state: &AppState, hours: i64) -> Result<Vec<Finished>, ServeError> {
    let since = DateTime::now().timestamp_millis() - hours * 3_600_000;
    let mut out = Vec::new();
    scan(state.catalog(), &RunFilter::default(), 1000, |r| {
        finished_of(r, since, &mut out);
    })
    .await?;
    out.sort_by_key(|f| f.at_ms);
    Ok(out)
}

/// Per link: copies, bytes, the last one.
pub fn summarise(finished: &[Finished]) -> Vec<LinkSummary> {
    let mut by: BTreeMap<&str, LinkSummary> = BTreeMap::new();
    for f in finished {
        let s = by.entry(&f.link).or_insert_with(|| LinkSummary {
            link: f.link.clone(),
            copies: 0,
            bytes: 0,
            last: String::new(),
        });
        s.copies += 1;
        s.bytes = s.bytes.saturating_add(f.bytes);
        s.last = date(DateTime::from_millis(f.at_ms));
    }
    by.into_values().collect()
}

struct LinkRow {
    link: String,
    copies: u64,
    bytes: String,
    last: String,
}

#[derive(Template)]
#[template(path = "serve/transfers.html")]
struct TransfersPage<'a> {
    nav: &'static str,
    catalogue: &'a str,
    hours: i64,
    links: Vec<LinkRow>,
}

/// `GET /transfers`.
pub(crate) async fn page(State(state): State<AppState>, Query(w): Query<Window>) -> PageResult {
    let hours = w.hours().or_page(&state)?;
    let done = finished(&state, hours).await.or_page(&state)?;
    let links = summarise(&done)
        .into_iter()
        .map(|s| LinkRow {
            link: s.link,
            copies: s.copies,
            bytes: size(s.bytes),
            last: s.last,
        })
        .collect();
    let page = TransfersPage {
        nav: "transfers",
        catalogue: state.shown(),
        hours,
        links,
    };
    html(&state, &page)
}

/// What a plot shows.
#[derive(Clone, Copy)]
enum Plot {
    /// Copies finished so far in the window, per link.
    Copies,
    /// Bytes finished per hour, per link.
    BytesPerHour,
}

/// The series of a plot: per link, points `(hours before now, value)`.
fn series(
    done: &[Finished],
    hours: i64,
    now_ms: i64,
    plot: Plot,
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let ago = |ms: i64| -((now_ms - ms) as f64) / 3_600_000.0;
    match plot {
        Plot::Copies => {
            for f in done {
                let pts = out
                    .entry(f.link.clone())
                    .or_insert_with(|| vec![(-(hours as f64), 0.0)]);
                let n = pts.last().map_or(0.0, |p| p.1);
                pts.push((ago(f.at_ms), n));
                pts.push((ago(f.at_ms), n + 1.0));
            }
            for pts in out.values_mut() {
                let n = pts.last().map_or(0.0, |p| p.1);
                pts.push((0.0, n));
            }
        }
        Plot::BytesPerHour => {
            let buckets = usize::try_from(hours).unwrap_or(48);
            let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for f in done {
                let age_h = usize::try_from((now_ms - f.at_ms) / 3_600_000).unwrap_or(0);
                let slot = buckets.saturating_sub(1).saturating_sub(age_h);
                let v = per
                    .entry(f.link.clone())
                    .or_insert_with(|| vec![0.0; buckets]);
                if let Some(b) = v.get_mut(slot) {
                    *b += f.bytes as f64 / 1e6;
                }
            }
            for (link, v) in per {
                let pts = v
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i as f64 - hours as f64 + 0.5, *b))
                    .collect();
                out.insert(link, pts);
            }
        }
    }
    out
}

fn draw(done: &[Finished], hours: i64, plot: Plot) -> Result<String, ServeError> {
    let now_ms = DateTime::now().timestamp_millis();
    let lines = series(done, hours, now_ms, plot);
    let ymax = lines
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let (caption, y_desc) = match plot {
        Plot::Copies => ("Copies finished per link", "copies (cumulative)"),
        Plot::BytesPerHour => ("Bytes per hour per link", "MB per hour"),
    };
    let e = |e: &dyn std::fmt::Display| ServeError::Plot(e.to_string());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-(hours as f64)..0.0, 0.0..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("hours before now")
            .y_desc(y_desc)
            .draw()
            .map_err(|x| e(&x))?;
        for (i, (link, pts)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(link)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

async fn svg(state: AppState, w: Window, plot: Plot) -> PageResult {
    let hours = w.hours().or_page(&state)?;
    let done = finished(&state, hours).await.or_page(&state)?;
    let svg = draw(&done, hours, plot).or_page(&state)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// `GET /transfers/copies.svg`.
pub(crate) async fn copies_svg(
    State(state): State<AppState>,
    Query(w): Query<Window>,
) -> PageResult {
    svg(state, w, Plot::Copies).await
}

/// `GET /transfers/bytes.svg`.
pub(crate) async fn bytes_svg(
    State(state): State<AppState>,
    Query(w): Query<Window>,
) -> PageResult {
    svg(state, w, Plot::BytesPerHour).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_name_with_markup_is_escaped_in_the_plot() {
        let done = [Finished {
            link: "<script>alert(1)</script> → b".into(),
            at_ms: DateTime::now().timestamp_millis() - 60_000,
            bytes: 5_000_000,
        }];
        for plot in [Plot::Copies, Plot::BytesPerHour] {
            let svg = draw(&done, 48, plot).unwrap();
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(!svg.contains("<script>"), "{svg}");
            assert!(svg.contains("&lt;script&gt;"), "{svg}");
        }
    }
}
