//! [`EmbeddedCatalog`]: the [`Catalog`] trait over one SQLite file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bson::DateTime;
use catalog_schema::{want_tag, CopyStatus, DecodeError, Heartbeat, Lease, RunDoc, RunKey};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{apply, schema};
use crate::catalog::{
    after, check_registration, fill_page, missing_wants, new_run_doc, removing_transition, Cas,
    Catalog, CatalogError, Claim, ClaimRequest, CopyRef, LeaseHeld, NewRun, OriginCopy, Protector,
    Quarantine, RegisterCheck, Registered, RunFilter, RunScope, RunSelector, Transition,
};

/// How long a writer waits for another process's transaction before giving up (the error
/// is then retryable).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The embedded catalogue. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct EmbeddedCatalog {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    quarantine: Arc<Quarantine>,
}

impl std::fmt::Debug for EmbeddedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedCatalog({})", self.path.display())
    }
}

impl EmbeddedCatalog {
    /// Opens (creating if needed) the catalogue file and its tables.
    pub async fn open(path: &Path) -> Result<Self, CatalogError> {
        let shown = format!("sqlite:{}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
                catalog: shown.clone(),
                op: format!("create directory {}", dir.display()),
                source,
            })?;
        }
        let owned = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let mut conn = Connection::open(&owned)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            // IMMEDIATE, not deferred: a deferred transaction that reads the schema and then
            // writes `user_version` must upgrade its lock, and in WAL mode that fails at once
            // with "database is locked" (the busy timeout does not apply) whenever another
            // process is writing — seen as a flaky open in the multi-process claim test.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(schema::CREATE)?;
            tx.pragma_update(None, "user_version", schema::VERSION)?;
            tx.commit()?;
            Ok(conn)
        })
        .await
        .map_err(|e| join_error(&shown, "open", e))?
        .map_err(|e| open_error(&shown, e))?;
        Ok(EmbeddedCatalog {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            quarantine: Arc::default(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `EXPLAIN QUERY PLAN` of every query the daemon issues, joined per query (for tests).
    pub async fn explain_daemon_queries(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let needing = schema::RUNS_NEEDING_COPY
            .replace("{sources}", "?,?")
            .replace("{scope}", "");
        let key = RunKey::new("tpc", 10);
        let mut queries: Vec<(String, String, Vec<Value>)> = Vec::new();
        for (paged, at) in [("", None), ("_paged", Some(&key))] {
            let page = || page_args(at);
            let with = |head: Vec<Value>, tail: Vec<Value>| -> Vec<Value> {
                head.into_iter().chain(page()).chain(tail).collect()
            };
            queries.extend([
                (
                    format!("runs_needing_copy{paged}"),
                    needing.clone(),
                    with(
                        vec![text("c/raw"), text("a"), text("b"), text("raw")],
                        vec![Value::Integer(10)],
                    ),
                ),
                (
                    format!("copies_in_status{paged}"),
                    schema::COPIES_IN_STATUS.replace("{scope}", ""),
                    with(vec![text("a"), text("verifying")], vec![Value::Integer(10)]),
                ),
                (
                    format!("purge_candidates{paged}"),
                    schema::PURGE_CANDIDATES.replace("{scope}", ""),
                    with(vec![text("a")], vec![Value::Integer(10)]),
                ),
                (
                    format!("stalled_copies{paged}"),
                    schema::STALLED.replace("{scope}", ""),
                    with(vec![Value::Integer(0)], vec![Value::Integer(10)]),
                ),
                (
                    format!("stalled_copies_at{paged}"),
                    schema::STALLED_AT.replace("{scope}", ""),
                    with(vec![Value::Integer(0)], vec![Value::Integer(10), text("a")]),
                ),
            ]);
        }
        self.blocking("explain", move |conn, shown| {
            let mut out = Vec::new();
            for (name, sql, args) in queries {
                let mut stmt = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(|e| sql_error(shown, &name, e))?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                    .map_err(|e| sql_error(shown, &name, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sql_error(shown, &name, e))?;
                out.push((name, rows.join("\n")));
            }
            Ok(out)
        })
        .await
    }

    /// Stores a document written by another tool as it is (e.g. imported from a MongoDB
    /// export). Only `number` (and `detector`, default `tpc`) must be readable; a document
    /// that is not a valid run document is stored anyway, and reading it later reports it.
    pub async fn import_document(&self, doc: bson::Document) -> Result<(), CatalogError> {
        self.import_documents(vec![doc]).await
    }

    /// [`EmbeddedCatalog::import_document`] for many documents, in one transaction: all are
    /// stored or none.
    pub async fn import_documents(&self, docs: Vec<bson::Document>) -> Result<(), CatalogError> {
        let shown = self.describe();
        let rows = docs
            .into_iter()
            .map(|d| import_row(&shown, d))
            .collect::<Result<Vec<_>, _>>()?;
        self.blocking("import", move |conn, shown| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error(shown, "import", e))?;
            for r in rows {
                let op = format!("import {}/{}", r.detector, r.number);
                tx.prepare_cached(
                    "INSERT INTO runs (detector, number, name, start, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| {
                    st.execute(params![r.detector, r.number, r.name, r.start, r.blob])
                })
                .map_err(|e| sql_error(shown, &op, e))?;
                if let Some(run) = r.parsed {
                    project(&tx, shown, tx.last_insert_rowid(), &run)?;
                }
            }
            tx.commit().map_err(|e| sql_error(shown, "import", e))
        })
        .await
    }

    /// A run document exactly as stored (no decoding: for export and inspection).
    pub async fn raw_document(&self, key: &RunKey) -> Result<Option<bson::Document>, CatalogError> {
        let key = key.clone();
        self.blocking("read raw", move |conn, shown| {
            one_document(
                conn,
                shown,
                &format!("read {key}"),
                "SELECT doc FROM runs WHERE detector = ?1 AND number = ?2",
                params![key.detector, key.number],
            )
        })
        .await
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn blocking<T, F>(&self, op: &str, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &str) -> Result<T, CatalogError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let shown = self.describe();
        let op_owned = op.to_string();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock rolled its transaction back; the connection is
            // still usable.
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard, &shown)
        })
        .await
        .map_err(|e| join_error(&self.describe(), &op_owned, e))?
    }

    /// Applies `f` to one run inside `BEGIN IMMEDIATE … COMMIT`; writes only when `f`
    /// returns `Some`. A missing run is `None`.
    async fn mutate<T, F>(&self, op: &str, key: &RunKey, f: F) -> Result<Option<T>, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut RunDoc) -> Result<Option<T>, CatalogError> + Send + 'static,
    {
        let key = key.clone();
        let op_name = format!("{op} {key}");
        let quarantine = Arc::clone(&self.quarantine);
        self.blocking(op, move |conn, shown| {
            let e = |err| sql_error(shown, &op_name, err);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let Some((id, read)) = load(&tx, shown, &key)? else {
                return Ok(None);
            };
            // A document Ferry cannot read is never written: the change is lost.
            let mut run = match read {
                Ok(run) => run,
                Err(bad) => {
                    quarantine.skip(bad);
                    return Ok(None);
                }
            };
            let out = f(&mut run)?;
            if out.is_some() {
                store(&tx, shown, id, &run)?;
                tx.commit().map_err(e)?;
            }
            Ok(out)
        })
        .await
    }

    /// Reads the runs a query returns (columns `doc, id, detector, number`), decoding each
    /// on its own. `limit`: which argument is the query's `LIMIT`, and its value; a page
    /// is filled up past documents that do not decode ([`fill_page`]) with `OFFSET`.
    async fn query_docs(
        &self,
        op: &str,
        sql: String,
        args: Vec<Value>,
        limit: Option<(usize, u32)>,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        fill_page(limit.map(|(_, n)| n), &self.quarantine, |skip, take| {
            let mut args = args.clone();
            if let (Some((at, _)), Some(take)) = (limit, take) {
                if let Some(slot) = args.get_mut(at) {
                    *slot = Value::Integer(i64::from(take));
                }
            }
            let sql = if skip > 0 {
                format!("{sql} OFFSET {skip}")
            } else {
                sql.clone()
            };
            let op_name = op.to_string();
            self.blocking(op, move |conn, shown| {
                let op = op_name;
                let mut stmt = conn
                    .prepare_cached(&sql)
                    .map_err(|e| sql_error(shown, &op, e))?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(args), |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(|e| sql_error(shown, &op, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sql_error(shown, &op, e))?;
                Ok(rows
                    .iter()
                    .map(|(blob, id, detector, number)| {
                        decode(blob, *id, &RunKey::new(detector, *number))
                    })
                    .collect())
            })
        })
        .await
    }
}

