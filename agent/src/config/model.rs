//! The validated site map: what the agent works from once loading succeeded.
//!
//! Every type here is plain data, already checked: names are unique, references resolve,
//! paths are absolute, durations and sizes are parsed, and optional settings carry their
//! documented defaults (see `docs/configuration.md`). Both input formats (Ferry's own and
//! the legacy `cax.json`) produce these same types. [`LayoutTemplate`] is the one type with
//! behaviour: it turns a run's identity into its directory below a data directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The whole site map.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteMap {
    /// The run catalogue named by the site map, if any (the command line may override it).
    pub catalog: Option<CatalogSettings>,
    /// Every site, in file order.
    pub sites: Vec<Site>,
}

impl SiteMap {
    /// The site with this name.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Names of every site, in file order.
    pub fn site_names(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().map(|s| s.name.as_str())
    }

    /// Every copy link `(from, to)`, from both `push_to` and `pull_from`, without duplicates,
    /// in file order.
    pub fn links(&self) -> Vec<Link> {
        let mut out: Vec<Link> = Vec::new();
        for s in &self.sites {
            for to in &s.push_to {
                let l = Link {
                    from: s.name.clone(),
                    to: to.clone(),
                    initiator: s.name.clone(),
                };
                if !out.contains(&l) {
                    out.push(l);
                }
            }
            for from in &s.pull_from {
                let l = Link {
                    from: from.clone(),
                    to: s.name.clone(),
                    initiator: s.name.clone(),
                };
                if !out.contains(&l) {
                    out.push(l);
                }
            }
        }
        out
    }

    /// Every tape backend with the site that runs it.
    pub fn tape_backends(&self) -> impl Iterator<Item = (&Site, &TapeBackendConfig)> {
        self.sites
            .iter()
            .flat_map(|s| s.tape.iter().map(move |t| (s, t)))
    }
}

/// One copy direction between two sites, and which site's agent does the copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The site the data comes from.
    pub from: String,
    /// The site the data goes to.
    pub to: String,
    /// The site whose agent runs this copy (`from` for a push, `to` for a pull).
    pub initiator: String,
}

/// Where the run catalogue is and how to authenticate to it. Its `Debug` shows the URI
/// redacted, whatever it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct CatalogSettings {
    /// `mongodb://…`, `mongodb+srv://…` or `sqlite:PATH`; never holds a password.
    pub uri: String,
    /// Where the password comes from.
    pub password: PasswordSource,
    /// Database name [default `run`].
    pub database: String,
    /// Collection name [default `runs`].
    pub collection: String,
}

impl fmt::Debug for CatalogSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogSettings")
            .field("uri", &crate::catalog::uri::redact(&self.uri))
            .field("password", &self.password)
            .field("database", &self.database)
            .field("collection", &self.collection)
            .finish()
    }
}

/// Where the catalogue password comes from (never the site map itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password (embedded catalogue, or a MongoDB without authentication).
    None,
    /// The value of this environment variable.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

/// One site of the collaboration.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Unique name: letters, digits, `.`, `_`, `-`; starts with a letter or digit.
    pub name: String,
    /// Free text for people.
    pub description: Option<String>,
    /// Host to connect to; `None` means the site name (so `~/.ssh/config` aliases work).
    pub hostname: Option<String>,
    /// SSH port; `None` = `~/.ssh/config`, else 22.
    pub port: Option<u16>,
    /// SSH user; `None` = `~/.ssh/config`, else the local user.
    pub username: Option<String>,
    /// Private key; `None` = `~/.ssh/config`, else OpenSSH's default keys.
    pub identity_file: Option<PathBuf>,
    /// Host-key policy; `None` = `~/.ssh/config`, else `yes`.
    pub host_key_policy: Option<HostKeyPolicy>,
    /// known_hosts file; `None` = `~/.ssh/config`, else `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// How other sites reach this site's files.
    pub method: TransferMethod,
    /// How a copy pushed to this site is checked at this site before it counts.
    pub verify: DestinationVerify,
    /// Whether runs are born here (a DAQ site): the register task runs here.
    pub origin: bool,
    /// Absolute data directory per data type (`raw`, `processed`, …).
    pub data_dirs: BTreeMap<String, PathBuf>,
    /// A run's directory below each data directory.
    pub layout: LayoutTemplate,
    /// Whether the agent may create a missing (or mark an empty, unmarked) data directory of
    /// this site: `create_data_dirs` in the site map, off by default, so that an unmounted
    /// file system is an error rather than data written to the root disk.
    pub create_data_dirs: bool,
    /// Directories a run directory at this (origin) site may be a symbolic link into
    /// (`link_roots`; GlueX keeps `rawdata/all` as links into its partitions). Empty: a
    /// linked run directory is refused.
    pub link_roots: Vec<PathBuf>,
    /// Sites this site's agent copies runs to.
    pub push_to: Vec<String>,
    /// Sites this site's agent copies runs from.
    pub pull_from: Vec<String>,
    /// When a run at an origin site counts as complete.
    pub completion: CompletionRule,
    /// Tape backends this site's agent writes to.
    pub tape: Vec<TapeBackendConfig>,
    /// When this site may delete its copies.
    pub purge: PurgePolicy,
    /// Concurrency and bandwidth limits for this site's agent.
    pub limits: Limits,
}

