//! The run catalogue: where every copy of every run is, its state and its digest.
//!
//! - [`Catalog`]: the trait every back end implements; `dyn Catalog` is what the agent and
//!   the `ferry runs` commands hold.
//! - [`mongo`]: the central catalogue, through the official MongoDB driver.
//! - [`embedded`]: one SQLite file, the zero-setup default.
//! - [`retry`]: [`Retrying`], a wrapper that retries transient errors with backoff.
//! - [`uri`]: catalogue locations, parsed once, password redacted in every printout;
//!   [`resolve_catalog`] is the one place that turns `--catalog`, the environment and the
//!   site map's `catalog` section into a [`CatalogTarget`] (location, password, database,
//!   collection), which [`open_target`] opens.
//! - [`error`]: [`CatalogError`] and [`CatalogError::is_retryable`].
//! - [`quarantine`]: [`Quarantine`], the run documents a back end could not read: skipped
//!   with one warning each, counted, never written to.
//!
//! Every state change is one conditional update whose filter names the state it expects
//! (status, lease owner). A lost race is an ordinary result ([`Claim::Lost`],
//! [`Cas::Lost`]), never an error. The document types live in the `catalog-schema` crate.

pub mod embedded;
pub mod error;
pub mod faults;
pub mod mongo;
pub mod quarantine;
pub mod retry;
pub mod uri;

use std::time::Duration;

use async_trait::async_trait;
use bson::DateTime;
pub use catalog_schema::{
    want_tag, CopyEntry, CopyStatus, DecodeError, Event, Failure, FailureClass, FileEntry,
    Heartbeat, Protocol, RunDoc, RunKey,
};

pub use error::CatalogError;
pub use quarantine::Quarantine;
pub use retry::{Backoff, Retrying};
pub use uri::{CatalogUri, CatalogUriError};

/// The manifest of a run, set once at its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Every file with size and hashes.
    pub files: Vec<FileEntry>,
    /// Total bytes.
    pub size: i64,
    /// The run digest.
    pub digest: String,
}

/// A run to register.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Detector and number.
    pub key: RunKey,
    /// The run name, if it has one.
    pub name: Option<String>,
    /// Start of data taking.
    pub start: Option<DateTime>,
    /// End of data taking.
    pub end: Option<DateTime>,
    /// The manifest, when known at registration.
    pub manifest: Option<Manifest>,
    /// The copies wanted (`"<site>/<type>"`, see [`want_tag`]). Registering an existing run
    /// adds those that have no copy yet.
    pub want: Vec<String>,
    /// Who registers (an owner id or user), for the audit trail.
    pub who: String,
}

/// What registering a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new run document was written.
    Created,
    /// The run was already there with the same identity and manifest (or a manifest was
    /// added to a run that had none).
    Existing,
    /// The run is already there with a different manifest or name; nothing was changed.
    Conflict {
        /// What differs.
        reason: String,
    },
}

/// Names one copy: the run, the site and the data type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopyRef {
    /// The run.
    pub run: RunKey,
    /// The site.
    pub host: String,
    /// The data type (`raw`, …).
    pub data_type: String,
}

impl CopyRef {
    /// A copy reference.
    pub fn new(run: RunKey, host: &str, data_type: &str) -> Self {
        CopyRef {
            run,
            host: host.to_string(),
            data_type: data_type.to_string(),
        }
    }
}

impl std::fmt::Display for CopyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}@{}", self.run, self.data_type, self.host)
    }
}

/// The origin copy of a run: already complete at the site that took the data.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginCopy {
    /// Which copy.
    pub copy: CopyRef,
    /// Directory at the site.
    pub location: String,
    /// `local` usually.
    pub protocol: Protocol,
    /// The manifest measured at the origin.
    pub manifest: Manifest,
    /// Who adds it.
    pub who: String,
}

/// A claim of a new copy at a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    /// Which copy.
    pub copy: CopyRef,
    /// Target directory or tape reference.
    pub location: String,
    /// `sftp`, `local` or `tape`.
    pub protocol: Protocol,
    /// The claimer's owner id.
    pub owner: String,
    /// How long the lease lasts before it must be renewed.
    pub lease_for: Duration,
}

/// The lease a winning claim holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHeld {
    /// The owner id.
    pub owner: String,
    /// When it runs out.
    pub expires: DateTime,
}

/// The result of a claim or a reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Claim {
    /// This caller owns the copy now.
    Won(LeaseHeld),
    /// Someone else got there first (or the expected state no longer holds).
    Lost,
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Cas {
    /// The expected state held and the change was written.
    Done,
    /// The expected state did not hold; nothing was written.
    Lost,
}

/// A copy that the caller of [`Catalog::mark_removing`] counts as protection for the copy it
/// marks: the mark is written only if, in the same conditional update, every protector is
/// still there as it was counted (`transferred`, same checksum, verified no earlier than
/// `verified_after`). Two sites purging the same run at once thus cannot both mark their
/// copies `removing` on the strength of each other's copy: the second finds the first's
/// copy no longer `transferred` and gets [`Cas::Lost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protector {
    /// The site holding the protecting copy (never the site of the copy being marked).
    pub host: String,
    /// Its data type.
    pub data_type: String,
    /// The checksum it must still carry (the run's digest).
    pub checksum: String,
    /// It must have been verified at or after this time (`None`: any verification time).
    pub verified_after: Option<DateTime>,
}

