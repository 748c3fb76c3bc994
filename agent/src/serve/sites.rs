//! `/sites`: per site, what it holds, what it still has to receive, and its agent.
//!
//! The sites are every host that holds a copy or is wanted as a destination. What a site
//! holds and its backlog come from one pass over the runs (read in keyset pages); the
//! agent's state comes from its heartbeat ([`crate::catalog::Catalog::read_heartbeat`]):
//! *alive*, *silent* (last heartbeat older than `--silent-after`), or *never reported* (no
//! agent writes one for it, e.g. a tape backend). An audit alarm is the last heartbeat's
//! audit task reporting failures.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::State;
use bson::{Bson, DateTime};
use serde::Serialize;

use super::{ago, html, scan, size, AppState, OrPage, PageResult, ServeError};
use crate::catalog::{CopyStatus, Heartbeat, RunFilter};

/// The agent of a site, by its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Its last heartbeat is recent.
    Alive,
    /// Its last heartbeat is older than the limit: the agent stopped or cannot reach the
    /// catalogue.
    Silent,
    /// No heartbeat at all.
    NeverReported,
}

impl AgentState {
    /// The word shown (also the CSS class).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Alive => "alive",
            AgentState::Silent => "silent",
            AgentState::NeverReported => "never",
        }
    }
}

/// One data directory's free space, from the heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// The data type.
    pub data_type: String,
    /// The directory.
    pub path: String,
    /// Free bytes (`None`: the agent could not measure).
    pub free_bytes: Option<i64>,
    /// Total bytes.
    pub total_bytes: Option<i64>,
}

/// A site's agent as its last heartbeat tells.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// When written (RFC 3339).
    pub time: String,
    /// Seconds since.
    pub age_seconds: i64,
    /// Ferry's version.
    pub version: String,
    /// The machine.
    pub hostname: String,
    /// The last cycle's failures.
    pub failed: i64,
    /// Data directories.
    pub disks: Vec<Disk>,
}

/// One site.
#[derive(Debug, Clone, Serialize)]
pub struct SiteSummary {
    /// The site.
    pub site: String,
    /// Runs with a `transferred` copy here.
    pub runs_held: u64,
    /// Their bytes.
    pub bytes_held: i64,
    /// Copies here by status.
    pub copies: BTreeMap<String, u64>,
    /// Runs wanted here and not yet copied (claimed copies leave `want`).
    pub backlog: u64,
    /// The agent's state.
    pub agent: AgentState,
    /// Its last heartbeat.
    pub heartbeat: Option<AgentView>,
    /// The last audit reported failures.
    pub audit_alarm: bool,
}

#[derive(Default)]
struct Tally {
    runs_held: u64,
    bytes_held: i64,
    copies: BTreeMap<String, u64>,
    backlog: u64,
}

