//! `ferry runs list|show`: the collaborator's view of the catalogue.
//!
//! Needs no site map: the catalogue comes from `--catalog`, else `FERRY_CATALOG`, else the
//! site map's when `--config` (or `FERRY_CONFIG`) names one, with its password, database
//! and collection settings, else the embedded default ([`crate::catalog::resolve_catalog`]). Only reads; an embedded
//! catalogue that does not exist yet is an empty one (nothing is created). Output is an
//! aligned table, or JSON (MongoDB relaxed extended JSON, the documents as stored) with
//! `--json`.
//!
//! A run document that does not decode is left out: one `warning:` line per document on
//! stderr (its `_id`, run, field and what is wrong), then how many were skipped. `list`
//! still exits 0 when it listed the others; `show` of a run whose document is unreadable
//! exits 1 with the reason.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use bson::DateTime;

use super::args::{RunsCommand, RunsListArgs, RunsShowArgs};
use super::exit::{coded, Exit};
use super::Cli;
use crate::catalog::{self, Catalog, CatalogUri, CopyStatus, RunDoc, RunFilter, RunSelector};

pub(super) fn run(cli: &Cli, cmd: &RunsCommand) -> Result<Exit> {
    let loaded = match &cli.config {
        Some(_) => Some(super::agent::load_shared_site_map(cli)?),
        None => None,
    };
    let target = super::agent::catalog_target(cli, loaded.as_ref())?;
    let uri = target.uri.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A driver may quote what it was given: the password is taken out of every message.
    let scrubbed =
        |e: anyhow::Error| coded(super::exit::classify(&e), target.scrub(&format!("{e:#}")));
    let (out, skipped) = runtime
        .block_on(async {
            let catalog = open(&target).await?;
            let out = match cmd {
                RunsCommand::List(args) => list(cli, catalog.as_deref(), args).await,
                RunsCommand::Show(args) => show(&uri, catalog.as_deref(), args).await,
            };
            let skipped = catalog
                .as_ref()
                .map(|c| c.quarantine().documents())
                .unwrap_or_default();
            anyhow::Ok((out, skipped))
        })
        .map_err(scrubbed)?;
    warn_unreadable(&skipped);
    print!("{}", out.map_err(scrubbed)?);
    Ok(Exit::Ok)
}

/// One line per unreadable document on stderr, and how many were skipped.
fn warn_unreadable(skipped: &[catalog::DecodeError]) {
    for e in skipped {
        eprintln!("warning: {e}; skipped, not changed");
    }
    match skipped.len() {
        0 => {}
        1 => eprintln!("1 run document could not be read and was skipped"),
        n => eprintln!("{n} run documents could not be read and were skipped"),
    }
}

/// Opens the catalogue, or `None` for an embedded one that does not exist yet. Unreadable
/// documents are not logged: [`warn_unreadable`] prints them.
async fn open(target: &catalog::CatalogTarget) -> Result<Option<Box<dyn Catalog>>> {
    if let CatalogUri::Embedded { path } = &target.uri {
        if !embedded_exists(&target.uri, path)? {
            tracing::info!("no catalogue at {}: nothing recorded yet", path.display());
            return Ok(None);
        }
    }
    let catalog = catalog::open_target_for_reading(target).await?;
    catalog.quarantine().quiet();
    Ok(Some(catalog))
}

/// Whether an embedded catalogue file exists; a path that cannot name a file at all (below
/// a file, unreadable directory) is bad input, not an empty catalogue.
pub(super) fn embedded_exists(uri: &CatalogUri, path: &std::path::Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(catalog::CatalogError::Config {
            catalog: uri.to_string(),
            detail: format!("cannot open the file as a catalogue: {e}"),
        }
        .into()),
    }
}

fn filter_of(cli: &Cli, args: &RunsListArgs) -> Result<RunFilter> {
    let status = args
        .status
        .as_deref()
        .map(str::parse::<CopyStatus>)
        .transpose()
        .map_err(|e| coded(Exit::Usage, format!("--status: {e}")))?;
    let since = args.since.as_deref().map(parse_date).transpose()?;
    Ok(RunFilter {
        host: cli.host.clone(),
        status,
        missing_at: args.missing_at.clone(),
        fewer_copies_than: args.fewer_copies_than,
        since,
        ..RunFilter::default()
    })
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn parse_date(s: &str) -> Result<DateTime> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        if let Some(t) = midnight {
            return Ok(DateTime::from_chrono(t));
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| DateTime::from_chrono(t.with_timezone(&chrono::Utc)))
        .map_err(|e| {
            coded(
                Exit::Usage,
                format!("--since {s:?}: expected YYYY-MM-DD or RFC 3339 ({e})"),
            )
        })
}

async fn list(cli: &Cli, catalog: Option<&dyn Catalog>, args: &RunsListArgs) -> Result<String> {
    let filter = filter_of(cli, args)?;
    let runs = match catalog {
        Some(c) => c.list_runs(&filter).await?,
        None => Vec::new(),
    };
    if args.json {
        return json(&runs, true);
    }
    let mut rows = vec![row(&[
        "NUMBER", "NAME", "DETECTOR", "START", "SIZE", "COPIES",
    ])];
    for r in &runs {
        rows.push(vec![
            r.number.to_string(),
            r.name.clone().unwrap_or_default(),
            r.detector.clone(),
            r.start.map(date).unwrap_or_default(),
            r.size.map(size).unwrap_or_default(),
            copies_summary(r),
        ]);
    }
    Ok(table(&rows))
}