impl Protector {
    /// Whether `run` still has this protecting copy as it was counted.
    pub fn holds(&self, run: &RunDoc) -> bool {
        run.copy(&self.host, &self.data_type).is_some_and(|c| {
            c.status == CopyStatus::Transferred
                && c.checksum.as_deref() == Some(self.checksum.as_str())
                && match self.verified_after {
                    None => true,
                    Some(t) => c.verified_time.is_some_and(|v| v >= t),
                }
        })
    }
}

/// A move of a copy from one status to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The status the copy must be in.
    pub from: CopyStatus,
    /// The status it goes to (must satisfy [`catalog_schema::can_transition`]).
    pub to: CopyStatus,
    /// The lease owner. When `from` is a leased status (`transferring`, `verifying`) the
    /// copy must be leased by this owner (`None`: by anyone). When `from` holds no lease
    /// (`transferred`, `error`), the status alone is compared. Moving to a leased status
    /// gives the lease to this owner; moving anywhere else releases it.
    pub owner: Option<String>,
    /// The lease duration when moving to a leased status.
    pub lease_for: Duration,
    /// Checksum measured (sets `checksum` and `verified_time`).
    pub checksum: Option<String>,
    /// The failure to record (sets `last_error` and `error_class`; required context for
    /// `error`). `None` clears `error_class` (the text stays, as history). Set it with
    /// [`Transition::record_failure`].
    pub error: Option<Failure>,
    /// Tape details to record on the copy (sets `tape`, replacing what was there): the tape
    /// task's `{ backend, reference, volumes, verified }` on `verifying → transferred`.
    pub tape: Option<bson::Document>,
    /// Who does it and why, for the audit trail.
    pub who: String,
    /// Why, for the audit trail.
    pub reason: Option<String>,
}

impl Transition {
    /// A transition with nothing but the states, owner and actor.
    pub fn new(from: CopyStatus, to: CopyStatus, owner: Option<&str>, who: &str) -> Self {
        Transition {
            from,
            to,
            owner: owner.map(str::to_string),
            lease_for: Duration::from_secs(600),
            checksum: None,
            error: None,
            tape: None,
            who: who.to_string(),
            reason: None,
        }
    }

    /// Records `failure` with this transition: its class in `error_class`, its text (class
    /// tag first) in `last_error` and as the audit reason. Every place that fails a copy
    /// records it this way.
    pub fn record_failure(&mut self, failure: &Failure) {
        self.error = Some(failure.clone());
        self.reason = Some(failure.to_string());
    }
}

/// Selects runs for `ferry runs list`. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Has a copy at this site.
    pub host: Option<String>,
    /// Has a copy in this status (at `host` when given).
    pub status: Option<CopyStatus>,
    /// Has no `transferred` copy at this site.
    pub missing_at: Option<String>,
    /// Has fewer than this many `transferred` copies.
    pub fewer_copies_than: Option<u32>,
    /// Started on or after this time.
    pub since: Option<DateTime>,
    /// Started before this time.
    pub until: Option<DateTime>,
    /// Of this detector (a document without one is a `tpc` run).
    pub detector: Option<String>,
    /// Only the runs in this scope: one number, one name, a range of numbers.
    pub scope: RunScope,
    /// Only the runs after this key in the list's `(number, detector)` order: the next
    /// page, keyset-paged ([`page_after`] of the previous page).
    pub after: Option<RunKey>,
    /// At most this many runs (lowest number first).
    pub limit: Option<u32>,
}

/// A run named on the command line: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunSelector {
    /// By number (any detector).
    Number(i64),
    /// By name (any detector).
    Name(String),
}

/// "run 101", "run named 170501_1200".
impl std::fmt::Display for RunSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "run {n}"),
            Self::Name(name) => write!(f, "run named {name}"),
        }
    }
}

/// Which runs a work query returns, and which a cycle may touch (`--run N`, `--name X`,
/// `--from-run N --to-run M`). Part of the query on every back end, so one run asked for
/// is found however many runs come before it in a work list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunScope {
    /// Every run.
    #[default]
    All,
    /// One run number.
    Number(i64),
    /// One run name.
    Name(String),
    /// Run numbers in a range (`--from-run N --to-run M`, as massive-cax took).
    Range(RunRange),
}

/// Run numbers `from..=to`, either end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRange {
    /// The first run number in scope (`None`: from the first).
    pub from: Option<i64>,
    /// The last run number in scope, inclusive (`None`: to the last).
    pub to: Option<i64>,
}

impl RunRange {
    /// Whether `number` is in the range.
    pub fn contains(&self, number: i64) -> bool {
        self.from.is_none_or(|f| number >= f) && self.to.is_none_or(|t| number <= t)
    }
}

/// "every run", "run 101", "runs 100 to 200", "runs from 100".
impl std::fmt::Display for RunScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("every run"),
            Self::Number(n) => write!(f, "run {n}"),
            Self::Name(name) => write!(f, "run named {name}"),
            Self::Range(range) => range.fmt(f),
        }
    }
}

/// "runs 100 to 200", "runs from 100", "runs up to 200".
impl std::fmt::Display for RunRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.from, self.to) {
            (Some(from), Some(to)) => write!(f, "runs {from} to {to}"),
            (Some(from), None) => write!(f, "runs from {from}"),
            (None, Some(to)) => write!(f, "runs up to {to}"),
            (None, None) => f.write_str("every run"),
        }
    }
}

impl RunScope {
    /// Whether a run with this number and name is in scope.
    pub fn admits(&self, number: i64, name: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Number(n) => *n == number,
            Self::Name(want) => name == Some(want.as_str()),
            Self::Range(range) => range.contains(number),
        }
    }
}

