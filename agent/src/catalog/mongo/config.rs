//! Options of the MongoDB back end.

use std::path::Path;
use std::time::Duration;

use crate::catalog::{CatalogError, CatalogUri};

/// Environment variable holding the catalogue password.
pub const PASSWORD_ENV: &str = "FERRY_CATALOG_PASSWORD";
/// Environment variable naming a file whose first line is the catalogue password.
pub const PASSWORD_FILE_ENV: &str = "FERRY_CATALOG_PASSWORD_FILE";

/// A password; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(****)")
    }
}

/// How to reach the MongoDB catalogue.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// The connection string (TLS via `tls=true`, SCRAM via user name + password).
    pub uri: CatalogUri,
    /// The password for the URI's user, when the URI does not carry one.
    pub password: Option<Password>,
    /// Database (default: the URI's `/db`, else `run`).
    pub database: Option<String>,
    /// Collection of run documents.
    pub collection: String,
    /// Collection of heartbeat documents.
    pub heartbeats: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an operation waits for a usable server (bounds "unreachable").
    pub server_selection_timeout: Duration,
    /// Create the indexes at connect time (agents: yes; read-only clients such as
    /// `ferry runs`, whose users may lack the `createIndex` privilege: no).
    pub create_indexes: bool,
}

impl MongoConfig {
    /// Defaults: collections `runs` and `heartbeats`, 5 s connect, 10 s server selection.
    pub fn new(uri: CatalogUri) -> Self {
        MongoConfig {
            uri,
            password: None,
            database: None,
            collection: "runs".into(),
            heartbeats: "heartbeats".into(),
            connect_timeout: Duration::from_secs(5),
            server_selection_timeout: Duration::from_secs(10),
            create_indexes: true,
        }
    }

    /// [`MongoConfig::new`] with the password from `FERRY_CATALOG_PASSWORD`, else from the
    /// file named by `FERRY_CATALOG_PASSWORD_FILE`.
    pub fn from_env(uri: CatalogUri) -> Result<Self, CatalogError> {
        let mut config = MongoConfig::new(uri);
        if let Ok(pw) = std::env::var(PASSWORD_ENV) {
            config.password = Some(Password::new(pw));
        } else if let Some(path) = std::env::var_os(PASSWORD_FILE_ENV) {
            config = config.with_password_file(Path::new(&path))?;
        }
        Ok(config)
    }

    /// Reads the password from the first line of a file (trailing newline dropped).
    pub fn with_password_file(mut self, path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Config {
            catalog: self.uri.to_string(),
            detail: format!("cannot read password file {}: {e}", path.display()),
        })?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(CatalogError::Config {
                catalog: self.uri.to_string(),
                detail: format!("password file {} is empty", path.display()),
            });
        }
        self.password = Some(Password::new(line));
        Ok(self)
    }
}
