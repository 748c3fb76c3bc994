//! Why a copy failed: its class ([`FailureClass`], stored in the copy's `error_class`) and
//! the text (`last_error`).
//!
//! The class is written in the same update that records the failure and decides how the
//! copy may be retried (FTS3's classification). `last_error` keeps the text, prefixed with
//! the class tag (`[checksum] …`) so that a person (or an older agent) reading it sees the
//! class too. Copies failed by another tool (cax) carry only text: [`FailureClass::classify`]
//! reads their class from it, and only for them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a failed copy may be retried (FTS3's classification). Stored as `error_class`:
/// `"catalogue"`, `"retryable"`, `"checksum"`, `"fatal"` or `"refused"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// The copy itself went fine or was cut only because the catalogue did not answer
    /// (its end could not be recorded). Nothing is wrong with the link or the bytes: retried
    /// at the first cycle the catalogue answers again, without backoff (attempts still count).
    #[serde(rename = "catalogue")]
    Catalog,
    /// Transient: a cut connection, a timeout, a lost lease. Retry later.
    Retryable,
    /// The bytes did not match the manifest. Copy again from a verified source; suspect the
    /// source after repeats.
    Checksum,
    /// Needs a person: permission denied, no space, a missing source file.
    Fatal,
    /// What the catalogue or the disk says was refused: a recorded location that is not the
    /// run's own directory, a planted symbolic link. Nothing was touched; never retried on
    /// its own (`--run N` after an operator fixed the entry).
    Refused,
}

impl FailureClass {
    /// Every class.
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Catalog,
        FailureClass::Retryable,
        FailureClass::Checksum,
        FailureClass::Fatal,
        FailureClass::Refused,
    ];

    /// The name stored in `error_class`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalogue",
            Self::Retryable => "retryable",
            Self::Checksum => "checksum",
            Self::Fatal => "fatal",
            Self::Refused => "refused",
        }
    }

    /// The prefix written at the start of `last_error`: `[checksum]`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Catalog => "[catalogue]",
            Self::Retryable => "[retryable]",
            Self::Checksum => "[checksum]",
            Self::Fatal => "[fatal]",
            Self::Refused => "[refused]",
        }
    }

    /// The class of a failure known only by its text (written by another tool, or by an
    /// agent older than `error_class`): its tag prefix, else the words FTS3 looks for, else
    /// [`FailureClass::Retryable`] (the attempt limit still bounds it).
    pub fn classify(text: &str) -> Self {
        let text = text.trim_start();
        if let Some(class) = Self::ALL.into_iter().find(|c| text.starts_with(c.tag())) {
            return class;
        }
        let lower = text.to_lowercase();
        const FATAL: [&str; 6] = [
            "permission denied",
            "no space left",
            "no such file",
            "authentication failed",
            "host key",
            "refused:",
        ];
        if FATAL.iter().any(|w| lower.contains(w)) {
            Self::Fatal
        } else if lower.contains("checksum mismatch") || lower.contains("digest") {
            Self::Checksum
        } else {
            Self::Retryable
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the classes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown failure class `{0}` (expected catalogue, retryable, checksum, fatal or refused)")]
pub struct UnknownClass(pub String);

impl FromStr for FailureClass {
    type Err = UnknownClass;

    /// The stored name, exactly as [`FailureClass::as_str`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClass(s.to_string()))
    }
}

/// A failure as it is recorded on a copy: `error_class` = `class`, `last_error` =
/// `[class] text` (its [`Display`](fmt::Display)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// How it may be retried.
    pub class: FailureClass,
    /// What happened, with the site and the files concerned.
    pub text: String,
}

impl Failure {
    /// A failure of this class.
    pub fn new(class: FailureClass, text: String) -> Self {
        Failure { class, text }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.class.tag(), self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_through_serde_and_from_str() {
        for class in FailureClass::ALL {
            let b = bson::to_bson(&class).unwrap();
            assert_eq!(b, bson::Bson::String(class.as_str().into()));
            assert_eq!(bson::from_bson::<FailureClass>(b).unwrap(), class);
            assert_eq!(class.as_str().parse::<FailureClass>(), Ok(class));
            assert_eq!(format!("[{class}]"), class.tag());
        }
        assert!("Checksum".parse::<FailureClass>().is_err());
        assert!("catalog".parse::<FailureClass>().is_err());
    }

    #[test]
    fn a_recorded_failure_reads_back_as_its_class_from_text_alone() {
        for class in FailureClass::ALL {
            let f = Failure::new(class, "from daq: permission denied".into());
            assert_eq!(FailureClass::classify(&f.to_string()), class);
        }
    }

    #[test]
    fn text_without_a_tag_is_classified_by_fts3_words() {
        use FailureClass::*;
        for (text, class) in [
            ("Permission denied (publickey)", Fatal),
            ("write failed: No space left on device", Fatal),
            ("checksum mismatch on raw/000.evio", Checksum),
            ("connection reset by peer", Retryable),
            ("", Retryable),
        ] {
            assert_eq!(FailureClass::classify(text), class, "{text}");
        }
    }
}
