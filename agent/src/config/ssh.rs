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
use std::time::Duration;

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
    /// `IdentitiesOnly yes`: offer only the identity files, not an ssh-agent's keys.
    pub identities_only: bool,
    /// `ConnectTimeout` (`None`: the transport's default).
    pub connect_timeout: Option<Duration>,
    /// `ServerAliveInterval` (`None`: the transport's default; zero turns keep-alives off).
    pub server_alive_interval: Option<Duration>,
    /// How the connection reaches the host (`ProxyJump`, `ProxyCommand`).
    pub route: SshRoute,
}

/// How a connection reaches its host, as `~/.ssh/config` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SshRoute {
    /// A TCP connection of its own (no proxy, or `ProxyJump none`).
    #[default]
    Direct,
    /// `ProxyJump a,b`: through each bastion in turn, each resolved through the SSH config
    /// as `ssh a` would (its own route is not followed: the chain is the one written here).
    Jump(Vec<SshSettings>),
    /// `ProxyCommand`: the command's argv, `%h`, `%p`, `%r` and `%%` expanded; its stdin
    /// and stdout carry the connection. Never run through a shell.
    Command(Vec<String>),
}

/// A `ProxyJump` entry: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
fn parse_jump(spec: &str) -> (Option<String>, String, Option<u16>) {
    let spec = spec.trim();
    let spec = spec.strip_prefix("ssh://").unwrap_or(spec);
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, spec),
    };
    // `[v6]:port`, `host:port`, `host`.
    if let Some(inner) = rest.strip_prefix('[') {
        if let Some((host, tail)) = inner.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (user, host.to_string(), port);
        }
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (user, h.to_string(), Some(port)),
            Err(_) => (user, rest.to_string(), None),
        },
        _ => (user, rest.to_string(), None),
    }
}

