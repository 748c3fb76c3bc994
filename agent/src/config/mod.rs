//! The site map: one JSON file shared by every site's agent (DESIGN §4).
//!
//! Loading reads the file, finds its format, validates **everything** before anything
//! runs, and reports every problem at once, each naming the file and the place
//! (line:column and JSON path):
//!
//! ```text
//! raw.rs       text → JSON tree that keeps positions and duplicate keys
//! read.rs      typed reading of that tree, collecting diagnostics (shared by both formats)
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
mod read;
mod ssh;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diag::{did_you_mean, Diagnostic, LineCol, Location, Severity};
pub use model::{
    parse_tape_template, CatalogSettings, CommandOutput, CompletionRule, DestinationVerify,
    HostKeyPolicy, LayoutError, LayoutField, LayoutTemplate, Limits, Link, PasswordSource,
    PurgePolicy, RunPathFields, Site, SiteMap, TapeBackendConfig, TapeKind, TarChanger,
    TemplatePiece, TransferMethod, CHANGER_MOVE_PLACEHOLDERS, CHANGER_STATUS_PLACEHOLDERS,
    TAPE_PLACEHOLDERS,
};
pub use ssh::{SettingSource, SshConfigError, SshEnvironment, SshRoute, SshSettings};
pub use validate::FORMAT_VERSION;

use raw::Value;
use read::Ctx;

/// What to check beyond the shared part of the site map.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Run the host-local checks (data directories, private keys) for this site.
    pub host: Option<String>,
    /// Where `host` came from, so that a name that is not a site is explained.
    pub host_source: HostSource,
    /// The SSH config to resolve peers' settings with [default `~/.ssh/config`].
    pub ssh_config: Option<PathBuf>,
}

