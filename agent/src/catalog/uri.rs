//! Catalogue locations: what `--catalog`, `FERRY_CATALOG` or the site map name.
//!
//! A [`CatalogUri`] is parsed once. Its `Display` and `Debug` never show a password, so it
//! can be logged freely; [`CatalogUri::expose`] hands the full string to the driver only.

use std::fmt;
use std::path::PathBuf;

/// Where the run catalogue lives.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogUri {
    /// A MongoDB deployment (`mongodb://` or `mongodb+srv://`).
    Mongo {
        /// The connection string exactly as given (may hold a password).
        raw: String,
    },
    /// The embedded catalogue: one SQLite file.
    Embedded {
        /// The SQLite file.
        path: PathBuf,
    },
}

/// A catalogue location that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("catalogue URI `{shown}`: {reason}")]
pub struct CatalogUriError {
    /// The URI as given, password redacted.
    pub shown: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CatalogUri {
    /// Parses `mongodb://…`, `mongodb+srv://…`, `sqlite:PATH`, `sqlite://PATH` or
    /// `embedded:PATH`.
    pub fn parse(input: &str) -> Result<Self, CatalogUriError> {
        let err = |reason: &str| CatalogUriError {
            shown: redact(input),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("empty; expected mongodb://HOST/DB or sqlite:PATH"));
        }
        if let Some(rest) = trimmed
            .strip_prefix("mongodb://")
            .or_else(|| trimmed.strip_prefix("mongodb+srv://"))
        {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let hosts = authority.rsplit('@').next().unwrap_or("");
            if hosts.is_empty() {
                return Err(err("no host after `mongodb://`"));
            }
            return Ok(Self::Mongo {
                raw: trimmed.to_string(),
            });
        }
        for prefix in ["sqlite://", "sqlite:", "embedded:"] {
            if let Some(path) = trimmed.strip_prefix(prefix) {
                if path.is_empty() {
                    return Err(err("no file path after the scheme"));
                }
                return Ok(Self::Embedded {
                    path: PathBuf::from(path),
                });
            }
        }
        Err(err(
            "unknown scheme; expected mongodb://, mongodb+srv://, sqlite: or embedded:",
        ))
    }

    /// The full connection string, password included: for the driver only.
    pub fn expose(&self) -> String {
        match self {
            Self::Mongo { raw } => raw.clone(),
            Self::Embedded { path } => format!("sqlite:{}", path.display()),
        }
    }

    /// The documented default embedded catalogue: `$FERRY_HOME/catalog.sqlite`, else
    /// `$XDG_DATA_HOME/ferry/catalog.sqlite`, else `~/.local/share/ferry/catalog.sqlite`.
    pub fn default_embedded() -> Self {
        let dir = std::env::var_os("FERRY_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("ferry")))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/ferry"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        Self::Embedded {
            path: dir.join("catalog.sqlite"),
        }
    }
}

impl fmt::Display for CatalogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.expose()))
    }
}

impl fmt::Debug for CatalogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CatalogUri({self})")
    }
}

/// Replaces the password of `scheme://user:password@host…` with `****`.
pub fn redact(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let userinfo = &authority[..at];
    let shown_user = match userinfo.find(':') {
        Some(colon) => format!("{}:****", &userinfo[..colon]),
        None => userinfo.to_string(),
    };
    format!("{}{}{}", &uri[..scheme_end + 3], shown_user, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shown() {
        let uri = CatalogUri::parse("mongodb://ferry:s3cr3t@db.example:27017/run?authSource=admin")
            .unwrap();
        assert!(!format!("{uri}").contains("s3cr3t"));
        assert!(!format!("{uri:?}").contains("s3cr3t"));
        assert!(format!("{uri}").contains("ferry:****@db.example"));
        assert!(uri.expose().contains("s3cr3t"));
    }

    #[test]
    fn password_with_at_sign_redacted_whole() {
        assert_eq!(redact("mongodb://u:p@ss@h/db"), "mongodb://u:****@h/db");
    }

    #[test]
    fn bad_uris_rejected_without_password() {
        let e = CatalogUri::parse("postgres://u:pw@h/db").unwrap_err();
        assert!(!e.to_string().contains("pw@"));
        assert!(CatalogUri::parse("mongodb:///db").is_err());
        assert!(CatalogUri::parse("sqlite:").is_err());
        assert!(CatalogUri::parse("  ").is_err());
    }

    #[test]
    fn embedded_forms() {
        for s in [
            "sqlite:/tmp/c.sqlite",
            "sqlite:///tmp/c.sqlite",
            "embedded:/tmp/c.sqlite",
        ] {
            assert!(
                matches!(CatalogUri::parse(s), Ok(CatalogUri::Embedded { .. })),
                "{s}"
            );
        }
    }
}
