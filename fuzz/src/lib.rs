//! Properties every loaded site map and every rejection must have, shared by the site-map
//! and the legacy fuzz targets.

use std::path::{Component, Path};

use ferry::config::{parse_str, ConfigError, LoadOptions, Loaded, Severity};

/// The file name used in messages.
pub const FILE: &str = "fuzz.json";

/// Loads `text` and checks the properties of the outcome; panics (a crash for libFuzzer)
/// when one does not hold.
pub fn check(text: &str) -> Result<Loaded, ConfigError> {
    let outcome = parse_str(text, Path::new(FILE), &LoadOptions::default());
    match &outcome {
        Ok(loaded) => check_loaded(text, loaded),
        Err(e) => check_rejected(text, e),
    }
    outcome
}

fn lines(text: &str) -> u32 {
    u32::try_from(text.matches('\n').count() + 1).unwrap_or(u32::MAX)
}

/// A rejection names the file, has at least one error, and every diagnostic has a place
/// (a line:column inside the text, or a JSON path). Displaying it cannot fail.
fn check_rejected(text: &str, e: &ConfigError) {
    let ConfigError::Invalid { file, diagnostics } = e else {
        panic!("parse_str cannot fail to read a file: {e}");
    };
    assert_eq!(file, Path::new(FILE));
    assert!(
        diagnostics.iter().any(|d| d.severity == Severity::Error),
        "rejected without an error: {diagnostics:?}"
    );
    for d in diagnostics {
        let loc = &d.location;
        assert!(
            loc.line_col.is_some() || loc.path.as_deref().is_some_and(|p| !p.is_empty()),
            "diagnostic without a place: {d:?}"
        );
        if let Some(lc) = loc.line_col {
            assert!(
                lc.line >= 1 && lc.col >= 1 && lc.line <= lines(text),
                "position {lc} outside the text ({} lines): {d:?}",
                lines(text)
            );
        }
        assert!(!d.message.is_empty());
        let shown = d.to_string();
        assert!(shown.starts_with(FILE), "{shown}");
    }
    let _ = e.to_string();
}

/// What loading promises: unique site names; links and gateways that resolve; every path
/// absolute without `..` or control characters; no data directory shared or nested within
/// a site; the catalogue URI holds no password.
fn check_loaded(text: &str, loaded: &Loaded) {
    let map = &loaded.map;
    let mut names: Vec<&str> = map.site_names().collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "duplicate site names loaded");
    for link in map.links() {
        assert!(map.site(&link.from).is_some() && map.site(&link.to).is_some());
        assert_ne!(link.from, link.to, "a site linked to itself");
    }
    for site in &map.sites {
        let dirs: Vec<&Path> = site.data_dirs.values().map(|p| p.as_path()).collect();
        for d in dirs
            .iter()
            .copied()
            .chain(site.link_roots.iter().map(|p| p.as_path()))
        {
            check_path(d);
        }
        for (i, a) in dirs.iter().enumerate() {
            for b in &dirs[i + 1..] {
                assert!(
                    !norm(a).starts_with(&norm(b)) && !norm(b).starts_with(&norm(a)),
                    "site {}: {} and {} shared or nested",
                    site.name,
                    a.display(),
                    b.display()
                );
            }
        }
        if let Some(key) = &site.identity_file {
            check_home_path(key);
        }
    }
    if let Some(c) = &map.catalog {
        if let Some(parts) = ferry::catalog::uri::split(&c.uri) {
            assert!(parts.password.is_none(), "a password in the site map's URI");
        }
        assert!(!format!("{c:?}").is_empty());
    }
    for w in &loaded.warnings {
        assert_eq!(w.severity, Severity::Warning);
        if let Some(lc) = w.location.line_col {
            assert!(lc.line <= lines(text), "{w:?}");
        }
    }
}

fn norm(p: &Path) -> Vec<Component<'_>> {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

fn check_path(p: &Path) {
    assert!(p.is_absolute(), "relative path loaded: {p:?}");
    check_home_path(p);
}

fn check_home_path(p: &Path) {
    let s = p.to_string_lossy();
    assert!(
        !s.chars().any(char::is_control),
        "control character loaded: {p:?}"
    );
    assert!(
        !p.components().any(|c| c == Component::ParentDir),
        "`..` loaded: {p:?}"
    );
}