/// Where the name of the site an agent runs as came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostSource {
    /// `--host SITE` (or the unit's instance name, which the unit passes as `--host`).
    #[default]
    Flag,
    /// `$FERRY_SITE`.
    Environment,
    /// Neither was given: the machine's short host name, as cax did.
    Hostname,
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
    /// Optional parts not configured (a tape backend that cannot be recalled from); for
    /// `ferry config validate`, not for the agent's log.
    pub notes: Vec<Diagnostic>,
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
            Ok(ssh) => host::check_host(&mut cx, &draft, host, opts.host_source, &ssh),
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
    let (notes, warnings) = cx
        .diags
        .into_iter()
        .partition(|d| d.severity == Severity::Note);
    Ok(Loaded {
        map: SiteMap {
            catalog: draft.catalog,
            sites: draft.sites.into_iter().map(|(s, _)| s).collect(),
        },
        warnings,
        notes,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
    }

    fn load_ok(name: &str) -> Loaded {
        load(&example(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name} does not load:\n{e}"))
    }

    #[test]
    fn demo_map_has_documented_defaults() {
        let l = load_ok("site-configs/demo-local.json");
        assert_eq!(l.format, SourceFormat::Ferry);
        let c = l.map.catalog.as_ref().unwrap();
        assert_eq!(c.uri, "sqlite:/tmp/ferry-demo/catalog.sqlite");
        assert_eq!(
            (c.database.as_str(), c.collection.as_str()),
            ("run", "runs")
        );
        assert_eq!(c.password, PasswordSource::None);
        let daq = l.map.site("daq").unwrap();
        assert!(daq.origin);
        assert_eq!(daq.method, TransferMethod::Local);
        assert_eq!(
            daq.completion,
            CompletionRule::Marker("RUN_COMPLETE".into())
        );
        assert_eq!(daq.purge.retention, Duration::from_secs(5));
        let mirror = l.map.site("mirror").unwrap();
        assert_eq!(mirror.purge, PurgePolicy::default());
        assert_eq!(mirror.limits, Limits::default());
        assert_eq!(
            mirror.completion,
            CompletionRule::QuietPeriod(Duration::from_secs(600))
        );
        assert_eq!(mirror.tape[0].kind.name(), "directory");
        assert_eq!(l.map.links().len(), 1);
        assert_eq!(
            daq.data_dir("raw"),
            Some(Path::new("/tmp/ferry-demo/daq/raw"))
        );
        assert_eq!(daq.data_dir("processed"), None);
        assert!(l.map.site("nowhere").is_none());
    }

    #[test]
    fn gluex_layout_and_gateway() {
        let l = load_ok("site-configs/gluex-jlab.json");
        let ch = l.map.site("counting-house").unwrap();
        assert_eq!(
            ch.layout.render(71234, "r", Some("2019-11"), "hd").unwrap(),
            "RunPeriod-2019-11/Run071234"
        );
        assert_eq!(ch.limits.bandwidth_per_link, Some(400_000_000));
        let (site, tape) = l.map.tape_backends().next().unwrap();
        assert_eq!(site.name, "jlab-cache");
        let TapeKind::Command {
            gateway,
            ok_exit_codes,
            ..
        } = &tape.kind
        else {
            panic!("{tape:?}")
        };
        assert_eq!(gateway.as_deref(), Some("ifarm"));
        assert_eq!(ok_exit_codes, &[0]);
        assert_eq!(l.map.site("ifarm").unwrap().role(), "gateway");
        match &l.map.catalog.as_ref().unwrap().password {
            PasswordSource::File(f) => assert!(f.starts_with("~/")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn legacy_cax_maps_onto_the_model() {
        let l = load_ok("tests/fixtures/legacy-cax/cax.json");
        assert_eq!(l.format, SourceFormat::LegacyCax);
        assert!(l.map.catalog.is_none());
        let lena = l.map.site("lena").unwrap();
        assert_eq!(lena.method, TransferMethod::Sftp);
        assert_eq!(lena.username.as_deref(), Some("ctunnell"));
        assert_eq!(lena.data_dirs.len(), 2);
        assert!(
            !lena.purge.enabled,
            "cax's purge must not switch purging on"
        );
        let midway = l.map.site("midway-login1").unwrap();
        assert_eq!(midway.pull_from, ["login", "xe1t-datamanager"]);
        assert_eq!(
            midway.data_dirs.keys().collect::<Vec<_>>(),
            ["processed", "raw"],
            "data_type keeps only raw and processed, not minitrees"
        );
        assert_eq!(l.map.site("login").unwrap().limits.files_in_flight, 2);
        let dm = l.map.site("xe1t-datamanager").unwrap();
        assert_eq!(dm.data_dirs.len(), 1, "null dir_processed is no directory");
        assert!(!l.map.site("tsm-server").unwrap().is_transfer_peer());
        assert!(!l.map.site("lfc").unwrap().is_transfer_peer());
        assert!(l
            .warnings
            .iter()
            .any(|w| w.message.contains("\"gfal-copy\"") && w.message.contains("lfc")));
    }

    #[test]
    fn error_display_lists_every_diagnostic_one_per_line() {
        let text =
            "{\"version\": 1, \"sites\": [{\"name\": \"a\", \"port\": 0, \"pull_from\": [\"b\"]}]}";
        let e = parse_str(text, Path::new("m.json"), &LoadOptions::default()).unwrap_err();
        assert!(!e.is_retryable());
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "m.json: invalid site map (2 errors)");
        assert_eq!(lines.len(), 3, "{shown}");
        assert!(
            lines[1].starts_with("m.json:1:48: error: sites[0].port:"),
            "{shown}"
        );
        assert!(
            lines[2].starts_with("m.json:1:65: error: sites[0].pull_from[0]:"),
            "{shown}"
        );
        assert_eq!(e.diagnostics().len(), 2);
    }

    #[test]
    fn host_key_policy_no_warns() {
        let text = r#"{"version": 1, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/r"},
            "strict_host_key_checking": "no"}]}"#;
        let l = parse_str(text, Path::new("m.json"), &LoadOptions::default()).unwrap();
        assert_eq!(l.map.sites[0].host_key_policy, Some(HostKeyPolicy::No));
        assert!(
            l.warnings[0].message.contains("man-in-the-middle"),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn link_named_by_both_ends_or_twice_warns() {
        let text = r#"{"version": 1, "sites": [
            {"name": "a", "origin": true, "data_dirs": {"raw": "/r"}, "push_to": ["b", "b"]},
            {"name": "b", "data_dirs": {"raw": "/r"}, "pull_from": ["a"]}]}"#;
        let l = parse_str(text, Path::new("m.json"), &LoadOptions::default()).unwrap();
        let shown: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "m.json:2:88: warning: sites[0].push_to[1]: site \"b\" is listed twice"
            ),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with(
                "m.json:3:69: warning: sites[1].pull_from[0]: \"a\" already pushes to \"b\""
            ),
            "{shown:?}"
        );
        assert_eq!(l.map.site("a").unwrap().push_to, ["b"]);
    }

    #[test]
    fn non_utf8_file_reported_with_position() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.json");
        std::fs::write(&f, b"{\n  \"version\": \xff}").unwrap();
        let e = load(&f, &LoadOptions::default()).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.to_string()
                .contains("m.json:2:14: error: the file is not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn ssh_config_option_is_used_for_host_checks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ferry-cfg-ssh-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("raw")).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let ssh_config = dir.join("ssh_config");
        std::fs::write(
            &ssh_config,
            format!("Host m\n  IdentityFile {}\n", key.display()),
        )
        .unwrap();
        let text = format!(
            r#"{{"version": 1, "sites": [
                {{"name": "a", "origin": true, "data_dirs": {{"raw": "{}"}}, "push_to": ["m"]}},
                {{"name": "m", "strict_host_key_checking": "accept-new"}}]}}"#,
            dir.join("raw").display()
        );
        let opts = LoadOptions {
            host: Some("a".into()),
            ssh_config: Some(ssh_config),
            ..LoadOptions::default()
        };
        let e = parse_str(&text, Path::new("m.json"), &opts).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let shown = e.to_string();
        assert!(
            shown.contains(
                "m.json:3:17: error: sites[1]: UNPROTECTED PRIVATE KEY FILE: permissions 0604"
            ),
            "{shown}"
        );
        assert_eq!(e.diagnostics().len(), 1, "{shown}");
    }

    fn diagnostics_of(text: &str) -> Vec<String> {
        match parse_str(text, Path::new("m.json"), &LoadOptions::default()) {
            Ok(l) => l.warnings.iter().map(|d| d.to_string()).collect(),
            Err(e) => e.diagnostics().iter().map(|d| d.to_string()).collect(),
        }
    }

    /// Regression: a bad "origin" value read as false and also warned "no site has origin".
    #[test]
    fn bad_origin_value_is_reported_once() {
        let d = diagnostics_of(
            r#"{"version": 1, "sites": [{"name": "a", "origin": "yes", "data_dirs": {"raw": "/r"}}]}"#,
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("sites[0].origin: expected true or false"),
            "{d:?}"
        );
    }

    /// Regression: a relative data directory on an origin site was also reported as "an
    /// origin site needs at least one data directory".
    #[test]
    fn relative_data_dir_is_reported_once() {
        let d = diagnostics_of(
            r#"{"version": 1, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "r"}}]}"#,
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("sites[0].data_dirs.raw: data directory is relative"),
            "{d:?}"
        );
    }

    /// Regression: a one-letter unknown site got "did you mean" the other one-letter site.
    #[test]
    fn one_letter_site_names_get_no_suggestion() {
        let d = diagnostics_of(
            r#"{"version": 1, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/r"}, "push_to": ["b"]}]}"#,
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].ends_with("unknown site \"b\""), "{d:?}");
    }

    /// Regression: `..`, NUL and control characters in paths were accepted without `--host`.
    #[test]
    fn dot_dot_nul_and_control_characters_in_paths_are_errors_without_host() {
        for (bad, why) in [
            ("/data/../etc", "has a `..` component"),
            ("/data/..", "has a `..` component"),
            ("/data\\u0000raw", "contains a NUL byte"),
            ("/data\\nraw", "contains a control character"),
            ("/data\\u001b[2Jraw", "contains a control character"),
            ("data/raw", "is relative"),
        ] {
            for key in [
                format!(r#""data_dirs": {{"raw": "{bad}"}}"#),
                format!(r#""data_dirs": {{"raw": "/r"}}, "link_roots": ["{bad}"]"#),
                format!(r#""data_dirs": {{"raw": "/r"}}, "identity_file": "{bad}""#),
                format!(
                    r#""data_dirs": {{"raw": "/r"}}, "tape": [{{"name": "t", "kind": "directory", "path": "{bad}"}}]"#
                ),
            ] {
                let text = format!(
                    r#"{{"version": 1, "sites": [{{"name": "a", "origin": true, {key}}}]}}"#
                );
                let d = diagnostics_of(&text);
                assert_eq!(d.len(), 1, "{text}: {d:?}");
                assert!(
                    d[0].contains(why) && d[0].contains("error: sites[0]."),
                    "{d:?}"
                );
                assert!(d[0].contains("the value given is not shown"), "{d:?}");
            }
        }
        // `/data/..b` and `/data/./raw` are ordinary names.
        let d = diagnostics_of(
            r#"{"version": 1, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/data/..b", "p": "/data/./raw"}}]}"#,
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_secret_pasted_into_password_env_is_not_echoed() {
        for value in ["hunter2-Secret", "9LIVES", "a b", "p/w?x"] {
            let text = format!(
                r#"{{"version": 1, "catalog": {{"uri": "mongodb://ferry@db/", "password_env": "{value}"}},
                "sites": [{{"name": "a", "origin": true, "data_dirs": {{"raw": "/r"}}}}]}}"#
            );
            let d = diagnostics_of(&text);
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(d[0].contains(
                "catalog.password_env: password_env must name an environment variable ([A-Za-z_][A-Za-z0-9_]*); the value given is not shown"
            ), "{d:?}");
            assert!(!d[0].contains(value), "{d:?}");
        }
        let text = r#"{"version": 1, "catalog": {"uri": "mongodb://ferry@db/", "password_file": "hunter2-Secret"},
            "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/r"}}]}"#;
        let d = diagnostics_of(text);
        assert!(
            d[0].contains("catalog.password_file: password file is relative"),
            "{d:?}"
        );
        assert!(!d[0].contains("hunter2"), "{d:?}");
    }

    #[test]
    fn a_password_with_a_slash_in_the_site_maps_uri_is_refused_unprinted() {
        for uri in [
            "mongodb://ferry:pa/ss-word@db/run",
            "mongodb://ferry:pa?ss-word@db/run",
            "mongodb://ferry:pa#ss-word@db/run",
            "mongodb://ferry:x@h/y?ss-word@db/run",
        ] {
            let text = format!(
                r#"{{"version": 1, "catalog": {{"uri": "{uri}"}},
                "sites": [{{"name": "a", "origin": true, "data_dirs": {{"raw": "/r"}}}}]}}"#
            );
            let d = diagnostics_of(&text);
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(
                d[0].contains("catalog.uri: the catalogue URI holds a password"),
                "{d:?}"
            );
            assert!(!d[0].contains("ss-word"), "{d:?}");
        }
        let d = diagnostics_of(
            r#"{"version": 1, "catalog": {"uri": "hunter2-Secret"}, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/r"}}]}"#,
        );
        assert!(
            d[0].contains("not a catalogue URI") && !d[0].contains("hunter2"),
            "{d:?}"
        );
    }

    fn two_sites(a: &str, b: &str) -> String {
        format!(
            r#"{{"version": 1, "sites": [
            {{"name": "daq", "origin": true, {a}}},
            {{"name": "mirror", {b}}}]}}"#
        )
    }

    /// Regression: two sites on one machine sharing a data directory passed validation, and
    /// the push then copied a run onto itself.
    #[test]
    fn shared_or_nested_data_dirs_on_one_machine_are_errors() {
        let same_host = r#""hostname": "box.example""#;
        let cases = [
            // Same hostname (case and trailing dot ignored), same path.
            two_sites(
                &format!(
                    r#"{same_host}, "data_dirs": {{"raw": "/data/raw"}}, "push_to": ["mirror"]"#
                ),
                r#""hostname": "BOX.example.", "data_dirs": {"raw": "/data/raw/"}"#,
            ),
            // Nested, linked over method local (no hostnames).
            two_sites(
                r#""method": "local", "data_dirs": {"raw": "/data"}, "push_to": ["mirror"]"#,
                r#""method": "local", "data_dirs": {"processed": "/data/./mirror"}"#,
            ),
            // Mirror's hostname is daq's name.
            two_sites(
                r#""data_dirs": {"raw": "/data/mirror/raw"}"#,
                r#""hostname": "daq", "data_dirs": {"raw": "/data/mirror"}"#,
            ),
        ];
        for text in &cases {
            let d = diagnostics_of(text);
            assert_eq!(d.len(), 1, "{text}: {d:?}");
            let e = &d[0];
            assert!(e.contains("error: sites[1].data_dirs."), "{e}");
            assert!(
                e.contains("of site \"mirror\"") && e.contains("of site \"daq\""),
                "{e}"
            );
            assert!(e.contains("sites[0].data_dirs.raw"), "{e}");
        }
        // One site, two data types nested.
        let d = diagnostics_of(
            r#"{"version": 1, "sites": [{"name": "a", "origin": true, "data_dirs": {"raw": "/d", "processed": "/d/p"}}]}"#,
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("of the same site") && d[0].contains("\"processed\""),
            "{d:?}"
        );
        // Not nested: a sibling with a common prefix; or another machine.
        for text in [
            two_sites(
                r#""method": "local", "data_dirs": {"raw": "/data/a"}, "push_to": ["mirror"]"#,
                r#""method": "local", "data_dirs": {"raw": "/data/ab"}"#,
            ),
            two_sites(
                r#""hostname": "a.example", "data_dirs": {"raw": "/data/raw"}, "push_to": ["mirror"]"#,
                r#""hostname": "b.example", "data_dirs": {"raw": "/data/raw"}"#,
            ),
        ] {
            let d = diagnostics_of(&text);
            assert!(d.iter().all(|x| !x.contains("error")), "{text}: {d:?}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = load(
            Path::new("/nonexistent/site-map.json"),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(!e.is_retryable());
        assert!(e
            .to_string()
            .starts_with("/nonexistent/site-map.json: cannot read"));
    }
}