/// Expands `%h`, `%p`, `%r`, `%n` and `%%` in one `ProxyCommand` token.
fn expand_tokens(token: &str, host: &str, port: u16, user: &str, alias: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(&port.to_string()),
            Some('r') => out.push_str(user),
            Some('n') => out.push_str(alias),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
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
    /// The config file read (`None`: from text, or no file).
    path: Option<PathBuf>,
    /// The text given to [`SshEnvironment::from_text`].
    text: Option<String>,
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
            path: Some(path),
            text: None,
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
            path: None,
            text: Some(text.to_string()),
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

    /// The effective settings for `site`: the alias looked up in the SSH config is the site
    /// map's `hostname` (else the site's name), and the host connected to is that alias's
    /// `HostName` (`%h` expanded), else the alias itself — exactly as `ssh HOSTNAME` does.
    /// The site map's `port`, `username`, `identity_file`, `known_hosts` and
    /// `host_key_policy`, when set, win over the config.
    pub fn resolve(&self, site: &Site) -> SshSettings {
        let alias = site.hostname.clone().unwrap_or_else(|| site.name.clone());
        let mut s = self.resolve_alias(&alias, site.username.clone(), site.port);
        if let Some(f) = &site.identity_file {
            s.identity_files = vec![self.expand(f)];
            s.identity_source = SettingSource::SiteMap;
        }
        if let Some(f) = &site.known_hosts {
            s.known_hosts = vec![self.expand(f)];
        }
        if let Some(p) = site.host_key_policy {
            s.host_key_policy = p;
        }
        s
    }

    /// The settings `ssh [USER@]ALIAS [-p PORT]` would use; `user` and `port` win over
    /// the config.
    fn resolve_alias(&self, alias: &str, user: Option<String>, port: Option<u16>) -> SshSettings {
        let params = self.config.query(alias);
        let hostname = params
            .host_name
            .as_deref()
            .map(|h| h.replace("%h", alias))
            .unwrap_or_else(|| alias.to_string());
        let port = port.or(params.port).unwrap_or(22);
        let user = user
            .or_else(|| params.user.clone())
            .unwrap_or_else(|| self.local_user.clone());
        let (identity_files, identity_source) = match &params.identity_file {
            Some(files) if !files.is_empty() => (
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
        let field = |name: &str| -> Option<&Vec<String>> {
            params
                .unsupported_fields
                .get(name)
                .or_else(|| params.ignored_fields.get(name))
        };
        let first = |name: &str| field(name).and_then(|v| v.first()).cloned();
        let known_hosts = match field("userknownhostsfile") {
            Some(files) if !files.is_empty() => {
                files.iter().map(|f| self.expand(Path::new(f))).collect()
            }
            _ => vec![
                self.home.join(".ssh/known_hosts"),
                self.home.join(".ssh/known_hosts2"),
            ],
        };
        let host_key_policy = first("stricthostkeychecking")
            .and_then(|v| HostKeyPolicy::parse(&v))
            .unwrap_or(HostKeyPolicy::Strict);
        let identities_only = first("identitiesonly")
            .map(|v| v.eq_ignore_ascii_case("yes"))
            .unwrap_or(false);
        let route = match (&params.proxy_jump, field("proxycommand")) {
            (Some(jumps), _) if !jumps.is_empty() => {
                if jumps.iter().any(|j| j.eq_ignore_ascii_case("none")) {
                    SshRoute::Direct
                } else {
                    SshRoute::Jump(
                        jumps
                            .iter()
                            .flat_map(|j| j.split(','))
                            .filter(|j| !j.trim().is_empty())
                            .map(|j| {
                                let (u, h, p) = parse_jump(j);
                                let mut hop = self.resolve_alias(&h, u, p);
                                hop.route = SshRoute::Direct;
                                hop
                            })
                            .collect(),
                    )
                }
            }
            (_, Some(words)) if !words.is_empty() => {
                // The parser splits at blanks and keeps quotes: split its line again with
                // POSIX shell rules (words only: nothing is expanded or run by a shell).
                let line = words.join(" ");
                if line.trim().eq_ignore_ascii_case("none") {
                    SshRoute::Direct
                } else {
                    let argv = shlex::split(&line).unwrap_or_else(|| words.clone());
                    SshRoute::Command(
                        argv.iter()
                            .map(|t| expand_tokens(t, &hostname, port, &user, alias))
                            .collect(),
                    )
                }
            }
            _ => SshRoute::Direct,
        };
        SshSettings {
            hostname,
            port,
            user,
            identity_files,
            identity_source,
            known_hosts,
            host_key_policy,
            identities_only,
            connect_timeout: params.connect_timeout,
            server_alive_interval: params.server_alive_interval,
            route,
        }
    }
}

/// A keyword of the SSH config that applies to a host and that Ferry does not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnhonouredKeyword {
    /// The file it is written in (`<text>` for a config given as text).
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// The keyword as written.
    pub keyword: String,
}

/// Keywords [`SshEnvironment::resolve`] honours.
const HONOURED: &[&str] = &[
    "host",
    "hostname",
    "port",
    "user",
    "identityfile",
    "identitiesonly",
    "userknownhostsfile",
    "stricthostkeychecking",
    "connecttimeout",
    "serveraliveinterval",
    "include",
    "proxyjump",
    "proxycommand",
];

/// Keywords with no effect on a connection Ferry makes (interactive or client-side only).
const HARMLESS: &[&str] = &[
    "addkeystoagent",
    "usekeychain",
    "hashknownhosts",
    "loglevel",
    "visualhostkey",
    "forwardx11",
    "forwardx11trusted",
    "requesttty",
    "sendenv",
    "setenv",
];

impl SshEnvironment {
    /// The keywords of the SSH config that apply to `ssh ALIAS` and that Ferry does not
    /// honour (`ControlMaster`, `LocalForward`, any `Match` block, ...), with file and line,
    /// in the order `ssh` reads them. `Include` is followed.
    pub fn unhonoured(&self, alias: &str) -> Vec<UnhonouredKeyword> {
        let mut out = Vec::new();
        match (&self.text, &self.path) {
            (Some(text), _) => self.scan(text, Path::new("<text>"), alias, 0, &mut true, &mut out),
            (None, Some(path)) => {
                if let Ok(text) = std::fs::read_to_string(path) {
                    self.scan(&text, path, alias, 0, &mut true, &mut out);
                }
            }
            (None, None) => {}
        }
        out
    }

    fn scan(
        &self,
        text: &str,
        file: &Path,
        alias: &str,
        depth: usize,
        applies: &mut bool,
        out: &mut Vec<UnhonouredKeyword>,
    ) {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let split = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let (keyword, rest) = line.split_at(split);
            let args = rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == '=')
                .trim();
            let lower = keyword.to_ascii_lowercase();
            let here = |out: &mut Vec<UnhonouredKeyword>| {
                out.push(UnhonouredKeyword {
                    file: file.to_path_buf(),
                    line: n + 1,
                    keyword: keyword.to_string(),
                })
            };
            match lower.as_str() {
                "host" => *applies = host_matches(args, alias),
                // Ferry evaluates no `Match` condition: say so wherever one stands.
                "match" => {
                    here(out);
                    *applies = true;
                }
                "include" if *applies && depth < 16 => {
                    let outer = *applies;
                    for pattern in args.split_whitespace() {
                        for path in self.include_paths(pattern) {
                            if let Ok(t) = std::fs::read_to_string(&path) {
                                self.scan(&t, &path, alias, depth + 1, applies, out);
                            }
                        }
                    }
                    *applies = outer;
                }
                k if *applies && !HONOURED.contains(&k) && !HARMLESS.contains(&k) => here(out),
                _ => {}
            }
        }
    }

    /// The files an `Include` pattern names (relative to `~/.ssh`, `*` and `?` in the last
    /// component), sorted as `ssh` reads them.
    fn include_paths(&self, pattern: &str) -> Vec<PathBuf> {
        let p = self.expand(Path::new(pattern));
        let p = if p.is_absolute() {
            p
        } else {
            self.home.join(".ssh").join(p)
        };
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        match (p.parent(), name) {
            (Some(dir), Some(name)) if name.contains(['*', '?']) => {
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                found.sort();
                found
            }
            _ => vec![p],
        }
    }
}

