//! `/`: the runs table, keyset-paged, with its filters.
//!
//! The filters are the query string of a plain GET form (so they work without JavaScript
//! and a filtered page can be bookmarked): `detector`, `run` (a number, `N..M`, or a name),
//! `from` and `to` (start dates, `YYYY-MM-DD` both inclusive, or RFC 3339), `site` (has a
//! copy there), `status` (has a copy in this status, at `site` when given), `missing_at`
//! (no `transferred` copy there), `fewer_than` (fewer `transferred` copies). A page ends
//! with a link to the next, which carries the last run's key (`after_number`,
//! `after_detector`): the catalogue reads the page after it, never an offset.

use askama::Template;
use axum::extract::{Query, State};
use bson::DateTime;
use serde::Deserialize;

use super::{html, AppState, OrPage, PageResult, ServeError};
use crate::catalog::{page_after, CopyStatus, RunDoc, RunFilter, RunKey, RunRange, RunScope};

/// The query string of the runs table and of `/api/runs`. Every value is text, so an empty
/// form field reads as "not given".
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RunQuery {
    /// Detector.
    pub detector: Option<String>,
    /// A run number, `N..M`, or a run name.
    pub run: Option<String>,
    /// Started on or after this date.
    pub from: Option<String>,
    /// Started on or before this date (a day: the whole day).
    pub to: Option<String>,
    /// Has a copy at this site.
    pub site: Option<String>,
    /// Has a copy in this status.
    pub status: Option<String>,
    /// Has no `transferred` copy at this site.
    pub missing_at: Option<String>,
    /// Has fewer than this many `transferred` copies.
    pub fewer_than: Option<String>,
    /// The page after this run number…
    pub after_number: Option<String>,
    /// … and detector.
    pub after_detector: Option<String>,
    /// Runs per page (at most 1000).
    pub limit: Option<String>,
}

/// The largest page anyone may ask for.
pub const MAX_PAGE: u32 = 1000;

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn bad(field: &'static str, detail: impl Into<String>) -> ServeError {
    ServeError::BadQuery {
        field,
        detail: detail.into(),
    }
}

/// A date: `YYYY-MM-DD` (midnight UTC; `end_of_day`: the next midnight) or RFC 3339.
fn parse_date(field: &'static str, s: &str, end_of_day: bool) -> Result<DateTime, ServeError> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let day = if end_of_day { d.succ_opt() } else { Some(d) };
        if let Some(t) = day.and_then(|d| d.and_hms_opt(0, 0, 0)) {
            return Ok(DateTime::from_chrono(t.and_utc()));
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| DateTime::from_chrono(t.with_timezone(&chrono::Utc)))
        .map_err(|e| {
            bad(
                field,
                format!("{s:?}: expected YYYY-MM-DD or RFC 3339 ({e})"),
            )
        })
}

fn parse_u32(field: &'static str, s: &str) -> Result<u32, ServeError> {
    s.parse::<u32>()
        .map_err(|e| bad(field, format!("{s:?}: expected a whole number ({e})")))
}

/// The run scope of the `run` field: a number, `N..M` (either end may be left out), or a
/// name.
fn parse_scope(s: &str) -> Result<RunScope, ServeError> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(RunScope::Number(n));
    }
    if let Some((a, b)) = s.split_once("..") {
        let end = |x: &str| -> Result<Option<i64>, ServeError> {
            let x = x.trim();
            if x.is_empty() {
                return Ok(None);
            }
            x.parse::<i64>()
                .map(Some)
                .map_err(|e| bad("run", format!("{s:?}: expected N..M ({e})")))
        };
        return Ok(RunScope::Range(RunRange {
            from: end(a)?,
            to: end(b)?,
        }));
    }
    Ok(RunScope::Name(s.to_string()))
}

