//! The legacy `cax.json` format (XENON1T's cax): a JSON array of host entries, read onto
//! the same model as Ferry's own format.
//!
//! | cax key             | Ferry                                                          |
//! |---------------------|----------------------------------------------------------------|
//! | `name`              | site name                                                      |
//! | `method`            | `scp`/`rsync` → `sftp`; `tsm` with a host → `sftp`; `gfal-copy`, `lcg-cp`, `rucio`, `tsm` without a host → no transfer peer (warning) |
//! | `hostname`, `username` | the same (`null` = not set)                                 |
//! | `dir_raw`, `dir_processed`, `dir_minitrees` | `data_dirs.raw` / `.processed` / `.minitrees` |
//! | `data_type`         | keeps only the data directories of these types                 |
//! | `upload_options`    | `push_to` (`null` = none)                                      |
//! | `download_options`  | `pull_from` (`null` = none)                                    |
//! | `nstreams`          | `limits.files_in_flight`                                       |
//! | `dir_tsm`, `purge`, `grid_cert`, `task_list`, `pax_processing_versions`, `rucio_*` | ignored, one warning per key |
//!
//! A key repeated inside an entry keeps its last value, as Python's `json` module did, with
//! a warning naming it. Links to cax's `tsm` tape entry are dropped with a warning (tape is
//! a tape backend in Ferry); links to `gfal-copy`, `lcg-cp` and `rucio` sites are skipped
//! with a warning at the link (site, method, position), and the rest of the map is used.
//!
//! cax.json holds no catalogue: the run database comes from `--catalog`/`FERRY_CATALOG`,
//! with cax's database `run`, collection `runs_new` and password variable `MONGO_PASSWORD`
//! as defaults (`crate::catalog::resolve_catalog`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::diag::{did_you_mean, LineCol, Severity};
use super::model::{LayoutTemplate, Limits, Site, TransferMethod};
use super::raw::{Node, Value};
use super::read::{
    check_hostname, check_name, check_path, object, path_problem, Ctx, Obj, Span, Unknown,
};
use super::validate::{Draft, SiteSpans};

/// Keys cax defined and Ferry maps.
const MAPPED: &[&str] = &[
    "name",
    "method",
    "hostname",
    "username",
    "dir_raw",
    "dir_processed",
    "dir_minitrees",
    "data_type",
    "upload_options",
    "download_options",
    "nstreams",
];

/// Keys cax used that have no meaning in Ferry.
const IGNORED: &[&str] = &[
    "dir_tsm",
    "purge",
    "grid_cert",
    "task_list",
    "pax_processing_versions",
    "rucio_account",
    "rucio_config_p2",
    "rucio_config_p3",
    "rucio_download_rse",
    "rucio_upload_rse",
    "rucio_transfer",
];

/// Why each ignored key is ignored.
fn ignored_reason(key: &str) -> &'static str {
    match key {
        "dir_tsm" => "TSM staging is configured as a \"command\" tape backend",
        "purge" => "purging is configured in Ferry's \"purge\" policy and stays disabled here",
        "grid_cert" => "Ferry uses SSH keys, not grid certificates",
        "task_list" => "tasks are chosen with --task",
        "pax_processing_versions" => "Ferry does not process data",
        _ => "Ferry does not use Rucio",
    }
}

const DATA_KEYS: &[(&str, &str)] = &[
    ("dir_raw", "raw"),
    ("dir_processed", "processed"),
    ("dir_minitrees", "minitrees"),
];

/// Reads a cax.json array.
pub(crate) fn read_cax(cx: &mut Ctx, root: &Node) -> Option<Draft> {
    let Value::Array(items) = &root.value else {
        cx.error(
            root.pos,
            "",
            "a legacy cax.json must be a JSON array of hosts",
        );
        return None;
    };
    if items.is_empty() {
        cx.error(root.pos, "", "no hosts; a site map needs at least one");
    }
    let mut reader = CaxReader::default();
    let sites = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| reader.entry(cx, item, &format!("[{i}]")))
        .collect();
    reader.summary_warnings(cx);
    Some(Draft {
        catalog: None,
        sites,
        sites_span: Span {
            pos: root.pos,
            path: String::new(),
        },
        legacy: true,
    })
}