/// The run catalogue.
///
/// Every method that changes state is a single conditional update: it names the state it
/// expects and reports [`Cas::Lost`] / [`Claim::Lost`] when that state no longer holds.
///
/// Every read decodes document by document. A run document that does not decode (another
/// tool wrote a number as a string, an unknown status, …) is left out of lists and pages
/// (a page is filled up from the documents after it, so it is short only at the end of
/// the list), handed to [`Catalog::quarantine`], and never written to: the state changes
/// are made only on runs read and decoded, and their filters also require every copy of
/// the run to carry a known status. [`Catalog::get_run`] of such a run is
/// [`CatalogError::Unreadable`].
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Where this catalogue is, password redacted (for messages).
    fn describe(&self) -> String;

    /// The run documents this catalogue could not read since it was opened: how many
    /// times one was skipped, and which.
    fn quarantine(&self) -> &Quarantine;

    // ---- registration ----

    /// Registers a run. Idempotent: registering it again with the same manifest is
    /// [`Registered::Existing`]; with a different manifest or name, [`Registered::Conflict`].
    async fn register_run(&self, run: &NewRun) -> Result<Registered, CatalogError>;

    /// Registers many new runs at once (bulk insert). Runs already present are reported as
    /// with [`Catalog::register_run`].
    async fn register_runs(&self, runs: &[NewRun]) -> Result<Vec<Registered>, CatalogError>;

    /// Adds the origin copy (`transferred`, checksum = digest) and sets the manifest if the
    /// run has none. [`Cas::Lost`] when a copy of that type at that site exists already or
    /// the run has a different manifest.
    async fn add_origin_copy(&self, origin: &OriginCopy) -> Result<Cas, CatalogError>;

    // ---- copies ----

    /// Claims a new copy at a destination: adds a `transferring` entry with a lease and
    /// removes the copy from `want`, in one conditional update, unless any copy of that type
    /// at that site exists.
    async fn claim_copy(&self, req: &ClaimRequest) -> Result<Claim, CatalogError>;

    /// Extends the lease held by `owner` to `now + lease_for`.
    async fn renew_lease(
        &self,
        copy: &CopyRef,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Cas, CatalogError>;

    /// Drops the lease held by `owner` (the copy keeps its status).
    async fn release_lease(&self, copy: &CopyRef, owner: &str) -> Result<Cas, CatalogError>;

    /// Moves a copy between states with compare-and-set on status and lease owner.
    /// An illegal transition is an error ([`CatalogError::IllegalTransition`]).
    async fn transition(&self, copy: &CopyRef, change: &Transition) -> Result<Cas, CatalogError>;

    /// Records a checksum and the time it was measured, if the copy is in `expected`
    /// (and, when given, leased by `owner`).
    async fn record_checksum(
        &self,
        copy: &CopyRef,
        expected: CopyStatus,
        owner: Option<&str>,
        checksum: &str,
        at: DateTime,
    ) -> Result<Cas, CatalogError>;

    /// Takes over a stalled copy: `transferring`, leased by `stale_owner`, lease expired
    /// before now. Exactly one reclaimer wins; `attempts` goes up by one.
    async fn reclaim_stalled(
        &self,
        copy: &CopyRef,
        stale_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError>;

    /// Takes over an abandoned copy: `transferring`, leased by `dead_owner`, **whatever the
    /// lease's expiry**. Only for a caller that has proved the holder's process is gone
    /// (same host; see `tasks::owner`), so a crashed agent's copy need not wait out its
    /// lease. Exactly one reclaimer wins; `attempts` goes up by one.
    async fn reclaim_abandoned(
        &self,
        copy: &CopyRef,
        dead_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError>;

    /// Takes over a copy left `transferring` with **no lease** (cax wrote such entries, and a
    /// cax that died left them there): only while it still has none, and only when its last
    /// recorded activity (`updated_time`, `creation_time`; its first element when a list) is
    /// before `idle_before` (nothing recorded counts as idle). Exactly one reclaimer wins;
    /// `attempts` goes up by one.
    async fn reclaim_unleased(
        &self,
        copy: &CopyRef,
        idle_before: DateTime,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError>;

    /// Moves a copy to `removing` (from `transferred` or `error`), with an audit event, only
    /// while every copy in `protected_by` is still there as counted (see [`Protector`]);
    /// all checked in the same conditional update. [`Cas::Lost`] when the copy is not in
    /// `from` or a protector no longer holds.
    async fn mark_removing(
        &self,
        copy: &CopyRef,
        from: CopyStatus,
        protected_by: &[Protector],
        who: &str,
        why: &str,
    ) -> Result<Cas, CatalogError>;

    /// Deletes a `removing` copy's entry, with an audit event.
    async fn remove_copy(&self, copy: &CopyRef, who: &str, why: &str) -> Result<Cas, CatalogError>;

    /// Wants a copy of `data_type` at `site` again (adds it to `want`), only if the run has
    /// no copy of that type there in any status. [`Cas::Lost`] when it has one, or when the
    /// copy is already wanted.
    async fn request_copy(
        &self,
        run: &RunKey,
        site: &str,
        data_type: &str,
    ) -> Result<Cas, CatalogError>;

    /// Writes (replaces) this agent's heartbeat.
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CatalogError>;

    /// Reads a site's heartbeat.
    async fn read_heartbeat(&self, site: &str) -> Result<Option<Heartbeat>, CatalogError>;

    /// How many runs have a copy at `host` in each status (every status, zeros included),
    /// counted on the index the work lists use: the agent's `ferry_site_copies` gauge.
    async fn copies_by_status(&self, host: &str) -> Result<Vec<(CopyStatus, u64)>, CatalogError>;

    /// Brings copy entries written by other tools (a DAQ, a collaborator's script) into the
    /// back end's work-list indexes; returns how many entries it adopted (at most `limit`
    /// runs are looked at per call). Call it once per cycle, before the work queries. Only
    /// index fields change; no copy's status, checksum or lease.
    async fn adopt_foreign_copies(&self, limit: u32) -> Result<u64, CatalogError>;

    // ---- work queries (each served by an index) ----
    //
    // Each returns one page: at most `limit` runs in (number, detector) order, starting
    // after the run `after` (the key of the last run of the previous page; `None`: from
    // the start). A page shorter than `limit` is the last. See [`page_after`]. The
    // `_scoped` forms take the runs asked for (`--run`, `--name`, a range) into the query
    // itself; the short forms ask for every run.

    /// Runs that want a copy of `data_type` at `dest` (`want` holds `"<dest>/<type>"`) and
    /// have a `transferred` copy of that type at one of `sources`, in `scope`. At most
    /// `limit`, lowest number first. Served by the `want` index; runs without `want` are
    /// never offered.
    async fn runs_needing_copy_scoped(
        &self,
        dest: &str,
        data_type: &str,
        sources: &[String],
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError>;

    /// Runs in `scope` with a copy at `host` in `status` (e.g. `verifying` copies to hash).
    async fn copies_in_status_scoped(
        &self,
        host: &str,
        status: CopyStatus,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError>;

    /// Runs in `scope` with a `transferred` copy at `host` and at least one `transferred`
    /// copy elsewhere: the candidates the purge task checks against its safety rules.
    async fn purge_candidates_scoped(
        &self,
        host: &str,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError>;

    /// Runs in `scope` with a `transferring` copy whose lease expired before `now` (at
    /// `host` when given).
    async fn stalled_copies_scoped(
        &self,
        host: Option<&str>,
        now: DateTime,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError>;

    /// [`Catalog::runs_needing_copy_scoped`] over every run.
    async fn runs_needing_copy(
        &self,
        dest: &str,
        data_type: &str,
        sources: &[String],
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.runs_needing_copy_scoped(dest, data_type, sources, &RunScope::All, after, limit)
            .await
    }

    /// [`Catalog::copies_in_status_scoped`] over every run.
    async fn copies_in_status(
        &self,
        host: &str,
        status: CopyStatus,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.copies_in_status_scoped(host, status, &RunScope::All, after, limit)
            .await
    }

    /// [`Catalog::purge_candidates_scoped`] over every run.
    async fn purge_candidates(
        &self,
        host: &str,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.purge_candidates_scoped(host, &RunScope::All, after, limit)
            .await
    }

    /// [`Catalog::stalled_copies_scoped`] over every run.
    async fn stalled_copies(
        &self,
        host: Option<&str>,
        now: DateTime,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.stalled_copies_scoped(host, now, &RunScope::All, after, limit)
            .await
    }

    // ---- collaborator queries ----

    /// One run by key. A document that does not decode is [`CatalogError::Unreadable`]
    /// (and counted in [`Catalog::quarantine`]).
    async fn get_run(&self, key: &RunKey) -> Result<Option<RunDoc>, CatalogError>;

    /// Runs by number or name (several when detectors share it).
    async fn find_runs(&self, sel: &RunSelector) -> Result<Vec<RunDoc>, CatalogError>;

    /// Runs matching a filter, by number.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunDoc>, CatalogError>;
}

/// Opens the catalogue at `uri` with the password from the environment only
/// ([`mongo::MongoConfig::from_env`]; indexes created) or the embedded SQLite file (created
/// when missing), wrapped in [`Retrying`]. Commands use [`resolve_catalog`] and
/// [`open_target`], which also honour the site map's catalogue settings.
pub async fn open(uri: &CatalogUri) -> Result<Box<dyn Catalog>, CatalogError> {
    open_target(&resolve_catalog(&CatalogRequest::uri(uri.clone()))?).await
}

/// Like [`open`] for clients that only read (`ferry runs`): creates no MongoDB indexes, so
/// a user with the `read` role suffices.
pub async fn open_for_reading(uri: &CatalogUri) -> Result<Box<dyn Catalog>, CatalogError> {
    open_target_for_reading(&resolve_catalog(&CatalogRequest::uri(uri.clone()))?).await
}

/// Opens a resolved catalogue ([`resolve_catalog`]); MongoDB indexes are created.
pub async fn open_target(target: &CatalogTarget) -> Result<Box<dyn Catalog>, CatalogError> {
    open_with(target, true).await
}

/// Opens a resolved catalogue for reading only (no index creation).
pub async fn open_target_for_reading(
    target: &CatalogTarget,
) -> Result<Box<dyn Catalog>, CatalogError> {
    open_with(target, false).await
}

async fn open_with(
    target: &CatalogTarget,
    create_indexes: bool,
) -> Result<Box<dyn Catalog>, CatalogError> {
    match &target.uri {
        CatalogUri::Mongo { .. } => {
            let mut config = mongo::MongoConfig::new(target.uri.clone());
            config.password.clone_from(&target.password);
            config.database.clone_from(&target.database);
            config.collection.clone_from(&target.collection);
            config.create_indexes = create_indexes;
            let backend = mongo::MongoCatalog::connect(config).await?;
            Ok(Box::new(Retrying::new(backend, Backoff::default())))
        }
        CatalogUri::Embedded { path } => {
            let backend = embedded::EmbeddedCatalog::open(path).await?;
            Ok(Box::new(Retrying::new(backend, Backoff::default())))
        }
    }
}

/// Environment variable holding the catalogue password.
pub const PASSWORD_ENV: &str = "FERRY_CATALOG_PASSWORD";
/// Environment variable naming a file whose first line is the catalogue password.
pub const PASSWORD_FILE_ENV: &str = "FERRY_CATALOG_PASSWORD_FILE";

/// The environment variable cax read the run database's password from; honoured for a
/// legacy cax.json only, after every Ferry setting.
pub const LEGACY_PASSWORD_ENV: &str = "MONGO_PASSWORD";
/// cax's run database and collection (`run.runs_new`): the defaults for a legacy cax.json.
pub const LEGACY_DATABASE: &str = "run";
/// See [`LEGACY_DATABASE`].
pub const LEGACY_COLLECTION: &str = "runs_new";

/// Everything that decides which catalogue a command opens and how it authenticates.
#[derive(Debug, Clone, Default)]
pub struct CatalogRequest {
    /// `--catalog URI`.
    pub flag: Option<String>,
    /// The site map's `catalog` section, when a site map was loaded and has one.
    pub site_map: Option<crate::config::CatalogSettings>,
    /// The site map is a legacy cax.json (cax's database, collection and `MONGO_PASSWORD`).
    pub legacy_cax: bool,
    /// An already chosen location (used instead of `flag`, `FERRY_CATALOG` and the map's).
    pub fixed: Option<CatalogUri>,
}

impl CatalogRequest {
    /// The request of a command: `--catalog` and the loaded site map (if any).
    pub fn new(flag: Option<&str>, loaded: Option<&crate::config::Loaded>) -> Self {
        CatalogRequest {
            flag: flag.map(str::to_string),
            site_map: loaded.and_then(|l| l.map.catalog.clone()),
            legacy_cax: loaded.is_some_and(|l| l.format == crate::config::SourceFormat::LegacyCax),
            fixed: None,
        }
    }

    /// A location chosen already, with only the environment's password settings.
    pub fn uri(uri: CatalogUri) -> Self {
        CatalogRequest {
            fixed: Some(uri),
            ..CatalogRequest::default()
        }
    }
}

/// Where the password in use comes from: named in errors and logs, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordOrigin {
    /// This environment variable.
    Env(String),
    /// This file (its first line).
    File(std::path::PathBuf),
    /// The URI's own user information.
    Uri,
    /// No password at all.
    None,
}

impl std::fmt::Display for PasswordOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordOrigin::Env(name) => write!(f, "environment variable {name}"),
            PasswordOrigin::File(path) => write!(f, "file {}", path.display()),
            PasswordOrigin::Uri => f.write_str("the URI"),
            PasswordOrigin::None => f.write_str("none"),
        }
    }
}

/// A catalogue ready to open: location, password, database and collection, each taken by
/// the documented order of precedence ([`resolve_catalog`]). `Display` shows the location
/// with its password redacted.
#[derive(Debug, Clone)]
pub struct CatalogTarget {
    /// Where it is.
    pub uri: CatalogUri,
    /// The password, when it does not come from the URI itself.
    pub password: Option<mongo::Password>,
    /// Where the password comes from.
    pub password_origin: PasswordOrigin,
    /// The database (`None`: the URI's, else `run`).
    pub database: Option<String>,
    /// The collection of run documents.
    pub collection: String,
}

impl std::fmt::Display for CatalogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

impl CatalogTarget {
    /// `text` with the password taken out (see [`CatalogUri::scrub`]), including one that
    /// came from a variable or a file.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = self.uri.scrub(text);
        if let Some(pw) = &self.password {
            if pw.expose().chars().count() >= 4 {
                out = out.replace(pw.expose(), uri::REDACTED);
            }
        }
        out
    }
}

/// [`resolve_catalog_with`] reading the process environment.
pub fn resolve_catalog(req: &CatalogRequest) -> Result<CatalogTarget, CatalogError> {
    resolve_catalog_with(req, |name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })
}

/// The one place that turns `--catalog`, the environment and the site map's `catalog`
/// section into the catalogue to open. Order of precedence (docs/catalog.md):
///
/// - location: `--catalog`, else `FERRY_CATALOG`, else the site map's `catalog.uri`, else
///   the embedded default;
/// - password: `FERRY_CATALOG_PASSWORD`, else the file named by
///   `FERRY_CATALOG_PASSWORD_FILE`, else the site map's `password_env` / `password_file`,
///   else (legacy cax.json) `MONGO_PASSWORD`, else the URI's own user information;
/// - database: the one the URI names in its path, else the site map's `database`, else
///   `run`;
/// - collection: the site map's `collection`, else `runs_new` for a legacy cax.json, else
///   `runs`.
///
/// An empty variable counts as unset. A variable the site map names that is unset or
/// empty, or a password file that cannot be read or is empty, is a
/// [`CatalogError::Config`] naming the variable or the path (never the secret); embedded
/// catalogues take no password, so nothing is read for them.
pub fn resolve_catalog_with(
    req: &CatalogRequest,
    env: impl Fn(&str) -> Option<String>,
) -> Result<CatalogTarget, CatalogError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let uri = match &req.fixed {
        Some(uri) => uri.clone(),
        None => match (
            &req.flag,
            var("FERRY_CATALOG").filter(|v| !v.trim().is_empty()),
        ) {
            (Some(flag), _) => CatalogUri::parse(flag)?,
            (None, Some(from_env)) => CatalogUri::parse(&from_env)?,
            (None, None) => match &req.site_map {
                Some(s) => CatalogUri::parse(&s.uri)?,
                None => CatalogUri::default_embedded(),
            },
        },
    };
    let collection = match (&req.site_map, req.legacy_cax) {
        (Some(s), _) => s.collection.clone(),
        (None, true) => LEGACY_COLLECTION.to_string(),
        (None, false) => "runs".to_string(),
    };
    if let CatalogUri::Embedded { .. } = uri {
        return Ok(CatalogTarget {
            uri,
            password: None,
            password_origin: PasswordOrigin::None,
            database: None,
            collection,
        });
    }
    let database = uri
        .database()
        .or_else(|| match (&req.site_map, req.legacy_cax) {
            (Some(s), _) => Some(s.database.clone()),
            (None, true) => Some(LEGACY_DATABASE.to_string()),
            (None, false) => None,
        });
    let config_error = |detail: String| CatalogError::Config {
        catalog: uri.to_string(),
        detail,
    };
    let from_file = |path: &std::path::Path, named_by: &str| {
        read_password_file(path).map_err(|why| {
            config_error(format!(
                "the password file {} ({named_by}) {why}",
                path.display()
            ))
        })
    };
    use crate::config::PasswordSource;
    let (password, origin) = if let Some(pw) = var(PASSWORD_ENV) {
        (Some(pw), PasswordOrigin::Env(PASSWORD_ENV.into()))
    } else if let Some(path) = var(PASSWORD_FILE_ENV) {
        let path = std::path::PathBuf::from(path);
        let pw = from_file(&path, PASSWORD_FILE_ENV)?;
        (Some(pw), PasswordOrigin::File(path))
    } else {
        match req.site_map.as_ref().map(|s| &s.password) {
            Some(PasswordSource::Env(name)) => match var(name) {
                Some(pw) => (Some(pw), PasswordOrigin::Env(name.clone())),
                None => {
                    return Err(config_error(format!(
                        "the site map's catalog.password_env names {name}, which is not set \
                         (or empty) in this environment"
                    )))
                }
            },
            Some(PasswordSource::File(path)) => {
                let pw = from_file(path, "the site map's catalog.password_file")?;
                (Some(pw), PasswordOrigin::File(path.clone()))
            }
            _ => match var(LEGACY_PASSWORD_ENV).filter(|_| req.legacy_cax) {
                Some(pw) => (Some(pw), PasswordOrigin::Env(LEGACY_PASSWORD_ENV.into())),
                None if uri.has_password() => (None, PasswordOrigin::Uri),
                None => (None, PasswordOrigin::None),
            },
        }
    };
    Ok(CatalogTarget {
        uri,
        password: password.map(mongo::Password::new),
        password_origin: origin,
        database,
        collection,
    })
}