impl Site {
    /// The data directory for a data type (`raw`, `processed`, …), if this site has one.
    pub fn data_dir(&self, data_type: &str) -> Option<&std::path::Path> {
        self.data_dirs.get(data_type).map(PathBuf::as_path)
    }

    /// Whether other sites can copy to or from this site.
    pub fn is_transfer_peer(&self) -> bool {
        !matches!(self.method, TransferMethod::Unsupported(_))
    }

    /// What the site does, for summaries: `origin`, `mirror`, `gateway` (no data
    /// directories) or `legacy-only` (a legacy method Ferry does not implement).
    pub fn role(&self) -> &'static str {
        if !self.is_transfer_peer() {
            "legacy-only"
        } else if self.origin {
            "origin"
        } else if self.data_dirs.is_empty() {
            "gateway"
        } else {
            "mirror"
        }
    }
}

/// How a copy pushed to a site is checked at that site (the site map's `verify`). A pull
/// or a local copy always re-reads the destination on the agent's own disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DestinationVerify {
    /// `"read-back"`: the pushing agent reads every file back over SFTP and hashes it
    /// (twice the traffic; needs nothing at the destination).
    #[default]
    ReadBack,
    /// `{"command": ["sha256sum", "--"]}`: the pushing agent runs this command with the
    /// file's path over SSH at the destination; its first word must be the SHA-256.
    Command(Vec<String>),
    /// `"agent"`: the destination's own Ferry agent re-hashes the copy in its `verify` task;
    /// until then the copy stays `verifying` (never `transferred`).
    Agent,
}

impl fmt::Display for DestinationVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadBack => f.write_str("read-back"),
            Self::Command(argv) => write!(f, "command {argv:?}"),
            Self::Agent => f.write_str("agent"),
        }
    }
}

/// How a site's files are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferMethod {
    /// SSH/SFTP (legacy `scp` and `rsync` map here).
    Sftp,
    /// The same machine (or a shared file system): plain file copies.
    Local,
    /// A legacy cax method Ferry does not implement (`gfal-copy`, `lcg-cp`, `rucio`, a
    /// `tsm` entry without a host): the site is kept for reference but is no transfer peer.
    Unsupported(String),
}

impl fmt::Display for TransferMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sftp => f.write_str("sftp"),
            Self::Local => f.write_str("local"),
            Self::Unsupported(m) => write!(f, "{m} (unsupported)"),
        }
    }
}

/// What to do with a host key that is not in known_hosts (OpenSSH's
/// `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// `yes`: refuse unknown and changed keys (the default).
    Strict,
    /// `accept-new`: record unknown keys, refuse changed ones.
    AcceptNew,
    /// `no`: accept anything. Loading warns: this allows man-in-the-middle attacks.
    No,
}

impl HostKeyPolicy {
    /// Parses OpenSSH's spellings (`yes`, `accept-new`, `no`; also `ask`, treated as `yes`
    /// since an agent cannot ask).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "yes" | "ask" => Some(Self::Strict),
            "accept-new" => Some(Self::AcceptNew),
            "no" | "off" => Some(Self::No),
            _ => None,
        }
    }
}

