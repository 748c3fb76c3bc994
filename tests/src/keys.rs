//! Throwaway SSH keys made with OpenSSH's `ssh-keygen`.
//!
//! Keys are written without a passphrase in OpenSSH format, private file mode 0600 (as
//! `ssh-keygen` creates it), next to their `.pub`. [`KeyPair`] also reads back what tests
//! compare against: the public key line and the SHA256 fingerprint as `ssh-keygen -lf` prints.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};

use crate::binaries::{ssh_keygen_binary, INSTALL_SCRIPT};
use crate::process::run_tool;

/// The algorithm of a generated key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyType {
    /// `ssh-ed25519` (the default).
    #[default]
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    Ecdsa,
    /// `ssh-rsa` 2048 bits (smaller than OpenSSH's default 3072 to keep key generation
    /// fast; signatures use rsa-sha2-256/512).
    Rsa,
}

impl KeyType {
    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyType::Ed25519 => &["-t", "ed25519"],
            KeyType::Ecdsa => &["-t", "ecdsa", "-b", "256"],
            KeyType::Rsa => &["-t", "rsa", "-b", "2048"],
        }
    }
}

/// A private key file and its `.pub`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    private: PathBuf,
    public: PathBuf,
}

impl KeyPair {
    /// Generates a new key at `path` (and `path.pub`) with `ssh-keygen -N ''`.
    pub fn generate(kind: KeyType, path: &Path, comment: &str) -> anyhow::Result<KeyPair> {
        KeyPair::generate_encrypted(kind, path, comment, "")
    }

    /// Generates a new key at `path` (and `path.pub`) whose private half is encrypted with
    /// `passphrase` (`ssh-keygen -N PASSPHRASE`; empty: not encrypted).
    pub fn generate_encrypted(
        kind: KeyType,
        path: &Path,
        comment: &str,
        passphrase: &str,
    ) -> anyhow::Result<KeyPair> {
        let keygen = ssh_keygen_binary();
        let hint = format!("run {INSTALL_SCRIPT} (installs openssh-client)");
        let mut argv: Vec<&OsStr> = vec![keygen.as_os_str(), OsStr::new("-q")];
        argv.extend(kind.keygen_args().iter().map(OsStr::new));
        argv.extend(
            ["-N", passphrase, "-C", comment, "-f"]
                .into_iter()
                .map(OsStr::new)
                .chain([path.as_os_str()]),
        );
        run_tool(&argv, &hint)?;
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        Ok(KeyPair {
            private: path.to_path_buf(),
            public: PathBuf::from(public),
        })
    }

    /// The private key file.
    pub fn private_path(&self) -> &Path {
        &self.private
    }

    /// The public key file (`<private>.pub`).
    pub fn public_path(&self) -> &Path {
        &self.public
    }

    /// `"<algorithm> <base64>"`: the public key without its comment, as it goes into
    /// `authorized_keys` and `known_hosts`.
    pub fn public_line(&self) -> anyhow::Result<String> {
        let text = fs::read_to_string(&self.public)
            .with_context(|| format!("reading public key {}", self.public.display()))?;
        let mut fields = text.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(algorithm), Some(key)) => Ok(format!("{algorithm} {key}")),
            _ => Err(anyhow!(
                "public key {} is not `<algorithm> <base64>`",
                self.public.display()
            )),
        }
    }

    /// `SHA256:...`, as `ssh-keygen -l -E sha256 -f` prints it.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let keygen = ssh_keygen_binary();
        let hint = format!("run {INSTALL_SCRIPT} (installs openssh-client)");
        let argv = [
            keygen.as_os_str(),
            OsStr::new("-l"),
            OsStr::new("-E"),
            OsStr::new("sha256"),
            OsStr::new("-f"),
            self.public.as_os_str(),
        ];
        let out = run_tool(&argv, &hint)?;
        // "256 SHA256:abc... comment (ED25519)"
        out.split_whitespace()
            .nth(1)
            .filter(|f| f.starts_with("SHA256:"))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("unexpected `ssh-keygen -l` output: {out:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_each_key_type_with_private_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, prefix) in [
            (KeyType::Ed25519, "ssh-ed25519 "),
            (KeyType::Ecdsa, "ecdsa-sha2-nistp256 "),
            (KeyType::Rsa, "ssh-rsa "),
        ] {
            let path = dir.path().join(format!("{kind:?}"));
            let pair = KeyPair::generate(kind, &path, "test").unwrap();
            let mode = fs::metadata(pair.private_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{kind:?}");
            assert!(pair.public_line().unwrap().starts_with(prefix), "{kind:?}");
            assert!(pair.fingerprint().unwrap().starts_with("SHA256:"));
        }
    }
}
