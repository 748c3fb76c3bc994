//! Catalogue locations: what `--catalog`, `FERRY_CATALOG` or the site map name.
//!
//! A [`CatalogUri`] is parsed once. Its `Display` and `Debug` never show a password, so it
//! can be logged freely; [`CatalogUri::expose`] hands the full string to the driver only.
//!
//! Redaction comes from parsing, not from pattern matching: after the scheme, the user
//! information ends at the **last** `@` (a password may hold `/`, `?`, `#`, `@`, `:`, `[`,
//! `]` or `%`, written plainly or percent-encoded, and none of them ends it early). The user
//! is what precedes the first `:` of the user information and is shown; everything after
//! that `:` is the password and is shown as `****`. A user or password that the MongoDB
//! driver would refuse (a reserved character not percent-encoded, a `%` not followed by two
//! hex digits) is refused here, before the driver sees it, without showing either.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// What the password is replaced with wherever a URI is shown.
pub const REDACTED: &str = "****";

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
    /// The URI as given, password redacted (or a placeholder when even its shape is unsafe
    /// to show).
    pub shown: String,
    /// What is wrong with it (never quotes the user information).
    pub reason: String,
}

/// A `scheme://` URI split at its user information, by [`split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriParts<'a> {
    /// Up to and including `://`.
    pub scheme: &'a str,
    /// Before the first `:` of the user information (`None`: no `@` at all).
    pub user: Option<&'a str>,
    /// After the first `:` of the user information, if there is one. Secret.
    pub password: Option<&'a str>,
    /// After the last `@`: hosts, `/database`, `?options`.
    pub rest: &'a str,
}

/// Splits `scheme://[user[:password]@]rest`; `None` when there is no `://`. The user
/// information ends at the last `@` of the whole remainder, so an `@` (or `/`, `?`, `#`)
/// inside a password never ends it early: at worst more is hidden, never less.
pub fn split(uri: &str) -> Option<UriParts<'_>> {
    let sep = uri.find("://")?;
    // A scheme is `[A-Za-z][A-Za-z0-9+.-]*`: anything else before the first `://` (say, a
    // password followed by `@host://…`) means this is no URI, and nothing of it is shown.
    let name = uri[..sep].trim_start();
    let scheme_ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let scheme_end = sep + 3;
    let (scheme, after) = uri.split_at(scheme_end);
    let Some(at) = after.rfind('@') else {
        return Some(UriParts {
            scheme,
            user: None,
            password: None,
            rest: after,
        });
    };
    let userinfo = &after[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    Some(UriParts {
        scheme,
        user: Some(user),
        password,
        rest: &after[at + 1..],
    })
}

/// The URI with its password replaced by `****` (see [`split`]). A string without `://`
/// is returned as it is when it names an embedded catalogue (`sqlite:PATH`,
/// `embedded:PATH`), and not shown at all otherwise (it may be a pasted secret).
pub fn redact(uri: &str) -> String {
    let Some(p) = split(uri) else {
        return if is_embedded(uri) {
            uri.to_string()
        } else {
            NOT_SHOWN.to_string()
        };
    };
    match (p.user, p.password) {
        (None, _) => uri.to_string(),
        (Some(user), None) => format!("{}{user}@{}", p.scheme, p.rest),
        (Some(user), Some(_)) => format!("{}{user}:{REDACTED}@{}", p.scheme, p.rest),
    }
}

/// Characters a MongoDB user name or password must percent-encode (the driver's list).
const USERINFO_RESERVED: &[char] = &[':', '/', '?', '#', '[', ']', '@'];

/// Whether a user name or password is well formed: no reserved character written plainly,
/// every `%` starting a `%XX` escape, and UTF-8 once decoded.
fn userinfo_ok(s: &str, reserved: &[char]) -> bool {
    if s.contains(reserved) {
        return false;
    }
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return false;
        }
    }
    percent_decode_str(s).decode_utf8().is_ok()
}

/// What [`CatalogUriError::shown`] holds for input that cannot safely be shown at all.
const NOT_SHOWN: &str = "(not shown)";

/// Whether `s` names an embedded catalogue file (which has no user information).
fn is_embedded(s: &str) -> bool {
    let t = s.trim_start();
    t.starts_with("sqlite:") || t.starts_with("embedded:")
}

