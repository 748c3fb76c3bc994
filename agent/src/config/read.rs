//! Reading the raw JSON tree with diagnostics: the machinery both formats share.
//!
//! - [`Ctx`] collects [`Diagnostic`]s for one file. Its typed readers (`string`, `int`,
//!   `duration`, `size`, `bandwidth`, `abs_path`, …) report a wrong type or value at the
//!   value's line:column and JSON path and return `None`, so reading goes on and every
//!   problem is found in one pass.
//! - [`object`] opens an object and reports unknown keys (with a did-you-mean) and
//!   duplicate keys once, up front; [`Obj`] then hands out its values with their paths.
//! - [`check_name`] and [`check_hostname`] are the value rules both formats apply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diag::{did_you_mean, Diagnostic, LineCol, Location, Severity};
use super::raw::{Member, Node, Value};

/// Collects diagnostics for one file.
pub(crate) struct Ctx {
    pub file: PathBuf,
    pub diags: Vec<Diagnostic>,
}

impl Ctx {
    /// No diagnostics yet, for `file`.
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            diags: Vec::new(),
        }
    }

    /// Records a diagnostic (an empty `path` means "no JSON path").
    pub fn push(
        &mut self,
        severity: Severity,
        pos: Option<LineCol>,
        path: &str,
        message: impl Into<String>,
        suggestion: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            location: Location {
                line_col: pos,
                path: (!path.is_empty()).then(|| path.to_string()),
            },
            message: message.into(),
            suggestion,
        });
    }

    /// Records an error at a value.
    pub fn error(&mut self, pos: LineCol, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, Some(pos), path, message, None);
    }

    /// Records an error with a suggested fix.
    pub fn error_hint(
        &mut self,
        pos: LineCol,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, Some(pos), path, message, hint);
    }

    /// Records a warning at a value.
    pub fn warn(&mut self, pos: LineCol, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, Some(pos), path, message, None);
    }

    /// Whether any error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    /// Reports that `node` is not of the `expected` type.
    pub fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        let hint = match &node.value {
            Value::String(s) if expected.contains("integer") && s.trim().parse::<i64>().is_ok() => {
                Some(format!("write {} without quotes", s.trim()))
            }
            _ => None,
        };
        self.error_hint(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.value.type_name()),
            hint,
        );
    }

    /// A string value.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.type_error(node, path, "a string");
                None
            }
        }
    }

    /// A non-empty string value.
    pub fn nonempty(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(node.pos, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A boolean value.
    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.type_error(node, path, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let Value::Number(n) = &node.value else {
            self.type_error(node, path, &format!("an integer from {min} to {max}"));
            return None;
        };
        match n.as_i64() {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.error(
                    node.pos,
                    path,
                    format!("{v} is out of range; expected {min} to {max}"),
                );
                None
            }
            None => {
                self.error(
                    node.pos,
                    path,
                    format!("{} is not an integer; expected {min} to {max}", n.0),
                );
                None
            }
        }
    }

    /// A count from 1 to 10 000, as u32.
    pub fn count(&mut self, node: &Node, path: &str, min: i64) -> Option<u32> {
        self.int(node, path, min, 10_000)
            .and_then(|v| u32::try_from(v).ok())
    }

    /// An array of strings (`null` is refused here; legacy reading handles it).
    pub fn string_list(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<Vec<(String, LineCol, String)>> {
        let Value::Array(items) = &node.value else {
            self.type_error(node, path, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if let Some(s) = self.string(item, &p) {
                out.push((s, item.pos, p));
            }
        }
        Some(out)
    }

    /// An argv template: a non-empty array of strings.
    pub fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let list = self.string_list(node, path)?;
        if list.is_empty() {
            self.error(
                node.pos,
                path,
                "an empty command; expected [\"program\", \"arg\", …]",
            );
            return None;
        }
        if list[0].0.trim().is_empty() {
            self.error(list[0].1, &list[0].2, "empty program name");
            return None;
        }
        Some(list.into_iter().map(|(s, _, _)| s).collect())
    }

    /// A duration string such as `"30s"`, `"10m"`, `"7days"`.
    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let Value::String(s) = &node.value else {
            self.error_hint(
                node.pos,
                path,
                format!(
                    "expected a duration string, found {}",
                    node.value.type_name()
                ),
                Some("write it with a unit, such as \"30s\", \"10m\", \"7days\"".into()),
            );
            return None;
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error_hint(
                    node.pos,
                    path,
                    format!("bad duration {s:?}: {e}"),
                    Some("write it with a unit, such as \"30s\", \"10m\", \"7days\"".into()),
                );
                None
            }
        }
    }

    /// A size such as `"100GB"` (or a plain number of bytes).
    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        match &node.value {
            Value::Number(_) => self.int(node, path, 1, i64::MAX).map(|v| v as u64),
            Value::String(s) => self.bytes(node, path, s, s, "size", "\"100GB\" or \"512MiB\""),
            _ => {
                self.type_error(node, path, "a size string such as \"100GB\"");
                None
            }
        }
    }

    /// A bandwidth such as `"50MB/s"`: bytes per second.
    pub fn bandwidth(&mut self, node: &Node, path: &str) -> Option<u64> {
        let Value::String(s) = &node.value else {
            self.type_error(node, path, "a bandwidth string such as \"50MB/s\"");
            return None;
        };
        let t = s.trim();
        match t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")) {
            Some(amount) => self.bytes(node, path, s, amount, "bandwidth", "\"50MB/s\""),
            None => {
                self.error_hint(
                    node.pos,
                    path,
                    format!("bad bandwidth {s:?}: missing \"/s\""),
                    Some("write it like \"50MB/s\"".into()),
                );
                None
            }
        }
    }

    /// Parses `amount` (from the value `whole`) as a positive number of bytes.
    #[allow(clippy::too_many_arguments)]
    fn bytes(
        &mut self,
        node: &Node,
        path: &str,
        whole: &str,
        amount: &str,
        what: &str,
        example: &str,
    ) -> Option<u64> {
        match amount.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => Some(b.as_u64()),
            Ok(_) => {
                self.error(
                    node.pos,
                    path,
                    format!("{what} must be more than 0 (leave it out for no limit)"),
                );
                None
            }
            Err(e) => {
                self.error_hint(
                    node.pos,
                    path,
                    format!("bad {what} {whole:?}: {e}"),
                    Some(format!("write it like {example}")),
                );
                None
            }
        }
    }

    /// An absolute path (see [`path_problem`] for what else is refused). The value is never
    /// echoed: the position and JSON path say where it is, and a secret pasted into the
    /// wrong key must not reach a terminal or a log.
    pub fn abs_path(&mut self, node: &Node, path: &str, what: &str) -> Option<PathBuf> {
        let s = self.nonempty(node, path)?;
        check_path(self, &s, node.pos, path, what, false).then(|| PathBuf::from(s))
    }

    /// An absolute path or one starting with `~/` (expanded on the host that uses it). The
    /// value is never echoed, as with [`Ctx::abs_path`].
    pub fn home_path(&mut self, node: &Node, path: &str, what: &str) -> Option<PathBuf> {
        let s = self.nonempty(node, path)?;
        check_path(self, &s, node.pos, path, what, true).then(|| PathBuf::from(s))
    }
}

