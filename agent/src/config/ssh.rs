//! Effective SSH settings for a site, resolved as `ssh` itself would.
//!
//! Precedence, per setting: the site map, then the user's `~/.ssh/config` (read with the
//! `ssh2-config` crate: `Host` blocks matched against the site's host name, first value
//! wins), then OpenSSH's defaults (port 22, the local user, keys `~/.ssh/id_ed25519`,
//! `id_ecdsa`, `id_rsa`, known hosts `~/.ssh/known_hosts` and `known_hosts2`,
//! `StrictHostKeyChecking yes`). [`SshEnvironment`] holds the parsed config, the home
//! directory and the local user; [`SshEnvironment::resolve`] gives a [`SshSettings`].

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

use super::model::{HostKeyPolicy, Site};

/// Where a resolved setting came from (for messages such as "IdentityFile from
/// ~/.ssh/config").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingSource {
    /// The site map.
    SiteMap,
    /// The user's SSH config file.
    SshConfig,
    /// OpenSSH's built-in default.
    Default,
}

/// Everything needed to open an SSH connection to a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// The host to connect to (after `HostName`).
    pub hostname: String,
    /// TCP port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private keys to try, in order (tilde expanded).
    pub identity_files: Vec<PathBuf>,
    /// Where the identity files came from.
    pub identity_source: SettingSource,
    /// known_hosts files to check, in order (tilde expanded).
    pub known_hosts: Vec<PathBuf>,
    /// What to do with unknown host keys.
    pub host_key_policy: HostKeyPolicy,
}

/// The SSH config could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SshConfigError {
    /// Reading the file failed (other than it not existing, which is fine).
    #[error("{}: cannot read SSH config: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid ssh_config.
    #[error("{}: invalid SSH config: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl SshConfigError {
    /// Whether retrying can help: only for I/O errors other than permissions.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() != std::io::ErrorKind::PermissionDenied)
    }
}

/// The user's SSH environment: parsed `~/.ssh/config`, home directory, local user name.
#[derive(Debug, Clone)]
pub struct SshEnvironment {
    config: SshConfig,
    home: PathBuf,
    local_user: String,
}

impl SshEnvironment {
    /// Reads `path` (default `~/.ssh/config`); a missing file means no settings.
    pub fn load(path: Option<&Path>) -> Result<Self, SshConfigError> {
        let home = home_dir();
        let path = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join(".ssh/config"));
        let config = match File::open(&path) {
            Ok(f) => SshConfig::default()
                .home_dir(&home)
                .parse(
                    &mut BufReader::new(f),
                    ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
                )
                .map_err(|e| SshConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SshConfig::default(),
            Err(source) => return Err(SshConfigError::Read { path, source }),
        };
        Ok(Self {
            config,
            home,
            local_user: local_user(),
        })
    }

    /// An environment from config text, a home directory and a user name (for tests and
    /// for callers that already hold the config).
    pub fn from_text(text: &str, home: &Path, local_user: &str) -> Result<Self, SshConfigError> {
        let config = SshConfig::default()
            .home_dir(home)
            .parse(
                &mut text.as_bytes(),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| SshConfigError::Parse {
                path: PathBuf::from("<text>"),
                message: e.to_string(),
            })?;
        Ok(Self {
            config,
            home: home.to_path_buf(),
            local_user: local_user.to_string(),
        })
    }

    /// Expands a leading `~/` against the home directory.
    pub fn expand(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("~") {
            Ok(rest) => self.home.join(rest),
            Err(_) => p.to_path_buf(),
        }
    }

    /// The effective settings for `site`.
    pub fn resolve(&self, site: &Site) -> SshSettings {
        let alias = site.hostname.clone().unwrap_or_else(|| site.name.clone());
        let params = self.config.query(&alias);
        let hostname = match &site.hostname {
            Some(h) => h.clone(),
            None => params
                .host_name
                .as_deref()
                .map(|h| h.replace("%h", &alias))
                .unwrap_or_else(|| alias.clone()),
        };
        let port = site.port.or(params.port).unwrap_or(22);
        let user = site
            .username
            .clone()
            .or_else(|| params.user.clone())
            .unwrap_or_else(|| self.local_user.clone());
        let (identity_files, identity_source) = match (&site.identity_file, &params.identity_file) {
            (Some(f), _) => (vec![self.expand(f)], SettingSource::SiteMap),
            (None, Some(files)) if !files.is_empty() => (
                files.iter().map(|f| self.expand(f)).collect(),
                SettingSource::SshConfig,
            ),
            _ => (
                ["id_ed25519", "id_ecdsa", "id_rsa"]
                    .iter()
                    .map(|k| self.home.join(".ssh").join(k))
                    .collect(),
                SettingSource::Default,
            ),
        };
        let known_hosts = match (
            &site.known_hosts,
            params.unsupported_fields.get("userknownhostsfile"),
        ) {
            (Some(f), _) => vec![self.expand(f)],
            (None, Some(files)) if !files.is_empty() => {
                files.iter().map(|f| self.expand(Path::new(f))).collect()
            }
            _ => vec![
                self.home.join(".ssh/known_hosts"),
                self.home.join(".ssh/known_hosts2"),
            ],
        };
        let host_key_policy = site
            .host_key_policy
            .or_else(|| {
                params
                    .unsupported_fields
                    .get("stricthostkeychecking")
                    .and_then(|v| v.first())
                    .and_then(|v| HostKeyPolicy::parse(v))
            })
            .unwrap_or(HostKeyPolicy::Strict);
        SshSettings {
            hostname,
            port,
            user,
            identity_files,
            identity_source,
            known_hosts,
            host_key_policy,
        }
    }
}

