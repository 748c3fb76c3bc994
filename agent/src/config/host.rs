//! Checks that only make sense on the machine of the site the agent runs as (`--host`):
//! its data directories exist and are writable, and the private keys it will use to reach
//! its SFTP peers exist and are private (refused as OpenSSH refuses them).
//!
//! Everything else in the site map is shared by all sites and checked everywhere; these
//! checks run only when a host is named, so the examples validate on any machine.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::diag::did_you_mean;
use super::model::{HostKeyPolicy, TapeKind, TransferMethod};
use super::read::Ctx;
use super::ssh::{SettingSource, SshEnvironment};
use super::validate::Draft;

/// Runs the host-local checks for site `host`.
pub(crate) fn check_host(cx: &mut Ctx, draft: &Draft, host: &str, ssh: &SshEnvironment) {
    let Some((site, spans)) = draft.sites.iter().find(|(s, _)| s.name == host) else {
        let names: Vec<&str> = draft.sites.iter().map(|(s, _)| s.name.as_str()).collect();
        cx.error_hint(
            draft.sites_span.pos,
            &draft.sites_span.path,
            format!(
                "--host {host:?} is not a site in this site map; known sites: {}",
                names.join(", ")
            ),
            did_you_mean(host, names.iter().copied()),
        );
        return;
    };
    for (kind, dir) in &site.data_dirs {
        let Some(span) = spans.data_dirs.get(kind) else {
            continue;
        };
        match std::fs::metadata(dir) {
            Err(e) => cx.error(
                span.pos,
                &span.path,
                format!(
                    "data directory {} does not exist on this host ({e})",
                    dir.display()
                ),
            ),
            Ok(m) if !m.is_dir() => cx.error(
                span.pos,
                &span.path,
                format!("data directory {} is not a directory", dir.display()),
            ),
            Ok(_) => {
                if let Err(e) = probe_writable(dir) {
                    cx.error(
                        span.pos,
                        &span.path,
                        format!(
                            "data directory {} is not writable by this user ({e})",
                            dir.display()
                        ),
                    );
                }
            }
        }
    }
    // The SFTP peers this agent will log into: its links and its tape gateways.
    let mut peers: Vec<&str> = site
        .push_to
        .iter()
        .chain(&site.pull_from)
        .map(String::as_str)
        .collect();
    for t in &site.tape {
        if let TapeKind::Command {
            gateway: Some(g), ..
        } = &t.kind
        {
            if g != &site.name {
                peers.push(g);
            }
        }
    }
    peers.dedup();
    let mut checked = Vec::new();
    for peer in peers {
        let Some((ps, pspans)) = draft.sites.iter().find(|(s, _)| s.name == peer) else {
            continue;
        };
        if ps.method != TransferMethod::Sftp {
            continue;
        }
        let settings = ssh.resolve(ps);
        let (pos, path) = match (&settings.identity_source, &pspans.identity_file) {
            (SettingSource::SiteMap, Some(span)) => (span.pos, span.path.clone()),
            _ => (pspans.site.pos, pspans.site.path.clone()),
        };
        let origin = match settings.identity_source {
            SettingSource::SiteMap => "",
            SettingSource::SshConfig => " (IdentityFile from the SSH config)",
            SettingSource::Default => " (OpenSSH default key)",
        };
        let mut found = false;
        for key in &settings.identity_files {
            if checked.contains(key) {
                found = true;
                continue;
            }
            match std::fs::metadata(key) {
                Err(e) => {
                    if settings.identity_source != SettingSource::Default {
                        cx.error(
                            pos,
                            &path,
                            format!(
                                "identity file {}{origin} for site {peer:?} cannot be read: {e}",
                                key.display()
                            ),
                        );
                    }
                }
                Ok(m) => {
                    found = true;
                    let mode = m.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        cx.error_hint(
                            pos,
                            &path,
                            format!(
                                "UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for '{}'{origin} \
                                 are too open; it must not be accessible by group or others \
                                 (OpenSSH refuses such a key)",
                                key.display()
                            ),
                            Some(format!("chmod 600 {}", key.display())),
                        );
                    }
                    checked.push(key.clone());
                }
            }
        }
        if settings.host_key_policy == HostKeyPolicy::Strict
            && !settings.known_hosts.iter().any(|k| k.is_file())
        {
            cx.warn(
                pspans.site.pos,
                &pspans.site.path,
                format!(
                    "no known_hosts file ({}) and StrictHostKeyChecking yes: connecting to {peer:?} \
                     will be refused until its host key is recorded (ssh-keyscan, or \"accept-new\")",
                    settings.known_hosts[0].display()
                ),
            );
        }
        if !found && settings.identity_source == SettingSource::Default {
            cx.warn(
                pos,
                &path,
                format!(
                    "no identity file for site {peer:?}: none of {} exists; an ssh-agent must hold the key",
                    settings
                        .identity_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
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
