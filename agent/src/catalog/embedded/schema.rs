//! The embedded catalogue's tables and indexes.
//!
//! The indexes mirror `catalog_schema::RUN_INDEXES`: `copies_host_status` is
//! `data.host, data.status`; `copies_status_expires` is `data.status, data.lease.expires`;
//! the `wants` table (keyed by want first) is the multikey `want` index.

/// Schema version stored in `PRAGMA user_version`.
pub(super) const VERSION: i64 = 2;

/// Creates every table and index (idempotent).
pub(super) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY,
    detector TEXT    NOT NULL,
    number   INTEGER NOT NULL,
    name     TEXT,
    start    INTEGER,
    doc      BLOB    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_detector_number ON runs(detector, number);
CREATE UNIQUE INDEX IF NOT EXISTS runs_detector_name ON runs(detector, name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_number ON runs(number);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE INDEX IF NOT EXISTS runs_start ON runs(start);
CREATE TABLE IF NOT EXISTS copies (
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    host          TEXT    NOT NULL,
    type          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    lease_expires INTEGER,
    PRIMARY KEY (run_id, host, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS copies_host_status ON copies(host, status, type);
CREATE INDEX IF NOT EXISTS copies_status_expires ON copies(status, lease_expires);
CREATE TABLE IF NOT EXISTS wants (
    want   TEXT    NOT NULL,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    PRIMARY KEY (want, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wants_run ON wants(run_id);
CREATE TABLE IF NOT EXISTS heartbeats (
    site TEXT PRIMARY KEY,
    doc  BLOB NOT NULL
);
";

/// Runs that want a copy at the destination (`?` = `"<dest>/<type>"`) and have a
/// transferred copy at one of the sources. `{sources}` is replaced by the right number of
/// `?` placeholders. The `wants` primary key gives the candidates; each is checked with one
/// `copies` primary-key lookup; run rows are read only for the runs that qualify.
pub(super) const RUNS_NEEDING_COPY: &str = "
WITH todo AS (
    SELECT w.run_id AS id FROM wants w
    WHERE w.want = ?
      AND EXISTS (SELECT 1 FROM copies s
                  WHERE s.run_id = w.run_id AND s.host IN ({sources}) AND s.type = ?
                    AND s.status = 'transferred'))
SELECT r.doc, r.id, r.detector, r.number FROM runs r WHERE r.id IN (SELECT id FROM todo)
  AND (? = 0 OR (r.number, r.detector) > (?, ?))
  {scope}
ORDER BY r.number, r.detector LIMIT ?";

// Every work query is paged: its page arguments are a flag (0: first page) and the
// (number, detector) of the last run of the previous page; the runs come in that order.
// Every query reads `doc, id, detector, number`: the row names a document that does not
// decode. The back end appends `OFFSET n` to read on past such documents.

/// Runs with a copy at a site in a status.
pub(super) const COPIES_IN_STATUS: &str = "
SELECT r.doc, r.id, r.detector, r.number FROM copies c JOIN runs r ON r.id = c.run_id
WHERE c.host = ?1 AND c.status = ?2
  AND (?3 = 0 OR (r.number, r.detector) > (?4, ?5))
  {scope}
ORDER BY r.number, r.detector LIMIT ?6";

/// Runs with a transferred copy here and another transferred copy elsewhere. The other copy
/// is looked up by the run's primary key: `+o.status` keeps SQLite from taking the status
/// index instead, which reads every transferred copy of the catalogue for each candidate
/// (25 s for a page of 10,000 candidates).
pub(super) const PURGE_CANDIDATES: &str = "
SELECT r.doc, r.id, r.detector, r.number FROM copies c JOIN runs r ON r.id = c.run_id
WHERE c.host = ?1 AND c.status = 'transferred'
  AND EXISTS (SELECT 1 FROM copies o
              WHERE o.run_id = c.run_id AND o.host <> ?1 AND +o.status = 'transferred')
  AND (?2 = 0 OR (r.number, r.detector) > (?3, ?4))
  {scope}
ORDER BY r.number, r.detector LIMIT ?5";

/// Runs with a transferring copy whose lease expired (any site).
pub(super) const STALLED: &str = "
SELECT DISTINCT r.doc, r.id, r.detector, r.number FROM copies c JOIN runs r ON r.id = c.run_id
WHERE c.status = 'transferring' AND c.lease_expires < ?1
  AND (?2 = 0 OR (r.number, r.detector) > (?3, ?4))
  {scope}
ORDER BY r.number, r.detector LIMIT ?5";

/// Runs with a transferring copy at a site whose lease expired.
pub(super) const STALLED_AT: &str = "
SELECT r.doc, r.id, r.detector, r.number FROM copies c JOIN runs r ON r.id = c.run_id
WHERE c.host = ?6 AND c.status = 'transferring' AND c.lease_expires < ?1
  AND (?2 = 0 OR (r.number, r.detector) > (?3, ?4))
  {scope}
ORDER BY r.number, r.detector LIMIT ?5";
