//! How a copy is reached: the copy's `protocol` field.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How the bytes of a copy were written and are read: `sftp`, `local` or `tape`.
///
/// Any other name (another tool's: cax wrote `rsync`, `scp`, `rucio`, …) is kept as
/// [`Protocol::Other`], exactly as written, so such documents still load and round-trip;
/// Ferry treats such a copy as a disk copy it does not reach itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Protocol {
    /// Over SSH/SFTP.
    Sftp,
    /// Plain file copies on the same machine (or a shared file system).
    Local,
    /// Held by a tape back end; `host` is the back end's name, `tape` its details.
    Tape,
    /// A name Ferry does not write, as another tool wrote it.
    Other(String),
}

impl Protocol {
    /// The name stored in the catalogue.
    pub fn as_str(&self) -> &str {
        match self {
            Protocol::Sftp => "sftp",
            Protocol::Local => "local",
            Protocol::Tape => "tape",
            Protocol::Other(s) => s,
        }
    }
}

impl From<&str> for Protocol {
    /// Ferry's names exactly as it writes them; anything else is [`Protocol::Other`].
    fn from(s: &str) -> Self {
        match s {
            "sftp" => Protocol::Sftp,
            "local" => Protocol::Local,
            "tape" => Protocol::Tape,
            other => Protocol::Other(other.to_string()),
        }
    }
}

impl From<String> for Protocol {
    fn from(s: String) -> Self {
        match Protocol::from(s.as_str()) {
            Protocol::Other(_) => Protocol::Other(s),
            known => known,
        }
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_typed_and_others_kept_as_written() {
        for p in [Protocol::Sftp, Protocol::Local, Protocol::Tape] {
            assert_eq!(Protocol::from(p.as_str()), p);
            let b = bson::to_bson(&p).unwrap();
            assert_eq!(b, bson::Bson::String(p.as_str().into()));
            assert_eq!(bson::from_bson::<Protocol>(b).unwrap(), p);
        }
        for odd in ["rsync", "TAPE", "Sftp", ""] {
            let p = Protocol::from(odd);
            assert_eq!(p, Protocol::Other(odd.into()), "{odd}");
            assert_eq!(String::from(p), odd);
        }
    }
}
