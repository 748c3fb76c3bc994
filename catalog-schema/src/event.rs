//! The bounded audit trail of a run: who registered, copied, verified, deleted, and why.
//!
//! Events are appended with `$push: {events: {$each: [e], $slice: -MAX_EVENTS}}`, so a run
//! keeps its last [`MAX_EVENTS`] events.

use bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// How many events a run document keeps.
pub const MAX_EVENTS: usize = 100;

/// One entry of a run's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Fields written by other tools.
    #[serde(flatten)]
    pub extra: Document,
}

impl Event {
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
            extra: Document::new(),
        }
    }
}
