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