impl fmt::Display for HostKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "yes",
            Self::AcceptNew => "accept-new",
            Self::No => "no",
        })
    }
}

/// When a run at an origin site is complete and may be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionRule {
    /// The DAQ writes this file (a plain name) into the run directory when done.
    Marker(String),
    /// No file in the run directory was modified for this long [default 10 minutes].
    QuietPeriod(Duration),
}

impl Default for CompletionRule {
    fn default() -> Self {
        Self::QuietPeriod(Duration::from_secs(600))
    }
}

/// When a site may delete its copy of a run (DESIGN §6). All must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgePolicy {
    /// Purging is off unless this is true [default false].
    pub enabled: bool,
    /// Verified copies required elsewhere [default 2, at least 1].
    pub min_copies: u32,
    /// Of those, copies on tape [default 0].
    pub min_tape_copies: u32,
    /// Those copies were verified within this long [default 30 days].
    pub max_verify_age: Duration,
    /// The run is older than this [default 7 days].
    pub retention: Duration,
    /// Purge only when the disk is fuller than this percentage [default 90, 1..=100].
    pub high_water_mark: u8,
    /// Once over the high-water mark, purge (oldest runs first) until the disk is at most
    /// this full [default: the high-water mark, 0..=high_water_mark].
    pub low_water_mark: u8,
}

impl Default for PurgePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            min_copies: 2,
            min_tape_copies: 0,
            max_verify_age: Duration::from_secs(30 * 86_400),
            retention: Duration::from_secs(7 * 86_400),
            high_water_mark: 90,
            low_water_mark: 90,
        }
    }
}

/// Concurrency and bandwidth limits of one site's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Files of one run copied at once [default 4].
    pub files_in_flight: u32,
    /// Files copied at once over one link [default 2].
    pub transfers_per_link: u32,
    /// Files copied at once by this agent over all links [default 4].
    pub global_transfers: u32,
    /// Bytes per second per link; `None` = unlimited (the default).
    pub bandwidth_per_link: Option<u64>,
    /// How long a copy's lease lasts without renewal [default 10 min]; renewed every third
    /// of it while copying. A dead agent's copy is reclaimed after it (by another host), or
    /// at once by the next agent on its own host.
    pub lease: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            files_in_flight: 4,
            transfers_per_link: 2,
            global_transfers: 4,
            bandwidth_per_link: None,
            lease: Duration::from_secs(600),
        }
    }
}

/// One named tape backend run by a site's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeBackendConfig {
    /// Unique across the whole site map (copies on tape record it).
    pub name: String,
    /// What kind, with its settings.
    pub kind: TapeKind,
}

/// The kind of a tape backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeKind {
    /// A directory tree (an HSM-mounted file system).
    Directory {
        /// Absolute root of the tree.
        path: PathBuf,
    },
    /// External commands (JLab `jput`, TSM `dsmc`, HPSS `hsi`), as argv templates.
    Command {
        /// Site whose host runs the commands over SSH; `None` = locally.
        gateway: Option<String>,
        /// Writes one file (required).
        put: Vec<String>,
        /// Checks one written file.
        verify: Option<Vec<String>>,
        /// Reads one file back.
        retrieve: Option<Vec<String>>,
        /// Asks whether a file is already on tape.
        stat: Option<Vec<String>>,
        /// Exit codes that mean success [default `[0]`].
        ok_exit_codes: Vec<i32>,
        /// Template of a file's name on the tape side (`{tape_path}`, `{tape_dir}`).
        tape_path: Option<String>,
        /// Directory (on the gateway, or local) where files are staged before `put`;
        /// `{file}` is then `<stage>/<run>/<path>`.
        stage: Option<String>,
        /// How the tools' output is read [default `stub`].
        output: CommandOutput,
        /// Longest any one command may run [default 1 hour].
        timeout: Duration,
    },
    /// tar onto tape drives, papertape style.
    Tar {
        /// Tape devices, one per drive (such as `/dev/nst0`).
        devices: Vec<PathBuf>,
        /// Copies written of each batch, in parallel [default: one per device].
        copies: u32,
        /// Bytes per tar batch [default 100 GB].
        batch_size: u64,
        /// argv prefix for `mt` [default `["mt"]`].
        mt: Vec<String>,
        /// Writes one tape file from stdin at the current position [default
        /// `["dd", "of={device}", "bs=256k"]`].
        write: Vec<String>,
        /// Reads one tape file to stdout from the current position [default
        /// `["dd", "if={device}", "bs=256k"]`].
        read: Vec<String>,
        /// The label store: a JSON file recording every tape and what it holds [default
        /// `/var/lib/ferry/tape-<name>-labels.json`].
        labels: PathBuf,
        /// A tape library's robot (`mtx`), to change full tapes without an operator.
        changer: Option<TarChanger>,
        /// Longest wait for the label store's lock (another process using the drives)
        /// [default 1 hour].
        lock_timeout: Duration,
    },
}