/// The BSON document in the first column of the row `sql` finds, if any.
fn one_document(
    conn: &Connection,
    shown: &str,
    op: &str,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<bson::Document>, CatalogError> {
    let blob: Option<Vec<u8>> = conn
        .query_row(sql, args, |r| r.get(0))
        .optional()
        .map_err(|e| sql_error(shown, op, e))?;
    blob.map(|b| {
        bson::Document::from_reader(b.as_slice()).map_err(|e| CatalogError::Database {
            catalog: shown.to_string(),
            op: op.to_string(),
            detail: e.to_string(),
            retryable: false,
        })
    })
    .transpose()
}

/// A document to import, with its indexed columns.
struct ImportRow {
    detector: String,
    number: i64,
    name: Option<String>,
    start: Option<i64>,
    blob: Vec<u8>,
    parsed: Option<RunDoc>,
}

fn import_row(shown: &str, doc: bson::Document) -> Result<ImportRow, CatalogError> {
    let bad = |detail: &str| CatalogError::BadDocument {
        catalog: shown.to_string(),
        source: catalog_schema::ShapeError {
            run: catalog_schema::identify(&doc),
            detail: detail.to_string(),
        },
    };
    let number = match doc.get("number") {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        Some(bson::Bson::Double(d)) if d.fract() == 0.0 && d.abs() < 9.0e15 => {
            #[allow(clippy::cast_possible_truncation)]
            let n = *d as i64;
            n
        }
        _ => return Err(bad("field `number`: missing or not an integer")),
    };
    let mut blob = Vec::new();
    doc.to_writer(&mut blob).map_err(|e| bad(&e.to_string()))?;
    Ok(ImportRow {
        detector: doc
            .get_str("detector")
            .unwrap_or(catalog_schema::DEFAULT_DETECTOR)
            .to_string(),
        number,
        name: doc.get_str("name").ok().map(str::to_string),
        start: doc.get_datetime("start").ok().map(|d| d.timestamp_millis()),
        parsed: RunDoc::from_document(doc).ok(),
        blob,
    })
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The page arguments of a work query (see `schema`): whether it is paged,
/// then the number and detector of the last run of the previous page.
fn page_args(after: Option<&RunKey>) -> [Value; 3] {
    match after {
        Some(k) => [
            Value::Integer(1),
            Value::Integer(k.number),
            text(&k.detector),
        ],
        None => [Value::Integer(0), Value::Integer(0), text("")],
    }
}

/// A work query with the condition on the runs in `scope` put in its `{scope}` slot, and
/// that condition's arguments appended to `args`, numbered after the `args` already there
/// (`?N`: the query's own arguments keep their numbers; a later anonymous `?` takes the
/// next number).
fn with_scope(sql: &str, scope: &RunScope, args: &mut Vec<Value>) -> String {
    let next = |v: Value, args: &mut Vec<Value>| {
        args.push(v);
        format!("?{}", args.len())
    };
    let cond = match scope {
        RunScope::All => String::new(),
        RunScope::Number(n) => format!("AND r.number = {}", next(Value::Integer(*n), args)),
        RunScope::Name(name) => format!("AND r.name = {}", next(text(name), args)),
        RunScope::Range(r) => {
            let mut c = String::new();
            if let Some(f) = r.from {
                c.push_str(&format!(
                    "AND r.number >= {}",
                    next(Value::Integer(f), args)
                ));
            }
            if let Some(t) = r.to {
                if !c.is_empty() {
                    c.push(' ');
                }
                c.push_str(&format!(
                    "AND r.number <= {}",
                    next(Value::Integer(t), args)
                ));
            }
            c
        }
    };
    sql.replace("{scope}", &cond)
}

fn limit(n: u32) -> Value {
    Value::Integer(i64::from(n))
}

fn sql_error(catalog: &str, op: &str, e: rusqlite::Error) -> CatalogError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    CatalogError::Database {
        catalog: catalog.to_string(),
        op: op.to_string(),
        detail: e.to_string(),
        retryable,
    }
}

/// An open refused because the path names no usable catalogue (not an SQLite file, a
/// directory, no permission, read-only) is bad input ([`CatalogError::Config`]); a busy or
/// locked file stays a retryable [`CatalogError::Database`].
fn open_error(catalog: &str, e: rusqlite::Error) -> CatalogError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::CannotOpen | C::PermissionDenied | C::ReadOnly) => {
            CatalogError::Config {
                catalog: catalog.to_string(),
                detail: format!("cannot open the file as a catalogue: {e}"),
            }
        }
        _ => sql_error(catalog, "open", e),
    }
}

