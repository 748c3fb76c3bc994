//! The heartbeat document: one per agent, replaced every cycle, in collection `heartbeats`.

use bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// What an agent says about itself every cycle. `_id` is the site name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The site this agent serves (the document's `_id`).
    #[serde(rename = "_id")]
    pub site: String,
    /// The agent's owner id (`agent@site/pid/nonce`).
    pub owner: String,
    /// Ferry's version.
    pub version: String,
    /// The machine's host name.
    pub hostname: String,
    /// The agent's process id.
    pub pid: u32,
    /// When this heartbeat was written.
    pub time: DateTime,
    /// Duration of the last cycle in seconds.
    #[serde(default)]
    pub cycle_seconds: f64,
    /// Counters and gauges of the last cycle (copies done, bytes, free disk, …).
    #[serde(default)]
    pub stats: Document,
}

/// The `stats` field with the last copy this agent made (push, pull, retry).
pub const LAST_TRANSFER: &str = "last_transfer";
/// The `stats` field with when a copy last arrived at this site by a transfer, whoever made
/// it (the pushing agent or this one).
pub const LAST_RECEIVED: &str = "last_received";
/// The `stats` field naming the sites the site map's links take copies to from this site.
pub const SENDS_TO: &str = "sends_to";

impl Heartbeat {
    /// When this agent last made a copy; `None` when it has made none since it started.
    pub fn last_transfer(&self) -> Option<DateTime> {
        self.stats.get_datetime(LAST_TRANSFER).ok().copied()
    }

    /// When a copy last arrived at this site; `None` when none is known (or the agent that
    /// wrote the heartbeat predates the field).
    pub fn last_received(&self) -> Option<DateTime> {
        self.stats.get_datetime(LAST_RECEIVED).ok().copied()
    }

    /// The sites this site sends copies to, by its site map; `None` from an agent that
    /// predates the field (nothing is known then).
    pub fn sends_to(&self) -> Option<Vec<String>> {
        let to = self.stats.get_array(SENDS_TO).ok()?;
        Some(
            to.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    /// A heartbeat written before `last_received` and `sends_to` existed reads as it did.
    #[test]
    fn an_old_heartbeat_without_the_new_fields_still_reads() {
        let old = doc! {
            "_id": "mirror", "owner": "agent@mirror/1/x", "version": "0.0.9",
            "hostname": "m1", "pid": 1, "time": DateTime::from_millis(1_000),
            "stats": { "failed": 0_i64 },
        };
        let beat: Heartbeat = bson::from_document(old).unwrap();
        assert_eq!(beat.last_received(), None);
        assert_eq!(beat.last_transfer(), None);
        assert_eq!(beat.sends_to(), None);

        let new = doc! {
            "_id": "mirror", "owner": "agent@mirror/1/x", "version": "0.1.0",
            "hostname": "m1", "pid": 1, "time": DateTime::from_millis(1_000),
            "stats": { LAST_RECEIVED: DateTime::from_millis(900), SENDS_TO: [] },
        };
        let beat: Heartbeat = bson::from_document(new).unwrap();
        assert_eq!(beat.last_received(), Some(DateTime::from_millis(900)));
        assert_eq!(beat.sends_to(), Some(vec![]));
    }
}
