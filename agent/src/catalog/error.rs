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

    /// The server could not be reached within the timeout. The message says why in a few
    /// words ([`unreachable_reason`]) and what to check; the driver's own text is in
    /// `detail`, logged at debug level where it was classified.
    #[error(
        "catalogue {catalog} is unreachable ({}) during {op}: check that the server runs \
         and that this host can reach its address and port",
        unreachable_reason(detail)
    )]
    Unreachable {
        /// The catalogue, password redacted.
        catalog: String,
        /// What we were doing.
        op: String,
        /// The driver's message.
        detail: String,
    },

    /// The server refused our credentials, or the user lacks a privilege.
    #[error("catalogue {catalog}: {denied}")]
    Auth {
        /// The catalogue, password redacted.
        catalog: String,
        /// What was refused, in words for people.
        denied: Denied,
        /// The server's message (logged at debug level where it was classified).
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

/// Why the server said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The user name or password was refused.
    Credentials {
        /// The user the URI names, if any.
        user: Option<String>,
        /// The database the user was authenticated against (`authSource`, else the URI's).
        source_db: Option<String>,
    },
    /// Logged in, but the user may not run `command`.
    Privilege {
        /// The command refused (`createIndexes`, `find`, …), when the server named it.
        command: Option<String>,
    },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Credentials { user, source_db } => {
                write!(f, "authentication failed")?;
                if let Some(u) = user {
                    write!(f, " for user {u}")?;
                }
                if let Some(db) = source_db {
                    write!(f, " on database {db}")?;
                }
                write!(
                    f,
                    ": check the password (FERRY_CATALOG_PASSWORD(_FILE), or the site map's \
                     catalog.password_env / password_file) and the URI's authSource"
                )
            }
            Denied::Privilege { command } => {
                write!(f, "the catalogue user is not authorised")?;
                if let Some(c) = command {
                    write!(f, " to run {c}")?;
                }
                write!(
                    f,
                    ": an agent needs the role readWrite on the catalogue's database \
                     (docs/catalog.md, \"Roles\")"
                )
            }
        }
    }
}

/// A few words on why a server could not be reached, from the driver's text (the driver
/// gives no structured cause for a failed server selection).
pub fn unreachable_reason(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if d.contains("connection refused") {
        "connection refused"
    } else if d.contains("failed to lookup")
        || d.contains("dns")
        || d.contains("name or service not known")
        || d.contains("no such host")
    {
        "the host name does not resolve"
    } else if d.contains("certificate") || d.contains("tls") || d.contains("ssl") {
        "the TLS handshake failed"
    } else if d.contains("reset") || d.contains("broken pipe") || d.contains("closed") {
        "the connection was cut"
    } else if d.contains("timed out") || d.contains("timeout") {
        "no answer in time"
    } else {
        "no answer"
    }
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