/// Whether a `Host` line's patterns select `alias` (`!` negates, `*` and `?` wildcards).
fn host_matches(patterns: &str, alias: &str) -> bool {
    let mut hit = false;
    for pat in patterns.split_whitespace() {
        let pat = pat.trim_matches('"');
        match pat.strip_prefix('!') {
            Some(neg) if wildcard(neg, alias) => return false,
            Some(_) => {}
            None => hit |= wildcard(pat, alias),
        }
    }
    hit
}

/// Glob match with `*` and `?` (case-insensitive, as `ssh` matches host names).
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
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
        assert_eq!(s.hostname, "mirror.example.org");
        assert_eq!((s.port, s.user.as_str()), (22, "daq"));
        assert_eq!(s.identity_files, vec![PathBuf::from("/home/op/.ssh/daq")]);
        assert_eq!(s.identity_source, SettingSource::SiteMap);
    }

    #[test]
    fn a_site_map_hostname_that_is_an_ssh_config_alias_connects_to_its_hostname() {
        let text = "Host daq\n    HostName daq.lab.example\n    Port 2222\n    User xfer\n";
        let env = SshEnvironment::from_text(text, Path::new("/home/op"), "op").unwrap();
        let mut s = site("xenon-daq");
        s.hostname = Some("daq".into());
        let r = env.resolve(&s);
        assert_eq!(
            (r.hostname.as_str(), r.port, r.user.as_str()),
            ("daq.lab.example", 2222, "xfer")
        );
        // `%h` in HostName is the alias.
        let env = SshEnvironment::from_text(
            "Host daq\n HostName %h.lab.example\n",
            Path::new("/h"),
            "op",
        )
        .unwrap();
        assert_eq!(env.resolve(&s).hostname, "daq.lab.example");
    }

    const ROUTES: &str = "\
Host target
    HostName 10.0.0.7
    Port 2200
    User daq
    ProxyJump ops@bastion1:2022,bastion2
    IdentitiesOnly yes
    ConnectTimeout 7
    ServerAliveInterval 0
