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
//! a tape backend in Ferry); links to other non-transfer sites are errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::diag::{did_you_mean, LineCol, Severity};
use super::model::{LayoutTemplate, Limits, Site, TransferMethod};
use super::raw::{Node, Value};
use super::read::{check_hostname, check_name, object, Ctx, Obj, Span, Unknown};
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
    let known: Vec<&str> = MAPPED.iter().chain(IGNORED).copied().collect();
    // key → (first position, path, count): one warning per ignored key, not per entry.
    let mut ignored: BTreeMap<&str, (LineCol, String, usize)> = BTreeMap::new();
    // method → (first position, path, site names): one warning per unsupported method.
    let mut unsupported: BTreeMap<String, (LineCol, String, Vec<String>)> = BTreeMap::new();
    let mut sites = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("[{i}]");
        let Some(o) = object(cx, item, &path, &known, Unknown::Warn, Severity::Warning) else {
            continue;
        };
        for m in o.members() {
            if let Some(k) = IGNORED.iter().find(|k| **k == m.key) {
                let e = ignored
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
        let hostname = o
            .get_non_null("hostname")
            .and_then(|(n, p)| cx.string(n, &p).map(|h| (h, n.pos, p)));
        let method = o.required(cx, "method").and_then(|(n, p)| {
            let m = cx.string(n, &p)?;
            match m.as_str() {
                "scp" | "rsync" => Some(TransferMethod::Sftp),
                "tsm" if hostname.is_some() => {
                    cx.warn(
                        n.pos,
                        &p,
                        "method \"tsm\": transfers to and from this host use SFTP; its TSM \
                         backup is not imported (configure a \"command\" tape backend running dsmc)",
                    );
                    Some(TransferMethod::Sftp)
                }
                "tsm" | "gfal-copy" | "lcg-cp" | "rucio" => {
                    let name = o
                        .get("name")
                        .and_then(|(n, _)| match &n.value {
                            Value::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    unsupported
                        .entry(m.clone())
                        .or_insert_with(|| (n.pos, p.clone(), Vec::new()))
                        .2
                        .push(name);
                    Some(TransferMethod::Unsupported(m))
                }
                other => {
                    cx.error_hint(
                        n.pos,
                        &p,
                        format!("unknown cax method {other:?}"),
                        did_you_mean(other, ["scp", "rsync", "tsm", "gfal-copy", "lcg-cp", "rucio"]),
                    );
                    None
                }
            }
        });
        let peer = matches!(method, Some(TransferMethod::Sftp));
        let hostname = match hostname {
            Some((h, pos, p)) if peer => check_hostname(cx, &h, pos, &p).then_some(h),
            Some((h, _, _)) => Some(h),
            None if peer => {
                cx.error(o.pos, &path, "an scp/rsync host needs a \"hostname\"");
                None
            }
            None => None,
        };
        // cax wrote "" as well as null for "no user".
        let username = o
            .get_non_null("username")
            .and_then(|(n, p)| cx.string(n, &p))
            .filter(|u| !u.is_empty());
        let mut data_dirs = BTreeMap::new();
        let mut data_spans = BTreeMap::new();
        for (key, kind) in DATA_KEYS {
            let Some((n, p)) = o.get_non_null(key) else {
                continue;
            };
            let Some(dir) = cx.string(n, &p) else {
                continue;
            };
            if !dir.starts_with('/') {
                if peer {
                    cx.error(
                        n.pos,
                        &p,
                        format!("data directory {dir:?} is relative; it must be an absolute path"),
                    );
                }
                continue;
            }
            data_dirs.insert((*kind).to_string(), PathBuf::from(dir));
            data_spans.insert(
                (*kind).to_string(),
                Span {
                    pos: n.pos,
                    path: p,
                },
            );
        }
        if let Some((n, p)) = o.get_non_null("data_type") {
            if let Some(types) = cx.string_list(n, &p) {
                let wanted: Vec<&str> = types.iter().map(|(t, _, _)| t.as_str()).collect();
                for (t, pos, tp) in &types {
                    if !data_dirs.contains_key(t) {
                        cx.warn(
                            *pos,
                            tp,
                            format!("data type {t:?} has no data directory (dir_{t}) here"),
                        );
                    }
                }
                data_dirs.retain(|k, _| wanted.contains(&k.as_str()));
                data_spans.retain(|k, _| wanted.contains(&k.as_str()));
            }
        }
        let (push_to, push_spans) = links(cx, &o, "upload_options");
        let (pull_from, pull_spans) = links(cx, &o, "download_options");
        let mut limits = Limits::default();
        if let Some((n, p)) = o.get_non_null("nstreams") {
            if let Some(v) = cx.count(n, &p, 1) {
                limits.files_in_flight = v;
            }
        }
        let (Some((name, name_span)), Some(method)) = (name, method) else {
            continue;
        };
        let (push_to, push_spans, pull_from, pull_spans) = if peer {
            (push_to, push_spans, pull_from, pull_spans)
        } else {
            if !push_to.is_empty() || !pull_from.is_empty() {
                cx.warn(
                    o.pos,
                    &path,
                    format!("site {name:?} is not a transfer peer; its upload_options/download_options are ignored"),
                );
            }
            (Vec::new(), Vec::new(), Vec::new(), Vec::new())
        };
        sites.push((
            Site {
                name,
                description: None,
                hostname,
                port: None,
                username,
                identity_file: None,
                host_key_policy: None,
                known_hosts: None,
                method,
                origin: false,
                data_dirs,
                layout: LayoutTemplate::default(),
                push_to,
                pull_from,
                completion: Default::default(),
                tape: Vec::new(),
                purge: Default::default(),
                limits,
            },
            SiteSpans {
                site: Span {
                    pos: o.pos,
                    path: path.clone(),
                },
                name: name_span,
                push_to: push_spans,
                pull_from: pull_spans,
                data_dirs: data_spans,
                identity_file: None,
                tape: Vec::new(),
            },
        ));
    }
    for (method, (pos, path, names)) in unsupported {
        cx.warn(
            pos,
            &path,
            format!(
                "method {method:?} is not implemented by Ferry; {}: {}",
                if names.len() == 1 {
                    "this site is kept but is not a transfer peer"
                } else {
                    "these sites are kept but are not transfer peers"
                },
                names.join(", ")
            ),
        );
    }
    for (key, (pos, path, count)) in ignored {
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