impl RunQuery {
    /// The catalogue filter it asks for, one page of `default_limit` runs unless `limit`
    /// says otherwise.
    pub fn filter(&self, default_limit: u32) -> Result<RunFilter, ServeError> {
        let status = given(&self.status)
            .map(|s| {
                s.parse::<CopyStatus>()
                    .map_err(|e| bad("status", e.to_string()))
            })
            .transpose()?;
        let after = match (given(&self.after_number), given(&self.after_detector)) {
            (Some(n), Some(d)) => Some(RunKey::new(
                d,
                n.parse::<i64>()
                    .map_err(|e| bad("after_number", format!("{n:?}: {e}")))?,
            )),
            (None, None) => None,
            _ => return Err(bad("after_number", "needs after_detector with it")),
        };
        let limit = match given(&self.limit) {
            Some(l) => parse_u32("limit", l)?.clamp(1, MAX_PAGE),
            None => default_limit,
        };
        Ok(RunFilter {
            host: given(&self.site).map(str::to_string),
            status,
            missing_at: given(&self.missing_at).map(str::to_string),
            fewer_copies_than: given(&self.fewer_than)
                .map(|s| parse_u32("fewer_than", s))
                .transpose()?,
            since: given(&self.from)
                .map(|s| parse_date("from", s, false))
                .transpose()?,
            until: given(&self.to)
                .map(|s| parse_date("to", s, true))
                .transpose()?,
            detector: given(&self.detector).map(str::to_string),
            scope: given(&self.run)
                .map(parse_scope)
                .transpose()?
                .unwrap_or_default(),
            after,
            limit: Some(limit),
        })
    }

    /// The query string of the same filters without the page position (`after_…`), for
    /// the next page's and the first page's links.
    pub fn without_page(&self) -> url::form_urlencoded::Serializer<'static, String> {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        let fields = [
            ("detector", &self.detector),
            ("run", &self.run),
            ("from", &self.from),
            ("to", &self.to),
            ("site", &self.site),
            ("status", &self.status),
            ("missing_at", &self.missing_at),
            ("fewer_than", &self.fewer_than),
            ("limit", &self.limit),
        ];
        for (k, v) in fields {
            if let Some(v) = given(v) {
                q.append_pair(k, v);
            }
        }
        q
    }

    /// The link to the page after `last`, `path` being `/` or `/api/runs`.
    pub fn next_href(&self, path: &str, last: &RunKey) -> String {
        let mut q = self.without_page();
        q.append_pair("after_number", &last.number.to_string());
        q.append_pair("after_detector", &last.detector);
        format!("{path}?{}", q.finish())
    }

    fn value(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or("")
    }
}

/// One copy in the table: a small badge.
pub(crate) struct Badge {
    pub(crate) text: String,
    pub(crate) status: &'static str,
}

/// One row of the table.
pub(crate) struct Row {
    pub(crate) href: String,
    pub(crate) number: i64,
    pub(crate) name: String,
    pub(crate) detector: String,
    pub(crate) start: String,
    pub(crate) size: String,
    pub(crate) copies: Vec<Badge>,
    pub(crate) wanted: String,
}

impl Row {
    fn of(r: &RunDoc) -> Self {
        Row {
            href: super::run_href(&r.key()),
            number: r.number,
            name: r.name.clone().unwrap_or_default(),
            detector: r.detector.clone(),
            start: r.start.map(super::date).unwrap_or_default(),
            size: r.size.map(super::size).unwrap_or_default(),
            copies: r
                .data
                .iter()
                .map(|c| Badge {
                    text: format!("{} {}", c.host, c.status),
                    status: c.status.as_str(),
                })
                .collect(),
            wanted: r.want.join(" "),
        }
    }
}

#[derive(Template)]
#[template(path = "serve/runs.html")]
struct RunsPage<'a> {
    nav: &'static str,
    catalogue: &'a str,
    form: Form,
    statuses: &'static [CopyStatus],
    rows: Vec<Row>,
    next: Option<String>,
    first: Option<String>,
    filtered: bool,
}

/// The form's fields as given, to show them again.
struct Form {
    detector: String,
    run: String,
    from: String,
    to: String,
    site: String,
    status: String,
    missing_at: String,
    fewer_than: String,
}

