//! Ferry's own format → validated model, and the cross-site checks both formats share.
//!
//! - [`read_ferry`] reads a version-1 site map into a [`Draft`] (the model plus where each
//!   part was written), one `read_*` function per section, collecting every problem
//!   through [`Ctx`] (see `read.rs`). `legacy::read_cax` produces the same [`Draft`].
//! - [`finish`] runs the checks that need the whole map (unique site and tape names, links
//!   and gateways that resolve to transfer peers) on either; `host.rs` then runs the
//!   checks local to `--host`.
//! - The key lists below are the format; a test keeps them equal to the JSON Schema in
//!   `site-configs/site-map.schema.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::diag::{did_you_mean, LineCol, Severity};
use super::model::{
    parse_tape_template, CatalogSettings, CommandOutput, CompletionRule, DestinationVerify,
    HostKeyPolicy, LayoutTemplate, Limits, PasswordSource, PurgePolicy, Site, TapeBackendConfig,
    TapeKind, TarChanger, TransferMethod, CHANGER_MOVE_PLACEHOLDERS, CHANGER_STATUS_PLACEHOLDERS,
    TAPE_PLACEHOLDERS,
};
use super::raw::{Node, Value};
use super::read::{check_hostname, check_name, check_path, join, object, Ctx, Obj, Span, Unknown};

/// The format version this build reads.
pub const FORMAT_VERSION: i64 = 1;

/// Where each part of a site was written.
#[derive(Debug, Clone)]
pub(crate) struct SiteSpans {
    pub site: Span,
    pub name: Span,
    pub push_to: Vec<Span>,
    pub pull_from: Vec<Span>,
    pub data_dirs: BTreeMap<String, Span>,
    pub identity_file: Option<Span>,
    /// Per tape backend: the entry, its name and, for `command`, its gateway.
    pub tape: Vec<TapeSpans>,
}

/// Where a tape backend was written.
#[derive(Debug, Clone)]
pub(crate) struct TapeSpans {
    pub item: Span,
    pub name: Span,
    pub gateway: Option<Span>,
    /// Where each key of the entry is (its name's position), for problems with a setting.
    pub keys: BTreeMap<String, Span>,
}

/// A site map read from either format, before the cross-site checks.
pub(crate) struct Draft {
    pub catalog: Option<CatalogSettings>,
    pub sites: Vec<(Site, SiteSpans)>,
    /// Where the list of sites is (for `--host` errors).
    pub sites_span: Span,
    pub legacy: bool,
}

const TOP_KEYS: &[&str] = &["$schema", "version", "description", "catalog", "sites"];
const CATALOG_KEYS: &[&str] = &[
    "uri",
    "password_env",
    "password_file",
    "database",
    "collection",
];
const SITE_KEYS: &[&str] = &[
    "name",
    "description",
    "hostname",
    "port",
    "username",
    "identity_file",
    "strict_host_key_checking",
    "known_hosts",
    "method",
    "verify",
    "origin",
    "data_dirs",
    "layout",
    "create_data_dirs",
    "link_roots",
    "push_to",
    "pull_from",
    "completion",
    "tape",
    "purge",
    "limits",
];
const COMPLETION_KEYS: &[&str] = &["marker", "quiet_period"];
const PURGE_KEYS: &[&str] = &[
    "enabled",
    "min_copies",
    "min_tape_copies",
    "max_verify_age",
    "retention",
    "high_water_mark",
    "low_water_mark",
];
const LIMIT_KEYS: &[&str] = &[
    "files_in_flight",
    "transfers_per_link",
    "global_transfers",
    "bandwidth_per_link",
    "lease",
];
/// The shortest `limits.lease` accepted.
const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
const TAPE_COMMON_KEYS: &[&str] = &["name", "kind"];
const TAPE_DIRECTORY_KEYS: &[&str] = &["path"];
const TAPE_COMMAND_KEYS: &[&str] = &[
    "gateway",
    "put",
    "verify",
    "retrieve",
    "stat",
    "ok_exit_codes",
    "tape_path",
    "stage",
    "output",
    "timeout",
];
const TAPE_TAR_KEYS: &[&str] = &[
    "devices",
    "copies",
    "batch_size",
    "mt",
    "write",
    "read",
    "labels",
    "changer",
    "lock_timeout",
];
const TAPE_TAR_CHANGER_KEYS: &[&str] = &["device", "status", "load", "unload", "slots", "drives"];
const TAPE_KINDS: &[&str] = &["directory", "command", "tar"];

/// Reads Ferry's own format (a JSON object with `"version": 1`).
pub(crate) fn read_ferry(cx: &mut Ctx, root: &Node) -> Option<Draft> {
    let top = object(cx, root, "", TOP_KEYS, Unknown::Error, Severity::Error)?;
    match top.get("version") {
        None => cx.error_hint(
            top.pos,
            "version",
            "missing required key \"version\"",
            Some("add \"version\": 1".into()),
        ),
        Some((n, p)) => {
            if let Some(v) = cx.int(n, &p, 0, i64::MAX) {
                if v != FORMAT_VERSION {
                    cx.error(
                        n.pos,
                        &p,
                        format!("unsupported format version {v}; this ferry reads version {FORMAT_VERSION}"),
                    );
                }
            }
        }
    }
    if let Some((n, p)) = top.get("description") {
        cx.string(n, &p);
    }
    let catalog = top
        .get("catalog")
        .and_then(|(n, p)| read_catalog(cx, n, &p));
    let mut sites = Vec::new();
    let sites_span;
    match top.required(cx, "sites") {
        Some((node, path)) => {
            sites_span = Span {
                pos: node.pos,
                path: path.clone(),
            };
            match &node.value {
                Value::Array(items) => {
                    if items.is_empty() {
                        cx.error(node.pos, &path, "no sites; a site map needs at least one");
                    }
                    for (i, item) in items.iter().enumerate() {
                        if let Some(s) = read_site(cx, item, &format!("sites[{i}]")) {
                            sites.push(s);
                        }
                    }
                }
                _ => cx.type_error(node, &path, "an array of sites"),
            }
        }
        None => {
            sites_span = Span {
                pos: top.pos,
                path: "sites".into(),
            }
        }
    }
    Some(Draft {
        catalog,
        sites,
        sites_span,
        legacy: false,
    })
}

