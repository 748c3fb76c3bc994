//! What can go wrong talking to the catalogue, and whether trying again can help.
//!
//! Every variant names the catalogue (password redacted: it is built from
//! [`super::CatalogUri`]'s `Display`) and, where there is one, the run or the operation.
//! [`CatalogError::is_retryable`] is what [`super::Retrying`] asks.

use catalog_schema::{CopyStatus, DecodeError, ShapeError};

use super::uri::CatalogUriError;

/// A catalogue failure.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalogue location does not parse.
    #[error(transparent)]
    Uri(#[from] CatalogUriError),

    /// The configuration is unusable (password file unreadable, bad option).
    #[error("catalogue {catalog}: {detail}")]
    Config {
        /// The catalogue, password redacted.
        catalog: String,
        /// What is wrong.
        detail: String,
    },

    /// The server could not be reached within the timeout.
    #[error("catalogue {catalog}: unreachable during {op}: {detail}")]
    Unreachable {
        /// The catalogue, password redacted.
        catalog: String,
        /// What we were doing.
        op: String,
        /// The driver's message.
        detail: String,
    },

    /// The server refused our credentials.
    #[error("catalogue {catalog}: authentication failed: {detail}")]
    Auth {
        /// The catalogue, password redacted.
        catalog: String,
        /// The server's message.
        detail: String,
    },

    /// The database reported an error for an operation.
    #[error("catalogue {catalog}: {op} failed: {detail}")]
    Database {
        /// The catalogue, password redacted.
        catalog: String,
        /// The operation, with the run or copy it concerned.
        op: String,
        /// The database's message.
        detail: String,
        /// Whether the same operation may succeed if tried again.
        retryable: bool,
    },

    /// A run document could not be encoded.
    #[error("catalogue {catalog}: {source}")]
    BadDocument {
        /// The catalogue, password redacted.
        catalog: String,
        /// The run and the field.
        #[source]
        source: ShapeError,
    },

    /// The run document asked for does not decode (see [`super::Quarantine`]); it was not
    /// changed.
    #[error("catalogue {catalog}: {source}; not changed")]
    Unreadable {
        /// The catalogue, password redacted.
        catalog: String,
        /// The document, the field and what is wrong with it.
        #[source]
        source: Box<DecodeError>,
    },

    /// A caller asked for a status change the copy state machine forbids.
    #[error("catalogue {catalog}: copy {copy}: illegal transition {from} -> {to}")]
    IllegalTransition {
        /// The catalogue, password redacted.
        catalog: String,
        /// The copy.
        copy: String,
        /// Current status asked for.
        from: CopyStatus,
        /// Target status asked for.
        to: CopyStatus,
    },

    /// The embedded catalogue file could not be created or opened.
    #[error("catalogue {catalog}: {op}: {source}")]
    Io {
        /// The catalogue (file path).
        catalog: String,
        /// What we were doing.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl CatalogError {
    /// Whether the same call may succeed if made again later (network blips, a busy
    /// SQLite file, a primary step-down). Bad input, bad documents, refused credentials and
    /// illegal transitions are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Unreachable { .. } => true,
            CatalogError::Database { retryable, .. } => *retryable,
            CatalogError::Uri(_)
            | CatalogError::Config { .. }
            | CatalogError::Auth { .. }
            | CatalogError::BadDocument { .. }
            | CatalogError::Unreadable { .. }
            | CatalogError::IllegalTransition { .. }
            | CatalogError::Io { .. } => false,
        }
    }

    /// Whether this is about reaching or logging in to the catalogue (exit code 3), as
    /// opposed to bad input or a bad document.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            CatalogError::Unreachable { .. } | CatalogError::Auth { .. }
        ) || matches!(
            self,
            CatalogError::Database {
                retryable: true,
                ..
            }
        )
    }
}
