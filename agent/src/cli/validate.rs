//! `ferry config validate`: load the site map with every check, print a summary (or
//! `--json`), exit 0 when valid and 2 with every problem listed on stderr when not.
//!
//! Host-local checks run only when `--host SITE` is given explicitly: without it only the
//! shared part of the site map is checked, so a site map validates on any machine.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::args::ValidateArgs;
use super::exit::{coded, Exit};
use super::Cli;
use crate::config::{
    self, CompletionRule, ConfigError, LoadOptions, Loaded, PasswordSource, Site, TapeKind,
    TransferMethod,
};

pub(super) fn run(cli: &Cli, args: &ValidateArgs) -> Result<Exit> {
    let Some(path) = &cli.config else {
        return Err(coded(
            Exit::Usage,
            "no site map: pass --config FILE or set FERRY_CONFIG",
        ));
    };
    let opts = LoadOptions {
        host: cli.host.clone(),
        ssh_config: None,
        ..LoadOptions::default()
    };
    match config::load(path, &opts) {
        Ok(loaded) => {
            if args.json {
                let v = summary_json(&loaded, cli.host.as_deref());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", summary_text(&loaded, path, cli.host.as_deref()));
            }
            Ok(Exit::Ok)
        }
        Err(ConfigError::Invalid { file, diagnostics }) => {
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            if args.json {
                let v = json!({
                    "file": file.display().to_string(),
                    "valid": false,
                    "diagnostics": diagnostics.iter().map(diag_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "ferry: {}: invalid site map: {errors} error{}",
                file.display(),
                if errors == 1 { "" } else { "s" }
            );
            Ok(Exit::Usage)
        }
        Err(e @ ConfigError::Io { .. }) => Err(coded(Exit::Usage, e.to_string())),
    }
}

fn address(s: &Site) -> String {
    match &s.method {
        TransferMethod::Local => "(this machine)".into(),
        _ => {
            let host = s.hostname.as_deref().unwrap_or(&s.name);
            match s.port {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            }
        }
    }
}

fn password_source(p: &PasswordSource) -> String {
    match p {
        PasswordSource::None => "none".into(),
        PasswordSource::Env(v) => format!("env ${v}"),
        PasswordSource::File(f) => format!("file {}", f.display()),
    }
}

fn tape_detail(kind: &TapeKind) -> String {
    match kind {
        TapeKind::Directory { path } => format!("directory {}", path.display()),
        TapeKind::Command { gateway, put, .. } => format!(
            "command `{}` {}",
            put.first().map(String::as_str).unwrap_or(""),
            gateway
                .as_ref()
                .map(|g| format!("via gateway {g}"))
                .unwrap_or_else(|| "run locally".into())
        ),
        TapeKind::Tar {
            devices,
            copies,
            changer,
            ..
        } => {
            let robot = changer
                .as_ref()
                .map(|c| format!(", changer {} ({} slots)", c.device.display(), c.slots.len()))
                .unwrap_or_default();
            format!("tar on {} device(s), {copies} copies{robot}", devices.len())
        }
    }
}

fn summary_text(loaded: &Loaded, path: &std::path::Path, host: Option<&str>) -> String {
    let map = &loaded.map;
    let mut s = String::new();
    let _ = writeln!(s, "site map: {} ({})", path.display(), loaded.format);
    match &map.catalog {
        Some(c) => {
            let _ = writeln!(
                s,
                "catalogue: {} (database {}, collection {}, password: {})",
                crate::catalog::uri::redact(&c.uri),
                c.database,
                c.collection,
                password_source(&c.password)
            );
        }
        None if loaded.format == crate::config::SourceFormat::LegacyCax => {
            let _ = writeln!(
                s,
                "catalogue: not set (use --catalog or FERRY_CATALOG; as cax: database {}, \
                 collection {}, password from FERRY_CATALOG_PASSWORD(_FILE), else {})",
                crate::catalog::LEGACY_DATABASE,
                crate::catalog::LEGACY_COLLECTION,
                crate::catalog::LEGACY_PASSWORD_ENV
            );
        }
        None => {
            let _ = writeln!(
                s,
                "catalogue: not set (use --catalog, FERRY_CATALOG or the embedded default)"
            );
        }
    }
    let width = map.sites.iter().map(|x| x.name.len()).max().unwrap_or(4);
    let _ = writeln!(s, "sites ({}):", map.sites.len());
    for site in &map.sites {
        let dirs: Vec<String> = site
            .data_dirs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.display()))
            .collect();
        let _ = writeln!(
            s,
            "  {:width$}  {:<32}  {:<20}  {:<11}  {}",
            site.name,
            address(site),
            site.method.to_string(),
            site.role(),
            dirs.join(" ")
        );
    }
    let links = map.links();
    let _ = writeln!(s, "links ({}):", links.len());
    for l in &links {
        let how = if l.initiator == l.from {
            "push"
        } else {
            "pull"
        };
        let _ = writeln!(
            s,
            "  {} -> {}  ({how}, run by {})",
            l.from, l.to, l.initiator
        );
    }
    let tapes: Vec<_> = map.tape_backends().collect();
    let _ = writeln!(s, "tape backends ({}):", tapes.len());
    for (site, t) in tapes {
        let _ = writeln!(s, "  {} at {}: {}", t.name, site.name, tape_detail(&t.kind));
    }
    let _ = writeln!(s, "warnings ({}):", loaded.warnings.len());
    for w in &loaded.warnings {
        let _ = writeln!(s, "  {w}");
    }
    if !loaded.notes.is_empty() {
        let _ = writeln!(s, "notes ({}):", loaded.notes.len());
        for n in &loaded.notes {
            let _ = writeln!(s, "  {n}");
        }
    }
    match host {
        Some(h) => {
            let _ = writeln!(s, "valid, including the host-local checks for site {h}");
        }
        None => {
            let _ = writeln!(
                s,
                "valid (shared part; pass --host SITE to check a site's machine too)"
            );
        }
    }
    s
}

fn diag_json(d: &config::Diagnostic) -> Value {
    json!({
        "severity": d.severity.to_string(),
        "file": d.file.display().to_string(),
        "line": d.location.line_col.map(|l| l.line),
        "column": d.location.line_col.map(|l| l.col),
        "path": d.location.path,
        "message": d.message,
        "suggestion": d.suggestion,
        "text": d.to_string(),
    })
}

fn summary_json(loaded: &Loaded, host: Option<&str>) -> Value {
    let map = &loaded.map;
    json!({
        "valid": true,
        "format": match loaded.format {
            config::SourceFormat::Ferry => "ferry",
            config::SourceFormat::LegacyCax => "legacy-cax",
        },
        "host_checked": host,
        "catalog": map.catalog.as_ref().map(|c| json!({
            "uri": crate::catalog::uri::redact(&c.uri),
            "database": c.database,
            "collection": c.collection,
            "password": password_source(&c.password),
        })),
        "sites": map.sites.iter().map(|site| json!({
            "name": site.name,
            "hostname": site.hostname,
            "port": site.port,
            "method": site.method.to_string(),
            "role": site.role(),
            "data_dirs": site.data_dirs.iter().map(|(k, v)| (k.clone(), json!(v.display().to_string()))).collect::<serde_json::Map<_, _>>(),
            "layout": site.layout.as_str(),
            "completion": match &site.completion {
                CompletionRule::Marker(m) => json!({"marker": m}),
                CompletionRule::QuietPeriod(d) => json!({"quiet_period": humantime::format_duration(*d).to_string()}),
            },
            "purge_enabled": site.purge.enabled,
        })).collect::<Vec<_>>(),
        "links": map.links().iter().map(|l| json!({
            "from": l.from, "to": l.to, "initiator": l.initiator,
        })).collect::<Vec<_>>(),
        "tape_backends": map.tape_backends().map(|(site, t)| json!({
            "name": t.name, "site": site.name, "kind": t.kind.name(),
        })).collect::<Vec<_>>(),
        "warnings": loaded.warnings.iter().map(diag_json).collect::<Vec<_>>(),
        "notes": loaded.notes.iter().map(diag_json).collect::<Vec<_>>(),
    })
}