/// Checks a catalogue URI's scheme and that it holds no password. Parses it as the agent
/// will ([`crate::catalog::CatalogUri::parse`]: the user information ends at the last `@`),
/// and never echoes the URI's user information.
pub(crate) fn check_catalog_uri(cx: &mut Ctx, uri: &str, pos: LineCol, path: &str) -> bool {
    use crate::catalog::uri::{split, CatalogUri};
    let t = uri.trim();
    let mongo = t.starts_with("mongodb://") || t.starts_with("mongodb+srv://");
    if mongo && split(t).is_some_and(|p| p.password.is_some()) {
        cx.error_hint(
            pos,
            path,
            "the catalogue URI holds a password; secrets never go in the shared site map",
            Some(
                "remove it from the URI and set catalog.password_env or catalog.password_file"
                    .into(),
            ),
        );
        return false;
    }
    let known = mongo || ["sqlite:", "embedded:"].iter().any(|p| t.starts_with(p));
    if known {
        return match CatalogUri::parse(t) {
            Ok(_) => true,
            Err(e) => {
                cx.error(pos, path, e.reason);
                false
            }
        };
    }
    // Name the scheme only when the value has the shape of a URI: anything else may be a
    // secret pasted into the wrong key.
    let scheme = t.split_once("://").map(|(s, _)| s).filter(|s| {
        s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let message = match scheme {
        Some(scheme) => format!("unknown catalogue scheme {scheme:?}"),
        None => "not a catalogue URI (the value given is not shown)".to_string(),
    };
    cx.error_hint(
        pos,
        path,
        message,
        Some("use mongodb://HOST/…, mongodb+srv://…, or sqlite:PATH".into()),
    );
    false
}

/// Whether `s` can be an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn read_catalog(cx: &mut Ctx, node: &Node, path: &str) -> Option<CatalogSettings> {
    let o = object(
        cx,
        node,
        path,
        CATALOG_KEYS,
        Unknown::Error,
        Severity::Error,
    )?;
    let uri = o.required(cx, "uri").and_then(|(n, p)| {
        let s = cx.nonempty(n, &p)?;
        check_catalog_uri(cx, &s, n.pos, &p).then_some(s)
    });
    let env = o.get("password_env").and_then(|(n, p)| {
        let s = cx.nonempty(n, &p)?;
        if !is_env_name(&s) {
            // Never echoed: a password pasted here instead of a variable's name is common.
            cx.error(
                n.pos,
                &p,
                "password_env must name an environment variable ([A-Za-z_][A-Za-z0-9_]*); \
                 the value given is not shown",
            );
            return None;
        }
        Some(s)
    });
    let file = o
        .get("password_file")
        .and_then(|(n, p)| cx.home_path(n, &p, "password file"));
    let password = match (env, file) {
        (Some(_), Some(_)) => {
            cx.error(o.pos, path, "give password_env or password_file, not both");
            PasswordSource::None
        }
        (Some(e), None) => PasswordSource::Env(e),
        (None, Some(f)) => PasswordSource::File(f),
        (None, None) => PasswordSource::None,
    };
    let database = o
        .get("database")
        .and_then(|(n, p)| cx.nonempty(n, &p))
        .unwrap_or_else(|| "run".into());
    let collection = o
        .get("collection")
        .and_then(|(n, p)| cx.nonempty(n, &p))
        .unwrap_or_else(|| "runs".into());
    Some(CatalogSettings {
        uri: uri?,
        password,
        database,
        collection,
    })
}

fn name_list(cx: &mut Ctx, o: &Obj<'_>, key: &str) -> (Vec<String>, Vec<Span>) {
    let mut names = Vec::new();
    let mut spans = Vec::new();
    if let Some((n, p)) = o.get(key) {
        for (s, pos, path) in cx.string_list(n, &p).unwrap_or_default() {
            names.push(s);
            spans.push(Span { pos, path });
        }
    }
    (names, spans)
}

fn read_site(cx: &mut Ctx, node: &Node, path: &str) -> Option<(Site, SiteSpans)> {
    let o = object(cx, node, path, SITE_KEYS, Unknown::Error, Severity::Error)?;
    let (name, name_span) = match o.required(cx, "name") {
        Some((n, p)) => {
            let s = cx.string(n, &p);
            let span = Span {
                pos: n.pos,
                path: p.clone(),
            };
            match s {
                Some(s) if check_name(cx, &s, n.pos, &p, "site name") => (Some(s), span),
                _ => (None, span),
            }
        }
        None => (
            None,
            Span {
                pos: o.pos,
                path: join(path, "name"),
            },
        ),
    };
    let description = o.get("description").and_then(|(n, p)| cx.string(n, &p));
    let hostname = o.get("hostname").and_then(|(n, p)| {
        let h = cx.nonempty(n, &p)?;
        check_hostname(cx, &h, n.pos, &p).then_some(h)
    });
    let port = o
        .get("port")
        .and_then(|(n, p)| cx.int(n, &p, 1, 65_535))
        .and_then(|v| u16::try_from(v).ok());
    let username = o.get("username").and_then(|(n, p)| cx.nonempty(n, &p));
    let mut identity_span = None;
    let identity_file = o.get("identity_file").and_then(|(n, p)| {
        identity_span = Some(Span {
            pos: n.pos,
            path: p.clone(),
        });
        cx.home_path(n, &p, "identity file")
    });
    let host_key_policy = o
        .get("strict_host_key_checking")
        .and_then(|(n, p)| read_host_key_policy(cx, n, &p));
    let known_hosts = o
        .get("known_hosts")
        .and_then(|(n, p)| cx.home_path(n, &p, "known_hosts file"));
    let method = match o.get("method") {
        None => Some(TransferMethod::Sftp),
        Some((n, p)) => read_method(cx, n, &p),
    };
    let verify = match o.get("verify") {
        None => Some(DestinationVerify::ReadBack),
        Some((n, p)) => read_verify(cx, n, &p),
    };
    let origin = o
        .get("origin")
        .and_then(|(n, p)| cx.boolean(n, &p))
        .unwrap_or(false);
    let (data_dirs, data_spans) = match o.get("data_dirs") {
        Some((n, p)) => read_data_dirs(cx, n, &p),
        None => Default::default(),
    };
    let layout = match o.get("layout") {
        None => Some(LayoutTemplate::default()),
        Some((n, p)) => read_layout(cx, n, &p),
    };
    let create_data_dirs = o
        .get("create_data_dirs")
        .and_then(|(n, p)| cx.boolean(n, &p))
        .unwrap_or(false);
    let mut link_roots = Vec::new();
    if let Some((n, p)) = o.get("link_roots") {
        match &n.value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(dir) = cx.abs_path(item, &format!("{p}[{i}]"), "link root") {
                        link_roots.push(dir);
                    }
                }
            }
            _ => cx.type_error(n, &p, "an array of absolute directories"),
        }
    }
    let (push_to, push_spans) = name_list(cx, &o, "push_to");
    let (pull_from, pull_spans) = name_list(cx, &o, "pull_from");
    let completion = o
        .get("completion")
        .and_then(|(n, p)| read_completion(cx, n, &p))
        .unwrap_or_default();
    let mut tape = Vec::new();
    let mut tape_spans = Vec::new();
    if let Some((n, p)) = o.get("tape") {
        match &n.value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some((t, span)) = read_tape(cx, item, &format!("{p}[{i}]")) {
                        tape.push(t);
                        tape_spans.push(span);
                    }
                }
            }
            _ => cx.type_error(n, &p, "an array of tape backends"),
        }
    }
    let purge = o
        .get("purge")
        .and_then(|(n, p)| read_purge(cx, n, &p))
        .unwrap_or_default();
    let limits = o
        .get("limits")
        .and_then(|(n, p)| read_limits(cx, n, &p))
        .unwrap_or_default();
    let no_data_dirs = match o.get("data_dirs") {
        None => true,
        Some((n, _)) => matches!(&n.value, Value::Object(m) if m.is_empty()),
    };
    if origin && no_data_dirs {
        cx.error(
            o.pos,
            path,
            "an origin site needs at least one data directory (data_dirs)",
        );
    }
    // A site with errors elsewhere is still kept (with defaults in place of the bad
    // values) when its name is readable, so that links to it do not also report "unknown
    // site"; loading fails on the errors anyway.
    let site = Site {
        name: name?,
        description,
        hostname,
        port,
        username,
        identity_file,
        host_key_policy,
        known_hosts,
        method: method.unwrap_or(TransferMethod::Sftp),
        verify: verify.unwrap_or_default(),
        origin,
        data_dirs,
        layout: layout.unwrap_or_default(),
        create_data_dirs,
        link_roots,
        push_to,
        pull_from,
        completion,
        tape,
        purge,
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
        identity_file: identity_span,
        tape: tape_spans,
    };
    Some((site, spans))
}