async fn show(
    uri: &CatalogUri,
    catalog: Option<&dyn Catalog>,
    args: &RunsShowArgs,
) -> Result<String> {
    let sel = match args.run.parse::<i64>() {
        Ok(n) => RunSelector::Number(n),
        Err(_) => RunSelector::Name(args.run.clone()),
    };
    let runs = match catalog {
        Some(c) => c.find_runs(&sel).await?,
        None => Vec::new(),
    };
    let unreadable = catalog
        .map(|c| c.quarantine().documents())
        .unwrap_or_default();
    if let Some(e) = unreadable.first() {
        // Asked for by name or number, a run that cannot be read is an answer: exit 1.
        let shown = if runs.is_empty() {
            String::new()
        } else {
            format!(
                " ({} other run(s) of that number or name can be read)",
                runs.len()
            )
        };
        return Err(coded(
            Exit::Failed,
            format!(
                "run {}: cannot read its document in catalogue {uri}{shown}: {e}",
                args.run
            ),
        ));
    }
    if runs.is_empty() {
        return Err(coded(
            Exit::Failed,
            format!("no run {} in catalogue {uri}", args.run),
        ));
    }
    if args.json {
        return json(&runs, runs.len() > 1);
    }
    let mut out = String::new();
    for r in &runs {
        out.push_str(&describe(r));
    }
    Ok(out)
}

fn describe(r: &RunDoc) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{k:<10} {v}");
    };
    field(&mut out, "run", format!("{} ({})", r.number, r.detector));
    field(&mut out, "name", r.name.clone().unwrap_or_default());
    field(&mut out, "start", r.start.map(date).unwrap_or_default());
    field(&mut out, "end", r.end.map(date).unwrap_or_default());
    field(&mut out, "size", r.size.map(size).unwrap_or_default());
    field(&mut out, "files", r.files.len().to_string());
    field(&mut out, "digest", r.digest.clone().unwrap_or_default());
    out.push('\n');
    let mut rows = vec![row(&[
        "HOST", "TYPE", "STATUS", "CHECKSUM", "VERIFIED", "LEASE", "LOCATION",
    ])];
    for c in &r.data {
        let checksum = match (&c.checksum, &r.digest) {
            (None, _) => "-".to_string(),
            (Some(s), Some(d)) if s == d => "= digest".to_string(),
            (Some(s), _) => s.chars().take(16).collect(),
        };
        rows.push(vec![
            c.host.clone(),
            c.data_type.clone(),
            c.status.to_string(),
            checksum,
            c.verified_time.map(date).unwrap_or_else(|| "-".into()),
            c.lease
                .as_ref()
                .map(|l| format!("{} until {}", l.owner, date(l.expires)))
                .unwrap_or_else(|| "-".into()),
            c.location.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&table(&rows));
    for c in &r.data {
        if let Some(t) = &c.tape {
            let _ = writeln!(out, "tape {}: {}", c.host, tape_summary(t));
        }
    }
    if !r.events.is_empty() {
        out.push('\n');
        let mut rows = vec![row(&["WHEN", "WHO", "WHAT", "WHERE", "WHY"])];
        let skip = r.events.len().saturating_sub(10);
        for e in r.events.iter().skip(skip) {
            rows.push(vec![
                date(e.time),
                e.who.clone(),
                e.action.clone(),
                e.host.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    out
}

/// A tape copy's `tape` field in one line: reference, volumes, how it was verified.
fn tape_summary(t: &bson::Document) -> String {
    let text = |d: &bson::Document, k: &str| match d.get(k) {
        Some(bson::Bson::String(s)) => s.clone(),
        Some(bson::Bson::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let volumes = t
        .get_array("volumes")
        .map(|v| {
            v.iter()
                .map(|b| b.as_str().map_or_else(|| b.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut line = format!("reference {}; volumes [{volumes}]", text(t, "reference"));
    if let Ok(v) = t.get_document("verified") {
        let _ = write!(
            line,
            "; verified {} (seed {}): {} files, {} bytes read",
            text(v, "level"),
            text(v, "seed"),
            text(v, "files"),
            text(v, "bytes")
        );
    }
    line
}

fn copies_summary(r: &RunDoc) -> String {
    r.data
        .iter()
        .map(|c| format!("{}:{}", c.host, c.status))
        .collect::<Vec<_>>()
        .join(" ")
}

fn date(d: DateTime) -> String {
    d.to_chrono().format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn size(bytes: i64) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(0)).to_string()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_string()).collect()
}

/// Left-aligned columns separated by two spaces; no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The documents as relaxed extended JSON: an array, or one object.
fn json(runs: &[RunDoc], as_array: bool) -> Result<String> {
    let values = runs
        .iter()
        .map(catalog::run_json)
        .collect::<Result<Vec<_>, _>>()?;
    let text = if as_array {
        serde_json::to_string_pretty(&values)?
    } else {
        match values.first() {
            Some(v) => serde_json::to_string_pretty(v)?,
            None => "null".to_string(),
        }
    };
    Ok(text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[row(&["A", "BB"]), row(&["CCC", "D"])]);
        assert_eq!(t, "A    BB\nCCC  D\n");
    }

    #[test]
    fn tape_field_in_one_line() {
        let t = bson::doc! {
            "backend": "lto", "reference": "L1:1", "volumes": ["L1", "L2"],
            "verified": { "level": "sample", "seed": "7", "files": 2_i64, "bytes": 10_i64 },
        };
        assert_eq!(
            tape_summary(&t),
            "reference L1:1; volumes [L1, L2]; verified sample (seed 7): 2 files, 10 bytes read"
        );
    }

    #[test]
    fn dates_parse() {
        let d = parse_date("2017-03-30").unwrap();
        assert_eq!(date(d), "2017-03-30 00:00:00Z");
        let d = parse_date("2017-03-30T12:34:56+02:00").unwrap();
        assert_eq!(date(d), "2017-03-30 10:34:56Z");
        assert!(parse_date("30/03/2017").is_err());
    }
}