/// How a bad input is shown: redacted when it has the shape of a URI (`scheme://…`) or
/// names an embedded file; otherwise not at all (it may be a pasted secret).
fn shown(input: &str) -> String {
    redact(input.trim())
}

impl CatalogUri {
    /// Parses `mongodb://…`, `mongodb+srv://…`, `sqlite:PATH`, `sqlite://PATH` or
    /// `embedded:PATH`. An error never contains the user information's secret part.
    pub fn parse(input: &str) -> Result<Self, CatalogUriError> {
        let err = |reason: &str| CatalogUriError {
            shown: shown(input),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("empty; expected mongodb://HOST/DB or sqlite:PATH"));
        }
        if trimmed.starts_with("mongodb://") || trimmed.starts_with("mongodb+srv://") {
            let Some(parts) = split(trimmed) else {
                return Err(err("no `://` after the scheme"));
            };
            if let Some(user) = parts.user {
                if !userinfo_ok(user, USERINFO_RESERVED) {
                    return Err(err(
                        "the user name holds a character that must be percent-encoded \
                         (one of : / ? # [ ] @, or a % not followed by two hex digits)",
                    ));
                }
                if user.is_empty() && parts.password.is_some() {
                    return Err(err("a password but no user name before it"));
                }
            }
            if let Some(pw) = parts.password {
                if !userinfo_ok(pw, USERINFO_RESERVED) {
                    return Err(err(
                        "the password (not shown) holds a character that must be \
                         percent-encoded (one of : / ? # [ ] @, or a % not followed by two \
                         hex digits); an `@` after the user information must be written %40",
                    ));
                }
            }
            let hosts = parts.rest.split(['/', '?']).next().unwrap_or("");
            if hosts.is_empty() {
                return Err(err("no host after the scheme (and the user, if any)"));
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

    /// The database a MongoDB URI names in its path (`mongodb://h/DB?…`), if any.
    pub fn database(&self) -> Option<String> {
        let Self::Mongo { raw } = self else {
            return None;
        };
        let rest = split(raw)?.rest;
        let (_, path) = rest.split_once('/')?;
        let db = path.split('?').next().unwrap_or("");
        let db = percent_decode_str(db).decode_utf8_lossy().into_owned();
        (!db.is_empty()).then_some(db)
    }

    /// Whether the URI's own user information carries a password.
    pub fn has_password(&self) -> bool {
        match self {
            Self::Mongo { raw } => split(raw).is_some_and(|p| p.password.is_some()),
            Self::Embedded { .. } => false,
        }
    }

    /// The full connection string, password included: for the driver only.
    pub fn expose(&self) -> String {
        match self {
            Self::Mongo { raw } => raw.clone(),
            Self::Embedded { path } => format!("sqlite:{}", path.display()),
        }
    }

    /// `text` with every occurrence of this URI's password (as written and percent-decoded)
    /// replaced by `****`: for messages that quote a driver, which may echo what it was
    /// given. Passwords shorter than 4 characters are hidden only as part of the URI.
    pub fn scrub(&self, text: &str) -> String {
        let Self::Mongo { raw } = self else {
            return text.to_string();
        };
        let mut out = text.replace(raw.as_str(), &redact(raw));
        if let Some(pw) = split(raw).and_then(|p| p.password) {
            let decoded = percent_decode_str(pw).decode_utf8_lossy().into_owned();
            for secret in [pw, decoded.as_str()] {
                if secret.chars().count() >= 4 {
                    out = out.replace(secret, REDACTED);
                }
            }
        }
        out
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
        match self {
            Self::Mongo { raw } => f.write_str(&redact(raw)),
            Self::Embedded { path } => write!(f, "sqlite:{}", path.display()),
        }
    }
}

impl fmt::Debug for CatalogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CatalogUri({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

    /// Every character a URI reserves, and `%`.
    const RESERVED: &[char] = &['/', '?', '#', '@', ':', '[', ']', '%'];

    /// Everything a URI can be shown as: Display, Debug, and the error if it is refused.
    fn every_printout(input: &str) -> Vec<String> {
        let mut out = vec![redact(input)];
        match CatalogUri::parse(input) {
            Ok(u) => {
                out.push(u.to_string());
                out.push(format!("{u:?}"));
                out.push(u.scrub(&format!("driver said: {input}")));
            }
            Err(e) => {
                out.push(e.to_string());
                out.push(format!("{e:?}"));
            }
        }
        out
    }

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
    fn a_password_with_a_slash_or_question_mark_is_not_printed() {
        for pw in ["pa/ss-word", "pa?ss-word", "pa/ss?wo#rd", "x@h/y?z"] {
            let input = format!("mongodb://ferry:{pw}@db.example/run?authSource=admin");
            assert_eq!(
                redact(&input),
                "mongodb://ferry:****@db.example/run?authSource=admin"
            );
            for shown in every_printout(&input) {
                assert!(!shown.contains(pw), "{pw} in {shown}");
            }
        }
    }

    /// Every reserved character, alone and percent-encoded, at the start, middle and end of
    /// the user and of the password: the password is never in any printout; a password
    /// written plainly with a reserved character is refused, percent-encoded it is accepted.
    #[test]
    fn every_reserved_character_in_user_and_password() {
        for c in RESERVED {
            let plain = format!("{c}Secret{c}Pw{c}");
            let encoded = utf8_percent_encode(&plain, NON_ALPHANUMERIC).to_string();
            let user_plain = format!("{c}Us{c}er{c}");
            let user_encoded = utf8_percent_encode(&user_plain, NON_ALPHANUMERIC).to_string();
            for (user, valid_user) in [
                ("ferry".to_string(), true),
                (user_plain, false),
                (user_encoded, true),
            ] {
                for (pw, valid_pw) in [(&plain, false), (&encoded, true)] {
                    let input = format!("mongodb://{user}:{pw}@db.example:27017/run?x=y");
                    let parsed = CatalogUri::parse(&input);
                    // '%' followed by "Se" is no escape; encoded forms always are.
                    let want_ok = valid_user && valid_pw;
                    assert_eq!(parsed.is_ok(), want_ok, "{input}: {parsed:?}");
                    for shown in every_printout(&input) {
                        assert!(!shown.contains(pw.as_str()), "{input} shown as {shown}");
                        assert!(!shown.contains("Secret"), "{input} shown as {shown}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_percent_encoded_password_is_accepted_and_scrubbed_in_both_forms() {
        let uri = CatalogUri::parse("mongodb://ferry:p%40ss%2Fw0rd@h/db").unwrap();
        assert_eq!(uri.to_string(), "mongodb://ferry:****@h/db");
        let driver = "auth failed for p@ss/w0rd (p%40ss%2Fw0rd)";
        assert_eq!(uri.scrub(driver), "auth failed for **** (****)");
    }

    /// Found by fuzzing: with no scheme in front, everything before a later `://` (here the
    /// hosts') was taken for the scheme and shown, password included.
    #[test]
    fn a_password_before_a_later_scheme_separator_is_not_printed() {
        let input = " P(POST:%F0%9F%94%91-Secret@eS://:\0\0)";
        assert_eq!(redact(input), NOT_SHOWN);
        let e = CatalogUri::parse(input).unwrap_err();
        assert!(!e.to_string().contains("Secret"), "{e}");
        assert!(split("x y://u:p@h").is_none());
        assert!(split("  mongodb://u:p@h").is_some());
    }

    #[test]
    fn a_user_without_password_is_shown() {
        let uri = CatalogUri::parse("mongodb://ferry@h:27017/db").unwrap();
        assert_eq!(uri.to_string(), "mongodb://ferry@h:27017/db");
    }

    #[test]
    fn bad_uris_rejected_without_password() {
        let e = CatalogUri::parse("postgres://u:pw@h/db").unwrap_err();
        assert!(!e.to_string().contains("pw@"));
        assert!(CatalogUri::parse("mongodb:///db").is_err());
        assert!(CatalogUri::parse("mongodb://u:pw@/db").is_err());
        assert!(CatalogUri::parse("mongodb://:pw@h/db").is_err());
        assert!(CatalogUri::parse("sqlite:").is_err());
        assert!(CatalogUri::parse("  ").is_err());
    }

    #[test]
    fn a_pasted_secret_is_not_echoed_in_the_error() {
        for input in ["hunter2-Secret", "ferry:hunter2-Secret@db"] {
            let e = CatalogUri::parse(input).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert_eq!(e.shown, NOT_SHOWN);
        }
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
