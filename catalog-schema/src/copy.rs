//! One copy of a run at a site: an entry of the run document's `data[]` array.
//!
//! Field names are cax's (`type`, `host`, `location`, `status`, `checksum`,
//! `creation_time`); Ferry adds `protocol`, `verified_time`, `updated_time`, `lease`,
//! `attempts`, `last_error` and `tape`. A DAQ-written entry may carry only `type`, `host`,
//! `location` and `status` (with `checksum: null`); everything else is optional.

use bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

use crate::number::int_like;
use crate::status::CopyStatus;

/// Who holds a copy while it is being written or verified, and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The owner id: `agent@site/pid/nonce`, unique per agent process.
    pub owner: String,
    /// When the lease runs out; after that the copy is stalled and may be reclaimed.
    pub expires: DateTime,
}

/// One copy of a run (`data[]` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyEntry {
    /// Data type: `raw`, `processed`, … (cax's `type`).
    #[serde(rename = "type", default = "default_type")]
    pub data_type: String,
    /// The site holding the copy (a site-map name).
    pub host: String,
    /// Directory path at the site, or a tape reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `sftp`, `local` or `tape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Where the copy is in its life.
    pub status: CopyStatus,
    /// The run digest as measured at this copy (`null` until verified).
    #[serde(default)]
    pub checksum: Option<String>,
    /// When `checksum` was last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_time: Option<DateTime>,
    /// When the entry was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<DateTime>,
    /// When the entry last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_time: Option<DateTime>,
    /// The holder while `transferring` / `verifying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// How many times a transfer of this copy was started.
    #[serde(default, deserialize_with = "int_like")]
    pub attempts: i64,
    /// The last failure, for `error` copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Tape back-end details (opaque to the catalogue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape: Option<Document>,
    /// Fields written by other tools, kept as they are.
    #[serde(flatten)]
    pub extra: Document,
}

fn default_type() -> String {
    "raw".to_string()
}

impl CopyEntry {
    /// A new entry with only the identifying fields set.
    pub fn new(host: &str, data_type: &str, status: CopyStatus, now: DateTime) -> Self {
        CopyEntry {
            data_type: data_type.to_string(),
            host: host.to_string(),
            location: None,
            protocol: None,
            status,
            checksum: None,
            verified_time: None,
            creation_time: Some(now),
            updated_time: Some(now),
            lease: None,
            attempts: 0,
            last_error: None,
            tape: None,
            extra: Document::new(),
        }
    }

    /// Whether this entry is the copy of `data_type` at `host`.
    pub fn is(&self, host: &str, data_type: &str) -> bool {
        self.host == host && self.data_type == data_type
    }

    /// Whether the lease is held by `owner`.
    pub fn leased_by(&self, owner: &str) -> bool {
        self.lease.as_ref().is_some_and(|l| l.owner == owner)
    }

    /// Whether this copy is `transferring` and its lease ran out before `now`.
    pub fn is_stalled(&self, now: DateTime) -> bool {
        self.status == CopyStatus::Transferring
            && self.lease.as_ref().is_some_and(|l| l.expires < now)
    }
}