/// The first line of a password file (trailing newline dropped); the error says why not
/// (never what the file holds).
fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err("is empty".into());
    }
    Ok(line.to_string())
}

/// The `after` key of the page that follows `page` (a page of a work query), or `None`
/// when `page` was the last (shorter than `limit`).
///
/// The page key is the run key in the work lists' order, `(number, detector)`: unique (the
/// catalogue's unique index), known to every back end and every tool, and the order the
/// tasks want (oldest runs first). `_id` would be unique too, but it is not the order the
/// lists are read in and the embedded catalogue has its own row ids.
pub fn page_after(page: &[RunDoc], limit: u32) -> Option<RunKey> {
    let full = limit > 0 && page.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    if full {
        page.last().map(RunDoc::key)
    } else {
        None
    }
}

/// A run document as MongoDB relaxed extended JSON, the document as stored: what
/// `ferry runs --json` prints and what `ferry serve` answers under `/api/`.
pub fn run_json(run: &RunDoc) -> Result<serde_json::Value, catalog_schema::ShapeError> {
    run.to_document()
        .map(|d| bson::Bson::Document(d).into_relaxed_extjson())
}

/// One page of readable runs from a back end's raw pages.
///
/// `fetch(skip, take)` reads at most `take` documents of the query after the first `skip`
/// and decodes each. Documents that do not decode go to `quarantine`; the page is then
/// filled up from the documents after them, so a page shorter than `limit` still means the
/// end of the list ([`page_after`]). `limit: None` reads everything at once.
pub(crate) async fn fill_page<F, Fut>(
    limit: Option<u32>,
    quarantine: &Quarantine,
    mut fetch: F,
) -> Result<Vec<RunDoc>, CatalogError>
where
    F: FnMut(u64, Option<u32>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Result<RunDoc, DecodeError>>, CatalogError>>,
{
    let mut out: Vec<RunDoc> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut skip = 0u64;
    loop {
        let take = match limit {
            Some(l) => {
                let have = u32::try_from(out.len()).unwrap_or(u32::MAX);
                Some(l.saturating_sub(have))
            }
            None => None,
        };
        if take == Some(0) {
            return Ok(out);
        }
        let batch = fetch(skip, take).await?;
        let read = batch.len();
        skip = skip.saturating_add(u64::try_from(read).unwrap_or(u64::MAX));
        let mut skipped = false;
        for doc in batch {
            match doc {
                // A run read twice (documents inserted while the page was read) once.
                Ok(run) => {
                    if seen.insert(run.key()) {
                        out.push(run);
                    }
                }
                Err(e) => {
                    quarantine.skip(e);
                    skipped = true;
                }
            }
        }
        let short = match take {
            Some(t) => read < usize::try_from(t).unwrap_or(usize::MAX),
            None => true,
        };
        if short || !skipped {
            return Ok(out);
        }
    }
}

/// `now + d` as a BSON date (saturating).
pub(crate) fn after(now: DateTime, d: Duration) -> DateTime {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(now.timestamp_millis().saturating_add(ms))
}

impl OriginCopy {
    /// The `data[]` entry it adds: `transferred`, checksum = digest, verified now.
    pub fn entry(&self, now: DateTime) -> CopyEntry {
        let mut c = CopyEntry::new(
            &self.copy.host,
            &self.copy.data_type,
            CopyStatus::Transferred,
            now,
        );
        c.location = Some(self.location.clone());
        c.protocol = Some(self.protocol.clone());
        c.checksum = Some(self.manifest.digest.clone());
        c.verified_time = Some(now);
        c
    }

    /// Its audit event.
    pub fn event(&self) -> Event {
        Event::copy(
            &self.who,
            "copy-added",
            &self.copy.host,
            &self.copy.data_type,
            None,
        )
    }
}

impl ClaimRequest {
    /// The `data[]` entry a won claim adds: `transferring`, leased until `now + lease_for`,
    /// first attempt.
    pub fn entry(&self, now: DateTime) -> CopyEntry {
        let mut c = CopyEntry::new(
            &self.copy.host,
            &self.copy.data_type,
            CopyStatus::Transferring,
            now,
        );
        c.location = Some(self.location.clone());
        c.protocol = Some(self.protocol.clone());
        c.lease = Some(catalog_schema::Lease {
            owner: self.owner.clone(),
            expires: after(now, self.lease_for),
        });
        c.attempts = 1;
        c
    }

    /// Its audit event.
    pub fn event(&self) -> Event {
        Event::copy(
            &self.owner,
            "claimed",
            &self.copy.host,
            &self.copy.data_type,
            None,
        )
    }
}

impl Transition {
    /// Its audit event, as `action` (`status`, `removing`) on `copy`.
    pub fn event(&self, copy: &CopyRef, action: &str) -> Event {
        let reason = match &self.reason {
            Some(r) => format!("{} -> {}: {r}", self.from, self.to),
            None => format!("{} -> {}", self.from, self.to),
        };
        let mut event = Event::copy(&self.who, action, &copy.host, &copy.data_type, Some(reason));
        event.error_class = self.error.as_ref().map(|f| f.class);
        event
    }
}

/// The event of a reclaim of a stalled copy.
pub(crate) fn reclaim_event(copy: &CopyRef, stale_owner: &str, new_owner: &str) -> Event {
    Event::copy(
        new_owner,
        "reclaimed",
        &copy.host,
        &copy.data_type,
        Some(format!("lease of {stale_owner} expired")),
    )
}

/// The event of a takeover of an abandoned copy (its holder's process is gone).
pub(crate) fn unleased_event(copy: &CopyRef, new_owner: &str) -> Event {
    Event::copy(
        new_owner,
        "reclaimed",
        &copy.host,
        &copy.data_type,
        Some("left transferring with no lease (by cax?) and idle past the grace period".into()),
    )
}

/// Whether a `transferring` copy without a lease has been idle since before `idle_before`.
pub fn unleased_and_idle(c: &catalog_schema::CopyEntry, idle_before: DateTime) -> bool {
    c.status == catalog_schema::CopyStatus::Transferring
        && c.lease.is_none()
        && [c.updated_time, c.creation_time]
            .into_iter()
            .flatten()
            .all(|t| t < idle_before)
}

pub(crate) fn abandoned_event(copy: &CopyRef, dead_owner: &str, new_owner: &str) -> Event {
    Event::copy(
        new_owner,
        "reclaimed",
        &copy.host,
        &copy.data_type,
        Some(format!("holder {dead_owner} is gone (its process exited)")),
    )
}

/// The transition `mark_removing` performs.
pub(crate) fn removing_transition(from: CopyStatus, who: &str, why: &str) -> Transition {
    let mut t = Transition::new(from, CopyStatus::Removing, None, who);
    t.reason = Some(why.to_string());
    t
}

/// What registering `new` over an `existing` run must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RegisterCheck {
    /// Nothing: same identity and manifest.
    Same,
    /// Set the manifest (the run has none yet).
    AddManifest,
    /// Refuse.
    Conflict(String),
}