fn read_host_key_policy(cx: &mut Ctx, n: &Node, p: &str) -> Option<HostKeyPolicy> {
    let s = cx.string(n, p)?;
    match HostKeyPolicy::parse(&s) {
        Some(HostKeyPolicy::No) => {
            cx.warn(
                n.pos,
                p,
                "\"no\" accepts any host key: a man-in-the-middle can read and alter every copy; use \"accept-new\"",
            );
            Some(HostKeyPolicy::No)
        }
        Some(k) => Some(k),
        None => {
            cx.error_hint(
                n.pos,
                p,
                format!("unknown host-key policy {s:?}"),
                did_you_mean(&s, ["yes", "accept-new", "no"])
                    .or_else(|| Some("use \"yes\" or \"accept-new\"".into())),
            );
            None
        }
    }
}

fn read_method(cx: &mut Ctx, n: &Node, p: &str) -> Option<TransferMethod> {
    let m = cx.string(n, p)?;
    match m.as_str() {
        "sftp" => Some(TransferMethod::Sftp),
        "local" => Some(TransferMethod::Local),
        other => {
            cx.error_hint(
                n.pos,
                p,
                format!(
                    "unknown transfer method {other:?}; Ferry implements \"sftp\" and \"local\""
                ),
                did_you_mean(other, ["sftp", "local"]),
            );
            None
        }
    }
}

/// `verify`: `"read-back"`, `"agent"` or `{"command": [argv…]}`.
fn read_verify(cx: &mut Ctx, n: &Node, p: &str) -> Option<DestinationVerify> {
    const WORDS: [&str; 2] = ["read-back", "agent"];
    match &n.value {
        Value::String(w) => match w.as_str() {
            "read-back" => Some(DestinationVerify::ReadBack),
            "agent" => Some(DestinationVerify::Agent),
            other => {
                cx.error_hint(
                    n.pos,
                    p,
                    format!(
                        "unknown verification {other:?}; expected \"read-back\", \"agent\" \
                         or {{\"command\": [\"sha256sum\", \"--\"]}}"
                    ),
                    did_you_mean(other, WORDS),
                );
                None
            }
        },
        Value::Object(_) => {
            let o = object(cx, n, p, &["command"], Unknown::Error, Severity::Error)?;
            match o.get("command") {
                Some((c, cp)) => cx.argv(c, &cp).map(DestinationVerify::Command),
                None => {
                    cx.error(n.pos, p, "a verification object needs \"command\": [argv…]");
                    None
                }
            }
        }
        _ => {
            cx.type_error(n, p, "\"read-back\", \"agent\" or {\"command\": [argv…]}");
            None
        }
    }
}

/// `data_dirs`: data types are free names; their names, duplicates and paths are checked.
fn read_data_dirs(
    cx: &mut Ctx,
    n: &Node,
    p: &str,
) -> (BTreeMap<String, PathBuf>, BTreeMap<String, Span>) {
    let mut dirs = BTreeMap::new();
    let mut spans = BTreeMap::new();
    let Some(dd) = object(cx, n, p, &[], Unknown::Allow, Severity::Error) else {
        return (dirs, spans);
    };
    for m in dd.members() {
        let mp = join(p, &m.key);
        check_name(cx, &m.key, m.key_pos, &mp, "data type");
        if let Some(dir) = cx.abs_path(&m.value, &mp, "data directory") {
            dirs.insert(m.key.clone(), dir);
            spans.insert(
                m.key.clone(),
                Span {
                    pos: m.value.pos,
                    path: mp,
                },
            );
        }
    }
    (dirs, spans)
}

fn read_layout(cx: &mut Ctx, n: &Node, p: &str) -> Option<LayoutTemplate> {
    let text = cx.string(n, p)?;
    match LayoutTemplate::parse(&text) {
        Ok(l) => Some(l),
        Err(e) => {
            cx.error(n.pos, p, e.to_string());
            None
        }
    }
}

fn read_completion(cx: &mut Ctx, node: &Node, path: &str) -> Option<CompletionRule> {
    let o = object(
        cx,
        node,
        path,
        COMPLETION_KEYS,
        Unknown::Error,
        Severity::Error,
    )?;
    let marker = o.get("marker").and_then(|(n, p)| {
        let m = cx.nonempty(n, &p)?;
        if m.contains('/') || m == "." || m == ".." {
            cx.error(
                n.pos,
                &p,
                format!("marker {m:?} must be a plain file name in the run directory"),
            );
            return None;
        }
        Some(m)
    });
    let quiet = o.get("quiet_period").and_then(|(n, p)| {
        let d = cx.duration(n, &p)?;
        if d.is_zero() {
            cx.error(
                n.pos,
                &p,
                "a quiet period of 0 would register runs still being written",
            );
            return None;
        }
        Some(d)
    });
    match (marker, quiet) {
        (Some(_), Some(_)) => {
            cx.error(o.pos, path, "give marker or quiet_period, not both");
            None
        }
        (Some(m), None) => Some(CompletionRule::Marker(m)),
        (None, Some(d)) => Some(CompletionRule::QuietPeriod(d)),
        (None, None) => None,
    }
}

