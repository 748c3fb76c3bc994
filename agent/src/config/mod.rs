//! The site map: one JSON file shared by every site's agent (DESIGN §4).
//!
//! Loading reads the file, finds its format, validates **everything** before anything
//! runs, and reports every problem at once, each naming the file and the place
//! (line:column and JSON path):
//!
//! ```text
//! raw.rs       text → JSON tree that keeps positions and duplicate keys
//! validate.rs  Ferry's format → Draft; cross-site checks (names, links, tape backends)
//! legacy.rs    legacy cax.json → the same Draft, with warnings for what does not map
//! host.rs      checks local to the site the agent runs as (--host): data dirs, keys
//! model.rs     the validated model the agent uses (SiteMap, Site, …)
//! ssh.rs       effective SSH settings: site map, then ~/.ssh/config, then OpenSSH defaults
//! diag.rs      Diagnostic: severity, file, line:col and/or JSON path, message, suggestion
//! ```
//!
//! The entry points are [`load`] and [`parse_str`]. A top-level JSON array is a legacy
//! cax.json; an object is Ferry's format (with `"version": 1`).

mod diag;
mod host;
mod legacy;
mod model;
mod raw;
mod ssh;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diag::{did_you_mean, Diagnostic, LineCol, Location, Severity};
pub use model::{
    CatalogSettings, CompletionRule, HostKeyPolicy, LayoutError, LayoutField, LayoutTemplate,
    Limits, Link, PasswordSource, PurgePolicy, Site, SiteMap, TapeBackendConfig, TapeKind,
    TransferMethod,
};
pub use ssh::{SettingSource, SshConfigError, SshEnvironment, SshSettings};
pub use validate::FORMAT_VERSION;

use raw::Value;
use validate::Ctx;

/// What to check beyond the shared part of the site map.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Run the host-local checks (data directories, private keys) for this site.
    pub host: Option<String>,
    /// The SSH config to resolve peers' settings with [default `~/.ssh/config`].
    pub ssh_config: Option<PathBuf>,
}

/// The format a site map was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Ferry's own format (a JSON object, `"version": 1`).
    Ferry,
    /// XENON1T's cax.json (a JSON array of hosts).
    LegacyCax,
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ferry => "ferry (version 1)",
            Self::LegacyCax => "legacy cax.json",
        })
    }
}

/// A site map that passed every check.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated model.
    pub map: SiteMap,
    /// Things that were ignored, mapped or are risky; never fatal.
    pub warnings: Vec<Diagnostic>,
    /// The input format.
    pub format: SourceFormat,
}

/// A site map that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the site map: {source}", path.display())]
    Io {
        /// The site map file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The site map has errors; `diagnostics` holds every error and warning found.
    #[error("{}", list_diagnostics(file, diagnostics))]
    Invalid {
        /// The site map file.
        file: PathBuf,
        /// Every problem found, errors and warnings, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn list_diagnostics(file: &Path, diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let mut s = format!(
        "{}: invalid site map ({errors} error{})",
        file.display(),
        if errors == 1 { "" } else { "s" }
    );
    for d in diags {
        s.push('\n');
        s.push_str(&d.to_string());
    }
    s
}

impl ConfigError {
    /// Whether retrying can help: only a read error that is not about permissions or a
    /// missing file (a network file system hiccup, say). A bad site map stays bad.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Self::Invalid { .. } => false,
        }
    }

    /// The diagnostics, if the file was read.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Io { .. } => &[],
            Self::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

/// Reads and validates the site map at `path`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse_str(&text, path, opts),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let text = String::from_utf8_lossy(valid);
            let line = text.matches('\n').count() as u32 + 1;
            let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
            let mut cx = Ctx::new(path);
            cx.error(LineCol { line, col }, "", "the file is not valid UTF-8");
            Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                diagnostics: cx.diags,
            })
        }
    }
}

/// Validates site-map text; `file` is used in messages only.
pub fn parse_str(text: &str, file: &Path, opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let mut cx = Ctx::new(file);
    let invalid = |cx: Ctx| ConfigError::Invalid {
        file: file.to_path_buf(),
        diagnostics: cx.diags,
    };
    let root = match raw::parse(text) {
        Ok(root) => root,
        Err(e) => {
            cx.error(e.pos, "", format!("JSON syntax error: {}", e.message));
            return Err(invalid(cx));
        }
    };
    let (format, draft) = match &root.value {
        Value::Array(_) => (SourceFormat::LegacyCax, legacy::read_cax(&mut cx, &root)),
        Value::Object(_) => (SourceFormat::Ferry, validate::read_ferry(&mut cx, &root)),
        other => {
            cx.error(
                root.pos,
                "",
                format!(
                    "expected a JSON object (Ferry's site map) or an array (legacy cax.json), found {}",
                    other.type_name()
                ),
            );
            return Err(invalid(cx));
        }
    };
    let Some(mut draft) = draft else {
        return Err(invalid(cx));
    };
    validate::finish(&mut cx, &mut draft);
    if let Some(host) = &opts.host {
        match SshEnvironment::load(opts.ssh_config.as_deref()) {
            Ok(ssh) => host::check_host(&mut cx, &draft, host, &ssh),
            Err(e) => cx.diags.push(Diagnostic {
                severity: Severity::Error,
                file: match &e {
                    SshConfigError::Read { path, .. } | SshConfigError::Parse { path, .. } => {
                        path.clone()
                    }
                },
                location: Location {
                    line_col: None,
                    path: Some("(ssh config)".into()),
                },
                message: e.to_string(),
                suggestion: None,
            }),
        }
    }
    cx.diags
        .sort_by_key(|d| (d.location.line_col.unwrap_or_default(), d.severity));
    if cx.has_errors() {
        return Err(invalid(cx));
    }
    Ok(Loaded {
        map: SiteMap {
            catalog: draft.catalog,
            sites: draft.sites.into_iter().map(|(s, _)| s).collect(),
        },
        warnings: cx.diags,
        format,
    })
}