fn join_error(catalog: &str, op: &str, e: tokio::task::JoinError) -> CatalogError {
    CatalogError::Database {
        catalog: catalog.to_string(),
        op: op.to_string(),
        detail: format!("worker thread failed: {e}"),
        retryable: false,
    }
}

/// Decodes the document of row `id`, filed under `key`; a document without `_id` (Ferry's
/// own, here) is named by its row.
fn decode(blob: &[u8], id: i64, key: &RunKey) -> Result<RunDoc, DecodeError> {
    let place = format!("row {id}");
    let run = key.to_string();
    let doc = bson::Document::from_reader(blob)
        .map_err(|e| DecodeError::not_bson(place.clone(), Some(run.clone()), &e.to_string()))?;
    RunDoc::from_document(doc).map_err(|e| e.stored_at(&place, &run))
}

fn encode(catalog: &str, run: &RunDoc) -> Result<Vec<u8>, CatalogError> {
    encode_over(catalog, run, None)
}

/// [`encode`], over the document stored before (`old`, when it parses): its fields keep
/// their order, and an array there that the new document leaves out because it is empty
/// (`want`, which [`RunDoc::to_document`] omits when empty) stays, as `[]`: the same
/// document MongoDB's `$pull` leaves.
fn encode_over(catalog: &str, run: &RunDoc, old: Option<&[u8]>) -> Result<Vec<u8>, CatalogError> {
    let bad = |detail: String| CatalogError::BadDocument {
        catalog: catalog.to_string(),
        source: catalog_schema::ShapeError {
            run: run.key().to_string(),
            detail,
        },
    };
    let mut doc = run.to_document().map_err(|e| bad(e.detail))?;
    if let Some(old) = old.and_then(|b| bson::Document::from_reader(b).ok()) {
        let mut merged = bson::Document::new();
        for (k, v) in old {
            match doc.remove(&k) {
                Some(new) => {
                    merged.insert(k, new);
                }
                // An array emptied (or left empty) stays, empty, as `$pull` leaves it.
                None if matches!(v, bson::Bson::Array(_)) => {
                    merged.insert(k, bson::Bson::Array(Vec::new()));
                }
                None => {}
            }
        }
        merged.extend(doc);
        doc = merged;
    }
    let mut out = Vec::new();
    doc.to_writer(&mut out).map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

/// The row and the decoded document of run `key` (the decode error if it does not decode).
#[allow(clippy::type_complexity)]
fn load(
    tx: &Transaction<'_>,
    shown: &str,
    key: &RunKey,
) -> Result<Option<(i64, Result<RunDoc, DecodeError>)>, CatalogError> {
    let row = tx
        .query_row(
            "SELECT id, doc FROM runs WHERE detector = ?1 AND number = ?2",
            params![key.detector, key.number],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
        .map_err(|e| sql_error(shown, &format!("read {key}"), e))?;
    Ok(row.map(|(id, blob)| (id, decode(&blob, id, key))))
}

/// Writes the document and re-projects its copies.
fn store(tx: &Transaction<'_>, shown: &str, id: i64, run: &RunDoc) -> Result<(), CatalogError> {
    let op = format!("write {}", run.key());
    let e = |err| sql_error(shown, &op, err);
    let old: Option<Vec<u8>> = tx
        .query_row("SELECT doc FROM runs WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(e)?;
    tx.prepare_cached("UPDATE runs SET name = ?2, start = ?3, doc = ?4 WHERE id = ?1")
        .and_then(|mut s| {
            s.execute(params![
                id,
                run.name,
                run.start.map(|d| d.timestamp_millis()),
                encode_over(shown, run, old.as_deref())
                    .map_err(|x| rusqlite::Error::ToSqlConversionFailure(x.into()))?
            ])
        })
        .map_err(e)?;
    tx.prepare_cached("DELETE FROM copies WHERE run_id = ?1")
        .and_then(|mut s| s.execute(params![id]))
        .map_err(e)?;
    tx.prepare_cached("DELETE FROM wants WHERE run_id = ?1")
        .and_then(|mut s| s.execute(params![id]))
        .map_err(e)?;
    project(tx, shown, id, run)
}

fn project(tx: &Transaction<'_>, shown: &str, id: i64, run: &RunDoc) -> Result<(), CatalogError> {
    let op = format!("index copies of {}", run.key());
    let mut ins = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO copies (run_id, host, type, status, lease_expires)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(|e| sql_error(shown, &op, e))?;
    for c in &run.data {
        ins.execute(params![
            id,
            c.host,
            c.data_type,
            c.status.as_str(),
            c.lease.as_ref().map(|l| l.expires.timestamp_millis())
        ])
        .map_err(|e| sql_error(shown, &op, e))?;
    }
    let mut want = tx
        .prepare_cached("INSERT OR IGNORE INTO wants (want, run_id) VALUES (?1, ?2)")
        .map_err(|e| sql_error(shown, &op, e))?;
    for w in &run.want {
        want.execute(params![w, id])
            .map_err(|e| sql_error(shown, &op, e))?;
    }
    Ok(())
}

/// Inserts a new run; `None` when its key or name is taken.
fn insert(tx: &Transaction<'_>, shown: &str, run: &RunDoc) -> Result<Option<i64>, CatalogError> {
    let op = format!("insert {}", run.key());
    let blob = encode(shown, run)?;
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO runs (detector, number, name, start, doc)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                run.detector,
                run.number,
                run.name,
                run.start.map(|d| d.timestamp_millis()),
                blob
            ])
        })
        .map_err(|e| sql_error(shown, &op, e))?;
    if n == 0 {
        return Ok(None);
    }
    let id = tx.last_insert_rowid();
    project(tx, shown, id, run)?;
    Ok(Some(id))
}