/// Reads entries one by one, gathering what is reported once per file rather than once
/// per entry (cax files repeat the same keys and methods in every entry).
#[derive(Default)]
struct CaxReader {
    /// Ignored key → (first position, its path, how many entries use it).
    ignored: BTreeMap<&'static str, (LineCol, String, usize)>,
    /// Unsupported method → (first position, its path, the sites using it).
    unsupported: BTreeMap<String, (LineCol, String, Vec<String>)>,
}

impl CaxReader {
    /// One host entry; `None` when its name or method is unusable (already reported).
    fn entry(&mut self, cx: &mut Ctx, item: &Node, path: &str) -> Option<(Site, SiteSpans)> {
        let known: Vec<&str> = MAPPED.iter().chain(IGNORED).copied().collect();
        let o = object(cx, item, path, &known, Unknown::Warn, Severity::Warning)?;
        for m in o.members() {
            if let Some(k) = IGNORED.iter().find(|k| **k == m.key) {
                let e = self
                    .ignored
                    .entry(k)
                    .or_insert_with(|| (m.key_pos, format!("{path}.{k}"), 0));
                e.2 += 1;
            }
        }
        let name = o.required(cx, "name").and_then(|(n, p)| {
            let s = cx.string(n, &p)?;
            check_name(cx, &s, n.pos, &p, "site name").then_some((
                s,
                Span {
                    pos: n.pos,
                    path: p,
                },
            ))
        });
        let raw_host = o
            .get_non_null("hostname")
            .and_then(|(n, p)| cx.string(n, &p).map(|h| (h, n.pos, p)));
        let method = o.required(cx, "method").and_then(|(n, p)| {
            let site = name.as_ref().map(|(s, _)| s.as_str()).unwrap_or("");
            self.method(cx, n, &p, site, raw_host.is_some())
        });
        let peer = matches!(method, Some(TransferMethod::Sftp));
        let hostname = match raw_host {
            Some((h, pos, p)) if peer => check_hostname(cx, &h, pos, &p).then_some(h),
            Some((h, _, _)) => Some(h),
            None if peer => {
                cx.error(o.pos, path, "an scp/rsync host needs a \"hostname\"");
                None
            }
            None => None,
        };
        // cax wrote "" as well as null for "no user".
        let username = o
            .get_non_null("username")
            .and_then(|(n, p)| cx.string(n, &p))
            .filter(|u| !u.is_empty());
        let (data_dirs, data_spans) = data_dirs(cx, &o, peer);
        let (mut push_to, mut push_spans) = links(cx, &o, "upload_options");
        let (mut pull_from, mut pull_spans) = links(cx, &o, "download_options");
        let mut limits = Limits::default();
        if let Some(v) = o
            .get_non_null("nstreams")
            .and_then(|(n, p)| cx.count(n, &p, 1))
        {
            limits.files_in_flight = v;
        }
        let ((name, name_span), method) = (name?, method?);
        let has_links = !push_to.is_empty() || !pull_from.is_empty();
        if !peer && has_links {
            cx.warn(
                o.pos,
                path,
                format!("site {name:?} is not a transfer peer; its upload_options/download_options are ignored"),
            );
            (push_to, push_spans, pull_from, pull_spans) = Default::default();
        }
        let site = Site {
            name,
            description: None,
            hostname,
            port: None,
            username,
            identity_file: None,
            host_key_policy: None,
            known_hosts: None,
            method,
            verify: Default::default(),
            origin: false,
            data_dirs,
            layout: LayoutTemplate::default(),
            create_data_dirs: false,
            link_roots: Vec::new(),
            push_to,
            pull_from,
            completion: Default::default(),
            tape: Vec::new(),
            purge: Default::default(),
            limits,
        };
        let spans = SiteSpans {
            site: Span {
                pos: o.pos,
                path: path.to_string(),
            },
            name: name_span,
            push_to: push_spans,
            pull_from: pull_spans,
            data_dirs: data_spans,
            identity_file: None,
            tape: Vec::new(),
        };
        Some((site, spans))
    }