/// What is wrong with a path written in the site map, if anything: a NUL byte or another
/// control character, a `..` component, or (unless `home_ok` allows `~/…`) not starting with
/// `/`. Checked for every path on every machine: none of them needs the host to be judged.
pub(crate) fn path_problem(s: &str, home_ok: bool) -> Option<(&'static str, &'static str)> {
    if s.contains('\0') {
        Some(("contains a NUL byte", "remove it"))
    } else if s.chars().any(char::is_control) {
        Some((
            "contains a control character (a newline, tab, escape, …)",
            "remove it",
        ))
    } else if s.split('/').any(|c| c == "..") {
        Some((
            "has a `..` component",
            "name the directory itself, without `..`",
        ))
    } else if !(s.starts_with('/') || home_ok && s.starts_with("~/")) {
        Some(if home_ok {
            (
                "is relative; it must be absolute or start with ~/",
                "start it with / or ~/",
            )
        } else {
            (
                "is relative; it must be an absolute path",
                "start it with /",
            )
        })
    } else {
        None
    }
}

/// Reports [`path_problem`] for `s` (never echoing it); true when the path is acceptable.
pub(crate) fn check_path(
    cx: &mut Ctx,
    s: &str,
    pos: LineCol,
    path: &str,
    what: &str,
    home_ok: bool,
) -> bool {
    match path_problem(s, home_ok) {
        None => true,
        Some((problem, fix)) => {
            cx.error_hint(
                pos,
                path,
                format!("{what} {problem}; the value given is not shown"),
                Some(fix.into()),
            );
            false
        }
    }
}

/// How to treat keys an object does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// An error (Ferry's format: a typo must not silently drop a setting).
    Error,
    /// A warning (legacy files carry keys of other cax versions).
    Warn,
    /// Any key is fine (maps such as `data_dirs`).
    Allow,
}