/// Registers one run inside an open transaction. A run that is there but does not decode
/// is a conflict, and is not changed.
fn register_in(
    tx: &Transaction<'_>,
    shown: &str,
    quarantine: &Quarantine,
    new: &NewRun,
) -> Result<Registered, CatalogError> {
    let doc = new_run_doc(new);
    if insert(tx, shown, &doc)?.is_some() {
        return Ok(Registered::Created);
    }
    // Taken: by the same key, or by the same name under another number.
    let existing = match load(tx, shown, &new.key)? {
        Some(found) => Some(found),
        None => {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM runs WHERE detector = ?1 AND name = ?2",
                    params![new.key.detector, new.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| sql_error(shown, &format!("read {}", new.key), e))?;
            match id {
                Some(id) => {
                    let blob: Vec<u8> = tx
                        .query_row("SELECT doc FROM runs WHERE id = ?1", params![id], |r| {
                            r.get(0)
                        })
                        .map_err(|e| sql_error(shown, &format!("read {}", new.key), e))?;
                    Some((id, decode(&blob, id, &new.key)))
                }
                None => None,
            }
        }
    };
    let existing = match existing {
        Some((_, Err(bad))) => {
            let reason = format!("the catalogue's {bad}; not changed");
            quarantine.skip(bad);
            return Ok(Registered::Conflict { reason });
        }
        Some((id, Ok(run))) => Some((id, run)),
        None => None,
    };
    let Some((id, mut run)) = existing else {
        return Err(CatalogError::Database {
            catalog: shown.to_string(),
            op: format!("register {}", new.key),
            detail: "insert refused but no conflicting run found".into(),
            retryable: true,
        });
    };
    let check = check_registration(&run, new);
    let mut changed = false;
    if !matches!(check, RegisterCheck::Conflict(_)) {
        let wants = missing_wants(&run, &new.want);
        changed = !wants.is_empty();
        run.want.extend(wants);
    }
    let out = match check {
        RegisterCheck::Same => Registered::Existing,
        RegisterCheck::Conflict(reason) => Registered::Conflict { reason },
        RegisterCheck::AddManifest => {
            if let Some(m) = &new.manifest {
                apply::set_manifest(&mut run, m);
                run.push_event(catalog_schema::Event::run(&new.who, "manifest", None));
                changed = true;
            }
            Registered::Existing
        }
    };
    if changed {
        store(tx, shown, id, &run)?;
    }
    Ok(out)
}

