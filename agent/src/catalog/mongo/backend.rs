//! [`MongoCatalog`]: the [`Catalog`] trait over a MongoDB collection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{doc, Bson, DateTime, Document};
use catalog_schema::{
    want_tag, CopyStatus, DecodeError, Event, Heartbeat, RunDoc, RunKey, MAX_EVENTS,
};
use futures::TryStreamExt;
use mongodb::options::{ClientOptions, Credential, Hint, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::config::MongoConfig;
use super::errors::{classify, is_duplicate_key};
use crate::catalog::{
    abandoned_event, after, check_registration, fill_page, missing_wants, new_run_doc,
    reclaim_event, removing_transition, unleased_and_idle, unleased_event, Cas, Catalog,
    CatalogError, Claim, ClaimRequest, CopyRef, LeaseHeld, NewRun, OriginCopy, Protector,
    Quarantine, RegisterCheck, Registered, RunFilter, RunScope, RunSelector, Transition,
};

/// The per-copy index field Ferry keeps next to `status`: `"<host>/<status>"` (see
/// [`host_status`]).
const HOST_STATUS_FIELD: &str = "host_status";
/// Index the stalled-copy query uses.
const STATUS_EXPIRES: &str = "data_status_lease_expires";

/// The MongoDB catalogue.
#[derive(Clone)]
pub struct MongoCatalog {
    shown: String,
    db: Database,
    runs: Collection<Document>,
    heartbeats: Collection<Document>,
    adoption: Arc<Mutex<Adoption>>,
    quarantine: Arc<Quarantine>,
}

/// Where [`Catalog::adopt_foreign_copies`] left off.
///
/// A query for entries *without* the index field cannot be a point lookup, and the
/// MongoDB-wire server of the tests answers it by reading every run (2 s for 100,000). So
/// each call looks only at documents inserted since the previous call (`_id` range:
/// ObjectIds begin with their creation second; a margin covers clients whose clocks lag),
/// and a full sweep runs at start-up and then every [`FULL_SWEEP`]. A foreign tool that
/// adds a copy to an *old* document is therefore adopted within that period.
#[derive(Debug, Default)]
struct Adoption {
    /// When the next full sweep is due (`None`: now).
    next_full: Option<Instant>,
    /// Start of the last completed call.
    since: Option<DateTime>,
}

/// How often adoption looks at every run.
const FULL_SWEEP: Duration = Duration::from_secs(3600);
/// How far before the last call an inserted document's ObjectId may be stamped.
const CLOCK_MARGIN: Duration = Duration::from_secs(600);

impl std::fmt::Debug for MongoCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoCatalog({})", self.shown)
    }
}

/// A daemon query as sent to the server: filter, sort and index hint. Shared by the query
/// methods and [`MongoCatalog::explain_daemon_queries`], so the test explains exactly what
/// the daemon runs.
struct Query {
    filter: Document,
    /// `None` where the planner's choice is certain (one equality on a single-field index)
    /// and a hint would only cost time (the stand-in server is slow with hints).
    hint: Option<&'static str>,
}

