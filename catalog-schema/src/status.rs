//! The copy status machine.
//!
//! ```text
//!   (claim) ──► transferring ──► verifying ──► transferred ──► removing ──► (entry removed)
//!                   │   ▲            │             │   ▲           ▲
//!                   ▼   │            ▼             ▼   │           │
//!                   error ◄──────────┴──────── verifying (re-hash) │
//!                     └────────────────────────────────────────────┘
//! ```
//!
//! A copy is `transferred` only after its bytes were read back and hashed at the destination
//! (or verified by the tape system), so `transferring → transferred` is not a legal step.
//! A failed copy (`error`) is retried by going back to `transferring`, or given up by going
//! to `removing`. An audit re-hash moves a `transferred` copy back to `verifying`.
//! `removing` is final: the next step deletes the entry itself.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a copy of a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyStatus {
    /// Bytes are being written; the copy holds a lease.
    Transferring,
    /// All bytes are written; they are being read back and hashed.
    Verifying,
    /// Read back, hashed and matched the run's manifest.
    Transferred,
    /// Something failed; `last_error` says what.
    Error,
    /// Being deleted; the entry goes once the files are gone.
    Removing,
}

impl CopyStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [CopyStatus; 5] = [
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        CopyStatus::Error,
        CopyStatus::Removing,
    ];

    /// The name stored in the catalogue.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Transferring => "transferring",
            CopyStatus::Verifying => "verifying",
            CopyStatus::Transferred => "transferred",
            CopyStatus::Error => "error",
            CopyStatus::Removing => "removing",
        }
    }

    /// Whether a copy in this status is owned by a lease holder while in it.
    pub fn is_leased(self) -> bool {
        matches!(self, CopyStatus::Transferring | CopyStatus::Verifying)
    }
}

/// Whether a copy may move from `from` to `to` in one conditional update.
pub fn can_transition(from: CopyStatus, to: CopyStatus) -> bool {
    use CopyStatus::*;
    matches!(
        (from, to),
        (Transferring, Verifying)
            | (Transferring, Error)
            | (Verifying, Transferred)
            | (Verifying, Error)
            | (Transferred, Verifying)
            | (Transferred, Error)
            | (Transferred, Removing)
            | (Error, Transferring)
            | (Error, Removing)
    )
}

impl fmt::Display for CopyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Copy statuses cax and its Rucio tools wrote that are not Ferry's, and the Ferry status
/// each stands for: `failed` (an unreachable copy), `RSEreupload` and `RSEquota` (a Rucio
/// upload to do again, or refused for quota) are all a failed copy, `error`, to be retried
/// by the retry task like any other. The decoder maps them ([`legacy_status`]) rather than
/// quarantining the whole run.
pub const LEGACY_STATUSES: [(&str, CopyStatus); 3] = [
    ("failed", CopyStatus::Error),
    ("RSEreupload", CopyStatus::Error),
    ("RSEquota", CopyStatus::Error),
];

/// The Ferry status a legacy (cax) status name stands for, if `name` is one.
pub fn legacy_status(name: &str) -> Option<CopyStatus> {
    LEGACY_STATUSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// A status name that is not one of the five.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown copy status `{0}` (expected transferring, verifying, transferred, error or removing)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for CopyStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CopyStatus::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CopyStatus::*;

    /// Every one of the 25 pairs, spelled out: a change to the machine must change this table.
    #[test]
    fn transition_table_is_exhaustive() {
        let legal = [
            (Transferring, Verifying),
            (Transferring, Error),
            (Verifying, Transferred),
            (Verifying, Error),
            (Transferred, Verifying),
            (Transferred, Error),
            (Transferred, Removing),
            (Error, Transferring),
            (Error, Removing),
        ];
        let mut seen = 0;
        for from in CopyStatus::ALL {
            for to in CopyStatus::ALL {
                seen += 1;
                assert_eq!(
                    can_transition(from, to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(seen, 25);
    }

    #[test]
    fn no_self_loops_and_removing_is_final() {
        for s in CopyStatus::ALL {
            assert!(!can_transition(s, s), "{s} -> {s}");
            assert!(!can_transition(Removing, s), "removing -> {s}");
        }
    }

    #[test]
    fn transferred_only_through_verifying() {
        for from in CopyStatus::ALL {
            if can_transition(from, Transferred) {
                assert_eq!(from, Verifying);
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in CopyStatus::ALL {
            assert_eq!(s.as_str().parse::<CopyStatus>(), Ok(s));
            let b = bson::to_bson(&s).unwrap();
            assert_eq!(b, bson::Bson::String(s.as_str().into()));
        }
        assert!("purging".parse::<CopyStatus>().is_err());
    }

    #[test]
    fn cax_statuses_are_failed_copies() {
        for name in ["failed", "RSEreupload", "RSEquota"] {
            assert_eq!(legacy_status(name), Some(Error), "{name}");
        }
        assert_eq!(legacy_status("done"), None);
        assert_eq!(legacy_status("transferred"), None);
    }
}
