//! Run documents the catalogue could not read: skipped, counted, warned about once, and
//! never written to.
//!
//! Every read of run documents decodes document by document
//! ([`catalog_schema::RunDoc::from_document`]). A document that does not decode is handed to
//! the back end's [`Quarantine`] and left out of the answer: a work list, `ferry runs list`
//! and the audit go on with the rest of the site. The quarantine logs one `warn!` per
//! document and problem per process (not every cycle), counts every skip (for the task
//! report, the heartbeat and the metrics endpoint) and keeps the distinct documents for
//! the commands that print them (`ferry runs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use catalog_schema::DecodeError;

/// The documents one catalogue could not read, since it was opened.
#[derive(Debug, Default)]
pub struct Quarantine {
    skips: AtomicU64,
    quiet: AtomicBool,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The messages already warned about (one per document and problem).
    keys: HashSet<String>,
    /// Those documents, in the order first seen.
    documents: Vec<DecodeError>,
}

/// How many distinct documents are kept for [`Quarantine::documents`] at most (the count
/// goes on past it).
const KEEP: usize = 10_000;

impl Quarantine {
    /// An empty quarantine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a read skipped the document `error` describes: counts it, and the first
    /// time this document shows this problem, logs a warning (unless [`Quarantine::quiet`]).
    pub fn skip(&self, error: DecodeError) {
        self.skips.fetch_add(1, Ordering::Relaxed);
        let key = error.to_string();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.keys.contains(&key) {
            return;
        }
        if !self.quiet.load(Ordering::Relaxed) {
            tracing::warn!(
                id = %error.id,
                field = %error.field,
                "{error}; skipped, not changed"
            );
        }
        if seen.documents.len() < KEEP {
            seen.keys.insert(key);
            seen.documents.push(error);
        }
    }

    /// Every skip since the catalogue was opened (a document read by ten queries counts ten
    /// times): the figure the task reports and the metrics endpoint take differences of.
    pub fn count(&self) -> u64 {
        self.skips.load(Ordering::Relaxed)
    }

    /// The distinct documents skipped so far, first seen first, each with what is wrong.
    pub fn documents(&self) -> Vec<DecodeError> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.documents.clone()
    }

    /// No warnings in the log: the caller prints [`Quarantine::documents`] itself (the
    /// `ferry runs` commands, on stderr).
    pub fn quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog_schema::RunDoc;

    fn bad(id: i32, status: &str) -> DecodeError {
        RunDoc::from_document(bson::doc! {
            "_id": id, "number": 1, "data": [{"host": "a", "status": status}],
        })
        .unwrap_err()
    }

    #[test]
    fn counts_every_skip_keeps_each_document_once() {
        let q = Quarantine::new();
        q.skip(bad(1, "done"));
        q.skip(bad(1, "done"));
        q.skip(bad(2, "done"));
        // The same document with another problem is a new entry.
        q.skip(bad(1, "gone"));
        assert_eq!(q.count(), 4);
        let docs = q.documents();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].id, "1");
        assert_eq!(docs[1].id, "2");
    }
}
