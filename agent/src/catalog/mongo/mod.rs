//! The central catalogue: MongoDB through the official driver.
//!
//! - `config`: [`MongoConfig`]: the connection string, the password (from an environment
//!   variable or a file, never from the site map), database and collection names, timeouts.
//! - `backend`: [`MongoCatalog`], the [`crate::catalog::Catalog`] implementation. Each state
//!   change is one `update_one` whose filter names the expected state (`$elemMatch` on the
//!   copy's host, type, status and lease owner) with a positional `$` update; success is
//!   `modified_count == 1`.
//! - `errors`: driver errors → [`crate::catalog::CatalogError`], with retryability.
//!
//! Indexes (`catalog_schema::RUN_INDEXES`) are created at connect time; creating an
//! existing index with the same name and keys is a no-op, so start-up is idempotent.

mod backend;
mod config;
mod errors;

pub use backend::MongoCatalog;
pub use config::{MongoConfig, Password};
