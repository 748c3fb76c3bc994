//! The run document: identity, manifest, copies and audit trail.

use bson::{Bson, DateTime, Document};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::copy::CopyEntry;
use crate::event::Event;
use crate::number::{int_like, opt_int_like};

/// The detector assumed when a document has none (cax's DAQ wrote TPC runs without one).
pub const DEFAULT_DETECTOR: &str = "tpc";

fn default_detector() -> String {
    DEFAULT_DETECTOR.to_string()
}

/// One file of a run's manifest, set once at the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the run directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    #[serde(deserialize_with = "int_like")]
    pub size: i64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// MD5, lower-case hex (what tape systems record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// What identifies a run: its detector and number (unique together).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    /// `tpc`, `muon_veto`, …
    pub detector: String,
    /// The run number.
    pub number: i64,
}

impl RunKey {
    /// A key.
    pub fn new(detector: &str, number: i64) -> Self {
        RunKey {
            detector: detector.to_string(),
            number,
        }
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.detector, self.number)
    }
}

/// Why `name` cannot be a run name, if it cannot. A run name becomes a directory name (a
/// `{name}` layout) and the first part of tape keys (`<run name>/<path>`), so it must be one
/// plain path component: not empty, not `.` or `..`, no `/`, no control characters, no
/// leading or trailing white space, at most 255 bytes.
pub fn check_run_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("a run name must not be empty")
    } else if name == "." || name == ".." {
        Err("a run name must not be \".\" or \"..\"")
    } else if name.contains('/') {
        Err("a run name must not contain '/'")
    } else if name.chars().any(char::is_control) {
        Err("a run name must not contain control characters")
    } else if name.trim() != name {
        Err("a run name must not start or end with white space")
    } else if name.len() > 255 {
        Err("a run name must be at most 255 bytes")
    } else {
        Ok(())
    }
}

