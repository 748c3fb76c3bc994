//! The embedded catalogue: one SQLite file, zero set-up, the default when no catalogue is
//! configured.
//!
//! - `schema`: the tables and indexes (created on open, idempotently).
//! - `apply`: the conditional updates as pure functions on a run document.
//! - `backend`: [`EmbeddedCatalog`], the [`crate::catalog::Catalog`] implementation.
//!
//! Each run document is stored whole, as BSON, in `runs.doc` (so unknown fields survive),
//! with its identity in indexed columns; its copies are projected into the `copies` table
//! (`host`, `type`, `status`, `lease_expires`), rewritten in the same transaction as the
//! document. Every state change is `BEGIN IMMEDIATE` → read → check the expected state →
//! write → `COMMIT`; the file is in WAL mode with a busy timeout, so several processes can
//! share it.

mod apply;
mod backend;
mod schema;

pub use backend::EmbeddedCatalog;
