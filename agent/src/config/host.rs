//! Checks that only make sense on the machine of the site the agent runs as (`--host`):
//! its data directories (and `directory` tape roots) exist and are writable, its `tar`
//! tape devices exist, and the private keys it will use to reach its SFTP peers exist and
//! are private (refused as OpenSSH refuses them).
//!
//! Everything else in the site map is shared by all sites and checked everywhere; these
//! checks run only when a host is named, so the examples validate on any machine.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::diag::did_you_mean;
use super::model::{HostKeyPolicy, Site, TapeKind, TransferMethod};
use super::read::Ctx;
use super::ssh::{SettingSource, SshEnvironment};
use super::validate::{Draft, SiteSpans};
use super::HostSource;

/// Runs the host-local checks for site `host`.
pub(crate) fn check_host(
    cx: &mut Ctx,
    draft: &Draft,
    host: &str,
    source: HostSource,
    ssh: &SshEnvironment,
) {
    let Some((site, spans)) = draft.sites.iter().find(|(s, _)| s.name == host) else {
        let names: Vec<&str> = draft.sites.iter().map(|(s, _)| s.name.as_str()).collect();
        cx.error_hint(
            draft.sites_span.pos,
            &draft.sites_span.path,
            not_a_site(host, source, &names.join(", ")),
            did_you_mean(host, names.iter().copied()),
        );
        return;
    };
    check_data_dirs(cx, site, spans);
    check_local_tape(cx, site, spans);
    // The SFTP peers this agent logs into: its links and its tape gateways, each once.
    let gateways = site.tape.iter().filter_map(|t| match &t.kind {
        TapeKind::Command {
            gateway: Some(g), ..
        } if g != &site.name => Some(g),
        _ => None,
    });
    let mut peers: Vec<&String> = Vec::new();
    for p in site.push_to.iter().chain(&site.pull_from).chain(gateways) {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    let mut checked_keys = Vec::new();
    for peer in peers {
        if let Some((ps, pspans)) = draft.sites.iter().find(|(s, _)| &s.name == peer) {
            if ps.method == TransferMethod::Sftp {
                check_peer_ssh(cx, ps, pspans, ssh, &mut checked_keys);
            }
        }
    }
}

/// What to say when the site asked for is not in the map, by where its name came from.
fn not_a_site(host: &str, source: HostSource, known: &str) -> String {
    match source {
        HostSource::Flag => {
            format!("--host {host:?} is not a site in this site map; known sites: {known}")
        }
        HostSource::Environment => format!(
            "FERRY_SITE={host:?} is not a site in this site map; known sites: {known}; set \
             FERRY_SITE to one of them or pass --host SITE"
        ),
        HostSource::Hostname => format!(
            "no --host given (nor FERRY_SITE), so this machine's host name {host:?} was tried, \
             and it is not a site in this site map; known sites: {known}; pass --host SITE \
             (under systemd, the unit's instance name: ferry@SITE)"
        ),
    }
}

/// Each data directory exists, is a directory, and this user can create files in it.
fn check_data_dirs(cx: &mut Ctx, site: &Site, spans: &SiteSpans) {
    for (kind, dir) in &site.data_dirs {
        let Some(span) = spans.data_dirs.get(kind) else {
            continue;
        };
        // A missing directory the site map allows the agent to create is not a problem.
        if site.create_data_dirs && !dir.exists() {
            continue;
        }
        if let Some(problem) = writable_dir_problem(dir) {
            let hint = if dir.exists() {
                String::new()
            } else {
                format!(
                    " (not mounted? it is not created on the fly: mount or create it, or set \
                     \"create_data_dirs\": true for {})",
                    site.name
                )
            };
            cx.error(
                span.pos,
                &span.path,
                format!("data directory {} {problem}{hint}", dir.display()),
            );
        }
    }
}

/// Tape backends that live on this machine: a `directory` backend's root is a writable
/// directory; a `tar` backend's devices exist. (`command` backends are checked when they
/// run: their programs may exist only on a gateway.)
fn check_local_tape(cx: &mut Ctx, site: &Site, spans: &SiteSpans) {
    for (tape, tspans) in site.tape.iter().zip(&spans.tape) {
        let at = &tspans.item;
        match &tape.kind {
            TapeKind::Directory { path } => {
                if let Some(problem) = writable_dir_problem(path) {
                    cx.error(
                        at.pos,
                        &at.path,
                        format!(
                            "tape backend {:?}: directory {} {problem}",
                            tape.name,
                            path.display()
                        ),
                    );
                }
            }
            TapeKind::Tar { devices, .. } => {
                for dev in devices.iter().filter(|d| !d.exists()) {
                    cx.error(
                        at.pos,
                        &at.path,
                        format!(
                            "tape backend {:?}: device {} does not exist on this host",
                            tape.name,
                            dev.display()
                        ),
                    );
                }
            }
            TapeKind::Command { .. } => {}
        }
    }
}

/// Why `dir` cannot take new files, if it cannot.
fn writable_dir_problem(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Err(e) => Some(format!("does not exist on this host ({e})")),
        Ok(m) if !m.is_dir() => Some("is not a directory".to_string()),
        Ok(_) => probe_writable(dir)
            .err()
            .map(|e| format!("is not writable by this user ({e})")),
    }
}

