//! Verification of a copy at its destination, independent of the sending stream.
//!
//! The digest computed while sending says what left the source; a copy is only proven once the
//! destination's bytes are read again and match. Three ways (DESIGN §3.1, issue 4 item 4):
//!
//! - [`Verify::ReadBack`]: read the destination file again and hash it here — over SFTP for a
//!   push ([`crate::transport::sftp`]), from the local disk for a pull or a local copy;
//! - [`Verify::RemoteCommand`]: run a hashing command at the destination over SSH exec (e.g.
//!   `sha256sum`), which reads the file on the remote host without sending it back;
//! - [`Verify::Deferred`]: leave it to the destination agent, which re-hashes its local copy in
//!   its `verify` task (the catalogue keeps the copy in `verifying` until then).
//!
//! This module holds the comparison and the parsing shared by all methods; the SSH-side
//! methods are here too so that the three stay side by side.

use std::path::Path;

use crate::checksum::{hash_file, FileDigest};
use crate::transport::exec::quote_argv;
use crate::transport::{SshSession, TransportError, LOCAL};

/// How the destination of a copy is checked before its `.part` is renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The destination agent re-hashes later; the copy reports `verified: false`.
    Deferred,
    /// Read the destination bytes back and hash them here.
    ReadBack,
    /// Run `argv… PATH` on the destination host; the first word of its output must be the
    /// SHA-256 in hex (the output format of `sha256sum`). For a pull or a local copy the
    /// destination is this host, so this behaves like [`Verify::ReadBack`].
    RemoteCommand {
        /// Command and leading arguments, e.g. `["sha256sum", "--"]`.
        argv: Vec<String>,
    },
}

impl Verify {
    /// `sha256sum --` on the destination host.
    pub fn sha256sum() -> Self {
        Verify::RemoteCommand {
            argv: vec!["sha256sum".into(), "--".into()],
        }
    }
}

/// Compare a re-read digest with the sent one (size, SHA-256 and MD5).
pub fn compare(
    host: &str,
    path: &str,
    sent: &FileDigest,
    found: &FileDigest,
) -> Result<(), TransportError> {
    if sent == found {
        Ok(())
    } else {
        Err(TransportError::ChecksumMismatch {
            host: host.into(),
            path: path.into(),
            expected: sent.to_string(),
            actual: found.to_string(),
        })
    }
}

/// Re-hash a local destination file and compare it with the sent digest (blocking).
pub fn local_file(path: &Path, sent: &FileDigest) -> Result<(), TransportError> {
    let found = hash_file(path)?;
    compare(LOCAL, &path.display().to_string(), sent, &found)
}

/// Parse the output of `sha256sum`-like commands: the first word, 64 hex digits.
pub fn parse_sha256_output(stdout: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stdout).ok()?;
    // sha256sum escapes names with backslashes and prefixes the line with '\'.
    let word = text.split_whitespace().next()?.trim_start_matches('\\');
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

/// Hash a remote file with a command run over SSH exec; returns its SHA-256 in hex.
pub async fn remote_sha256(
    session: &SshSession,
    argv: &[String],
    path: &str,
) -> Result<String, TransportError> {
    let mut full: Vec<String> = argv.to_vec();
    full.push(path.to_owned());
    let out = session.exec(&full).await?;
    parse_sha256_output(&out.stdout).ok_or_else(|| TransportError::Exec {
        host: session.host().to_owned(),
        argv: full.clone(),
        status: Some(out.status),
        stderr_tail: format!(
            "no SHA-256 in output {:?} (command line {})",
            String::from_utf8_lossy(&out.stdout),
            quote_argv(&full)
        ),
    })
}

/// Verify a remote file with a hashing command; compares only SHA-256 (what the command gives).
pub async fn remote_command(
    session: &SshSession,
    argv: &[String],
    path: &str,
    sent: &FileDigest,
) -> Result<(), TransportError> {
    let found = remote_sha256(session, argv, path).await?;
    if found == sent.sha256_hex() {
        Ok(())
    } else {
        Err(TransportError::ChecksumMismatch {
            host: session.host().to_owned(),
            path: path.to_owned(),
            expected: format!("sha256={} (sent)", sent.sha256_hex()),
            actual: format!("sha256={found} ({})", argv.join(" ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256sum_output() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            parse_sha256_output(format!("{sha}  /data/a b\n").as_bytes()).as_deref(),
            Some(sha)
        );
        assert_eq!(
            parse_sha256_output(format!("\\{sha}  /data/a\\nb\n").as_bytes()).as_deref(),
            Some(sha)
        );
        assert_eq!(parse_sha256_output(b"sha256sum: x: No such file\n"), None);
        assert_eq!(parse_sha256_output(b""), None);
    }

    #[test]
    fn local_rehash_detects_a_flipped_bit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let sent = hash_file(&p).unwrap();
        local_file(&p, &sent).unwrap();
        std::fs::write(&p, b"hello worle").unwrap();
        let err = local_file(&p, &sent).unwrap_err();
        assert!(
            matches!(err, TransportError::ChecksumMismatch { .. }),
            "{err}"
        );
    }
}