/// A tape changer (library robot) driven by `mtx`, as papertape and Bacula's
/// `mtx-changer` drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarChanger {
    /// The changer's device (such as `/dev/sg3`): `{changer}` in the templates.
    pub device: PathBuf,
    /// Prints the library's status in `mtx status` format [default
    /// `["mtx", "-f", "{changer}", "status"]`].
    pub status: Vec<String>,
    /// Loads storage element `{slot}` into data transfer element `{drive}` [default
    /// `["mtx", "-f", "{changer}", "load", "{slot}", "{drive}"]`].
    pub load: Vec<String>,
    /// Puts the tape in `{drive}` back into `{slot}` [default
    /// `["mtx", "-f", "{changer}", "unload", "{slot}", "{drive}"]`].
    pub unload: Vec<String>,
    /// Storage elements (slots) whose tapes this backend may use, in the order it uses
    /// them.
    pub slots: Vec<u32>,
    /// The data transfer element (drive number in `mtx`) of each device, in `devices`
    /// order [default 0, 1, …].
    pub drives: Vec<u32>,
}

/// Placeholders of a changer's `status` template.
pub const CHANGER_STATUS_PLACEHOLDERS: &[&str] = &["changer"];
/// Placeholders of a changer's `load` / `unload` templates.
pub const CHANGER_MOVE_PLACEHOLDERS: &[&str] = &["changer", "slot", "drive"];

impl TapeKind {
    /// The kind's name as written in the site map.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Directory { .. } => "directory",
            Self::Command { .. } => "command",
            Self::Tar { .. } => "tar",
        }
    }
}

/// How a `command` tape backend reads its tools' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutput {
    /// `key=value` lines (JLab `/mss` stub files: `size`, `md5`, `crc32`; also `sha256`).
    Stub,
    /// IBM TSM `dsmc`: `query archive` listings and the end-of-run summary.
    Dsmc,
    /// HPSS `hsi hashlist` lines.
    Hsi,
}

impl CommandOutput {
    /// Parses the site-map spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stub" => Some(Self::Stub),
            "dsmc" => Some(Self::Dsmc),
            "hsi" => Some(Self::Hsi),
            _ => None,
        }
    }

    /// The site-map spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stub => "stub",
            Self::Dsmc => "dsmc",
            Self::Hsi => "hsi",
        }
    }
}

/// Placeholders of a `command` tape backend's templates: the file (`file`, `file_name`,
/// `path`, `key`, `size`, `md5`, `sha256`), the run (`run`, `number`, `number:0N`,
/// `period`, `detector`), the tape side (`tape_path`, `tape_dir`), and for `retrieve` the
/// local destination (`dest`).
pub const TAPE_PLACEHOLDERS: &[&str] = &[
    "file",
    "file_name",
    "path",
    "key",
    "size",
    "md5",
    "sha256",
    "run",
    "number",
    "period",
    "detector",
    "tape_path",
    "tape_dir",
    "dest",
];

/// One piece of a tape template token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    /// Literal text.
    Text(String),
    /// A placeholder, with the zero-padding width of `{number:0N}`.
    Field(&'static str, Option<usize>),
}

/// A template split at its placeholders: literal text (with `{{`/`}}` unescaped) and the
/// text inside each `{…}`.
enum Braced {
    Text(String),
    Field(String),
}