/// `$HOME`, else `/`.
fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The local user name as `ssh` would use it: `$USER`, `$LOGNAME`, else the passwd entry
/// of our uid (read from `/etc/passwd`, without unsafe calls), else `root`.
fn local_user() -> String {
    use std::os::unix::fs::MetadataExt;
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if let (Some(uid), Ok(passwd)) = (uid, std::fs::read_to_string("/etc/passwd")) {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 2 && fields[2].parse() == Ok(uid) {
                return fields[0].to_string();
            }
        }
    }
    "root".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{LayoutTemplate, TransferMethod};

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            description: None,
            hostname: None,
            port: None,
            username: None,
            identity_file: None,
            host_key_policy: None,
            known_hosts: None,
            method: TransferMethod::Sftp,
            verify: Default::default(),
            origin: false,
            data_dirs: Default::default(),
            layout: LayoutTemplate::default(),
            create_data_dirs: false,
            link_roots: Vec::new(),
            push_to: vec![],
            pull_from: vec![],
            completion: Default::default(),
            tape: vec![],
            purge: Default::default(),
            limits: Default::default(),
        }
    }

    const CONFIG: &str = "\
Host mirror
    HostName mirror.example.org
    Port 2222
    User xfer
    IdentityFile ~/.ssh/ferry_key
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/.ssh/ferry_known_hosts

Host *
    User fallback
";

    #[test]
    fn ssh_config_fills_what_the_site_map_leaves_out() {
        let env = SshEnvironment::from_text(CONFIG, Path::new("/home/op"), "op").unwrap();
        let s = env.resolve(&site("mirror"));
        assert_eq!(s.hostname, "mirror.example.org");
        assert_eq!(s.port, 2222);
        assert_eq!(s.user, "xfer");
        assert_eq!(
            s.identity_files,
            vec![PathBuf::from("/home/op/.ssh/ferry_key")]
        );
        assert_eq!(s.identity_source, SettingSource::SshConfig);
        assert_eq!(
            s.known_hosts,
            vec![PathBuf::from("/home/op/.ssh/ferry_known_hosts")]
        );
        assert_eq!(s.host_key_policy, HostKeyPolicy::AcceptNew);
    }

    #[test]
    fn site_map_wins_over_ssh_config() {
        let env = SshEnvironment::from_text(CONFIG, Path::new("/home/op"), "op").unwrap();
        let mut m = site("m");
        m.hostname = Some("mirror".into());
        m.port = Some(22);
        m.username = Some("daq".into());
        m.identity_file = Some(PathBuf::from("~/.ssh/daq"));
        let s = env.resolve(&m);
        assert_eq!(s.hostname, "mirror");
        assert_eq!((s.port, s.user.as_str()), (22, "daq"));
        assert_eq!(s.identity_files, vec![PathBuf::from("/home/op/.ssh/daq")]);
        assert_eq!(s.identity_source, SettingSource::SiteMap);
    }

    #[test]
    fn common_real_world_config_lines_parse() {
        let text = "\
Include ~/.ssh/config.d/*
Host *.example.org !bastion.example.org
    ProxyJump bastion.example.org
    ServerAliveInterval 30
    ControlMaster auto
    ControlPath ~/.ssh/cm-%r@%h:%p
    AddKeysToAgent yes
Match host mirror exec \"true\"
    User matched
";
        let env = SshEnvironment::from_text(text, Path::new("/home/op"), "op").unwrap();
        assert_eq!(env.resolve(&site("plain")).user, "op");
    }

    #[test]
    fn openssh_defaults_last() {
        let env = SshEnvironment::from_text("", Path::new("/home/op"), "op").unwrap();
        let s = env.resolve(&site("other"));
        assert_eq!(s.hostname, "other");
        assert_eq!((s.port, s.user.as_str()), (22, "op"));
        assert_eq!(
            s.identity_files[0],
            PathBuf::from("/home/op/.ssh/id_ed25519")
        );
        assert_eq!(s.identity_source, SettingSource::Default);
        assert_eq!(s.known_hosts[0], PathBuf::from("/home/op/.ssh/known_hosts"));
        assert_eq!(s.host_key_policy, HostKeyPolicy::Strict);
    }
}