impl MongoCatalog {
    /// Connects, checks the server answers (bounded by the server-selection timeout) and
    /// creates the indexes.
    pub async fn connect(config: MongoConfig) -> Result<Self, CatalogError> {
        let shown = config.uri.to_string();
        let mut options = ClientOptions::parse(config.uri.expose())
            .await
            .map_err(|e| match classify(&shown, "parse connection string", e) {
                CatalogError::Database { detail, .. } => CatalogError::Config {
                    catalog: shown.clone(),
                    detail,
                },
                other => other,
            })?;
        // Timeouts given in the URI (`connectTimeoutMS`, `serverSelectionTimeoutMS`) win.
        options
            .connect_timeout
            .get_or_insert(config.connect_timeout);
        options
            .server_selection_timeout
            .get_or_insert(config.server_selection_timeout);
        options.app_name.get_or_insert_with(|| "ferry".to_string());
        if let Some(pw) = &config.password {
            let cred = options.credential.get_or_insert_with(Credential::default);
            if cred.username.is_none() {
                return Err(CatalogError::Config {
                    catalog: shown,
                    detail: "a password was given but the URI names no user".into(),
                });
            }
            cred.password = Some(pw.expose().to_string());
        }
        let db_name = config
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "run".to_string());
        let client = Client::with_options(options).map_err(|e| classify(&shown, "connect", e))?;
        let db = client.database(&db_name);
        let catalog = MongoCatalog {
            runs: db.collection(&config.collection),
            heartbeats: db.collection(&config.heartbeats),
            db,
            shown,
            adoption: Arc::default(),
            quarantine: Arc::default(),
        };
        catalog
            .db
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| classify(&catalog.shown, "ping", e))?;
        if config.create_indexes {
            catalog.create_indexes().await?;
        }
        Ok(catalog)
    }

    /// Creates `catalog_schema::RUN_INDEXES` (idempotent).
    async fn create_indexes(&self) -> Result<(), CatalogError> {
        let models = catalog_schema::RUN_INDEXES.iter().map(|spec| {
            let mut keys = Document::new();
            for (field, dir) in spec.keys {
                keys.insert(*field, *dir);
            }
            let partial = spec
                .partial_type
                .map(|(field, ty)| doc! { field: { "$type": ty } });
            let options = IndexOptions::builder()
                .name(spec.name.to_string())
                .unique(spec.unique.then_some(true))
                .partial_filter_expression(partial)
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        });
        self.runs
            .create_indexes(models)
            .await
            .map_err(|e| classify(&self.shown, "create indexes", e))?;
        Ok(())
    }

    /// The raw `explain` output (queryPlanner) of every query the daemon issues.
    pub async fn explain_daemon_queries(&self) -> Result<Vec<(String, Document)>, CatalogError> {
        let now = DateTime::now();
        let sources = ["a".to_string(), "b".to_string()];
        let key = RunKey::new("tpc", 10);
        let at = Some(&key);
        let all = &RunScope::All;
        let queries = [
            (
                "runs_needing_copy",
                needing_copy_query("c", "raw", &sources, all, None),
            ),
            (
                "runs_needing_copy_paged",
                needing_copy_query("c", "raw", &sources, all, at),
            ),
            (
                "copies_in_status",
                in_status_query("a", CopyStatus::Verifying, all, None),
            ),
            (
                "copies_in_status_paged",
                in_status_query("a", CopyStatus::Verifying, all, at),
            ),
            ("purge_candidates", purge_query("a", all, None)),
            ("purge_candidates_paged", purge_query("a", all, at)),
            ("stalled_copies", stalled_query(None, now, all, None)),
            ("stalled_copies_paged", stalled_query(None, now, all, at)),
            (
                "stalled_copies_at",
                stalled_query(Some("a"), now, all, None),
            ),
            (
                "stalled_copies_at_paged",
                stalled_query(Some("a"), now, all, at),
            ),
            ("adopt_foreign_copies_recent", adopt_recent_query(now)),
            ("adopt_foreign_copies_sweep", adopt_sweep_query()),
        ];
        let mut out = Vec::new();
        for (name, q) in queries {
            let mut find = doc! {
                "find": self.runs.name(),
                "filter": q.filter,
                "sort": {"number": 1, "detector": 1},
                "limit": 100_i64,
            };
            if let Some(h) = q.hint {
                find.insert("hint", h);
            }
            let cmd = doc! { "explain": find, "verbosity": "queryPlanner" };
            let plan = self
                .db
                .run_command(cmd)
                .await
                .map_err(|e| classify(&self.shown, &format!("explain {name}"), e))?;
            out.push((name.to_string(), plan));
        }
        Ok(out)
    }

    fn key_filter(key: &RunKey) -> Document {
        doc! { "detector": detector_match(&key.detector), "number": key.number }
    }

    /// Filter for one run whose copy matches `elem` (an `$elemMatch` on `data`).
    fn copy_filter(copy: &CopyRef, mut elem: Document) -> Document {
        elem.insert("host", &copy.host);
        elem.insert("type", type_match(&copy.data_type));
        let mut f = Self::key_filter(&copy.run);
        f.insert("data", doc! { "$elemMatch": elem });
        f
    }

    fn bson_of<T: serde::Serialize>(&self, what: &str, v: &T) -> Result<Bson, CatalogError> {
        bson::to_bson(v).map_err(|e| CatalogError::Database {
            catalog: self.shown.clone(),
            op: format!("encode {what}"),
            detail: e.to_string(),
            retryable: false,
        })
    }

    fn push_event(&self, update: &mut Document, event: &Event) -> Result<(), CatalogError> {
        let ev = self.bson_of("event", event)?;
        let slice = -i64::try_from(MAX_EVENTS).unwrap_or(100);
        let push = doc! { "events": { "$each": [ev], "$slice": slice } };
        match update.get_document_mut("$push") {
            Ok(existing) => existing.extend(push),
            Err(_) => {
                update.insert("$push", push);
            }
        }
        Ok(())
    }

    /// Gives the copy matching `elem` (a reclaim's filter) to `new_owner` for `lease_for`,
    /// counting an attempt, with `event`: one conditional update.
    #[allow(clippy::too_many_arguments)]
    async fn take_lease(
        &self,
        copy: &CopyRef,
        elem: Document,
        new_owner: &str,
        lease_for: Duration,
        now: DateTime,
        event: &Event,
        op: &str,
    ) -> Result<Claim, CatalogError> {
        let expires = after(now, lease_for);
        let mut update = doc! {
            "$set": {
                "data.$.lease": { "owner": new_owner, "expires": expires },
                "data.$.updated_time": now,
            },
            "$inc": { "data.$.attempts": 1 },
        };
        self.push_event(&mut update, event)?;
        let filter = Self::copy_filter(copy, elem);
        Ok(
            match self.update(&format!("{op} {copy}"), filter, update).await? {
                Cas::Done => Claim::Won(LeaseHeld {
                    owner: new_owner.to_string(),
                    expires,
                }),
                Cas::Lost => Claim::Lost,
            },
        )
    }

    /// One conditional update; `Done` iff exactly one document changed. The filter is
    /// [`guarded`]: it never matches a run with a copy of unknown status.
    async fn update(
        &self,
        op: &str,
        filter: Document,
        update: Document,
    ) -> Result<Cas, CatalogError> {
        let r = self
            .runs
            .update_one(guarded(filter), update)
            .await
            .map_err(|e| classify(&self.shown, op, e))?;
        Ok(if r.modified_count == 1 {
            Cas::Done
        } else {
            Cas::Lost
        })
    }

    /// The documents `filter` finds, in the work lists' order, after the first `skip`, at
    /// most `take`, each decoded on its own.
    async fn find_raw(
        &self,
        op: &str,
        filter: Document,
        hint: Option<&str>,
        skip: u64,
        take: Option<u32>,
    ) -> Result<Vec<Result<RunDoc, DecodeError>>, CatalogError> {
        let mut find = self
            .runs
            .find(filter)
            .sort(doc! {"number": 1, "detector": 1});
        if let Some(h) = hint {
            find = find.hint(Hint::Name(h.to_string()));
        }
        if skip > 0 {
            find = find.skip(skip);
        }
        if let Some(n) = take {
            find = find.limit(i64::from(n));
        }
        let docs: Vec<Document> = find
            .await
            .map_err(|e| classify(&self.shown, op, e))?
            .try_collect()
            .await
            .map_err(|e| classify(&self.shown, op, e))?;
        Ok(docs.into_iter().map(decode).collect())
    }

    /// The readable runs `filter` finds, at most `limit`; the others are quarantined and
    /// the page filled up from the documents after them ([`fill_page`]).
    async fn find_docs(
        &self,
        op: &str,
        filter: Document,
        hint: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        fill_page(limit, &self.quarantine, |skip, take| {
            self.find_raw(op, filter.clone(), hint, skip, take)
        })
        .await
    }

    async fn run_query(&self, op: &str, q: Query, limit: u32) -> Result<Vec<RunDoc>, CatalogError> {
        self.find_docs(op, q.filter, q.hint, Some(limit)).await
    }

    async fn transition_as(
        &self,
        copy: &CopyRef,
        t: &Transition,
        action: &str,
    ) -> Result<Cas, CatalogError> {
        if !catalog_schema::can_transition(t.from, t.to) {
            return Err(CatalogError::IllegalTransition {
                catalog: self.shown.clone(),
                copy: copy.to_string(),
                from: t.from,
                to: t.to,
            });
        }
        let now = DateTime::now();
        let mut elem = doc! { "status": t.from.as_str() };
        if let (Some(owner), true) = (&t.owner, t.from.is_leased()) {
            elem.insert("lease.owner", owner);
        }
        let mut set = doc! {
            "data.$.status": t.to.as_str(),
            "data.$.host_status": host_status(&copy.host, t.to),
            "data.$.updated_time": now,
        };
        if let Some(sum) = &t.checksum {
            set.insert("data.$.checksum", sum);
            set.insert("data.$.verified_time", now);
        }
        let mut unset = doc! { "data.$.lease": "" };
        match &t.error {
            Some(f) => {
                set.insert("data.$.last_error", f.to_string());
                set.insert("data.$.error_class", f.class.as_str());
            }
            // A transition that records no failure clears the class (the text stays).
            None => {
                unset.insert("data.$.error_class", "");
            }
        }
        if let Some(tape) = &t.tape {
            set.insert("data.$.tape", tape.clone());
        }
        let mut update = Document::new();
        if let (Some(owner), true) = (&t.owner, t.to.is_leased()) {
            set.insert(
                "data.$.lease",
                doc! { "owner": owner, "expires": after(now, t.lease_for) },
            );
            unset.remove("data.$.lease");
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        update.insert("$set", set);
        if t.to == CopyStatus::Transferring {
            update.insert("$inc", doc! { "data.$.attempts": 1 });
        }
        let event = t.event(copy, action);
        self.push_event(&mut update, &event)?;
        self.update(
            &format!("{action} {copy}"),
            Self::copy_filter(copy, elem),
            update,
        )
        .await
    }

    /// Registers one run that `insert` refused as a duplicate.
    async fn register_existing(&self, new: &NewRun) -> Result<Registered, CatalogError> {
        let mut filter = doc! { "detector": detector_match(&new.key.detector) };
        let mut or = vec![Bson::Document(doc! { "number": new.key.number })];
        if let Some(name) = &new.name {
            or.push(Bson::Document(doc! { "name": name }));
        }
        filter.insert("$or", or);
        let (found, unreadable): (Vec<_>, Vec<_>) = self
            .find_raw("register (read existing)", filter, None, 0, None)
            .await?
            .into_iter()
            .partition(Result::is_ok);
        let found: Vec<RunDoc> = found.into_iter().filter_map(Result::ok).collect();
        let unreadable: Vec<DecodeError> = unreadable.into_iter().filter_map(Result::err).collect();
        let existing = found
            .iter()
            .find(|r| r.number == new.key.number)
            .or_else(|| found.first());
        let Some(existing) = existing else {
            if let Some(e) = unreadable.into_iter().next() {
                // The run is there, but Ferry cannot read it: it is left as it is.
                self.quarantine.skip(e.clone());
                return Ok(Registered::Conflict {
                    reason: format!("the catalogue's {e}; not changed"),
                });
            }
            return Err(CatalogError::Database {
                catalog: self.shown.clone(),
                op: format!("register {}", new.key),
                detail: "duplicate key but no conflicting run found".into(),
                retryable: true,
            });
        };
        let check = check_registration(existing, new);
        if !matches!(check, RegisterCheck::Conflict(_)) {
            // Each want is added only while no copy exists (conditional, so idempotent and
            // safe against a claim in between).
            for tag in missing_wants(existing, &new.want) {
                if let Some((site, ty)) = tag.split_once('/') {
                    // `Lost`: a copy appeared or someone else added the want. Either is fine.
                    let _ = self.request_copy(&new.key, site, ty).await?;
                }
            }
        }
        match check {
            RegisterCheck::Same => Ok(Registered::Existing),
            RegisterCheck::Conflict(reason) => Ok(Registered::Conflict { reason }),
            RegisterCheck::AddManifest => {
                let Some(m) = &new.manifest else {
                    return Ok(Registered::Existing);
                };
                let mut filter = Self::key_filter(&new.key);
                filter.insert(
                    "$or",
                    vec![doc! {"digest": {"$exists": false}}, doc! {"digest": null}],
                );
                let mut update = doc! { "$set": {
                    "files": self.bson_of("manifest", &m.files)?,
                    "size": m.size,
                    "digest": &m.digest,
                }};
                self.push_event(&mut update, &Event::run(&new.who, "manifest", None))?;
                match self
                    .update(&format!("register {}", new.key), filter, update)
                    .await?
                {
                    Cas::Done => Ok(Registered::Existing),
                    // Someone set a manifest in between: compare with theirs.
                    Cas::Lost => Box::pin(self.register_existing(new)).await,
                }
            }
        }
    }
}

