//! One copy of a run at a site: an entry of the run document's `data[]` array.
//!
//! Field names are cax's (`type`, `host`, `location`, `status`, `checksum`,
//! `creation_time`); Ferry adds `protocol`, `verified_time`, `updated_time`, `lease`,
//! `attempts`, `last_error`, `error_class` and `tape`. A DAQ-written entry may carry only `type`, `host`,
//! `location` and `status` (with `checksum: null`); everything else is optional.

use bson::{Bson, DateTime, Document};
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, Fields, Problem};
use crate::failure::{Failure, FailureClass};
use crate::protocol::Protocol;
use crate::status::CopyStatus;

/// The field holding a copy's [`FailureClass`].
pub const ERROR_CLASS_FIELD: &str = "error_class";

/// Who holds a copy while it is being written or verified, and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The owner id: `agent@site/pid/nonce`, unique per agent process.
    pub owner: String,
    /// When the lease runs out; after that the copy is stalled and may be reclaimed.
    pub expires: DateTime,
}

/// One copy of a run (`data[]` entry). Decoded as part of its run
/// ([`crate::RunDoc::from_document`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyEntry {
    /// Data type: `raw`, `processed`, … (cax's `type`).
    #[serde(rename = "type")]
    pub data_type: String,
    /// The site holding the copy (a site-map name).
    pub host: String,
    /// Directory path at the site, or a tape reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `sftp`, `local` or `tape` (another tool's name kept as [`Protocol::Other`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
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
    pub attempts: i64,
    /// The last failure, for `error` copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The class of the failure Ferry recorded (with `last_error`, in the same update);
    /// cleared by the next transition that records none. `None` for a failure only another
    /// tool recorded (its class is read from the text: [`CopyEntry::failure_class`]). A value
    /// this version does not know stays in `extra`, as written, and counts as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<FailureClass>,
    /// Tape back-end details (opaque to the catalogue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape: Option<Document>,
    /// Fields written by other tools, kept as they are.
    #[serde(flatten)]
    pub extra: Document,
}

/// Inserts `v` under `k` when there is one.
pub(crate) fn put(d: &mut Document, k: &str, v: Option<Bson>) {
    if let Some(v) = v {
        d.insert(k, v);
    }
}

impl CopyEntry {
    /// Decodes one `data[]` entry (see [`crate::decode`] for what is tolerated).
    pub(crate) fn decode(mut f: Fields<'_>) -> Result<Self, DecodeError> {
        let data_type = f.opt_string("type")?.unwrap_or_else(|| "raw".to_string());
        let host = f.string("host")?;
        // cax wrote `"n/a"` while a copy was pending: no location yet.
        let location = f.opt_string("location")?.filter(|l| l != "n/a");
        let protocol = f.opt_string("protocol")?.map(Protocol::from);
        let (status, legacy) = f.status_as_written("status")?;
        let checksum = f.opt_string("checksum")?;
        let verified_time = f.opt_date("verified_time")?;
        let creation_time = f.opt_date_or_list("creation_time")?;
        let updated_time = f.opt_date("updated_time")?;
        let lease = match f.opt_document("lease")? {
            None => None,
            Some(l) => {
                let mut lf = Fields::new(f.who(), format!("{}.", f.path("lease")), l);
                Some(Lease {
                    owner: lf.string("owner")?,
                    expires: lf
                        .opt_date("expires")?
                        .ok_or_else(|| lf.error("expires", Problem::Missing))?,
                })
            }
        };
        let attempts = f.opt_int("attempts")?.unwrap_or(0);
        let mut last_error = f.opt_string("last_error")?;
        let mut error_class = f.opt_known(ERROR_CLASS_FIELD)?;
        if let (Some(name), None) = (&legacy, &last_error) {
            let failure = Failure::new(
                FailureClass::Retryable,
                format!("recorded by cax as status {name:?}"),
            );
            last_error = Some(failure.to_string());
            // Unless another tool wrote a class of its own (kept in `extra`).
            if error_class.is_none() && !f.has(ERROR_CLASS_FIELD) {
                error_class = Some(failure.class);
            }
        }
        let tape = f.opt_document("tape")?;
        Ok(CopyEntry {
            data_type,
            host,
            location,
            protocol,
            status,
            checksum,
            verified_time,
            creation_time,
            updated_time,
            lease,
            attempts,
            last_error,
            error_class,
            tape,
            extra: f.rest(),
        })
    }

    /// This entry as a BSON document (unknown fields included as they were read).
    pub fn to_document(&self) -> Document {
        let mut d = Document::new();
        d.insert("type", self.data_type.clone());
        d.insert("host", self.host.clone());
        put(&mut d, "location", self.location.clone().map(Bson::String));
        put(
            &mut d,
            "protocol",
            self.protocol
                .as_ref()
                .map(|p| Bson::String(p.as_str().into())),
        );
        d.insert("status", self.status.as_str());
        d.insert(
            "checksum",
            self.checksum.clone().map_or(Bson::Null, Bson::String),
        );
        put(
            &mut d,
            "verified_time",
            self.verified_time.map(Bson::DateTime),
        );
        put(
            &mut d,
            "creation_time",
            self.creation_time.map(Bson::DateTime),
        );
        put(
            &mut d,
            "updated_time",
            self.updated_time.map(Bson::DateTime),
        );
        let lease = self
            .lease
            .as_ref()
            .map(|l| Bson::Document(bson::doc! { "owner": l.owner.clone(), "expires": l.expires }));
        put(&mut d, "lease", lease);
        d.insert("attempts", self.attempts);
        put(
            &mut d,
            "last_error",
            self.last_error.clone().map(Bson::String),
        );
        put(
            &mut d,
            ERROR_CLASS_FIELD,
            self.error_class.map(|c| Bson::String(c.as_str().into())),
        );
        put(&mut d, "tape", self.tape.clone().map(Bson::Document));
        for (k, v) in &self.extra {
            if !d.contains_key(k) {
                d.insert(k.clone(), v.clone());
            }
        }
        d
    }

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
            error_class: None,
            tape: None,
            extra: Document::new(),
        }
    }

    /// Records `failure` (`last_error` and `error_class`), or with `None` clears the class
    /// (the text stays, as history), as a transition does. A class this version does not
    /// know (kept in `extra`) goes either way.
    pub fn record_failure(&mut self, failure: Option<&Failure>) {
        self.extra.remove(ERROR_CLASS_FIELD);
        self.error_class = failure.map(|f| f.class);
        if let Some(f) = failure {
            self.last_error = Some(f.to_string());
        }
    }

    /// How this failed copy may be retried: the recorded `error_class`, else (a failure
    /// only another tool recorded) the class read from `last_error`.
    pub fn failure_class(&self) -> FailureClass {
        self.error_class.unwrap_or_else(|| {
            FailureClass::classify(self.last_error.as_deref().unwrap_or_default())
        })
    }

    /// Whether this copy is held by a tape back end (`protocol: tape`).
    pub fn is_tape(&self) -> bool {
        self.protocol == Some(Protocol::Tape)
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