/// An object being read. Duplicate keys resolve to the last value (what cax's Python did).
pub(crate) struct Obj<'a> {
    pub pos: LineCol,
    pub path: String,
    members: &'a [Member],
}

impl<'a> Obj<'a> {
    /// The value of `key` (the last one if repeated) and its JSON path.
    pub fn get(&self, key: &str) -> Option<(&'a Node, String)> {
        self.members
            .iter()
            .rev()
            .find(|m| m.key == key)
            .map(|m| (&m.value, join(&self.path, key)))
    }

    /// Like [`Obj::get`], but `null` counts as absent.
    pub fn get_non_null(&self, key: &str) -> Option<(&'a Node, String)> {
        self.get(key).filter(|(n, _)| n.value != Value::Null)
    }

    /// The value of a required key; reports it missing otherwise.
    pub fn required(&self, cx: &mut Ctx, key: &str) -> Option<(&'a Node, String)> {
        let found = self.get(key);
        if found.is_none() {
            cx.error(
                self.pos,
                &self.path,
                format!("missing required key \"{key}\""),
            );
        }
        found
    }

    /// The members, in file order.
    pub fn members(&self) -> &'a [Member] {
        self.members
    }
}

/// `a.b`, or `b` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Opens an object: checks its type, its keys against `known`, and duplicate keys
/// (an error in Ferry's format, a warning naming the key in legacy files).
pub(crate) fn object<'a>(
    cx: &mut Ctx,
    node: &'a Node,
    path: &str,
    known: &[&str],
    unknown: Unknown,
    duplicates: Severity,
) -> Option<Obj<'a>> {
    let Value::Object(members) = &node.value else {
        cx.type_error(node, path, "an object");
        return None;
    };
    let mut first: HashMap<&str, LineCol> = HashMap::new();
    for m in members {
        let mpath = join(path, &m.key);
        if let Some(prev) = first.get(m.key.as_str()) {
            let msg = match duplicates {
                Severity::Error => format!(
                    "duplicate key \"{}\" (first at line {}); remove one",
                    m.key, prev.line
                ),
                Severity::Warning | Severity::Note => format!(
                    "duplicate key \"{}\" (first at line {}); the last value is used, as cax did",
                    m.key, prev.line
                ),
            };
            cx.push(duplicates, Some(m.key_pos), &mpath, msg, None);
        } else {
            first.insert(&m.key, m.key_pos);
        }
        if unknown != Unknown::Allow && !known.contains(&m.key.as_str()) {
            let hint = did_you_mean(&m.key, known.iter().copied());
            match unknown {
                Unknown::Error => cx.error_hint(
                    m.key_pos,
                    &mpath,
                    format!("unknown key \"{}\"", m.key),
                    hint,
                ),
                Unknown::Allow | Unknown::Warn => cx.push(
                    Severity::Warning,
                    Some(m.key_pos),
                    &mpath,
                    format!("unknown key \"{}\" ignored", m.key),
                    hint,
                ),
            }
        }
    }
    Some(Obj {
        pos: node.pos,
        path: path.to_string(),
        members,
    })
}

/// A position and JSON path kept beside the model for the cross-site checks.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub pos: LineCol,
    pub path: String,
}

/// Checks a site or data-type name: letters, digits, `.`, `_`, `-`, starting with a letter
/// or digit, at most 64 characters.
pub(crate) fn check_name(cx: &mut Ctx, name: &str, pos: LineCol, path: &str, what: &str) -> bool {
    if name.is_empty() {
        cx.error(pos, path, format!("{what} must not be empty"));
        return false;
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_start = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_start || name.len() > 64 {
        cx.error(
            pos,
            path,
            format!(
                "bad {what} {name:?}: use letters, digits, `.`, `_` and `-`, start with a \
                 letter or digit, at most 64 characters"
            ),
        );
        return false;
    }
    true
}

/// Checks a host name: no spaces, no `user@`, no `:port`, no URL.
pub(crate) fn check_hostname(cx: &mut Ctx, host: &str, pos: LineCol, path: &str) -> bool {
    let problem = if host.contains('@') {
        Some("put the user in \"username\", not in the host name")
    } else if host.contains("://") || host.contains('/') {
        Some("a host name, not a URL or path")
    } else if host.contains(char::is_whitespace) {
        Some("a host name cannot contain spaces")
    } else if host.contains(':') && !host.contains("::") && host.matches(':').count() == 1 {
        Some("put the port in \"port\", not in the host name")
    } else {
        None
    };
    if let Some(p) = problem {
        cx.error(pos, path, format!("bad host name {host:?}: {p}"));
        return false;
    }
    true
}