Host bastion2
    HostName b2.lab.example
    Port 22022
    User jump
Host viacmd
    HostName 10.0.0.8
    ProxyCommand /usr/bin/ssh -W \"%h:%p\" -l %r gw%%1
Host direct
    ProxyJump none
Host *
    ControlMaster auto
    LocalForward 8080 localhost:80
";

    #[test]
    fn proxy_jump_hops_are_resolved_each_through_the_ssh_config() {
        let env = SshEnvironment::from_text(ROUTES, Path::new("/home/op"), "op").unwrap();
        let r = env.resolve(&site("target"));
        assert_eq!((r.hostname.as_str(), r.port), ("10.0.0.7", 2200));
        assert!(r.identities_only);
        assert_eq!(r.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(r.server_alive_interval, Some(Duration::ZERO));
        let SshRoute::Jump(hops) = &r.route else {
            panic!("{:?}", r.route)
        };
        let hops: Vec<(&str, u16, &str)> = hops
            .iter()
            .map(|h| (h.hostname.as_str(), h.port, h.user.as_str()))
            .collect();
        assert_eq!(
            hops,
            [("bastion1", 2022, "ops"), ("b2.lab.example", 22022, "jump")]
        );
        assert_eq!(env.resolve(&site("direct")).route, SshRoute::Direct);
    }

    #[test]
    fn proxy_command_is_an_argv_with_placeholders_expanded_per_word() {
        let env = SshEnvironment::from_text(ROUTES, Path::new("/home/op"), "op").unwrap();
        let r = env.resolve(&site("viacmd"));
        assert_eq!(
            r.route,
            SshRoute::Command(
                ["/usr/bin/ssh", "-W", "10.0.0.8:22", "-l", "op", "gw%1"]
                    .map(String::from)
                    .to_vec()
            )
        );
    }

    #[test]
    fn unhonoured_keywords_are_named_with_file_and_line() {
        let env = SshEnvironment::from_text(ROUTES, Path::new("/home/op"), "op").unwrap();
        let found: Vec<(usize, String)> = env
            .unhonoured("target")
            .into_iter()
            .map(|k| (k.line, k.keyword))
            .collect();
        assert_eq!(
            found,
            [
                (19, "ControlMaster".to_string()),
                (20, "LocalForward".to_string())
            ]
        );
        let text = "Match host x exec true\n  User y\n";
        let env = SshEnvironment::from_text(text, Path::new("/home/op"), "op").unwrap();
        assert_eq!(env.unhonoured("anything")[0].keyword, "Match");
    }

    #[test]
    fn include_is_followed_for_settings_and_for_warnings() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".ssh/config.d")).unwrap();
        std::fs::write(
            home.path().join(".ssh/config.d/lab"),
            "Host daq\n  HostName daq.lab.example\n  ControlPersist 10m\n",
        )
        .unwrap();
        let env = SshEnvironment::from_text("Include config.d/*\n", home.path(), "op").unwrap();
        let mut s = site("x");
        s.hostname = Some("daq".into());
        assert_eq!(env.resolve(&s).hostname, "daq.lab.example");
        let k = env.unhonoured("daq");
        assert_eq!(k.len(), 1, "{k:?}");
        assert_eq!(k[0].file, home.path().join(".ssh/config.d/lab"));
        assert_eq!((k[0].line, k[0].keyword.as_str()), (3, "ControlPersist"));
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