fn read_purge(cx: &mut Ctx, node: &Node, path: &str) -> Option<PurgePolicy> {
    let o = object(cx, node, path, PURGE_KEYS, Unknown::Error, Severity::Error)?;
    let d = PurgePolicy::default();
    let enabled = o
        .get("enabled")
        .and_then(|(n, p)| cx.boolean(n, &p))
        .unwrap_or(d.enabled);
    let min_copies = o
        .get("min_copies")
        .map(|(n, p)| match &n.value {
            Value::Number(x) if x.as_i64() == Some(0) => {
                cx.error(
                    n.pos,
                    &p,
                    "min_copies 0 would allow deleting the last copy of a run; it must be at least 1",
                );
                None
            }
            _ => cx.count(n, &p, 1),
        })
        .unwrap_or(Some(d.min_copies));
    let min_tape_copies = o
        .get("min_tape_copies")
        .map(|(n, p)| cx.count(n, &p, 0))
        .unwrap_or(Some(d.min_tape_copies));
    let max_verify_age = o
        .get("max_verify_age")
        .map(|(n, p)| cx.duration(n, &p))
        .unwrap_or(Some(d.max_verify_age));
    let retention = o
        .get("retention")
        .map(|(n, p)| cx.duration(n, &p))
        .unwrap_or(Some(d.retention));
    let high_water_mark = o
        .get("high_water_mark")
        .map(|(n, p)| cx.int(n, &p, 1, 100).and_then(|v| u8::try_from(v).ok()))
        .unwrap_or(Some(d.high_water_mark));
    let high_water_mark = high_water_mark?;
    let low_water_mark = match o.get("low_water_mark") {
        None => high_water_mark,
        Some((n, p)) => {
            let low = cx.int(n, &p, 0, 100).and_then(|v| u8::try_from(v).ok())?;
            if low > high_water_mark {
                cx.error(
                    n.pos,
                    &p,
                    format!(
                        "low_water_mark {low} is above high_water_mark {high_water_mark}; \
                         purging starts above the high-water mark and stops at the low-water mark"
                    ),
                );
                return None;
            }
            low
        }
    };
    let (min_copies, min_tape_copies) = (min_copies?, min_tape_copies?);
    if min_tape_copies > min_copies {
        if let Some((n, p)) = o.get("min_tape_copies") {
            cx.error(
                n.pos,
                &p,
                format!("min_tape_copies {min_tape_copies} is more than min_copies {min_copies}; tape copies count among the copies"),
            );
        }
        return None;
    }
    Some(PurgePolicy {
        enabled,
        min_copies,
        min_tape_copies,
        max_verify_age: max_verify_age?,
        retention: retention?,
        high_water_mark,
        low_water_mark,
    })
}

fn read_limits(cx: &mut Ctx, node: &Node, path: &str) -> Option<Limits> {
    let o = object(cx, node, path, LIMIT_KEYS, Unknown::Error, Severity::Error)?;
    let d = Limits::default();
    let files_in_flight = o
        .get("files_in_flight")
        .map(|(n, p)| cx.count(n, &p, 1))
        .unwrap_or(Some(d.files_in_flight));
    let transfers_per_link = o
        .get("transfers_per_link")
        .map(|(n, p)| cx.count(n, &p, 1))
        .unwrap_or(Some(d.transfers_per_link));
    let global_transfers = o
        .get("global_transfers")
        .map(|(n, p)| cx.count(n, &p, 1))
        .unwrap_or(Some(d.global_transfers));
    let bandwidth_per_link = match o.get("bandwidth_per_link") {
        None => Some(None),
        Some((n, p)) => cx.bandwidth(n, &p).map(Some),
    };
    let lease = match o.get("lease") {
        None => Some(d.lease),
        Some((n, p)) => match cx.duration(n, &p) {
            Some(l) if l < MIN_LEASE => {
                cx.error(
                    n.pos,
                    &p,
                    format!("a lease under {MIN_LEASE:?} cannot be renewed in time"),
                );
                None
            }
            other => other,
        },
    };
    Some(Limits {
        files_in_flight: files_in_flight?,
        transfers_per_link: transfers_per_link?,
        global_transfers: global_transfers?,
        bandwidth_per_link: bandwidth_per_link?,
        lease: lease?,
    })
}

fn read_tape(cx: &mut Ctx, node: &Node, path: &str) -> Option<(TapeBackendConfig, TapeSpans)> {
    // Peek at `kind` first, so unknown keys are judged against that kind's settings.
    let kind = match &node.value {
        Value::Object(members) => members
            .iter()
            .rev()
            .find(|m| m.key == "kind")
            .and_then(|m| match &m.value.value {
                Value::String(s) if TAPE_KINDS.contains(&s.as_str()) => Some(s.clone()),
                _ => None,
            }),
        _ => None,
    };
    let specific: &[&[&str]] = match kind.as_deref() {
        Some("directory") => &[TAPE_DIRECTORY_KEYS],
        Some("command") => &[TAPE_COMMAND_KEYS],
        Some("tar") => &[TAPE_TAR_KEYS],
        _ => &[TAPE_DIRECTORY_KEYS, TAPE_COMMAND_KEYS, TAPE_TAR_KEYS],
    };
    let known: Vec<&str> = TAPE_COMMON_KEYS
        .iter()
        .chain(specific.iter().flat_map(|k| k.iter()))
        .copied()
        .collect();
    let o = object(cx, node, path, &known, Unknown::Error, Severity::Error)?;
    let name = o.required(cx, "name").and_then(|(n, p)| {
        let s = cx.string(n, &p)?;
        check_name(cx, &s, n.pos, &p, "tape backend name").then_some((
            s,
            Span {
                pos: n.pos,
                path: p,
            },
        ))
    });
    let (kind_node, kind_path) = o.required(cx, "kind")?;
    let kind_name = cx.string(kind_node, &kind_path)?;
    let (kind, gateway_span) = match kind_name.as_str() {
        "directory" => {
            let root = o
                .required(cx, "path")
                .and_then(|(n, p)| cx.abs_path(n, &p, "tape directory"));
            (TapeKind::Directory { path: root? }, None)
        }
        "command" => read_command_tape(cx, &o)?,
        "tar" => {
            let backend = name.as_ref().map(|(n, _)| n.as_str()).unwrap_or("tar");
            (read_tar_tape(cx, &o, backend)?, None)
        }
        other => {
            cx.error_hint(
                kind_node.pos,
                &kind_path,
                format!("unknown tape backend kind {other:?}; known: directory, command, tar"),
                did_you_mean(other, TAPE_KINDS.iter().copied()),
            );
            return None;
        }
    };
    let (name, name_span) = name?;
    let spans = TapeSpans {
        item: Span {
            pos: node.pos,
            path: path.to_string(),
        },
        name: name_span,
        gateway: gateway_span,
        keys: o
            .members()
            .iter()
            .map(|m| {
                let span = Span {
                    pos: m.key_pos,
                    path: join(path, &m.key),
                };
                (m.key.clone(), span)
            })
            .collect(),
    };
    Some((TapeBackendConfig { name, kind }, spans))
}