fn agent_view(beat: &Heartbeat, now: DateTime) -> AgentView {
    let int = |b: Option<&Bson>| match b {
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        _ => None,
    };
    let disks = beat
        .stats
        .get_document("disks")
        .map(|d| {
            d.iter()
                .map(|(ty, v)| {
                    let v = v.as_document();
                    Disk {
                        data_type: ty.clone(),
                        path: v
                            .and_then(|v| v.get_str("path").ok())
                            .unwrap_or_default()
                            .to_string(),
                        free_bytes: v.and_then(|v| int(v.get("free_bytes"))),
                        total_bytes: v.and_then(|v| int(v.get("total_bytes"))),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    AgentView {
        time: beat.time.to_chrono().to_rfc3339(),
        age_seconds: now
            .timestamp_millis()
            .saturating_sub(beat.time.timestamp_millis())
            / 1000,
        version: beat.version.clone(),
        hostname: beat.hostname.clone(),
        failed: int(beat.stats.get("failed")).unwrap_or(0),
        disks,
    }
}

fn audit_alarm(beat: &Heartbeat) -> bool {
    beat.stats
        .get_document("tasks")
        .and_then(|t| t.get_document("audit"))
        .ok()
        .and_then(|a| match a.get("failed") {
            Some(Bson::Int64(n)) => Some(*n > 0),
            Some(Bson::Int32(n)) => Some(*n > 0),
            _ => None,
        })
        .unwrap_or(false)
}

/// Every site's summary, by name.
pub async fn summarise(state: &AppState) -> Result<Vec<SiteSummary>, ServeError> {
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    scan(state.catalog(), &RunFilter::default(), 1000, |r| {
        let mut held = BTreeSet::new();
        for c in &r.data {
            let t = tally.entry(c.host.clone()).or_default();
            *t.copies.entry(c.status.as_str().to_string()).or_default() += 1;
            if c.status == CopyStatus::Transferred && held.insert(c.host.clone()) {
                t.runs_held += 1;
                t.bytes_held = t.bytes_held.saturating_add(r.size.unwrap_or(0));
            }
        }
        let wanted: BTreeSet<&str> = r
            .want
            .iter()
            .filter_map(|w| w.split_once('/').map(|(site, _)| site))
            .collect();
        for site in wanted {
            tally.entry(site.to_string()).or_default().backlog += 1;
        }
    })
    .await?;
    let now = DateTime::now();
    let limit = i64::try_from(state.options().silent_after.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for (site, t) in tally {
        let beat = state.catalog().read_heartbeat(&site).await?;
        let agent = match &beat {
            None => AgentState::NeverReported,
            Some(b)
                if now
                    .timestamp_millis()
                    .saturating_sub(b.time.timestamp_millis())
                    > limit =>
            {
                AgentState::Silent
            }
            Some(_) => AgentState::Alive,
        };
        out.push(SiteSummary {
            runs_held: t.runs_held,
            bytes_held: t.bytes_held,
            copies: t.copies,
            backlog: t.backlog,
            agent,
            heartbeat: beat.as_ref().map(|b| agent_view(b, now)),
            audit_alarm: beat.as_ref().is_some_and(audit_alarm),
            site,
        });
    }
    Ok(out)
}

/// One site, as shown.
struct SiteRow {
    site: String,
    runs_held: u64,
    bytes_held: String,
    copies: Vec<(String, u64)>,
    backlog: u64,
    agent: &'static str,
    agent_text: String,
    last_beat: String,
    version: String,
    disks: Vec<String>,
    audit_alarm: bool,
}

#[derive(Template)]
#[template(path = "serve/sites.html")]
struct SitesPage<'a> {
    nav: &'static str,
    catalogue: &'a str,
    silent_after: String,
    sites: Vec<SiteRow>,
}

/// `GET /sites`.
pub(crate) async fn page(State(state): State<AppState>) -> PageResult {
    let now = DateTime::now();
    let sites = summarise(&state).await.or_page(&state)?;
    let rows = sites
        .into_iter()
        .map(|s| {
            let (last_beat, version, disks) = match &s.heartbeat {
                Some(h) => {
                    let t = DateTime::from_millis(now.timestamp_millis() - h.age_seconds * 1000);
                    (
                        format!("{} ({})", h.time, ago(t, now)),
                        h.version.clone(),
                        h.disks
                            .iter()
                            .map(|d| match (d.free_bytes, d.total_bytes) {
                                (Some(f), Some(t)) => {
                                    format!("{}: {} free of {}", d.data_type, size(f), size(t))
                                }
                                _ => format!("{}: not measured", d.data_type),
                            })
                            .collect(),
                    )
                }
                None => ("-".into(), "-".into(), Vec::new()),
            };
            SiteRow {
                agent_text: match s.agent {
                    AgentState::Alive => "alive".into(),
                    AgentState::Silent => "silent".into(),
                    AgentState::NeverReported => "no heartbeat".into(),
                },
                agent: s.agent.as_str(),
                site: s.site,
                runs_held: s.runs_held,
                bytes_held: size(s.bytes_held),
                copies: s.copies.into_iter().collect(),
                backlog: s.backlog,
                last_beat,
                version,
                disks,
                audit_alarm: s.audit_alarm,
            }
        })
        .collect();
    let page = SitesPage {
        nav: "sites",
        catalogue: state.shown(),
        silent_after: humantime::format_duration(state.options().silent_after).to_string(),
        sites: rows,
    };
    html(&state, &page)
}