/// Compares a registration with the run already in the catalogue.
pub(crate) fn check_registration(existing: &RunDoc, new: &NewRun) -> RegisterCheck {
    if existing.key() != new.key {
        return RegisterCheck::Conflict(format!(
            "name {:?} already belongs to run {}",
            new.name.as_deref().unwrap_or(""),
            existing.key()
        ));
    }
    if let (Some(a), Some(b)) = (&existing.name, &new.name) {
        if a != b {
            return RegisterCheck::Conflict(format!(
                "run {} is registered with name {a:?}, not {b:?}",
                new.key
            ));
        }
    }
    match (&existing.digest, &new.manifest) {
        (Some(a), Some(m)) if *a != m.digest => RegisterCheck::Conflict(format!(
            "run {} is registered with digest {a}, not {}",
            new.key, m.digest
        )),
        (None, Some(_)) => RegisterCheck::AddManifest,
        _ => RegisterCheck::Same,
    }
}

/// The document a new registration writes.
pub(crate) fn new_run_doc(new: &NewRun) -> RunDoc {
    let mut run = RunDoc::new(&new.key.detector, new.key.number, new.name.as_deref());
    run.start = new.start;
    run.end = new.end;
    if let Some(m) = &new.manifest {
        run.files.clone_from(&m.files);
        run.size = Some(m.size);
        run.digest = Some(m.digest.clone());
    }
    run.want = missing_wants(&run, &new.want);
    run.push_event(Event::run(&new.who, "registered", None));
    run
}