/// `kind: "command"`: argv templates, an optional gateway site (checked in [`finish`]).
fn read_command_tape(cx: &mut Ctx, o: &Obj<'_>) -> Option<(TapeKind, Option<Span>)> {
    let mut gateway_span = None;
    let gateway = o.get("gateway").and_then(|(n, p)| {
        let g = cx.nonempty(n, &p)?;
        gateway_span = Some(Span {
            pos: n.pos,
            path: p,
        });
        Some(g)
    });
    let put = o.required(cx, "put").and_then(|(n, p)| cx.argv(n, &p));
    let verify = o.get("verify").map(|(n, p)| cx.argv(n, &p));
    let retrieve = o.get("retrieve").map(|(n, p)| cx.argv(n, &p));
    let stat = o.get("stat").map(|(n, p)| cx.argv(n, &p));
    let ok_exit_codes = match o.get("ok_exit_codes") {
        None => Some(vec![0]),
        Some((n, p)) => match &n.value {
            Value::Array(items) if !items.is_empty() => {
                // Read every element (reporting each bad one) before giving up.
                let codes: Vec<Option<i32>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| cx.int(it, &format!("{p}[{i}]"), 0, 255).map(|v| v as i32))
                    .collect();
                codes.into_iter().collect()
            }
            _ => {
                cx.type_error(n, &p, "a non-empty array of exit codes");
                None
            }
        },
    };
    let tape_path = o.get("tape_path").map(|(n, p)| {
        let t = cx.nonempty(n, &p)?;
        check_template(
            cx,
            n,
            &p,
            std::slice::from_ref(&t),
            &tape_path_placeholders(),
        )
        .then_some(t)
    });
    let stage = o.get("stage").map(|(n, p)| {
        let s = cx.nonempty(n, &p)?;
        check_path(cx, &s, n.pos, &p, "stage directory", false).then_some(s)
    });
    let output = match o.get("output") {
        None => Some(CommandOutput::Stub),
        Some((n, p)) => cx
            .string(n, &p)
            .and_then(|s| match CommandOutput::parse(&s) {
                Some(out) => Some(out),
                None => {
                    cx.error_hint(
                        n.pos,
                        &p,
                        format!("unknown output format {s:?}; known: stub, dsmc, hsi"),
                        did_you_mean(&s, ["stub", "dsmc", "hsi"]),
                    );
                    None
                }
            }),
    };
    let timeout = o
        .get("timeout")
        .map(|(n, p)| cx.duration(n, &p))
        .unwrap_or(Some(std::time::Duration::from_secs(3600)));
    // Every template's placeholders are checked here, so a typo is a site-map error with its
    // JSON path rather than a failure on the first backup.
    let mut templates_ok = true;
    for (key, allowed) in [
        ("put", put_placeholders()),
        ("stat", probe_placeholders()),
        ("verify", probe_placeholders()),
        ("retrieve", retrieve_placeholders()),
    ] {
        if let (Some((n, p)), Some(argv)) = (
            o.get(key),
            match key {
                "put" => put.as_ref(),
                "stat" => stat.as_ref().and_then(|v| v.as_ref()),
                "verify" => verify.as_ref().and_then(|v| v.as_ref()),
                _ => retrieve.as_ref().and_then(|v| v.as_ref()),
            },
        ) {
            templates_ok &= check_template(cx, n, &p, argv, &allowed);
        }
    }
    let kind = TapeKind::Command {
        gateway,
        put: put?,
        verify: optional(verify)?,
        retrieve: optional(retrieve)?,
        stat: optional(stat)?,
        ok_exit_codes: ok_exit_codes?,
        tape_path: optional(tape_path)?,
        stage: optional(stage)?,
        output: output?,
        timeout: timeout?,
    };
    if !templates_ok {
        return None;
    }
    Some((kind, gateway_span))
}

/// Placeholders `put` may use: all but `{dest}` (the retrieve destination).
fn put_placeholders() -> Vec<&'static str> {
    TAPE_PLACEHOLDERS
        .iter()
        .copied()
        .filter(|p| *p != "dest")
        .collect()
}

/// Placeholders of `stat` and `verify`: what is known of a stored file without its bytes.
fn probe_placeholders() -> Vec<&'static str> {
    TAPE_PLACEHOLDERS
        .iter()
        .copied()
        .filter(|p| !matches!(*p, "dest" | "size" | "md5" | "sha256"))
        .collect()
}

/// Placeholders of `retrieve`: those of `stat`, and `{dest}`.
fn retrieve_placeholders() -> Vec<&'static str> {
    TAPE_PLACEHOLDERS
        .iter()
        .copied()
        .filter(|p| !matches!(*p, "size" | "md5" | "sha256"))
        .collect()
}

/// Placeholders of `tape_path`: the file's and the run's identity.
fn tape_path_placeholders() -> Vec<&'static str> {
    TAPE_PLACEHOLDERS
        .iter()
        .copied()
        .filter(|p| {
            !matches!(
                *p,
                "dest" | "size" | "md5" | "sha256" | "tape_path" | "tape_dir"
            )
        })
        .collect()
}