/// The key of a raw document (`detector` defaults to `tpc`; `number` may be any integer
/// type or a whole double).
fn raw_key(d: &Document) -> Option<RunKey> {
    let number = match d.get("number")? {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(x) if x.fract() == 0.0 => *x as i64,
        _ => return None,
    };
    let detector = d
        .get_str("detector")
        .unwrap_or(catalog_schema::DEFAULT_DETECTOR);
    Some(RunKey::new(detector, number))
}

/// Matches the detector; documents without one are `tpc` (cax's DAQ wrote none).
fn detector_match(detector: &str) -> Bson {
    if detector == catalog_schema::DEFAULT_DETECTOR {
        Bson::Document(doc! { "$in": [detector, Bson::Null] })
    } else {
        Bson::String(detector.to_string())
    }
}

/// Matches a copy's data type; entries without one are `raw`.
fn type_match(data_type: &str) -> Bson {
    if data_type == "raw" {
        Bson::Document(doc! { "$in": [data_type, Bson::Null] })
    } else {
        Bson::String(data_type.to_string())
    }
}

/// Adds the page condition to a work query's filter: runs after `after` in the lists'
/// order, `(number, detector)`. Documents without `detector` (`tpc` runs a DAQ wrote) sort
/// first among their number's runs on the server but carry the key `tpc`: a page ending
/// on one continues after `(number, "tpc")` (see docs/architecture.md).
fn paged(filter: Document, scope: &RunScope, after: Option<&RunKey>) -> Document {
    let mut filter = scoped(filter, scope);
    if let Some(k) = after {
        filter.insert(
            "$or",
            vec![
                doc! { "number": { "$gt": k.number } },
                doc! { "number": k.number, "detector": { "$gt": &k.detector } },
            ],
        );
    }
    filter
}