/// Split a template at its placeholders; the error says which brace is wrong.
fn split_braces(text: &str) -> Result<Vec<Braced>, &'static str> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '}' => return Err("unmatched `}` (write `}}` for a literal brace)"),
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err("unclosed `{` (write `{{` for a literal brace)")
                        }
                        Some(ch) => inner.push(ch),
                    }
                }
                if !lit.is_empty() {
                    out.push(Braced::Text(std::mem::take(&mut lit)));
                }
                out.push(Braced::Field(inner));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Braced::Text(lit));
    }
    Ok(out)
}

/// Parses one token of a tape template (`{name}` placeholders from `allowed`, `{{`/`}}`
/// literal braces, `{number:0N}`). The error names the token and the known placeholders.
pub fn parse_tape_template(
    token: &str,
    allowed: &[&'static str],
) -> Result<Vec<TemplatePiece>, String> {
    let mut pieces = Vec::new();
    for part in split_braces(token).map_err(|e| format!("{token:?}: {e}"))? {
        let inner = match part {
            Braced::Text(t) => {
                pieces.push(TemplatePiece::Text(t));
                continue;
            }
            Braced::Field(inner) => inner,
        };
        let (field, spec) = match inner.split_once(':') {
            Some((f, s)) => (f, Some(s)),
            None => (inner.as_str(), None),
        };
        let Some(known) = allowed.iter().find(|a| **a == field) else {
            let hint = super::diag::did_you_mean(field, allowed.iter().copied())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            let list: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
            return Err(format!(
                "{token:?}: unknown placeholder {{{field}}}{hint}; known here: {}",
                list.join(", ")
            ));
        };
        let width = match spec {
            None => None,
            Some(spec) if field == "number" => Some(number_width(spec).ok_or_else(|| {
                format!("{token:?}: bad width `{spec}`; expected {{number:0N}}, N from 1 to 20")
            })?),
            Some(spec) => {
                return Err(format!(
                    "{token:?}: only {{number}} takes a width; found `:{spec}`"
                ))
            }
        };
        pieces.push(TemplatePiece::Field(known, width));
    }
    Ok(pieces)
}

/// The N of a `{number:0N}` width, 1 to 20.
fn number_width(spec: &str) -> Option<usize> {
    spec.strip_prefix('0')
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|w| (1..=20).contains(w))
}

/// A problem turning a run into a directory name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The template is malformed (reported at load time with its JSON path).
    #[error("layout template {template:?}: {reason}")]
    Template {
        /// The template text.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// The template uses `{period}` but the run has none.
    #[error("layout template {template:?} needs {{{field}}}, but run {number} has none")]
    Missing {
        /// The template text.
        template: String,
        /// The missing field.
        field: &'static str,
        /// The run.
        number: i64,
    },
    /// A value would escape its directory (contains `/`, is `.`/`..`, or is empty).
    #[error("run {number}: {field} {value:?} cannot be used in a path")]
    UnsafeValue {
        /// The run.
        number: i64,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

impl LayoutError {
    /// Whether retrying can help: never, these come from data.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A run-identity field a layout template can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutField {
    /// `{number}` or `{number:0N}`.
    Number,
    /// `{name}`.
    Name,
    /// `{period}`.
    Period,
    /// `{detector}`.
    Detector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(LayoutField, Option<usize>),
}

/// What a run directory's path says about the run (see [`LayoutTemplate::match_path`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPathFields {
    /// From `{number}`.
    pub number: Option<i64>,
    /// From `{name}`.
    pub name: Option<String>,
    /// From `{period}`.
    pub period: Option<String>,
    /// From `{detector}`.
    pub detector: Option<String>,
}

/// A run directory layout such as `RunPeriod-{period}/Run{number:06}`: relative, `/`
/// separated, with placeholders `{number}`, `{number:0N}` (zero-padded to N digits),
/// `{name}`, `{period}`, `{detector}`; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutTemplate {
    text: String,
    pieces: Vec<Piece>,
}

impl Default for LayoutTemplate {
    /// `{name}`: cax's layout, one directory per run name.
    fn default() -> Self {
        Self {
            text: "{name}".into(),
            pieces: vec![Piece::Field(LayoutField::Name, None)],
        }
    }
}