/// The `want` entry naming a copy of `data_type` at `site`: `"<site>/<type>"`.
pub fn want_tag(site: &str, data_type: &str) -> String {
    format!("{site}/{data_type}")
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDoc {
    /// MongoDB's `_id` (an ObjectId when written by the driver; kept as found).
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Bson>,
    /// The run number.
    #[serde(deserialize_with = "int_like")]
    pub number: i64,
    /// The run name (e.g. `170330_1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The detector (default `tpc`).
    #[serde(default = "default_detector")]
    pub detector: String,
    /// Start of data taking (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime>,
    /// End of data taking (UTC); set means the run is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime>,
    /// The manifest: every file with size and hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// Total bytes of the run.
    #[serde(
        default,
        deserialize_with = "opt_int_like",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<i64>,
    /// The run digest (SHA-256 over the canonical manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// One entry per copy.
    #[serde(default)]
    pub data: Vec<CopyEntry>,
    /// Copies the collaboration wants that do not exist yet, as `"<site>/<type>"` (see
    /// [`want_tag`]). Absent in documents written by other tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub want: Vec<String>,
    /// The bounded audit trail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Fields written by other tools, kept as they are.
    #[serde(flatten)]
    pub extra: Document,
}

impl RunDoc {
    /// A new run with identity only.
    pub fn new(detector: &str, number: i64, name: Option<&str>) -> Self {
        RunDoc {
            id: None,
            number,
            name: name.map(str::to_string),
            detector: detector.to_string(),
            start: None,
            end: None,
            files: Vec::new(),
            size: None,
            digest: None,
            data: Vec::new(),
            want: Vec::new(),
            events: Vec::new(),
            extra: Document::new(),
        }
    }

    /// The run's key.
    pub fn key(&self) -> RunKey {
        RunKey::new(&self.detector, self.number)
    }

    /// The copy of `data_type` at `host`, if any.
    pub fn copy(&self, host: &str, data_type: &str) -> Option<&CopyEntry> {
        self.data.iter().find(|c| c.is(host, data_type))
    }

    /// Mutable access to the copy of `data_type` at `host`.
    pub fn copy_mut(&mut self, host: &str, data_type: &str) -> Option<&mut CopyEntry> {
        self.data.iter_mut().find(|c| c.is(host, data_type))
    }

    /// Appends an event, keeping the last [`crate::MAX_EVENTS`].
    pub fn push_event(&mut self, event: Event) {
        self.events.push(event);
        let excess = self.events.len().saturating_sub(crate::MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// How many `transferred` copies this run has (any type, any site).
    pub fn transferred_copies(&self) -> usize {
        self.data
            .iter()
            .filter(|c| c.status == crate::CopyStatus::Transferred)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CopyStatus;
    use bson::doc;

    #[test]
    fn run_names_are_one_plain_path_component() {
        for ok in ["170330_1234", "Run004711", "a.b-c", "ünï cødé run"] {
            assert_eq!(check_run_name(ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\0b",
            "tab\there",
            " lead",
            "trail ",
            &long,
        ] {
            assert!(check_run_name(bad).is_err(), "{bad:?}");
        }
    }

    /// A document as XENON1T's DAQ wrote it: no detector, no manifest, a copy with
    /// `checksum: null`, a run number written by mongosh as a double, and fields Ferry does
    /// not know.
    fn daq_doc() -> Document {
        doc! {
            "_id": bson::oid::ObjectId::new(),
            "number": 4711.0,
            "name": "170330_1234",
            "start": DateTime::from_millis(1_490_870_000_000),
            "end": DateTime::from_millis(1_490_873_600_000),
            "trigger": { "mode": "background_stable", "events_built": 12345 },
            "data": [ {
                "type": "raw", "host": "eb0", "location": "/data/xenon/raw/170330_1234",
                "status": "transferred", "checksum": null, "creator": "eventbuilder",
            } ],
        }
    }

    #[test]
    fn daq_document_decodes_with_defaults() {
        let run = RunDoc::from_document(daq_doc()).unwrap();
        assert_eq!(run.number, 4711);
        assert_eq!(run.detector, "tpc");
        assert_eq!(run.data[0].status, CopyStatus::Transferred);
        assert_eq!(run.data[0].checksum, None);
        assert_eq!(run.data[0].attempts, 0);
        assert!(run.extra.contains_key("trigger"));
        assert_eq!(
            run.data[0].extra.get_str("creator").unwrap(),
            "eventbuilder"
        );
    }

    #[test]
    fn unknown_fields_survive_round_trip() {
        let original = daq_doc();
        let run = RunDoc::from_document(original.clone()).unwrap();
        let back = run.to_document().unwrap();
        assert_eq!(back.get("trigger"), original.get("trigger"));
        assert_eq!(back.get("start"), original.get("start"));
        assert_eq!(back.get("_id"), original.get("_id"));
        let copy = back.get_array("data").unwrap()[0].as_document().unwrap();
        assert_eq!(copy.get_str("creator").unwrap(), "eventbuilder");
        assert_eq!(copy.get("checksum"), Some(&Bson::Null));
        // Decoding again gives the same value.
        assert_eq!(RunDoc::from_document(back).unwrap(), run);
    }

    #[test]
    fn wrong_shape_names_run_and_field() {
        let mut bad = daq_doc();
        bad.insert(
            "data",
            vec![Bson::Document(doc! {"host": "eb0", "status": "purging"})],
        );
        let err = RunDoc::from_document(bad).unwrap_err();
        assert_eq!(err.run, "tpc/4711 (170330_1234)");
        assert!(err.detail.contains("purging"), "{}", err.detail);

        let err = RunDoc::from_document(doc! {"name": "x", "number": "seven"}).unwrap_err();
        assert!(err.run.contains("(x)"), "{}", err.run);
        assert!(
            err.detail.contains("number") || err.detail.contains("integer"),
            "{}",
            err.detail
        );

        let err = RunDoc::from_document(doc! {"number": 4.5}).unwrap_err();
        assert!(err.detail.contains("whole"), "{}", err.detail);
    }

    #[test]
    fn events_are_bounded() {
        let mut run = RunDoc::new("tpc", 1, None);
        for i in 0..(crate::MAX_EVENTS + 7) {
            run.push_event(Event::run("t", "status", Some(i.to_string())));
        }
        assert_eq!(run.events.len(), crate::MAX_EVENTS);
        assert_eq!(run.events[0].reason.as_deref(), Some("7"));
    }
}