/// Adds the runs asked for to a work query's filter: `number` (an equality or a range) or
/// `name`, which the `number` and `name` indexes serve.
fn scoped(mut filter: Document, scope: &RunScope) -> Document {
    match scope {
        RunScope::All => {}
        RunScope::Number(n) => {
            filter.insert("number", *n);
        }
        RunScope::Name(name) => {
            filter.insert("name", name.as_str());
        }
        RunScope::Range(r) => {
            let mut range = Document::new();
            if let Some(f) = r.from {
                range.insert("$gte", f);
            }
            if let Some(t) = r.to {
                range.insert("$lte", t);
            }
            if !range.is_empty() {
                filter.insert("number", range);
            }
        }
    }
    filter
}

/// A query's index hint, dropped when one run is asked for: the `number` or `name` index
/// then finds it among however many runs the hinted index would gather.
fn hint_for(scope: &RunScope, hint: &'static str) -> Option<&'static str> {
    match scope {
        RunScope::Number(_) | RunScope::Name(_) => None,
        RunScope::All | RunScope::Range(_) => Some(hint),
    }
}

fn needing_copy_query(
    dest: &str,
    data_type: &str,
    sources: &[String],
    scope: &RunScope,
    after: Option<&RunKey>,
) -> Query {
    Query {
        filter: paged(
            doc! {
                "want": want_tag(dest, data_type),
                "data": { "$elemMatch": {
                    "host": { "$in": sources }, "status": "transferred",
                    "type": type_match(data_type) } },
            },
            scope,
            after,
        ),
        // No hint: the stand-in server is slow with one, and an equality on `want` leaves
        // a planner no other index to take (the explain test checks it takes this one).
        hint: None,
    }
}

fn in_status_query(
    host: &str,
    status: CopyStatus,
    scope: &RunScope,
    after: Option<&RunKey>,
) -> Query {
    Query {
        filter: paged(
            doc! {
                "data.host_status": host_status(host, status),
                "data": { "$elemMatch": { "host": host, "status": status.as_str() } },
            },
            scope,
            after,
        ),
        hint: None,
    }
}

fn purge_query(host: &str, scope: &RunScope, after: Option<&RunKey>) -> Query {
    Query {
        filter: paged(
            doc! {
                "data.host_status": host_status(host, CopyStatus::Transferred),
                "$and": [
                    { "data": { "$elemMatch": { "host": host, "status": "transferred" } } },
                    { "data": { "$elemMatch": {
                        "host": { "$ne": host }, "status": "transferred" } } },
                ],
            },
            scope,
            after,
        ),
        hint: None,
    }
}

fn stalled_query(
    host: Option<&str>,
    now: DateTime,
    scope: &RunScope,
    after: Option<&RunKey>,
) -> Query {
    let mut elem = doc! { "status": "transferring", "lease.expires": { "$lt": now } };
    match host {
        Some(h) => {
            elem.insert("host", h);
            Query {
                filter: paged(
                    doc! {
                        "data.host_status": host_status(h, CopyStatus::Transferring),
                        "data": { "$elemMatch": elem },
                    },
                    scope,
                    after,
                ),
                hint: None,
            }
        }
        None => Query {
            filter: paged(doc! { "data": { "$elemMatch": elem } }, scope, after),
            hint: hint_for(scope, STATUS_EXPIRES),
        },
    }
}

/// Documents inserted since `since` (less the clock margin). Only the `_id` range, so that
/// every server takes the `_id` index; the few recent documents are checked by the caller.
fn adopt_recent_query(since: DateTime) -> Query {
    let from = since.timestamp_millis() / 1000 - secs(CLOCK_MARGIN);
    Query {
        filter: doc! { "_id": { "$gte": oid_at(from) } },
        hint: None,
    }
}

/// Runs with a copy that lacks the index field (an entry without it is indexed as null).
fn adopt_sweep_query() -> Query {
    Query {
        filter: doc! { "data": { "$elemMatch": { HOST_STATUS_FIELD: { "$exists": false } } } },
        hint: None,
    }
}

/// The smallest ObjectId stamped at `seconds` since the epoch (clamped to its 32 bits).
fn oid_at(seconds: i64) -> bson::oid::ObjectId {
    let s = u32::try_from(seconds.max(0)).unwrap_or(u32::MAX);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&s.to_be_bytes());
    bson::oid::ObjectId::from_bytes(bytes)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The filter of [`Catalog::mark_removing`] and the array filter (`c`) naming the copy it
/// marks. The run must have the copy in `from` and, each in its own `$elemMatch` (their
/// hosts differ from the copy's, so no element can serve two of them), every protector:
/// `transferred`, same checksum, verified at or after the time counted.
fn removing_filter(
    copy: &CopyRef,
    from: CopyStatus,
    protected_by: &[Protector],
) -> (Document, Document) {
    let mut and = vec![doc! { "data": { "$elemMatch": {
        "host": &copy.host, "type": type_match(&copy.data_type), "status": from.as_str(),
    } } }];
    for p in protected_by {
        let mut elem = doc! {
            "host": &p.host,
            "type": type_match(&p.data_type),
            "status": CopyStatus::Transferred.as_str(),
            "checksum": &p.checksum,
        };
        if let Some(t) = p.verified_after {
            elem.insert("verified_time", doc! { "$gte": t });
        }
        and.push(doc! { "data": { "$elemMatch": elem } });
    }
    let mut filter = MongoCatalog::key_filter(&copy.run);
    filter.insert("$and", and);
    let array_filter = doc! {
        "c.host": &copy.host,
        "c.type": type_match(&copy.data_type),
        "c.status": from.as_str(),
    };
    (filter, array_filter)
}

/// The value of a copy's `host_status` index field.
///
/// Why the field exists: every site work list asks for "a copy at HOST in STATUS", one
/// `$elemMatch` over `data[]`. MongoDB answers that from the compound multikey index
/// `(data.host, data.status)` with both bounds; the MongoDB-wire server the tests use bounds
/// only `data.host`, and so reads every run that has a copy at the site (3 s for 100,000
/// runs). One string field per copy, written in the same `$set` as `status`, gives every
/// server a point lookup. The `$elemMatch` stays in each query, so the field only narrows:
/// a missing or stale value can hide a copy from a work list, never invent one.
/// Entries written by other tools lack it until [`Catalog::adopt_foreign_copies`] fills it in.
fn host_status(host: &str, status: CopyStatus) -> String {
    format!("{host}/{}", status.as_str())
}

/// Removes the index field from a document's copies before it is parsed: it is a detail of
/// this back end, not part of the run document's schema.
fn strip_host_status(d: &mut Document) {
    if let Ok(data) = d.get_array_mut("data") {
        for entry in data.iter_mut() {
            if let Bson::Document(e) = entry {
                e.remove(HOST_STATUS_FIELD);
            }
        }
    }
}

/// Decodes one document as read: the index field removed, then the schema's decoder.
fn decode(mut d: Document) -> Result<RunDoc, DecodeError> {
    strip_host_status(&mut d);
    RunDoc::from_document(d)
}

/// `filter`, also requiring that the document has the types the decoder needs
/// ([`catalog_schema::decode::readable_filter`], a `$jsonSchema`).
///
/// Every state change is made on a run Ferry read and decoded; this keeps a document that
/// another tool broke since from being matched by the update, so Ferry never writes into a
/// document it cannot read. `$jsonSchema` looks at the whole document and sets no array
/// position: the positional `$` of an update still names the copy the filter's own
/// `$elemMatch` selects.
fn guarded(mut filter: Document) -> Document {
    let guard = catalog_schema::decode::readable_filter();
    match filter.get_array_mut("$and") {
        Ok(and) => and.push(Bson::Document(guard)),
        Err(_) => {
            filter.insert("$and", vec![guard]);
        }
    }
    filter
}

/// A new copy entry as stored: the entry plus its index field.
fn stored_entry(entry: Bson, host: &str, status: CopyStatus) -> Bson {
    match entry {
        Bson::Document(mut e) => {
            e.insert(HOST_STATUS_FIELD, host_status(host, status));
            Bson::Document(e)
        }
        other => other,
    }
}

#[async_trait]
impl Catalog for MongoCatalog {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    async fn register_run(&self, run: &NewRun) -> Result<Registered, CatalogError> {
        let doc = new_run_doc(run)
            .to_document()
            .map_err(|source| CatalogError::BadDocument {
                catalog: self.shown.clone(),
                source,
            })?;
        // An upsert rather than an insert: a DAQ document without `detector` is a `tpc`
        // run, but the unique index would not see it as one.
        let result = self
            .runs
            .update_one(Self::key_filter(&run.key), doc! { "$setOnInsert": doc })
            .upsert(true)
            .await;
        match result {
            Ok(r) if r.upserted_id.is_some() => Ok(Registered::Created),
            Ok(_) => self.register_existing(run).await,
            Err(e) if is_duplicate_key(&e) => self.register_existing(run).await,
            Err(e) => Err(classify(&self.shown, &format!("register {}", run.key), e)),
        }
    }

    async fn register_runs(&self, runs: &[NewRun]) -> Result<Vec<Registered>, CatalogError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        // One indexed query finds the runs already there (by number, any detector); the
        // rest go in with one unordered insert_many.
        let numbers: Vec<i64> = runs.iter().map(|r| r.key.number).collect();
        let present: HashSet<RunKey> = self
            .runs
            .find(doc! { "number": { "$in": numbers } })
            .projection(doc! { "detector": 1, "number": 1 })
            .await
            .map_err(|e| classify(&self.shown, "register many (read existing)", e))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(|e| classify(&self.shown, "register many (read existing)", e))?
            .iter()
            .filter_map(raw_key)
            .collect();
        let mut out = vec![Registered::Created; runs.len()];
        let mut redo: Vec<usize> = Vec::new();
        let mut fresh: Vec<(usize, Document)> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            if present.contains(&r.key) {
                redo.push(i);
            } else {
                let doc =
                    new_run_doc(r)
                        .to_document()
                        .map_err(|source| CatalogError::BadDocument {
                            catalog: self.shown.clone(),
                            source,
                        })?;
                fresh.push((i, doc));
            }
        }
        let positions: Vec<usize> = fresh.iter().map(|(i, _)| *i).collect();
        if !fresh.is_empty() {
            let docs = fresh.into_iter().map(|(_, d)| d);
            if let Err(e) = self.runs.insert_many(docs).ordered(false).await {
                match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(im)
                        if im.write_concern_error.is_none()
                            && im.write_errors.as_ref().is_some_and(|w| {
                                w.iter().all(|x| x.code == super::errors::DUPLICATE_KEY)
                            }) =>
                    {
                        redo.extend(
                            im.write_errors
                                .iter()
                                .flatten()
                                .filter_map(|w| positions.get(w.index).copied()),
                        );
                    }
                    _ => return Err(classify(&self.shown, "register many", e)),
                }
            }
        }
        for i in redo {
            if let (Some(slot), Some(run)) = (out.get_mut(i), runs.get(i)) {
                *slot = self.register_existing(run).await?;
            }
        }
        Ok(out)
    }

    async fn add_origin_copy(&self, o: &OriginCopy) -> Result<Cas, CatalogError> {
        let tag = want_tag(&o.copy.host, &o.copy.data_type);
        let c = o.entry(DateTime::now());
        let mut filter = Self::key_filter(&o.copy.run);
        filter.insert(
            "data",
            doc! { "$not": { "$elemMatch": {
            "host": &o.copy.host, "type": type_match(&o.copy.data_type) } } },
        );
        filter.insert(
            "$or",
            vec![
                doc! { "digest": { "$exists": false } },
                doc! { "digest": null },
                doc! { "digest": &o.manifest.digest },
            ],
        );
        let mut update = doc! {
            "$set": {
                "files": self.bson_of("manifest", &o.manifest.files)?,
                "size": o.manifest.size,
                "digest": &o.manifest.digest,
            },
            "$push": { "data": stored_entry(self.bson_of("copy", &c)?, &c.host, c.status) },
            "$pull": { "want": tag },
        };
        self.push_event(&mut update, &o.event())?;
        self.update(&format!("add origin copy {}", o.copy), filter, update)
            .await
    }

    async fn claim_copy(&self, r: &ClaimRequest) -> Result<Claim, CatalogError> {
        let c = r.entry(DateTime::now());
        let Some(lease) = c.lease.clone() else {
            return Ok(Claim::Lost);
        };
        let mut filter = Self::key_filter(&r.copy.run);
        filter.insert(
            "data",
            doc! { "$not": { "$elemMatch": {
            "host": &r.copy.host, "type": type_match(&r.copy.data_type) } } },
        );
        // The want goes in the same conditional update: a lost claim leaves it.
        let mut update = doc! {
            "$push": { "data": stored_entry(self.bson_of("copy", &c)?, &c.host, c.status) },
            "$pull": { "want": want_tag(&r.copy.host, &r.copy.data_type) },
        };
        self.push_event(&mut update, &r.event())?;
        Ok(
            match self
                .update(&format!("claim {}", r.copy), filter, update)
                .await?
            {
                Cas::Done => Claim::Won(LeaseHeld {
                    owner: lease.owner,
                    expires: lease.expires,
                }),
                Cas::Lost => Claim::Lost,
            },
        )
    }

    async fn renew_lease(
        &self,
        copy: &CopyRef,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Cas, CatalogError> {
        let filter = Self::copy_filter(copy, doc! { "lease.owner": owner });
        let update = doc! { "$set": { "data.$.lease.expires": after(DateTime::now(), lease_for) } };
        self.update(&format!("renew lease {copy}"), filter, update)
            .await
    }

    async fn release_lease(&self, copy: &CopyRef, owner: &str) -> Result<Cas, CatalogError> {
        let filter = Self::copy_filter(copy, doc! { "lease.owner": owner });
        let update = doc! { "$unset": { "data.$.lease": "" } };
        self.update(&format!("release lease {copy}"), filter, update)
            .await
    }

    async fn transition(&self, copy: &CopyRef, change: &Transition) -> Result<Cas, CatalogError> {
        self.transition_as(copy, change, "status").await
    }

    async fn record_checksum(
        &self,
        copy: &CopyRef,
        expected: CopyStatus,
        owner: Option<&str>,
        checksum: &str,
        at: DateTime,
    ) -> Result<Cas, CatalogError> {
        let mut elem = doc! { "status": expected.as_str() };
        if let Some(o) = owner {
            elem.insert("lease.owner", o);
        }
        let update = doc! { "$set": {
            "data.$.checksum": checksum,
            "data.$.verified_time": at,
            "data.$.updated_time": DateTime::now(),
        }};
        self.update(
            &format!("record checksum {copy}"),
            Self::copy_filter(copy, elem),
            update,
        )
        .await
    }

    async fn reclaim_stalled(
        &self,
        copy: &CopyRef,
        stale_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let now = DateTime::now();
        let elem = doc! {
            "status": "transferring",
            "lease.owner": stale_owner,
            "lease.expires": { "$lt": now },
        };
        let ev = reclaim_event(copy, stale_owner, new_owner);
        self.take_lease(copy, elem, new_owner, lease_for, now, &ev, "reclaim")
            .await
    }

    async fn reclaim_abandoned(
        &self,
        copy: &CopyRef,
        dead_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let now = DateTime::now();
        let elem = doc! { "status": "transferring", "lease.owner": dead_owner };
        let ev = abandoned_event(copy, dead_owner, new_owner);
        self.take_lease(
            copy,
            elem,
            new_owner,
            lease_for,
            now,
            &ev,
            "reclaim abandoned",
        )
        .await
    }

    async fn reclaim_unleased(
        &self,
        copy: &CopyRef,
        idle_before: DateTime,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let now = DateTime::now();
        // The copy as read must be idle; the update is conditional on it still having no
        // lease (the first reclaimer gives it one), and on the times read.
        let Some(run) = self.get_run(&copy.run).await? else {
            return Ok(Claim::Lost);
        };
        let Some(c) = run.copy(&copy.host, &copy.data_type) else {
            return Ok(Claim::Lost);
        };
        if !unleased_and_idle(c, idle_before) {
            return Ok(Claim::Lost);
        }
        let mut elem = doc! { "status": "transferring", "lease": Bson::Null };
        elem.insert(
            "updated_time",
            c.updated_time.map_or(Bson::Null, Bson::DateTime),
        );
        let ev = unleased_event(copy, new_owner);
        self.take_lease(
            copy,
            elem,
            new_owner,
            lease_for,
            now,
            &ev,
            "reclaim unleased",
        )
        .await
    }

    async fn mark_removing(
        &self,
        copy: &CopyRef,
        from: CopyStatus,
        protected_by: &[Protector],
        who: &str,
        why: &str,
    ) -> Result<Cas, CatalogError> {
        let t = removing_transition(from, who, why);
        if !catalog_schema::can_transition(t.from, t.to) {
            return Err(CatalogError::IllegalTransition {
                catalog: self.shown.clone(),
                copy: copy.to_string(),
                from: t.from,
                to: t.to,
            });
        }
        let (filter, array_filter) = removing_filter(copy, from, protected_by);
        let now = DateTime::now();
        // The copy is addressed by an array filter, not by `$`: with several `$elemMatch`
        // on `data` in the filter, which element `$` names is not defined.
        let mut update = doc! {
            "$set": {
                "data.$[c].status": CopyStatus::Removing.as_str(),
                "data.$[c].host_status": host_status(&copy.host, CopyStatus::Removing),
                "data.$[c].updated_time": now,
            },
            "$unset": { "data.$[c].lease": "" },
        };
        self.push_event(&mut update, &t.event(copy, "removing"))?;
        let op = format!("removing {copy}");
        let r = self
            .runs
            .update_one(guarded(filter), update)
            .array_filters(vec![array_filter])
            .await
            .map_err(|e| classify(&self.shown, &op, e))?;
        Ok(if r.modified_count == 1 {
            Cas::Done
        } else {
            Cas::Lost
        })
    }

    async fn remove_copy(&self, copy: &CopyRef, who: &str, why: &str) -> Result<Cas, CatalogError> {
        let filter = Self::copy_filter(copy, doc! { "status": "removing" });
        let mut update = doc! { "$pull": { "data": {
            "host": &copy.host, "type": type_match(&copy.data_type), "status": "removing",
        }}};
        let ev = Event::copy(
            who,
            "removed",
            &copy.host,
            &copy.data_type,
            Some(why.to_string()),
        );
        self.push_event(&mut update, &ev)?;
        self.update(&format!("remove copy {copy}"), filter, update)
            .await
    }

    async fn request_copy(
        &self,
        run: &RunKey,
        site: &str,
        data_type: &str,
    ) -> Result<Cas, CatalogError> {
        let tag = want_tag(site, data_type);
        let mut filter = Self::key_filter(run);
        filter.insert(
            "data",
            doc! { "$not": { "$elemMatch": { "host": site, "type": type_match(data_type) } } },
        );
        filter.insert("want", doc! { "$ne": &tag });
        let update = doc! { "$addToSet": { "want": &tag } };
        self.update(&format!("request copy {run} {tag}"), filter, update)
            .await
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CatalogError> {
        let op = format!("heartbeat {}", beat.site);
        let doc = bson::to_document(beat).map_err(|e| CatalogError::Database {
            catalog: self.shown.clone(),
            op: op.clone(),
            detail: e.to_string(),
            retryable: false,
        })?;
        self.heartbeats
            .replace_one(doc! { "_id": &beat.site }, doc)
            .upsert(true)
            .await
            .map_err(|e| classify(&self.shown, &op, e))?;
        Ok(())
    }

    async fn adopt_foreign_copies(&self, limit: u32) -> Result<u64, CatalogError> {
        let op = "adopt foreign copies";
        let started = DateTime::now();
        let (full, since) = {
            let a = self.adoption.lock().unwrap_or_else(PoisonError::into_inner);
            (a.next_full.is_none_or(|t| t <= Instant::now()), a.since)
        };
        let filter = match (full, since) {
            (false, Some(since)) => adopt_recent_query(since).filter,
            _ => adopt_sweep_query().filter,
        };
        // Whole documents, not a projection: a run is adopted only if it decodes, so that
        // Ferry never writes into a document it cannot read.
        let docs: Vec<Document> = self
            .runs
            .find(filter)
            .limit(i64::from(limit))
            .await
            .map_err(|e| classify(&self.shown, op, e))?
            .try_collect()
            .await
            .map_err(|e| classify(&self.shown, op, e))?;
        let mut adopted = 0;
        let seen = docs.len() as u64;
        for d in docs {
            let Some(id) = d.get("_id").cloned() else {
                continue;
            };
            if let Err(e) = decode(d.clone()) {
                self.quarantine.skip(e);
                continue;
            }
            let Ok(data) = d.get_array("data") else {
                continue;
            };
            for entry in data {
                let Bson::Document(e) = entry else { continue };
                if e.contains_key(HOST_STATUS_FIELD) {
                    continue;
                }
                // Entries of other shapes are left alone; the work lists never match them.
                let (Ok(host), Ok(status)) = (e.get_str("host"), e.get_str("status")) else {
                    continue;
                };
                let mut elem = doc! {
                    "host": host, "status": status, HOST_STATUS_FIELD: { "$exists": false },
                };
                if let Some(t) = e.get("type") {
                    elem.insert("type", t.clone());
                }
                // Conditional on the status read: a concurrent change makes this a no-op.
                let mut set = doc! { "data.$.host_status": format!("{host}/{status}") };
                // A status cax wrote (`failed`, `RSEquota`…) becomes Ferry's, as the decoder
                // reads it, so the conditional updates that name Ferry's status match it;
                // the name cax wrote is kept beside it.
                if let Some(mapped) = catalog_schema::legacy_status(status) {
                    set.insert("data.$.status", mapped.as_str());
                    set.insert("data.$.cax_status", status);
                    set.insert("data.$.host_status", host_status(host, mapped));
                    if e.get_str("last_error").is_err() {
                        let failure = catalog_schema::Failure::new(
                            catalog_schema::FailureClass::Retryable,
                            format!("recorded by cax as status {status:?}"),
                        );
                        set.insert("data.$.last_error", failure.to_string());
                        if !e.contains_key("error_class") {
                            set.insert("data.$.error_class", failure.class.as_str());
                        }
                    }
                }
                let set = doc! { "$set": set };
                let filter = doc! { "_id": id.clone(), "data": { "$elemMatch": elem } };
                if self.update(op, filter, set).await? == Cas::Done {
                    adopted += 1;
                }
            }
        }
        let mut a = self.adoption.lock().unwrap_or_else(PoisonError::into_inner);
        a.since = Some(started);
        if seen >= u64::from(limit) {
            // Cut short by `limit`: the next call sweeps (what is adopted no longer matches).
            a.next_full = None;
        } else if full {
            a.next_full = Some(Instant::now() + FULL_SWEEP);
        }
        Ok(adopted)
    }

    async fn read_heartbeat(&self, site: &str) -> Result<Option<Heartbeat>, CatalogError> {
        let op = format!("read heartbeat {site}");
        let found = self
            .heartbeats
            .find_one(doc! { "_id": site })
            .await
            .map_err(|e| classify(&self.shown, &op, e))?;
        found
            .map(|d| {
                bson::from_document(d).map_err(|e| CatalogError::Database {
                    catalog: self.shown.clone(),
                    op: op.clone(),
                    detail: e.to_string(),
                    retryable: false,
                })
            })
            .transpose()
    }

    async fn copies_by_status(&self, host: &str) -> Result<Vec<(CopyStatus, u64)>, CatalogError> {
        let mut out = Vec::with_capacity(CopyStatus::ALL.len());
        for status in CopyStatus::ALL {
            let op = format!("count {status} copies at {host}");
            let n = self
                .runs
                .count_documents(doc! { "data.host_status": host_status(host, status) })
                .await
                .map_err(|e| classify(&self.shown, &op, e))?;
            out.push((status, n));
        }
        Ok(out)
    }

    async fn runs_needing_copy_scoped(
        &self,
        dest: &str,
        data_type: &str,
        sources: &[String],
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let q = needing_copy_query(dest, data_type, sources, scope, after);
        self.run_query("runs needing copy", q, limit).await
    }

    async fn copies_in_status_scoped(
        &self,
        host: &str,
        status: CopyStatus,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let q = in_status_query(host, status, scope, after);
        self.run_query("copies in status", q, limit).await
    }

    async fn purge_candidates_scoped(
        &self,
        host: &str,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        self.run_query("purge candidates", purge_query(host, scope, after), limit)
            .await
    }

    async fn stalled_copies_scoped(
        &self,
        host: Option<&str>,
        now: DateTime,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let q = stalled_query(host, now, scope, after);
        self.run_query("stalled copies", q, limit).await
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunDoc>, CatalogError> {
        let found = self
            .find_raw(
                &format!("get run {key}"),
                Self::key_filter(key),
                None,
                0,
                Some(1),
            )
            .await?;
        match found.into_iter().next() {
            None => Ok(None),
            Some(Ok(run)) => Ok(Some(run)),
            Some(Err(e)) => {
                self.quarantine.skip(e.clone());
                Err(CatalogError::Unreadable {
                    catalog: self.shown.clone(),
                    source: Box::new(e),
                })
            }
        }
    }

    async fn find_runs(&self, sel: &RunSelector) -> Result<Vec<RunDoc>, CatalogError> {
        let filter = match sel {
            RunSelector::Number(n) => doc! { "number": n },
            RunSelector::Name(s) => doc! { "name": s },
        };
        self.find_docs("find runs", filter, None, None).await
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunDoc>, CatalogError> {
        let mut and: Vec<Document> = Vec::new();
        match (&f.host, f.status) {
            (Some(h), Some(s)) => {
                and.push(doc! { "data": { "$elemMatch": { "host": h, "status": s.as_str() } } })
            }
            (Some(h), None) => and.push(doc! { "data.host": h }),
            (None, Some(s)) => and.push(doc! { "data.status": s.as_str() }),
            (None, None) => {}
        }
        if let Some(m) = &f.missing_at {
            and.push(doc! { "data": { "$not": {
            "$elemMatch": { "host": m, "status": "transferred" } } } });
        }
        if let Some(n) = f.fewer_copies_than {
            and.push(doc! { "$expr": { "$lt": [
                { "$size": { "$filter": {
                    "input": { "$ifNull": ["$data", []] },
                    "cond": { "$eq": ["$$this.status", "transferred"] },
                } } },
                i64::from(n),
            ] } });
        }
        if let Some(since) = f.since {
            and.push(doc! { "start": { "$gte": since } });
        }
        if let Some(until) = f.until {
            and.push(doc! { "start": { "$lt": until } });
        }
        match f.detector.as_deref() {
            // A DAQ wrote TPC runs without a detector: they are `tpc` runs.
            Some(d) if d == catalog_schema::DEFAULT_DETECTOR => and.push(doc! { "$or": [
                { "detector": d }, { "detector": { "$exists": false } },
            ] }),
            Some(d) => and.push(doc! { "detector": d }),
            None => {}
        }
        let filter = if and.is_empty() {
            Document::new()
        } else {
            doc! { "$and": and }
        };
        let filter = paged(filter, &f.scope, f.after.as_ref());
        self.find_docs("list runs", filter, None, f.limit).await
    }
}
