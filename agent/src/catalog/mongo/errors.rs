//! Driver errors → [`CatalogError`], deciding what a retry can help.

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::catalog::CatalogError;

/// MongoDB's duplicate-key error code.
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// Server codes for refused credentials or permissions.
const AUTH_CODES: [i32; 2] = [18, 13];

/// Whether `e` is a duplicate-key write error.
pub(super) fn is_duplicate_key(e: &Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY
    ) || matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == DUPLICATE_KEY)
}

/// Maps a driver error for operation `op` on `catalog`.
pub(super) fn classify(catalog: &str, op: &str, e: Error) -> CatalogError {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    let catalog = catalog.to_string();
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => return CatalogError::Auth { catalog, detail },
        ErrorKind::Command(c) if AUTH_CODES.contains(&c.code) => {
            return CatalogError::Auth { catalog, detail }
        }
        ErrorKind::ServerSelection { .. } if lower.contains("authentication failed") => {
            return CatalogError::Auth { catalog, detail }
        }
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => {
            return CatalogError::Unreachable {
                catalog,
                op: op.to_string(),
                detail,
            }
        }
        _ => {}
    }
    let retryable = e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("ResumableChangeStreamError");
    CatalogError::Database {
        catalog,
        op: op.to_string(),
        detail,
        retryable,
    }
}
