//! The bounded audit trail of a run: who registered, copied, verified, deleted, and why.
//!
//! Events are appended with `$push: {events: {$each: [e], $slice: -MAX_EVENTS}}`, so a run
//! keeps its last [`MAX_EVENTS`] events.

use bson::{Bson, DateTime, Document};
use serde::Serialize;

use crate::copy::put;
use crate::decode::{DecodeError, Fields, Problem};
use crate::failure::FailureClass;

/// How many events a run document keeps.
pub const MAX_EVENTS: usize = 100;

/// One entry of a run's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When it happened (UTC).
    pub time: DateTime,
    /// Who did it: an agent owner id or a user.
    pub who: String,
    /// What happened: `registered`, `copy-added`, `claimed`, `reclaimed`, `status`,
    /// `verified`, `removing`, `removed`.
    pub action: String,
    /// The site of the copy concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The data type of the copy concerned.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Why, or further detail (`transferring -> verifying`, a purge reason, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The class of the failure this event recorded (a move to `error`), as on the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<FailureClass>,
    /// Fields written by other tools.
    #[serde(flatten)]
    pub extra: Document,
}

impl Event {
    /// Decodes one `events[]` entry.
    pub(crate) fn decode(mut f: Fields<'_>) -> Result<Self, DecodeError> {
        Ok(Event {
            time: f
                .opt_date("time")?
                .ok_or_else(|| f.error("time", Problem::Missing))?,
            who: f.string("who")?,
            action: f.string("action")?,
            host: f.opt_string("host")?,
            data_type: f.opt_string("type")?,
            reason: f.opt_string("reason")?,
            error_class: f.opt_known(crate::copy::ERROR_CLASS_FIELD)?,
            extra: f.rest(),
        })
    }

    /// This event as a BSON document (unknown fields included as they were read).
    pub fn to_document(&self) -> Document {
        let mut d = Document::new();
        d.insert("time", self.time);
        d.insert("who", self.who.clone());
        d.insert("action", self.action.clone());
        put(&mut d, "host", self.host.clone().map(Bson::String));
        put(&mut d, "type", self.data_type.clone().map(Bson::String));
        put(&mut d, "reason", self.reason.clone().map(Bson::String));
        put(
            &mut d,
            crate::copy::ERROR_CLASS_FIELD,
            self.error_class.map(|c| Bson::String(c.as_str().into())),
        );
        for (k, v) in &self.extra {
            if !d.contains_key(k) {
                d.insert(k.clone(), v.clone());
            }
        }
        d
    }

    /// An event about a copy.
    pub fn copy(
        who: &str,
        action: &str,
        host: &str,
        data_type: &str,
        reason: Option<String>,
    ) -> Self {
        Event {
            time: DateTime::now(),
            who: who.to_string(),
            action: action.to_string(),
            host: Some(host.to_string()),
            data_type: Some(data_type.to_string()),
            reason,
            error_class: None,
            extra: Document::new(),
        }
    }

    /// An event about the run as a whole.
    pub fn run(who: &str, action: &str, reason: Option<String>) -> Self {
        Event {
            time: DateTime::now(),
            who: who.to_string(),
            action: action.to_string(),
            host: None,
            data_type: None,
            reason,
            error_class: None,
            extra: Document::new(),
        }
    }
}
