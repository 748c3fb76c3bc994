//! Optional HTTP basic auth for `ferry serve --users FILE`, for sites without a reverse
//! proxy in front.
//!
//! The file is htpasswd's: one `user:hash` a line, the hash bcrypt (`htpasswd -nB user`
//! makes one; `$2a$`, `$2b$`, `$2x$`, `$2y$` are read), blank lines and `#` comments
//! skipped. Anything else (a plain, MD5 or SHA-1 password) is refused when the file is
//! read, naming the line: only a slow salted hash is accepted. A request without valid
//! credentials gets 401 with `WWW-Authenticate: Basic`. bcrypt is slow on purpose, so a
//! checked pair is remembered (as its SHA-256, never in clear) for the life of the
//! process.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Why the users file cannot be used; fix the file and start again.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It cannot be read.
    #[error("users file {path}: cannot be read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `user:bcrypt-hash`.
    #[error("users file {path}, line {line}: {detail}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong (never the hash itself).
        detail: String,
    },
    /// No user at all.
    #[error("users file {path}: names no user")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The users allowed in, by name, with their bcrypt hashes.
#[derive(Clone)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
    checked: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.hashes.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    /// Reads an htpasswd file of bcrypt hashes.
    pub fn read(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of a users file (`path` for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, UsersError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |detail: &str| UsersError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                detail: detail.to_string(),
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("expected user:hash (htpasswd -nB USER makes one)"));
            };
            if user.is_empty() {
                return Err(bad("the user name is empty"));
            }
            let bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
                .iter()
                .any(|p| hash.starts_with(p));
            if !bcrypt || hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(bad(
                    "the hash is not bcrypt (make one with htpasswd -nB USER); plain, MD5 \
                     and SHA-1 passwords are refused",
                ));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        if hashes.is_empty() {
            return Err(UsersError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Users {
            hashes: Arc::new(hashes),
            checked: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Whether `user` with `password` may come in.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.hashes.get(user) else {
            return false;
        };
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Ok(seen) = self.checked.lock() {
            if seen.contains(&key) {
                return true;
            }
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            if let Ok(mut seen) = self.checked.lock() {
                seen.insert(key);
            }
        }
        ok
    }
}

/// `user:password` of a `Basic` authorization header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(raw).ok()?;
    let (u, p) = pair.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The middleware: 401 unless the request carries a known user's password.
pub(crate) async fn require(State(users): State<Arc<Users>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(credentials);
    if let Some((user, password)) = given {
        let users = users.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&user, &password))
            .await
            .unwrap_or(false);
        if ok {
            return next.run(req).await;
        }
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "credentials needed\n").into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry\", charset=\"UTF-8\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_htpasswd_bcrypt_line_lets_its_user_in_and_nobody_else() {
        let hash = bcrypt::hash("s3cret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        let users = Users::parse(Path::new("users"), &format!("# ops\nalice:{hash}\n")).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(users.verify("alice", "s3cret"), "remembered");
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
    }

    #[test]
    fn a_plain_or_md5_password_is_refused_with_its_line() {
        for line in ["alice:plain", "alice:$apr1$abc$def", "alice:{SHA}xyz"] {
            let e = Users::parse(Path::new("users"), &format!("\n{line}\n"))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("line 2") && e.contains("not bcrypt"), "{e}");
        }
    }

    #[test]
    fn basic_credentials_are_read() {
        let v = HeaderValue::from_static("Basic YWxpY2U6czNjcjp0");
        assert_eq!(
            credentials(&v),
            Some(("alice".to_string(), "s3cr:t".to_string()))
        );
    }
}