/// The wants of `wanted` that `run` neither has a copy for (any status) nor wants already,
/// without repeats, in the order given.
pub(crate) fn missing_wants(run: &RunDoc, wanted: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in wanted {
        let has_copy = w
            .split_once('/')
            .is_some_and(|(site, ty)| run.copy(site, ty).is_some());
        if !has_copy && !run.want.contains(w) && !out.contains(w) {
            out.push(w.clone());
        }
    }
    out
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use crate::config::{CatalogSettings, PasswordSource};
    use std::collections::HashMap;

    fn settings(password: PasswordSource) -> CatalogSettings {
        CatalogSettings {
            uri: "mongodb://ferry@db.example/".into(),
            password,
            database: "xenon".into(),
            collection: "runs_ferry".into(),
        }
    }

    fn resolve(req: &CatalogRequest, vars: &[(&str, &str)]) -> Result<CatalogTarget, CatalogError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        resolve_catalog_with(req, |n| vars.get(n).cloned())
    }

    fn map_request(password: PasswordSource) -> CatalogRequest {
        CatalogRequest {
            site_map: Some(settings(password)),
            ..CatalogRequest::default()
        }
    }

    #[test]
    fn the_site_maps_password_env_database_and_collection_are_used() {
        let t = resolve(
            &map_request(PasswordSource::Env("XENON_DB_PW".into())),
            &[("XENON_DB_PW", "s3cret-pw")],
        )
        .unwrap();
        assert_eq!(t.password.as_ref().unwrap().expose(), "s3cret-pw");
        assert_eq!(t.password_origin, PasswordOrigin::Env("XENON_DB_PW".into()));
        assert_eq!(t.database.as_deref(), Some("xenon"));
        assert_eq!(t.collection, "runs_ferry");
    }

    #[test]
    fn an_unset_password_env_is_named_and_no_secret_shown() {
        let e = resolve(&map_request(PasswordSource::Env("XENON_DB_PW".into())), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("XENON_DB_PW") && e.contains("not set"), "{e}");
    }

    #[test]
    fn the_unset_password_env_message_reads_as_documented() {
        let e = resolve(&map_request(PasswordSource::Env("XENON_DB_PW".into())), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "the site map's catalog.password_env names XENON_DB_PW, which is not set \
                 (or empty) in this environment"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_password_file_is_named() {
        let path = std::path::PathBuf::from("/nonexistent/ferry-pw");
        let e = resolve(&map_request(PasswordSource::File(path)), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ferry-pw") && e.contains("cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn the_password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-the-file\nsecond line\n").unwrap();
        let t = resolve(&map_request(PasswordSource::File(path.clone())), &[]).unwrap();
        assert_eq!(t.password.unwrap().expose(), "from-the-file");
        assert_eq!(t.password_origin, PasswordOrigin::File(path));
    }

    #[test]
    fn the_environment_password_wins_over_the_site_map() {
        let t = resolve(
            &map_request(PasswordSource::Env("UNSET_HERE".into())),
            &[("FERRY_CATALOG_PASSWORD", "env-pw")],
        )
        .unwrap();
        assert_eq!(t.password.unwrap().expose(), "env-pw");
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_the_site_map_and_its_database_wins() {
        let req = CatalogRequest {
            flag: Some("mongodb://ferry@other.example/named".into()),
            ..map_request(PasswordSource::None)
        };
        let t = resolve(&req, &[("FERRY_CATALOG", "mongodb://env.example/")]).unwrap();
        assert!(t.uri.to_string().contains("other.example"));
        assert_eq!(t.database.as_deref(), Some("named"));
        assert_eq!(t.collection, "runs_ferry");
    }

    #[test]
    fn a_legacy_cax_json_reads_cax_database_collection_and_mongo_password() {
        let req = CatalogRequest {
            flag: Some("mongodb://eb@daq.example/".into()),
            legacy_cax: true,
            ..CatalogRequest::default()
        };
        let t = resolve(&req, &[("MONGO_PASSWORD", "cax-pw")]).unwrap();
        assert_eq!(t.password.unwrap().expose(), "cax-pw");
        assert_eq!(t.database.as_deref(), Some("run"));
        assert_eq!(t.collection, "runs_new");
        // Ferry's own map does not read cax's variable.
        let req = CatalogRequest {
            legacy_cax: false,
            ..req
        };
        assert!(resolve(&req, &[("MONGO_PASSWORD", "cax-pw")])
            .unwrap()
            .password
            .is_none());
    }

    #[test]
    fn an_embedded_catalogue_reads_no_password() {
        let req = CatalogRequest {
            site_map: Some(CatalogSettings {
                uri: "sqlite:/tmp/x.sqlite".into(),
                ..settings(PasswordSource::Env("UNSET_HERE".into()))
            }),
            ..CatalogRequest::default()
        };
        assert!(resolve(&req, &[]).unwrap().password.is_none());
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    /// `ferry recall` logged `request=Request { run: Number(101), to: None, from: None }`.
    #[test]
    fn a_recalled_run_and_a_scope_read_as_words_not_rust_debug() {
        let shown = [
            (RunSelector::Number(101).to_string(), "run 101"),
            (
                RunSelector::Name("170501_1200".into()).to_string(),
                "run named 170501_1200",
            ),
            (RunScope::All.to_string(), "every run"),
            (RunScope::Number(7).to_string(), "run 7"),
            (
                RunScope::Range(RunRange {
                    from: Some(100),
                    to: Some(200),
                })
                .to_string(),
                "runs 100 to 200",
            ),
            (
                RunScope::Range(RunRange {
                    from: None,
                    to: Some(200),
                })
                .to_string(),
                "runs up to 200",
            ),
        ];
        for (text, words) in shown {
            assert_eq!(text, words);
            assert!(!text.contains(['{', '(']), "{text}");
        }
    }
}