impl fmt::Display for LayoutTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl LayoutTemplate {
    /// Parses and checks a template.
    pub fn parse(text: &str) -> Result<Self, LayoutError> {
        let bad = |reason: String| LayoutError::Template {
            template: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        if text.starts_with('/') {
            return Err(bad("must be relative to the data directory".into()));
        }
        if text
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad("empty, `.` or `..` path segment".into()));
        }
        let mut pieces = Vec::new();
        let mut has_field = false;
        for part in split_braces(text).map_err(|e| bad(e.into()))? {
            let inner = match part {
                Braced::Text(t) => {
                    pieces.push(Piece::Text(t));
                    continue;
                }
                Braced::Field(inner) => inner,
            };
            let (field, spec) = match inner.split_once(':') {
                Some((f, s)) => (f, Some(s)),
                None => (inner.as_str(), None),
            };
            let field = match field {
                "number" => LayoutField::Number,
                "name" => LayoutField::Name,
                "period" => LayoutField::Period,
                "detector" => LayoutField::Detector,
                other => {
                    let hint =
                        super::diag::did_you_mean(other, ["number", "name", "period", "detector"])
                            .map(|h| format!(" ({h})"))
                            .unwrap_or_default();
                    return Err(bad(format!(
                        "unknown placeholder {{{other}}}{hint}; known: {{number}}, \
                         {{number:0N}}, {{name}}, {{period}}, {{detector}}"
                    )));
                }
            };
            let width = match spec {
                None => None,
                Some(spec) if field == LayoutField::Number => match number_width(spec) {
                    Some(w) => Some(w),
                    None => {
                        return Err(bad(format!(
                            "bad width `{spec}` in {{number:{spec}}}; \
                             expected 0N with N from 1 to 20, such as {{number:06}}"
                        )))
                    }
                },
                Some(spec) => {
                    return Err(bad(format!(
                        "only {{number}} takes a width; found `:{spec}`"
                    )))
                }
            };
            pieces.push(Piece::Field(field, width));
            has_field = true;
        }
        let identifies_run = pieces
            .iter()
            .any(|p| matches!(p, Piece::Field(LayoutField::Number | LayoutField::Name, _)));
        if !has_field || !identifies_run {
            return Err(bad(
                "must contain {number} or {name}, or every run would share one directory".into(),
            ));
        }
        Ok(Self {
            text: text.to_string(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template uses this field.
    pub fn uses(&self, field: LayoutField) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Field(f, _) if *f == field))
    }

    /// How many directory levels a run directory sits below its data directory.
    pub fn depth(&self) -> usize {
        self.text.split('/').count()
    }