/// Check each token of a template; report every bad one at `path[i]`. True when all parse.
fn check_template(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    argv: &[String],
    allowed: &[&'static str],
) -> bool {
    let mut ok = true;
    for (i, token) in argv.iter().enumerate() {
        if let Err(reason) = parse_tape_template(token, allowed) {
            let at = match node.value {
                Value::Array(_) => format!("{path}[{i}]"),
                _ => path.to_owned(),
            };
            cx.error(node.pos, &at, reason);
            ok = false;
        }
    }
    ok
}

/// Where a `tar` backend keeps its label store unless the site map says otherwise.
fn default_label_store(backend: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/ferry/tape-{backend}-labels.json"))
}

/// A tar `read`/`write` argv: only `{device}` may be used.
fn read_device_argv(cx: &mut Ctx, o: &Obj<'_>, key: &str, default: &[&str]) -> Option<Vec<String>> {
    match o.get(key) {
        None => Some(default.iter().map(|s| s.to_string()).collect()),
        Some((n, p)) => {
            let argv = cx.argv(n, &p)?;
            check_template(cx, n, &p, &argv, &["device"]).then_some(argv)
        }
    }
}

/// `kind: "tar"`: devices, copies (at most one per device: copies are written in
/// parallel, one drive each), batch size, the `mt` program.
fn read_tar_tape(cx: &mut Ctx, o: &Obj<'_>, name: &str) -> Option<TapeKind> {
    let devices = o.required(cx, "devices").and_then(|(n, p)| {
        let list = cx.string_list(n, &p)?;
        if list.is_empty() {
            cx.error(n.pos, &p, "no tape devices");
            return None;
        }
        let mut out = Vec::new();
        for (s, pos, dp) in list {
            if check_path(cx, &s, pos, &dp, "tape device", false) {
                out.push(PathBuf::from(s));
            }
        }
        Some(out)
    });
    let copies = o.get("copies").map(|(n, p)| (cx.count(n, &p, 1), n.pos, p));
    let batch_size = o
        .get("batch_size")
        .map(|(n, p)| cx.size(n, &p))
        .unwrap_or(Some(100_000_000_000));
    let mt = o
        .get("mt")
        .map(|(n, p)| cx.argv(n, &p))
        .unwrap_or_else(|| Some(vec!["mt".into()]));
    let write = read_device_argv(cx, o, "write", &["dd", "of={device}", "bs=256k"]);
    let read = read_device_argv(cx, o, "read", &["dd", "if={device}", "bs=256k"]);
    let labels = match o.get("labels") {
        Some((n, p)) => cx.abs_path(n, &p, "label store"),
        None => Some(default_label_store(name)),
    };
    let lock_timeout = o
        .get("lock_timeout")
        .map(|(n, p)| cx.duration(n, &p))
        .unwrap_or(Some(std::time::Duration::from_secs(3600)));
    let changer = o
        .get("changer")
        .map(|(n, p)| read_tar_changer(cx, n, &p, devices.as_ref().map(Vec::len)));
    let devices = devices?;
    let drives = u32::try_from(devices.len()).unwrap_or(u32::MAX);
    let copies = match copies {
        None => drives,
        Some((c, pos, p)) => {
            let c = c?;
            if c > drives {
                cx.error(
                    pos,
                    &p,
                    format!("{c} copies need {c} drives, but only {drives} device(s) are listed"),
                );
                return None;
            }
            c
        }
    };
    Some(TapeKind::Tar {
        devices,
        copies,
        batch_size: batch_size?,
        mt: mt?,
        write: write?,
        read: read?,
        labels: labels?,
        changer: optional(changer)?,
        lock_timeout: lock_timeout?,
    })
}

/// An argv template of a changer, with its default and allowed placeholders.
fn changer_argv(
    cx: &mut Ctx,
    o: &Obj<'_>,
    key: &str,
    default: &[&str],
    allowed: &[&'static str],
) -> Option<Vec<String>> {
    match o.get(key) {
        None => Some(default.iter().map(|s| s.to_string()).collect()),
        Some((n, p)) => {
            let argv = cx.argv(n, &p)?;
            check_template(cx, n, &p, &argv, allowed).then_some(argv)
        }
    }
}

/// A slot or drive number (0 to 100 000).
fn element(cx: &mut Ctx, node: &Node, path: &str) -> Option<u32> {
    cx.int(node, path, 0, 100_000)
        .and_then(|v| u32::try_from(v).ok())
}

/// `slots`: `[1, 2, 5]` or `"1-24"`; no slot twice.
fn read_slots(cx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<u32>> {
    let slots = match &node.value {
        Value::String(s) => {
            let range = s
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                })
                .filter(|(a, b)| a <= b && *b <= 100_000);
            match range {
                Some((a, b)) => (a..=b).collect(),
                None => {
                    cx.error_hint(
                        node.pos,
                        path,
                        format!("bad slot range {s:?}"),
                        Some("write it like \"1-24\", or list the slots: [1, 2, 3]".into()),
                    );
                    return None;
                }
            }
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match element(cx, item, &format!("{path}[{i}]")) {
                    Some(v) => out.push(v),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            out
        }
        _ => {
            cx.type_error(
                node,
                path,
                "a slot range such as \"1-24\" or an array of slots",
            );
            return None;
        }
    };
    if slots.is_empty() {
        cx.error(node.pos, path, "no slots");
        return None;
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = slots.iter().find(|s| !seen.insert(**s)) {
        cx.error(node.pos, path, format!("slot {dup} is listed twice"));
        return None;
    }
    Some(slots)
}

/// `changer` of a tar backend: the `mtx` robot, its slots, and the drive number of each
/// device.
fn read_tar_changer(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    devices: Option<usize>,
) -> Option<TarChanger> {
    let o = object(
        cx,
        node,
        path,
        TAPE_TAR_CHANGER_KEYS,
        Unknown::Error,
        Severity::Error,
    )?;
    let device = o
        .required(cx, "device")
        .and_then(|(n, p)| cx.abs_path(n, &p, "changer device"));
    let status = changer_argv(
        cx,
        &o,
        "status",
        &["mtx", "-f", "{changer}", "status"],
        CHANGER_STATUS_PLACEHOLDERS,
    );
    let load = changer_argv(
        cx,
        &o,
        "load",
        &["mtx", "-f", "{changer}", "load", "{slot}", "{drive}"],
        CHANGER_MOVE_PLACEHOLDERS,
    );
    let unload = changer_argv(
        cx,
        &o,
        "unload",
        &["mtx", "-f", "{changer}", "unload", "{slot}", "{drive}"],
        CHANGER_MOVE_PLACEHOLDERS,
    );
    let slots = o
        .required(cx, "slots")
        .and_then(|(n, p)| read_slots(cx, n, &p));
    let drives = match o.get("drives") {
        None => devices.map(|d| (0..d as u32).collect()),
        Some((n, p)) => {
            let Value::Array(items) = &n.value else {
                cx.type_error(n, &p, "an array of drive numbers, one per device");
                return None;
            };
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(element(cx, item, &format!("{p}[{i}]")));
            }
            let out: Option<Vec<u32>> = out.into_iter().collect();
            let out = out?;
            if let Some(d) = devices.filter(|d| *d != out.len()) {
                cx.error(
                    n.pos,
                    &p,
                    format!(
                        "{} drive number(s) for {d} device(s); give one per device, in order",
                        out.len()
                    ),
                );
                return None;
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = out.iter().find(|s| !seen.insert(**s)) {
                cx.error(n.pos, &p, format!("drive {dup} is listed twice"));
                return None;
            }
            Some(out)
        }
    };
    Some(TarChanger {
        device: device?,
        status: status?,
        load: load?,
        unload: unload?,
        slots: slots?,
        drives: drives?,
    })
}

/// An optional setting after reading: absent (`None`) is fine and stays `Some(None)`;
/// present but invalid (`Some(None)`, already reported) makes the whole value `None`.
fn optional<T>(read: Option<Option<T>>) -> Option<Option<T>> {
    match read {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}

/// Cross-site checks, on a draft from either format: unique site and tape names, links
/// that resolve to transfer peers, gateways that exist. Links that cannot work in a legacy
/// file are dropped with a warning where cax itself had no transfer (TSM).
pub(crate) fn finish(cx: &mut Ctx, draft: &mut Draft) {
    let mut seen: HashMap<String, Span> = HashMap::new();
    for (site, spans) in &draft.sites {
        if let Some(first) = seen.get(&site.name) {
            cx.error(
                spans.name.pos,
                &spans.name.path,
                format!(
                    "duplicate site name {:?} (first defined at {}, line {})",
                    site.name, first.path, first.pos.line
                ),
            );
        } else {
            seen.insert(site.name.clone(), spans.name.clone());
        }
    }
    let peers = Peers {
        names: draft.sites.iter().map(|(s, _)| s.name.clone()).collect(),
        methods: draft
            .sites
            .iter()
            .map(|(s, _)| (s.name.clone(), s.method.clone()))
            .collect(),
        legacy: draft.legacy,
    };
    for (site, spans) in &mut draft.sites {
        for (list, list_spans, verb) in [
            (&mut site.push_to, &mut spans.push_to, "push to"),
            (&mut site.pull_from, &mut spans.pull_from, "pull from"),
        ] {
            let mut keep = Vec::new();
            let mut keep_spans = Vec::new();
            for (peer, span) in list.iter().zip(list_spans.iter()) {
                if keep.contains(peer) {
                    cx.warn(
                        span.pos,
                        &span.path,
                        format!("site {peer:?} is listed twice"),
                    );
                } else if peers.check(cx, &site.name, &site.method, peer, span, verb) {
                    keep.push(peer.clone());
                    keep_spans.push(span.clone());
                }
            }
            *list = keep;
            *list_spans = keep_spans;
        }
    }
    // The same copy direction named by both ends: harmless (the catalogue's leases stop
    // two agents copying one run), but one of the two entries is surely a mistake.
    for (site, spans) in &draft.sites {
        for (from, span) in site.pull_from.iter().zip(&spans.pull_from) {
            let pushed = draft
                .sites
                .iter()
                .any(|(s, _)| &s.name == from && s.push_to.contains(&site.name));
            if pushed {
                cx.warn(
                    span.pos,
                    &span.path,
                    format!(
                        "{from:?} already pushes to {:?}; both agents would copy over this link",
                        site.name
                    ),
                );
            }
        }
    }
    let mut tape_seen: HashMap<String, Span> = HashMap::new();
    for (site, spans) in &draft.sites {
        for (tape, tape_spans) in site.tape.iter().zip(&spans.tape) {
            let (name_span, gw_span) = (&tape_spans.name, &tape_spans.gateway);
            if let Some(first) = tape_seen.get(&tape.name) {
                cx.error(
                    name_span.pos,
                    &name_span.path,
                    format!(
                        "duplicate tape backend name {:?} (first at {}); names must be unique across the site map",
                        tape.name, first.path
                    ),
                );
            } else {
                tape_seen.insert(tape.name.clone(), name_span.clone());
            }
            check_tape_needs(cx, tape, tape_spans);
            if let (
                TapeKind::Command {
                    gateway: Some(g), ..
                },
                Some(gs),
            ) = (&tape.kind, gw_span)
            {
                match peers.methods.get(g) {
                    None => cx.error_hint(
                        gs.pos,
                        &gs.path,
                        format!("unknown gateway site {g:?}"),
                        did_you_mean(g, peers.names.iter().map(String::as_str)),
                    ),
                    Some(TransferMethod::Unsupported(m)) => cx.error(
                        gs.pos,
                        &gs.path,
                        format!("gateway site {g:?} uses method {m:?}, which Ferry cannot reach"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    check_shared_data_dirs(cx, draft);
    // (Skipped when there are errors: a bad "origin" value reads as false.)
    if !peers.legacy
        && !cx.has_errors()
        && !draft.sites.is_empty()
        && !draft.sites.iter().any(|(s, _)| s.origin)
    {
        cx.warn(
            draft.sites_span.pos,
            &draft.sites_span.path,
            "no site has \"origin\": true, so no agent will register new runs",
        );
    }
}

/// What the tasks that use a tape backend need of its entry, as the backend declares it
/// ([`crate::tape::needs`]): an error where an agent would fail every cycle (the backend
/// cannot be built, or a task that runs every cycle calls the operation), a note where only
/// an operation run on request (`ferry recall`) is missing. Each names the backend, the
/// key (or the entry, for a key to add), the tasks that need it and what to add.
fn check_tape_needs(cx: &mut Ctx, tape: &TapeBackendConfig, spans: &TapeSpans) {
    for unmet in crate::tape::needs::unmet_needs(tape) {
        let at = unmet
            .present
            .then(|| spans.keys.get(unmet.key))
            .flatten()
            .unwrap_or(&spans.item);
        let users: Vec<&str> = unmet.needed_by().iter().map(|u| u.task).collect();
        let users = match users.as_slice() {
            [] => "no task".to_owned(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        };
        let operations: Vec<String> = unmet.operations.iter().map(|o| o.to_string()).collect();
        let (severity, outcome) = if unmet.refused {
            (
                Severity::Error,
                "the backend is refused as it stands, so every task using it fails every cycle",
            )
        } else if unmet.fails_every_cycle() {
            (Severity::Error, "they would fail every cycle")
        } else {
            (Severity::Note, "the rest of the backend works")
        };
        cx.push(
            severity,
            Some(at.pos),
            &at.path,
            format!(
                "tape backend {:?}: {}; {users} need{} it (operation{} {}): {outcome}",
                tape.name,
                unmet.problem,
                if unmet.needed_by().len() == 1 {
                    "s"
                } else {
                    ""
                },
                if operations.len() == 1 { "" } else { "s" },
                operations.join(", "),
            ),
            Some(unmet.fix),
        );
    }
}

/// The machine a site's files are on, as far as the site map tells: its `hostname` (else
/// its name), compared without case and without a trailing dot.
fn machine_name(site: &Site) -> String {
    site.hostname
        .as_deref()
        .unwrap_or(&site.name)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A path lexically normalised into its components (`.` and repeated or trailing `/`
/// dropped; `..` never reaches here, it is refused when read), so `/data/a` is not inside
/// `/data/ab` and `/data//a/` is `/data/a`.
fn components(p: &std::path::Path) -> Vec<std::path::Component<'_>> {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Two sites on one machine (or one site) whose data directories are the same directory or
/// one inside the other would copy a run onto itself and then count it as two copies. One
/// machine: the same [`machine_name`], or joined (directly or through other sites) by a link
/// to a site with method `local`. Sites Ferry cannot reach (legacy methods) are left out.
fn check_shared_data_dirs(cx: &mut Ctx, draft: &Draft) {
    let sites: Vec<&(Site, SiteSpans)> = draft
        .sites
        .iter()
        .filter(|(s, _)| s.is_transfer_peer())
        .collect();
    // Group the sites by machine: union-find over "same host name" and "local link".
    let mut group: Vec<usize> = (0..sites.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    let index: HashMap<&str, usize> = sites
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (s.name.as_str(), i))
        .collect();
    for (i, (a, _)) in sites.iter().enumerate() {
        for (j, (b, _)) in sites.iter().enumerate().skip(i + 1) {
            if machine_name(a) == machine_name(b) {
                let (ri, rj) = (root(&mut group, i), root(&mut group, j));
                group[ri] = rj;
            }
        }
        for peer in a.push_to.iter().chain(&a.pull_from) {
            if let Some(&j) = index.get(peer.as_str()) {
                if a.method == TransferMethod::Local || sites[j].0.method == TransferMethod::Local {
                    let (ri, rj) = (root(&mut group, i), root(&mut group, j));
                    group[ri] = rj;
                }
            }
        }
    }
    // Every data directory in file order, with its site's machine group.
    let mut dirs = Vec::new();
    for (i, (site, spans)) in sites.iter().enumerate() {
        let g = root(&mut group, i);
        for (kind, dir) in &site.data_dirs {
            if let Some(span) = spans.data_dirs.get(kind) {
                dirs.push((g, site, kind, dir, span));
            }
        }
    }
    dirs.sort_by_key(|d| d.4.pos);
    for (n, &(g, site, kind, dir, span)) in dirs.iter().enumerate() {
        let mine = components(dir);
        for &(h, other, okind, odir, ospan) in &dirs[..n] {
            if g != h {
                continue;
            }
            let theirs = components(odir);
            let relation = if mine == theirs {
                "is the same directory as"
            } else if mine.starts_with(&theirs) {
                "is inside"
            } else if theirs.starts_with(&mine) {
                "contains"
            } else {
                continue;
            };
            let whose = if other.name == site.name {
                format!("data type {okind:?} of the same site")
            } else {
                format!(
                    "data type {okind:?} of site {:?} (on the same machine)",
                    other.name
                )
            };
            cx.error_hint(
                span.pos,
                &span.path,
                format!(
                    "data directory {} of site {:?}, data type {kind:?}, {relation} {} ({whose}, at {}, line {}); \
                     two copies there would be one set of files",
                    dir.display(),
                    site.name,
                    odir.display(),
                    ospan.path,
                    ospan.pos.line
                ),
                Some("give every site and data type a directory of its own, neither inside the other".into()),
            );
        }
    }
}

/// cax transfer methods whose links a legacy cax.json may name: warned about and skipped,
/// not refused.
const LEGACY_SKIPPED_METHODS: &[&str] = &["gfal-copy", "lcg-cp", "rucio"];

/// What the link checks need to know about every site.
struct Peers {
    /// Site names in file order (for did-you-mean).
    names: Vec<String>,
    methods: HashMap<String, TransferMethod>,
    legacy: bool,
}

impl Peers {
    /// Checks one entry of `site`'s `push_to` / `pull_from`; `false` drops the link.
    fn check(
        &self,
        cx: &mut Ctx,
        site: &str,
        site_method: &TransferMethod,
        peer: &str,
        span: &Span,
        verb: &str,
    ) -> bool {
        if peer == site {
            cx.error(
                span.pos,
                &span.path,
                format!("site {site:?} cannot {verb} itself"),
            );
            return false;
        }
        match self.methods.get(peer) {
            None => {
                cx.error_hint(
                    span.pos,
                    &span.path,
                    format!("unknown site {peer:?}"),
                    did_you_mean(peer, self.names.iter().map(String::as_str)),
                );
                false
            }
            Some(TransferMethod::Unsupported(m)) if self.legacy && m == "tsm" => {
                cx.warn(
                    span.pos,
                    &span.path,
                    format!(
                        "{peer:?} is cax's TSM tape entry, not a transfer peer; link dropped \
                         (configure TSM as a \"command\" tape backend running dsmc)"
                    ),
                );
                false
            }
            Some(TransferMethod::Unsupported(m))
                if self.legacy && LEGACY_SKIPPED_METHODS.contains(&m.as_str()) =>
            {
                // cax copied there with grid tools; Ferry does not (yet): the rest of the
                // map still works, this one link does not.
                cx.warn(
                    span.pos,
                    &span.path,
                    format!(
                        "{site:?} would {verb} {peer:?}, whose method {m:?} Ferry does not \
                         implement; link skipped (the rest of the site map is used)"
                    ),
                );
                false
            }
            Some(TransferMethod::Unsupported(m)) => {
                cx.error(
                    span.pos,
                    &span.path,
                    format!(
                        "site {peer:?} uses method {m:?}, which Ferry does not implement; \
                         it cannot be a transfer peer"
                    ),
                );
                false
            }
            Some(TransferMethod::Local) if *site_method != TransferMethod::Local => {
                cx.error(
                    span.pos,
                    &span.path,
                    format!(
                        "site {peer:?} uses method \"local\" (same machine), so only sites with \
                         method \"local\" can {verb} it; {site:?} uses {site_method}"
                    ),
                );
                false
            }
            Some(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as J;

    const SCHEMA: &str = include_str!("../../../site-configs/site-map.schema.json");

    fn keys(v: &J) -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    }

    fn sorted(list: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    /// The JSON Schema and the validator must know the same keys, or editors and
    /// `ferry config validate` disagree.
    #[test]
    fn schema_and_validator_know_the_same_keys() {
        let s: J = serde_json::from_str(SCHEMA).unwrap();
        let defs = &s["$defs"];
        assert_eq!(keys(&s["properties"]), sorted(TOP_KEYS));
        assert_eq!(keys(&defs["catalog"]["properties"]), sorted(CATALOG_KEYS));
        assert_eq!(keys(&defs["site"]["properties"]), sorted(SITE_KEYS));
        let site = &defs["site"]["properties"];
        assert_eq!(
            keys(&site["completion"]["properties"]),
            sorted(COMPLETION_KEYS)
        );
        assert_eq!(keys(&site["purge"]["properties"]), sorted(PURGE_KEYS));
        assert_eq!(keys(&site["limits"]["properties"]), sorted(LIMIT_KEYS));
        let branches = defs["tape"]["oneOf"].as_array().unwrap();
        for (kind, specific) in [
            ("directory", TAPE_DIRECTORY_KEYS),
            ("command", TAPE_COMMAND_KEYS),
            ("tar", TAPE_TAR_KEYS),
        ] {
            let b = branches
                .iter()
                .find(|b| b["properties"]["kind"]["const"] == kind)
                .unwrap_or_else(|| panic!("no schema branch for tape kind {kind}"));
            let mut want: Vec<&str> = TAPE_COMMON_KEYS.to_vec();
            want.extend(specific);
            assert_eq!(keys(&b["properties"]), sorted(&want), "tape kind {kind}");
            if kind == "tar" {
                assert_eq!(
                    keys(&b["properties"]["changer"]["properties"]),
                    sorted(TAPE_TAR_CHANGER_KEYS)
                );
            }
        }
        let kinds: Vec<&str> = defs["tape"]["properties"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(kinds, TAPE_KINDS);
    }
}