/// The keys this agent would offer to `peer` exist and are private; its host key can be
/// checked. Keys already checked (for another peer) are not reported twice.
fn check_peer_ssh(
    cx: &mut Ctx,
    peer: &Site,
    spans: &SiteSpans,
    ssh: &SshEnvironment,
    checked_keys: &mut Vec<PathBuf>,
) {
    let settings = ssh.resolve(peer);
    let name = &peer.name;
    let alias = peer.hostname.as_deref().unwrap_or(name);
    for k in ssh.unhonoured(alias) {
        cx.warn(
            spans.site.pos,
            &spans.site.path,
            format!(
                "{}:{}: `{}` applies to `ssh {alias}` (site {name:?}) and is not honoured by Ferry",
                k.file.display(),
                k.line,
                k.keyword
            ),
        );
    }
    let (pos, path) = match (&settings.identity_source, &spans.identity_file) {
        (SettingSource::SiteMap, Some(span)) => (span.pos, span.path.as_str()),
        _ => (spans.site.pos, spans.site.path.as_str()),
    };
    let origin = match settings.identity_source {
        SettingSource::SiteMap => "",
        SettingSource::SshConfig => " (IdentityFile from the SSH config)",
        SettingSource::Default => " (OpenSSH default key)",
    };
    let mut found = false;
    for key in &settings.identity_files {
        if checked_keys.contains(key) {
            found = true;
            continue;
        }
        match std::fs::metadata(key) {
            // OpenSSH skips missing default keys silently; a named key must exist.
            Err(_) if settings.identity_source == SettingSource::Default => {}
            Err(e) => cx.error(
                pos,
                path,
                format!(
                    "identity file {}{origin} for site {name:?} cannot be read: {e}",
                    key.display()
                ),
            ),
            Ok(m) => {
                found = true;
                checked_keys.push(key.clone());
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    cx.error_hint(
                        pos,
                        path,
                        format!(
                            "UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for '{}'{origin} \
                             are too open; it must not be accessible by group or others \
                             (OpenSSH refuses such a key)",
                            key.display()
                        ),
                        Some(format!("chmod 600 {}", key.display())),
                    );
                }
            }
        }
    }
    if !found && settings.identity_source == SettingSource::Default {
        cx.warn(
            pos,
            path,
            format!(
                "no identity file for site {name:?}: none of {} exists; an ssh-agent must hold the key",
                list(&settings.identity_files)
            ),
        );
    }
    if settings.host_key_policy == HostKeyPolicy::Strict
        && !settings.known_hosts.iter().any(|k| k.is_file())
    {
        cx.warn(
            spans.site.pos,
            &spans.site.path,
            format!(
                "no known_hosts file ({}) and StrictHostKeyChecking yes: connecting to {name:?} \
                 will be refused until its host key is recorded (ssh-keyscan, or \"accept-new\")",
                list(&settings.known_hosts)
            ),
        );
    }
}

/// `a, b, c` for messages.
fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Creates and removes a file in `dir`: the only reliable test that this user can write
/// there (permission bits miss ACLs, read-only mounts and quotas).
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".ferry-write-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}