    /// Reads a run's identity back from its directory (relative to the data directory,
    /// `/`-separated): the inverse of [`render`](Self::render). `None` when the path does
    /// not have the template's shape.
    pub fn match_path(&self, rel: &str) -> Option<RunPathFields> {
        let mut pattern = String::from("^");
        let mut fields = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => pattern.push_str(&regex::escape(t)),
                Piece::Field(LayoutField::Number, width) => {
                    match width {
                        Some(w) => pattern.push_str(&format!("([0-9]{{{w},}})")),
                        None => pattern.push_str("([0-9]+)"),
                    }
                    fields.push(LayoutField::Number);
                }
                Piece::Field(field, _) => {
                    pattern.push_str("([^/]+?)");
                    fields.push(*field);
                }
            }
        }
        pattern.push('$');
        let re = regex::Regex::new(&pattern).ok()?;
        let caps = re.captures(rel)?;
        let mut out = RunPathFields::default();
        for (i, field) in fields.iter().enumerate() {
            let value = caps.get(i + 1)?.as_str();
            let slot = match field {
                LayoutField::Number => {
                    let n: i64 = value.parse().ok()?;
                    if out.number.is_some_and(|prev| prev != n) {
                        return None;
                    }
                    out.number = Some(n);
                    continue;
                }
                LayoutField::Name => &mut out.name,
                LayoutField::Period => &mut out.period,
                LayoutField::Detector => &mut out.detector,
            };
            if slot.as_deref().is_some_and(|prev| prev != value) {
                return None;
            }
            *slot = Some(value.to_string());
        }
        Some(out)
    }

    /// The run's directory, relative to a data directory.
    pub fn render(
        &self,
        number: i64,
        name: &str,
        period: Option<&str>,
        detector: &str,
    ) -> Result<String, LayoutError> {
        let safe = |field: &'static str, value: &str| {
            if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\0']) {
                Err(LayoutError::UnsafeValue {
                    number,
                    field,
                    value: value.to_string(),
                })
            } else {
                Ok(())
            }
        };
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(LayoutField::Number, None) => out.push_str(&number.to_string()),
                Piece::Field(LayoutField::Number, Some(w)) => {
                    out.push_str(&format!("{number:0w$}", w = *w));
                }
                Piece::Field(LayoutField::Name, _) => {
                    // The catalogue's rule for run names (a stricter form of `safe`).
                    catalog_schema::check_run_name(name).map_err(|_| LayoutError::UnsafeValue {
                        number,
                        field: "name",
                        value: name.to_string(),
                    })?;
                    out.push_str(name);
                }
                Piece::Field(LayoutField::Detector, _) => {
                    safe("detector", detector)?;
                    out.push_str(detector);
                }
                Piece::Field(LayoutField::Period, _) => {
                    let Some(period) = period else {
                        return Err(LayoutError::Missing {
                            template: self.text.clone(),
                            field: "period",
                            number,
                        });
                    };
                    safe("period", period)?;
                    out.push_str(period);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gluex_layout() {
        let t = LayoutTemplate::parse("RunPeriod-{period}/Run{number:06}").unwrap();
        assert_eq!(
            t.render(4711, "x", Some("2019-11"), "tpc").unwrap(),
            "RunPeriod-2019-11/Run004711"
        );
        assert!(matches!(
            t.render(1, "x", None, "tpc"),
            Err(LayoutError::Missing {
                field: "period",
                ..
            })
        ));
    }

    #[test]
    fn literal_braces_and_all_fields() {
        let t = LayoutTemplate::parse("{detector}/{{x}}{name}_{number}").unwrap();
        assert_eq!(
            t.render(7, "170330_1234", None, "tpc").unwrap(),
            "tpc/{x}170330_1234_7"
        );
    }

    #[test]
    fn bad_templates_rejected() {
        for bad in [
            "{runnumber}",
            "{number:6}",
            "{name:06}",
            "Run{number",
            "Run}",
            "/abs/{name}",
            "../{name}",
            "RunPeriod-{period}",
            "",
        ] {
            assert!(LayoutTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = LayoutTemplate::parse("{nmber:06}").unwrap_err().to_string();
        assert!(e.contains("did you mean \"number\""), "{e}");
    }

    #[test]
    fn match_path_inverts_render() {
        let t = LayoutTemplate::parse("RunPeriod-{period}/Run{number:06}").unwrap();
        assert_eq!(t.depth(), 2);
        let rel = t.render(4711, "x", Some("2019-11"), "tpc").unwrap();
        let got = t.match_path(&rel).unwrap();
        assert_eq!(got.number, Some(4711));
        assert_eq!(got.period.as_deref(), Some("2019-11"));
        assert!(
            t.match_path("RunPeriod-2019-11/Run47").is_none(),
            "width not kept"
        );
        assert!(t.match_path("RunPeriod-2019-11/Run004711/extra").is_none());
        assert!(t.match_path("Other/Run004711").is_none());
        let t = LayoutTemplate::parse("{detector}/{name}_{number}").unwrap();
        let got = t.match_path("tpc/170330_1234_7").unwrap();
        assert_eq!(got.detector.as_deref(), Some("tpc"));
        assert_eq!(got.name.as_deref(), Some("170330_1234"));
        assert_eq!(got.number, Some(7));
        let t = LayoutTemplate::parse("{name}").unwrap();
        assert!(t.match_path("a/b").is_none());
    }

    #[test]
    fn unsafe_values_refused() {
        let t = LayoutTemplate::parse("{name}").unwrap();
        assert!(t.render(1, "../etc", None, "tpc").is_err());
        assert!(t.render(1, "..", None, "tpc").is_err());
    }
}