fn cas(done: Option<()>) -> Cas {
    if done.is_some() {
        Cas::Done
    } else {
        Cas::Lost
    }
}

fn claim(won: Option<Lease>) -> Claim {
    match won {
        Some(l) => Claim::Won(LeaseHeld {
            owner: l.owner,
            expires: l.expires,
        }),
        None => Claim::Lost,
    }
}

fn some_if(ok: bool) -> Result<Option<()>, CatalogError> {
    Ok(ok.then_some(()))
}

#[async_trait]
impl Catalog for EmbeddedCatalog {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    async fn register_run(&self, run: &NewRun) -> Result<Registered, CatalogError> {
        let mut out = self.register_runs(std::slice::from_ref(run)).await?;
        out.pop().ok_or_else(|| CatalogError::Database {
            catalog: self.describe(),
            op: format!("register {}", run.key),
            detail: "no result".into(),
            retryable: false,
        })
    }

    async fn register_runs(&self, runs: &[NewRun]) -> Result<Vec<Registered>, CatalogError> {
        let runs = runs.to_vec();
        let quarantine = Arc::clone(&self.quarantine);
        self.blocking("register", move |conn, shown| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error(shown, "register", e))?;
            let out = runs
                .iter()
                .map(|r| register_in(&tx, shown, &quarantine, r))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().map_err(|e| sql_error(shown, "register", e))?;
            Ok(out)
        })
        .await
    }

    async fn add_origin_copy(&self, origin: &OriginCopy) -> Result<Cas, CatalogError> {
        let o = origin.clone();
        let now = DateTime::now();
        self.mutate("add origin copy", &origin.copy.run, move |run| {
            some_if(apply::add_origin(run, &o, now))
        })
        .await
        .map(cas)
    }

    async fn claim_copy(&self, req: &ClaimRequest) -> Result<Claim, CatalogError> {
        let r = req.clone();
        let now = DateTime::now();
        self.mutate("claim", &req.copy.run, move |run| {
            Ok(apply::claim(run, &r, now))
        })
        .await
        .map(claim)
    }

    async fn renew_lease(
        &self,
        copy: &CopyRef,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Cas, CatalogError> {
        let (c, o) = (copy.clone(), owner.to_string());
        let expires = after(DateTime::now(), lease_for);
        self.mutate("renew lease", &copy.run, move |run| {
            some_if(apply::set_lease(run, &c, &o, Some(expires)))
        })
        .await
        .map(cas)
    }

    async fn release_lease(&self, copy: &CopyRef, owner: &str) -> Result<Cas, CatalogError> {
        let (c, o) = (copy.clone(), owner.to_string());
        self.mutate("release lease", &copy.run, move |run| {
            some_if(apply::set_lease(run, &c, &o, None))
        })
        .await
        .map(cas)
    }

    async fn transition(&self, copy: &CopyRef, change: &Transition) -> Result<Cas, CatalogError> {
        if !catalog_schema::can_transition(change.from, change.to) {
            return Err(CatalogError::IllegalTransition {
                catalog: self.describe(),
                copy: copy.to_string(),
                from: change.from,
                to: change.to,
            });
        }
        let (c, t) = (copy.clone(), change.clone());
        let now = DateTime::now();
        self.mutate("transition", &copy.run, move |run| {
            some_if(apply::transition(run, &c, &t, "status", now))
        })
        .await
        .map(cas)
    }

    async fn record_checksum(
        &self,
        copy: &CopyRef,
        expected: CopyStatus,
        owner: Option<&str>,
        checksum: &str,
        at: DateTime,
    ) -> Result<Cas, CatalogError> {
        let (c, o, sum) = (
            copy.clone(),
            owner.map(str::to_string),
            checksum.to_string(),
        );
        self.mutate("record checksum", &copy.run, move |run| {
            some_if(apply::record_checksum(
                run,
                &c,
                expected,
                o.as_deref(),
                &sum,
                at,
            ))
        })
        .await
        .map(cas)
    }

    async fn reclaim_stalled(
        &self,
        copy: &CopyRef,
        stale_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let (c, s, n) = (copy.clone(), stale_owner.to_string(), new_owner.to_string());
        let now = DateTime::now();
        self.mutate("reclaim", &copy.run, move |run| {
            Ok(apply::reclaim(run, &c, &s, &n, after(now, lease_for), now))
        })
        .await
        .map(claim)
    }

    async fn reclaim_abandoned(
        &self,
        copy: &CopyRef,
        dead_owner: &str,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let (c, d, n) = (copy.clone(), dead_owner.to_string(), new_owner.to_string());
        let now = DateTime::now();
        self.mutate("reclaim abandoned", &copy.run, move |run| {
            Ok(apply::reclaim_abandoned(
                run,
                &c,
                &d,
                &n,
                after(now, lease_for),
                now,
            ))
        })
        .await
        .map(claim)
    }

    async fn reclaim_unleased(
        &self,
        copy: &CopyRef,
        idle_before: DateTime,
        new_owner: &str,
        lease_for: Duration,
    ) -> Result<Claim, CatalogError> {
        let (c, n) = (copy.clone(), new_owner.to_string());
        let now = DateTime::now();
        self.mutate("reclaim unleased", &copy.run, move |run| {
            Ok(apply::reclaim_unleased(
                run,
                &c,
                idle_before,
                &n,
                after(now, lease_for),
                now,
            ))
        })
        .await
        .map(claim)
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
                catalog: self.describe(),
                copy: copy.to_string(),
                from: t.from,
                to: t.to,
            });
        }
        let c = copy.clone();
        let protectors = protected_by.to_vec();
        let now = DateTime::now();
        // The protectors are checked on the document read inside the same transaction
        // that writes the mark.
        self.mutate("mark removing", &copy.run, move |run| {
            let protected = protectors.iter().all(|p| p.host != c.host && p.holds(run));
            some_if(protected && apply::transition(run, &c, &t, "removing", now))
        })
        .await
        .map(cas)
    }

    async fn remove_copy(&self, copy: &CopyRef, who: &str, why: &str) -> Result<Cas, CatalogError> {
        let (c, w, y) = (copy.clone(), who.to_string(), why.to_string());
        self.mutate("remove copy", &copy.run, move |run| {
            some_if(apply::remove(run, &c, &w, &y))
        })
        .await
        .map(cas)
    }

    async fn request_copy(
        &self,
        run: &RunKey,
        site: &str,
        data_type: &str,
    ) -> Result<Cas, CatalogError> {
        let (site, ty) = (site.to_string(), data_type.to_string());
        self.mutate("request copy", run, move |r| {
            some_if(apply::request(r, &site, &ty))
        })
        .await
        .map(cas)
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CatalogError> {
        let site = beat.site.clone();
        let doc = bson::to_document(beat).map_err(|e| CatalogError::Database {
            catalog: self.describe(),
            op: format!("heartbeat {site}"),
            detail: e.to_string(),
            retryable: false,
        })?;
        self.blocking("heartbeat", move |conn, shown| {
            let mut blob = Vec::new();
            doc.to_writer(&mut blob)
                .map_err(|e| CatalogError::Database {
                    catalog: shown.to_string(),
                    op: format!("heartbeat {site}"),
                    detail: e.to_string(),
                    retryable: false,
                })?;
            conn.execute(
                "INSERT INTO heartbeats (site, doc) VALUES (?1, ?2)
                 ON CONFLICT(site) DO UPDATE SET doc = excluded.doc",
                params![site, blob],
            )
            .map_err(|e| sql_error(shown, &format!("heartbeat {site}"), e))?;
            Ok(())
        })
        .await
    }

    /// Nothing to adopt: the `copies` table is rebuilt from the document on every write,
    /// and only Ferry writes this file.
    async fn adopt_foreign_copies(&self, _limit: u32) -> Result<u64, CatalogError> {
        Ok(0)
    }

    async fn read_heartbeat(&self, site: &str) -> Result<Option<Heartbeat>, CatalogError> {
        let site = site.to_string();
        let doc = self
            .blocking("read heartbeat", move |conn, shown| {
                one_document(
                    conn,
                    shown,
                    &format!("read heartbeat {site}"),
                    "SELECT doc FROM heartbeats WHERE site = ?1",
                    params![site],
                )
            })
            .await?;
        doc.map(|d| {
            bson::from_document::<Heartbeat>(d).map_err(|e| CatalogError::Database {
                catalog: self.describe(),
                op: "read heartbeat".into(),
                detail: e.to_string(),
                retryable: false,
            })
        })
        .transpose()
    }

    async fn copies_by_status(&self, host: &str) -> Result<Vec<(CopyStatus, u64)>, CatalogError> {
        let host = host.to_string();
        self.blocking("count copies", move |conn, shown| {
            let mut out = Vec::with_capacity(CopyStatus::ALL.len());
            for status in CopyStatus::ALL {
                let op = format!("count {status} copies at {host}");
                let n: i64 = conn
                    .query_row(
                        "SELECT COUNT(DISTINCT run_id) FROM copies WHERE host = ?1 AND status = ?2",
                        params![host, status.as_str()],
                        |row| row.get(0),
                    )
                    .map_err(|e| sql_error(shown, &op, e))?;
                out.push((status, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn runs_needing_copy_scoped(
        &self,
        dest: &str,
        data_type: &str,
        sources: &[String],
        scope: &RunScope,
        after: Option<&RunKey>,
        limit_n: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; sources.len()].join(",");
        let sql = schema::RUNS_NEEDING_COPY.replace("{sources}", &marks);
        let mut args: Vec<Value> = vec![text(&want_tag(dest, data_type))];
        args.extend(sources.iter().map(|s| text(s)));
        args.push(text(data_type));
        args.extend(page_args(after));
        let sql = with_scope(&sql, scope, &mut args);
        let at = args.len();
        args.push(limit(limit_n));
        self.query_docs("runs needing copy", sql, args, Some((at, limit_n)))
            .await
    }

    async fn copies_in_status_scoped(
        &self,
        host: &str,
        status: CopyStatus,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit_n: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let mut args = vec![text(host), text(status.as_str())];
        args.extend(page_args(after));
        let at = args.len();
        args.push(limit(limit_n));
        let sql = with_scope(schema::COPIES_IN_STATUS, scope, &mut args);
        self.query_docs("copies in status", sql, args, Some((at, limit_n)))
            .await
    }

    async fn purge_candidates_scoped(
        &self,
        host: &str,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit_n: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let mut args = vec![text(host)];
        args.extend(page_args(after));
        let at = args.len();
        args.push(limit(limit_n));
        let sql = with_scope(schema::PURGE_CANDIDATES, scope, &mut args);
        self.query_docs("purge candidates", sql, args, Some((at, limit_n)))
            .await
    }

    async fn stalled_copies_scoped(
        &self,
        host: Option<&str>,
        now: DateTime,
        scope: &RunScope,
        after: Option<&RunKey>,
        limit_n: u32,
    ) -> Result<Vec<RunDoc>, CatalogError> {
        let mut args = vec![Value::Integer(now.timestamp_millis())];
        args.extend(page_args(after));
        let at = args.len();
        args.push(limit(limit_n));
        let sql = match host {
            Some(h) => {
                args.push(text(h));
                schema::STALLED_AT
            }
            None => schema::STALLED,
        };
        let sql = with_scope(sql, scope, &mut args);
        self.query_docs("stalled copies", sql, args, Some((at, limit_n)))
            .await
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunDoc>, CatalogError> {
        let key = key.clone();
        let read = self
            .blocking("get run", move |conn, shown| {
                let row = conn
                    .query_row(
                        "SELECT id, doc FROM runs WHERE detector = ?1 AND number = ?2",
                        params![key.detector, key.number],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                    )
                    .optional()
                    .map_err(|e| sql_error(shown, &format!("read {key}"), e))?;
                Ok(row.map(|(id, blob)| decode(&blob, id, &key)))
            })
            .await?;
        match read {
            None => Ok(None),
            Some(Ok(run)) => Ok(Some(run)),
            Some(Err(bad)) => {
                self.quarantine.skip(bad.clone());
                Err(CatalogError::Unreadable {
                    catalog: self.describe(),
                    source: Box::new(bad),
                })
            }
        }
    }

    async fn find_runs(&self, sel: &RunSelector) -> Result<Vec<RunDoc>, CatalogError> {
        let (sql, arg) = match sel {
            RunSelector::Number(n) => ("number = ?1", Value::Integer(*n)),
            RunSelector::Name(s) => ("name = ?1", text(s)),
        };
        let sql =
            format!("SELECT doc, id, detector, number FROM runs WHERE {sql} ORDER BY detector");
        self.query_docs("find runs", sql, vec![arg], None).await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunDoc>, CatalogError> {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        let arg = |v: Value, args: &mut Vec<Value>| {
            args.push(v);
            format!("?{}", args.len())
        };
        match (&filter.host, filter.status) {
            (Some(h), Some(s)) => {
                let (a, b) = (arg(text(h), &mut args), arg(text(s.as_str()), &mut args));
                conds.push(format!(
                    "EXISTS (SELECT 1 FROM copies c WHERE c.run_id = r.id AND c.host = {a} AND c.status = {b})"
                ));
            }
            (Some(h), None) => {
                let a = arg(text(h), &mut args);
                conds.push(format!(
                    "EXISTS (SELECT 1 FROM copies c WHERE c.run_id = r.id AND c.host = {a})"
                ));
            }
            (None, Some(s)) => {
                let b = arg(text(s.as_str()), &mut args);
                conds.push(format!(
                    "EXISTS (SELECT 1 FROM copies c WHERE c.run_id = r.id AND c.status = {b})"
                ));
            }
            (None, None) => {}
        }
        if let Some(m) = &filter.missing_at {
            let a = arg(text(m), &mut args);
            conds.push(format!(
                "NOT EXISTS (SELECT 1 FROM copies c WHERE c.run_id = r.id AND c.host = {a} AND c.status = 'transferred')"
            ));
        }
        if let Some(n) = filter.fewer_copies_than {
            let a = arg(Value::Integer(i64::from(n)), &mut args);
            conds.push(format!(
                "(SELECT count(*) FROM copies c WHERE c.run_id = r.id AND c.status = 'transferred') < {a}"
            ));
        }
        if let Some(since) = filter.since {
            let a = arg(Value::Integer(since.timestamp_millis()), &mut args);
            conds.push(format!("r.start >= {a}"));
        }
        if let Some(until) = filter.until {
            let a = arg(Value::Integer(until.timestamp_millis()), &mut args);
            conds.push(format!("r.start < {a}"));
        }
        if let Some(d) = &filter.detector {
            let a = arg(text(d), &mut args);
            conds.push(format!("r.detector = {a}"));
        }
        match &filter.scope {
            RunScope::All => {}
            RunScope::Number(n) => {
                let a = arg(Value::Integer(*n), &mut args);
                conds.push(format!("r.number = {a}"));
            }
            RunScope::Name(name) => {
                let a = arg(text(name), &mut args);
                conds.push(format!("r.name = {a}"));
            }
            RunScope::Range(range) => {
                if let Some(from) = range.from {
                    let a = arg(Value::Integer(from), &mut args);
                    conds.push(format!("r.number >= {a}"));
                }
                if let Some(to) = range.to {
                    let a = arg(Value::Integer(to), &mut args);
                    conds.push(format!("r.number <= {a}"));
                }
            }
        }
        if let Some(k) = &filter.after {
            let (n, d) = (
                arg(Value::Integer(k.number), &mut args),
                arg(text(&k.detector), &mut args),
            );
            conds.push(format!(
                "(r.number > {n} OR (r.number = {n} AND r.detector > {d}))"
            ));
        }
        let mut sql = "SELECT r.doc, r.id, r.detector, r.number FROM runs r".to_string();
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql.push_str(" ORDER BY r.number, r.detector");
        let mut page = None;
        if let Some(n) = filter.limit {
            page = Some((args.len(), n));
            let a = arg(limit(n), &mut args);
            sql.push_str(&format!(" LIMIT {a}"));
        }
        self.query_docs("list runs", sql, args, page).await
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn a_write_to_a_run_leaves_its_want_array_in_place() {
        let run = RunDoc::from_document(bson::doc! {
            "number": 2, "detector": "tpc", "data": [], "want": [],
        })
        .unwrap();
        let mut old = Vec::new();
        bson::doc! { "number": 2, "want": [], "detector": "tpc", "data": [] }
            .to_writer(&mut old)
            .unwrap();
        let out = encode_over("c", &run, Some(&old)).unwrap();
        let doc = bson::Document::from_reader(out.as_slice()).unwrap();
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys[..4], ["number", "want", "detector", "data"], "{doc}");
        assert_eq!(doc.get_array("want").unwrap().len(), 0);

        // The last want taken away: `want: []`, not a vanished field.
        let mut old = Vec::new();
        bson::doc! { "number": 2, "detector": "tpc", "data": [], "want": ["b/raw"] }
            .to_writer(&mut old)
            .unwrap();
        let out = encode_over("c", &run, Some(&old)).unwrap();
        let doc = bson::Document::from_reader(out.as_slice()).unwrap();
        assert_eq!(doc.get_array("want").unwrap().len(), 0, "{doc}");
    }
}
