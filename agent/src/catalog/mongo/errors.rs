//! Driver errors → [`CatalogError`], deciding what a retry can help.

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::catalog::error::Denied;
use crate::catalog::uri::split;
use crate::catalog::CatalogError;

/// MongoDB's duplicate-key error code.
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// Server code for refused credentials.
const AUTHENTICATION_FAILED: i32 = 18;
/// Server code for a missing privilege.
const UNAUTHORIZED: i32 = 13;

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
    tracing::debug!(catalog, op, "the MongoDB driver said: {detail}");
    let lower = detail.to_ascii_lowercase();
    let credentials = || Denied::Credentials {
        user: uri_user(catalog),
        source_db: uri_auth_db(catalog),
    };
    let catalog = catalog.to_string();
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => {
            return CatalogError::Auth {
                denied: credentials(),
                catalog,
                detail,
            }
        }
        ErrorKind::Command(c) if c.code == AUTHENTICATION_FAILED => {
            return CatalogError::Auth {
                denied: credentials(),
                catalog,
                detail,
            }
        }
        ErrorKind::Command(c) if c.code == UNAUTHORIZED => {
            return CatalogError::Auth {
                denied: Denied::Privilege {
                    command: refused_command(&c.message),
                },
                catalog,
                detail,
            }
        }
        ErrorKind::ServerSelection { .. } if lower.contains("authentication failed") => {
            return CatalogError::Auth {
                denied: credentials(),
                catalog,
                detail,
            }
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

/// The user a (password-redacted) catalogue URI names: `mongodb://USER:****@host/…`.
fn uri_user(catalog: &str) -> Option<String> {
    let user = split(catalog)?.user?;
    let user = percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .ok()?;
    (!user.is_empty()).then(|| user.into_owned())
}

/// The database users are authenticated against: `authSource`, else the URI's database,
/// else `admin` (the driver's default).
fn uri_auth_db(catalog: &str) -> Option<String> {
    let rest = split(catalog)?.rest;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some(src) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("authSource="))
    {
        return Some(src.to_string());
    }
    match path.split_once('/') {
        Some((_, db)) if !db.is_empty() => Some(db.to_string()),
        _ => Some("admin".to_string()),
    }
}

/// The command a server refused: "not authorized on run to execute command { createIndexes: …".
fn refused_command(message: &str) -> Option<String> {
    let after = message.split_once("execute command {")?.1.trim_start();
    let name: String = after
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_and_auth_database_come_from_the_redacted_uri() {
        let uri = "mongodb://ferry:****@db.example:27017/run?authSource=admin";
        assert_eq!(uri_user(uri).as_deref(), Some("ferry"));
        assert_eq!(uri_auth_db(uri).as_deref(), Some("admin"));
        assert_eq!(
            uri_auth_db("mongodb://u:****@h/xenon").as_deref(),
            Some("xenon")
        );
        assert_eq!(uri_user("mongodb://h:27017/run"), None);
    }

    #[test]
    fn the_refused_command_is_named() {
        let m = "not authorized on run to execute command { createIndexes: \"runs\", indexes: [] }";
        assert_eq!(refused_command(m).as_deref(), Some("createIndexes"));
        assert_eq!(refused_command("something else"), None);
    }
}