impl Form {
    fn of(q: &RunQuery) -> Self {
        let v = |x: &Option<String>| RunQuery::value(x).to_string();
        Form {
            detector: v(&q.detector),
            run: v(&q.run),
            from: v(&q.from),
            to: v(&q.to),
            site: v(&q.site),
            status: v(&q.status),
            missing_at: v(&q.missing_at),
            fewer_than: v(&q.fewer_than),
        }
    }
}

/// `GET /`.
pub(crate) async fn page(State(state): State<AppState>, Query(q): Query<RunQuery>) -> PageResult {
    let filter = q.filter(state.options().page_size).or_page(&state)?;
    let limit = filter.limit.unwrap_or(state.options().page_size);
    let runs = state.catalog().list_runs(&filter).await.or_page(&state)?;
    let next = page_after(&runs, limit).map(|k| q.next_href("/", &k));
    let first = filter.after.as_ref().map(|_| {
        let rest = q.without_page().finish();
        if rest.is_empty() {
            "/".to_string()
        } else {
            format!("/?{rest}")
        }
    });
    let filtered = !q.without_page().finish().is_empty();
    let page = RunsPage {
        nav: "runs",
        catalogue: state.shown(),
        form: Form::of(&q),
        statuses: &CopyStatus::ALL,
        rows: runs.iter().map(Row::of).collect(),
        next,
        first,
        filtered,
    };
    html(&state, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> RunQuery {
        let s = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        serde_urlencoded_like(&s)
    }

    fn serde_urlencoded_like(s: &str) -> RunQuery {
        let mut r = RunQuery::default();
        for (k, v) in url::form_urlencoded::parse(s.as_bytes()) {
            let v = Some(v.into_owned());
            match k.as_ref() {
                "run" => r.run = v,
                "to" => r.to = v,
                "after_number" => r.after_number = v,
                "after_detector" => r.after_detector = v,
                "status" => r.status = v,
                "detector" => r.detector = v,
                _ => {}
            }
        }
        r
    }

    #[test]
    fn the_run_field_is_a_number_a_range_or_a_name() {
        let f = q(&[("run", "7")]).filter(50).unwrap();
        assert_eq!(f.scope, RunScope::Number(7));
        let f = q(&[("run", "10..20")]).filter(50).unwrap();
        assert_eq!(
            f.scope,
            RunScope::Range(RunRange {
                from: Some(10),
                to: Some(20)
            })
        );
        let f = q(&[("run", "170501_1200")]).filter(50).unwrap();
        assert_eq!(f.scope, RunScope::Name("170501_1200".into()));
        let f = q(&[("run", "")]).filter(50).unwrap();
        assert_eq!(f.scope, RunScope::All);
    }

    #[test]
    fn a_to_date_takes_the_whole_day() {
        let f = q(&[("to", "2017-05-01")]).filter(50).unwrap();
        assert_eq!(super::super::date(f.until.unwrap()), "2017-05-02 00:00:00Z");
    }

    #[test]
    fn a_bad_status_is_a_bad_query() {
        assert!(matches!(
            q(&[("status", "lost")]).filter(50),
            Err(ServeError::BadQuery {
                field: "status",
                ..
            })
        ));
    }

    #[test]
    fn the_next_page_link_keeps_the_filters_and_carries_the_key() {
        let query = q(&[("detector", "tpc & muon_veto")]);
        let href = query.next_href("/", &RunKey::new("muon_veto", 9));
        assert_eq!(
            href,
            "/?detector=tpc+%26+muon_veto&after_number=9&after_detector=muon_veto"
        );
        let again = serde_urlencoded_like(href.trim_start_matches("/?"));
        let f = again.filter(50).unwrap();
        assert_eq!(f.after, Some(RunKey::new("muon_veto", 9)));
        assert_eq!(f.detector.as_deref(), Some("tpc & muon_veto"));
    }
}
