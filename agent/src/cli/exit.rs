//! Exit codes: documented in `ferry --help` (see [`EXIT_CODES_HELP`]) and in the docs.

use std::process::ExitCode;

/// What a `ferry` process tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything asked was done (or, for `config validate`, the site map is valid).
    Ok = 0,
    /// Some work failed; the log says which run, site and file.
    Failed = 1,
    /// Bad input: command line, site map, run name, catalogue URI. Nothing was changed.
    Usage = 2,
    /// The catalogue could not be reached or refused us (after retries).
    Catalog = 3,
    /// Another agent already holds this site's lock.
    Locked = 4,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 5] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::Catalog,
        Exit::Locked,
    ];

    /// Whether a supervisor (the systemd unit, `deploy/ferry-screen.sh`) should start the
    /// agent again after this exit: work that failed or a catalogue that went away may
    /// succeed later; bad input and a held lock need a person, and 0 is a requested stop.
    pub fn worth_a_restart(self) -> bool {
        matches!(self, Exit::Failed | Exit::Catalog)
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The exit-code table printed at the end of `ferry --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  everything asked was done (config validate: the site map is valid)
  1  some work failed; the log names the run, site and file
  2  bad input (command line, site map, run name, catalogue URI); nothing was changed
  3  the catalogue could not be reached, or refused the credentials (a daemon
     waits for an unreachable one, retrying and logging why)
  4  another ferry agent holds this site's lock";

/// An error that carries its exit code through `anyhow` to the edge.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    /// The exit code to use.
    pub code: Exit,
    /// What to print.
    pub message: String,
}

/// Builds an `anyhow::Error` that exits with `code`.
pub fn coded(code: Exit, message: impl Into<String>) -> anyhow::Error {
    CodedError {
        code,
        message: message.into(),
    }
    .into()
}

/// Finds the exit code for an error: an explicit [`CodedError`] anywhere in the chain wins;
/// otherwise library errors are mapped by kind ([`catalog_exit`]); anything else is
/// [`Exit::Failed`].
pub fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<CodedError>() {
            return c.code;
        }
        if cause
            .downcast_ref::<crate::catalog::uri::CatalogUriError>()
            .is_some()
        {
            return Exit::Usage;
        }
        if let Some(c) = cause.downcast_ref::<crate::catalog::CatalogError>() {
            return catalog_exit(c);
        }
    }
    Exit::Failed
}

/// The exit code of a catalogue error, the same in every command: a location that names
/// no usable catalogue (a bad URI, an unreadable password file, a file that is not an
/// SQLite catalogue or cannot be opened or created) is bad input (2); an unreachable,
/// refusing, busy or locked catalogue is 3; anything else (a bad document, a failed
/// statement) is 1.
pub fn catalog_exit(e: &crate::catalog::CatalogError) -> Exit {
    use crate::catalog::CatalogError as E;
    match e {
        E::Uri(_) | E::Config { .. } | E::Io { .. } => Exit::Usage,
        e if e.is_connection() => Exit::Catalog,
        _ => Exit::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;

    #[test]
    fn catalogue_errors_map_to_the_documented_codes() {
        let config = CatalogError::Config {
            catalog: "sqlite:/x".into(),
            detail: "file is not a database".into(),
        };
        assert_eq!(catalog_exit(&config), Exit::Usage);
        let io = CatalogError::Io {
            catalog: "sqlite:/x".into(),
            op: "create directory /x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(catalog_exit(&io), Exit::Usage);
        let locked = CatalogError::Database {
            catalog: "sqlite:/x".into(),
            op: "open".into(),
            detail: "database is locked".into(),
            retryable: true,
        };
        assert_eq!(catalog_exit(&locked), Exit::Catalog);
        let failed = CatalogError::Database {
            catalog: "sqlite:/x".into(),
            op: "list".into(),
            detail: "constraint".into(),
            retryable: false,
        };
        assert_eq!(catalog_exit(&failed), Exit::Failed);
        assert_eq!(classify(&anyhow::Error::new(locked)), Exit::Catalog);
    }
}