    /// Maps a cax method; `has_host` tells a TSM client host from cax's TSM server entry.
    fn method(
        &mut self,
        cx: &mut Ctx,
        n: &Node,
        p: &str,
        site: &str,
        has_host: bool,
    ) -> Option<TransferMethod> {
        let m = cx.string(n, p)?;
        match m.as_str() {
            "scp" | "rsync" => Some(TransferMethod::Sftp),
            "tsm" if has_host => {
                cx.warn(
                    n.pos,
                    p,
                    "method \"tsm\": transfers to and from this host use SFTP; its TSM \
                     backup is not imported (configure a \"command\" tape backend running dsmc)",
                );
                Some(TransferMethod::Sftp)
            }
            "tsm" | "gfal-copy" | "lcg-cp" | "rucio" => {
                self.unsupported
                    .entry(m.clone())
                    .or_insert_with(|| (n.pos, p.to_string(), Vec::new()))
                    .2
                    .push(site.to_string());
                Some(TransferMethod::Unsupported(m))
            }
            other => {
                cx.error_hint(
                    n.pos,
                    p,
                    format!("unknown cax method {other:?}"),
                    did_you_mean(
                        other,
                        ["scp", "rsync", "tsm", "gfal-copy", "lcg-cp", "rucio"],
                    ),
                );
                None
            }
        }
    }

    /// One warning per unsupported method and per ignored key, at its first use.
    fn summary_warnings(self, cx: &mut Ctx) {
        for (method, (pos, path, names)) in self.unsupported {
            let what = if names.len() == 1 {
                "this site is kept but is not a transfer peer"
            } else {
                "these sites are kept but are not transfer peers"
            };
            cx.warn(
                pos,
                &path,
                format!(
                    "method {method:?} is not implemented by Ferry; {what}: {}",
                    names.join(", ")
                ),
            );
        }
        for (key, (pos, path, count)) in self.ignored {
            let more = if count > 1 {
                format!(" (in {count} entries)")
            } else {
                String::new()
            };
            cx.warn(
                pos,
                &path,
                format!(
                    "cax key \"{key}\" has no meaning in Ferry and is ignored{more}: {}",
                    ignored_reason(key)
                ),
            );
        }
    }
}

/// `dir_raw` / `dir_processed` / `dir_minitrees` (`null` = none), filtered by `data_type`
/// when present. Relative paths are errors on transfer peers, and dropped elsewhere.
fn data_dirs(
    cx: &mut Ctx,
    o: &Obj<'_>,
    peer: bool,
) -> (BTreeMap<String, PathBuf>, BTreeMap<String, Span>) {
    let mut dirs = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for (key, kind) in DATA_KEYS {
        let Some((n, p)) = o.get_non_null(key) else {
            continue;
        };
        let Some(dir) = cx.string(n, &p) else {
            continue;
        };
        // Refused on transfer peers; dropped elsewhere (Ferry never reads those).
        if path_problem(&dir, false).is_some() {
            if peer {
                check_path(cx, &dir, n.pos, &p, "data directory", false);
            }
            continue;
        }
        dirs.insert((*kind).to_string(), PathBuf::from(dir));
        spans.insert(
            (*kind).to_string(),
            Span {
                pos: n.pos,
                path: p,
            },
        );
    }
    if let Some((n, p)) = o.get_non_null("data_type") {
        if let Some(types) = cx.string_list(n, &p) {
            for (t, pos, tp) in &types {
                if !dirs.contains_key(t) {
                    cx.warn(
                        *pos,
                        tp,
                        format!("data type {t:?} has no data directory (dir_{t}) here"),
                    );
                }
            }
            let wanted: Vec<&str> = types.iter().map(|(t, _, _)| t.as_str()).collect();
            dirs.retain(|k, _| wanted.contains(&k.as_str()));
            spans.retain(|k, _| wanted.contains(&k.as_str()));
        }
    }
    (dirs, spans)
}

/// `upload_options` / `download_options`: a list of site names, or `null` for none.
fn links(cx: &mut Ctx, o: &Obj<'_>, key: &str) -> (Vec<String>, Vec<Span>) {
    let Some((n, p)) = o.get_non_null(key) else {
        return (Vec::new(), Vec::new());
    };
    let list = cx.string_list(n, &p).unwrap_or_default();
    list.into_iter()
        .map(|(s, pos, path)| (s, Span { pos, path }))
        .unzip()
}
