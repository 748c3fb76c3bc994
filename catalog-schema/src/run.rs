//! The run document: identity, manifest, copies and audit trail.

use bson::{Bson, DateTime, Document};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

use crate::copy::CopyEntry;
use crate::decode::{DecodeError, Fields, Who};
use crate::event::Event;

/// The detector assumed when a document has none (cax's DAQ wrote TPC runs without one).
pub const DEFAULT_DETECTOR: &str = "tpc";

/// One file of a run's manifest, set once at the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    /// Path relative to the run directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// MD5, lower-case hex (what tape systems record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// ADLER32, 8 lower-case hex digits (what grid storage elements record). Absent in runs
    /// registered before Ferry measured it, and in documents written by other tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adler32: Option<String>,
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
///
/// Decoded by [`RunDoc::from_document`] (field by field, naming the field that is wrong)
/// and encoded by [`RunDoc::to_document`]; `Deserialize` goes through the same decoder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDoc {
    /// MongoDB's `_id` (an ObjectId when written by the driver; kept as found).
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Bson>,
    /// The run number.
    pub number: i64,
    /// The run name (e.g. `170330_1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The detector (default `tpc`).
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// The run digest (SHA-256 over the canonical manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// One entry per copy.
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

impl FileEntry {
    fn decode(mut f: Fields<'_>) -> Result<Self, DecodeError> {
        Ok(FileEntry {
            path: f.string("path")?,
            size: f
                .opt_size("size")?
                .ok_or_else(|| f.error("size", crate::decode::Problem::Missing))?,
            sha256: f.string("sha256")?,
            md5: f.opt_string("md5")?,
            adler32: f.opt_string("adler32")?,
        })
    }

    /// This entry as a BSON document.
    pub fn to_document(&self) -> Document {
        let mut d = Document::new();
        d.insert("path", self.path.clone());
        d.insert("size", self.size);
        d.insert("sha256", self.sha256.clone());
        if let Some(m) = &self.md5 {
            d.insert("md5", m.clone());
        }
        if let Some(a) = &self.adler32 {
            d.insert("adler32", a.clone());
        }
        d
    }
}

impl RunDoc {
    /// Decodes a run document field by field. A field of the wrong type or value is a
    /// [`DecodeError`] naming the document (`_id`, run number and name as far as readable),
    /// the field's path (`data[1].status`) and what is wrong. What legacy documents contain
    /// is tolerated (see [`crate::decode`]); unknown fields are kept in `extra`.
    pub fn from_document(doc: Document) -> Result<Self, DecodeError> {
        let who = Who::of(&doc);
        let mut f = Fields::new(&who, String::new(), doc);
        let id = f.take_raw("_id");
        let number = f.int("number")?;
        let name = f.opt_string("name")?;
        let detector = f
            .opt_string("detector")?
            .unwrap_or_else(|| DEFAULT_DETECTOR.to_string());
        let start = f.opt_date("start")?;
        let end = f.opt_date("end")?;
        let files = f.documents("files", FileEntry::decode)?;
        let size = f.opt_size("size")?;
        let digest = f.opt_string("digest")?;
        let data = f.documents("data", CopyEntry::decode)?;
        let want = f.strings("want")?;
        let events = f.documents("events", Event::decode)?;
        Ok(RunDoc {
            id,
            number,
            name,
            detector,
            start,
            end,
            files,
            size,
            digest,
            data,
            want,
            events,
            extra: f.rest(),
        })
    }

    /// Encodes this run as a BSON document, unknown fields included exactly as they were
    /// read (no extended-JSON round trip through serde).
    pub fn to_document(&self) -> Result<Document, crate::ShapeError> {
        let mut d = Document::new();
        if let Some(id) = &self.id {
            d.insert("_id", id.clone());
        }
        d.insert("number", self.number);
        if let Some(n) = &self.name {
            d.insert("name", n.clone());
        }
        d.insert("detector", self.detector.clone());
        if let Some(t) = self.start {
            d.insert("start", t);
        }
        if let Some(t) = self.end {
            d.insert("end", t);
        }
        if !self.files.is_empty() {
            let files: Vec<Bson> = self
                .files
                .iter()
                .map(|f| Bson::Document(f.to_document()))
                .collect();
            d.insert("files", files);
        }
        if let Some(s) = self.size {
            d.insert("size", s);
        }
        if let Some(s) = &self.digest {
            d.insert("digest", s.clone());
        }
        let data: Vec<Bson> = self
            .data
            .iter()
            .map(|c| Bson::Document(c.to_document()))
            .collect();
        d.insert("data", data);
        if !self.want.is_empty() {
            d.insert("want", self.want.clone());
        }
        if !self.events.is_empty() {
            let events: Vec<Bson> = self
                .events
                .iter()
                .map(|e| Bson::Document(e.to_document()))
                .collect();
            d.insert("events", events);
        }
        for (k, v) in &self.extra {
            if !d.contains_key(k) {
                d.insert(k.clone(), v.clone());
            }
        }
        Ok(d)
    }

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

impl<'de> Deserialize<'de> for RunDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let doc = Document::deserialize(d)?;
        RunDoc::from_document(doc).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CopyStatus, Problem};
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
    fn wrong_shape_names_document_run_and_field() {
        let mut bad = daq_doc();
        let id = bad.get_object_id("_id").unwrap();
        bad.insert(
            "data",
            vec![
                Bson::Document(doc! {"host": "eb0", "status": "transferred"}),
                Bson::Document(doc! {"host": "eb0", "status": "done"}),
            ],
        );
        let err = RunDoc::from_document(bad).unwrap_err();
        assert_eq!(err.id, id.to_hex());
        assert_eq!(err.run.as_deref(), Some("4711 \"170330_1234\""));
        assert_eq!(err.field, "data[1].status");
        assert_eq!(err.problem, Problem::UnknownStatus("done".into()));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "run document {} (run 4711 \"170330_1234\"): field data[1].status: unknown copy status \"done\"",
                id.to_hex()
            )),
            "{text}"
        );

        let err = RunDoc::from_document(doc! {"name": "x", "number": "seven"}).unwrap_err();
        assert_eq!(err.field, "number");
        assert_eq!(err.run.as_deref(), Some("\"seven\" \"x\""));
        assert_eq!(err.id, "without _id");
        assert!(err
            .to_string()
            .contains("expected an integer, found string \"seven\""));

        let err = RunDoc::from_document(doc! {"number": 4.5}).unwrap_err();
        assert!(matches!(err.problem, Problem::NotWhole(_)), "{err}");
    }

    /// One document per kind of damage another tool can do, with the field path and the
    /// problem the decoder must name.
    #[test]
    fn every_malformed_field_is_named() {
        let f = |files: Bson| doc! {"number": 1, "files": files};
        let copy = |c: Document| doc! {"number": 1, "data": [c]};
        let ok_copy = doc! {"host": "eb0", "status": "transferred"};
        let with = |k: &str, v: Bson| {
            let mut c = ok_copy.clone();
            c.insert(k, v);
            copy(c)
        };
        let file = doc! {"path": "a", "size": 1, "sha256": "00"};
        let cases: Vec<(Document, &str, &str)> = vec![
            (doc! {"number": "4711"}, "number", "found string \"4711\""),
            (doc! {"name": "x"}, "number", "missing"),
            (doc! {"number": Bson::Null}, "number", "missing"),
            (doc! {"number": [1]}, "number", "expected an integer"),
            (doc! {"number": 1, "name": 7}, "name", "expected a string"),
            (
                doc! {"number": 1, "detector": 7},
                "detector",
                "expected a string",
            ),
            (
                doc! {"number": 1, "start": "2017-03-30"},
                "start",
                "expected a date",
            ),
            (f(Bson::String("a".into())), "files", "expected an array"),
            (
                f(Bson::Document(file.clone())),
                "files",
                "expected an array",
            ),
            (f(bson::bson!([5])), "files[0]", "expected a document"),
            (
                f(bson::bson!([{"path": "a", "size": -1, "sha256": "00"}])),
                "files[0].size",
                "must not be negative, found -1",
            ),
            (
                f(bson::bson!([{"path": "a", "size": "1", "sha256": "00"}])),
                "files[0].size",
                "expected an integer",
            ),
            (
                f(bson::bson!([{"path": "a", "sha256": "00"}])),
                "files[0].size",
                "missing",
            ),
            (
                doc! {"number": 1, "size": -5},
                "size",
                "must not be negative",
            ),
            (
                doc! {"number": 1, "size": "5 GB"},
                "size",
                "expected an integer",
            ),
            (
                doc! {"number": 1, "digest": 5},
                "digest",
                "expected a string",
            ),
            (
                doc! {"number": 1, "data": "eb0"},
                "data",
                "expected an array",
            ),
            (
                doc! {"number": 1, "data": {"host": "eb0"}},
                "data",
                "expected an array",
            ),
            (
                doc! {"number": 1, "data": ["eb0"]},
                "data[0]",
                "expected a document",
            ),
            (
                copy(doc! {"status": "transferred"}),
                "data[0].host",
                "missing",
            ),
            (copy(doc! {"host": "eb0"}), "data[0].status", "missing"),
            (
                with("status", Bson::String("done".into())),
                "data[0].status",
                "unknown copy status \"done\"",
            ),
            (
                with("status", Bson::String("Transferred".into())),
                "data[0].status",
                "unknown copy status",
            ),
            (
                with("status", Bson::Int32(3)),
                "data[0].status",
                "expected a string",
            ),
            (
                with("checksum", Bson::Int64(5)),
                "data[0].checksum",
                "expected a string",
            ),
            (
                with("checksum", bson::bson!({"sha": "x"})),
                "data[0].checksum",
                "expected a string",
            ),
            (
                with("creation_time", Bson::String("2017-03-30".into())),
                "data[0].creation_time",
                "expected a date",
            ),
            (
                with("creation_time", bson::bson!(["2017-03-30"])),
                "data[0].creation_time[0]",
                "expected a date",
            ),
            (
                with("type", Bson::Int32(1)),
                "data[0].type",
                "expected a string",
            ),
            (
                with("location", Bson::Int32(1)),
                "data[0].location",
                "expected a string",
            ),
            (
                with("error_class", Bson::Int32(3)),
                "data[0].error_class",
                "expected a string",
            ),
            (
                with("error_class", bson::bson!({"class": "fatal"})),
                "data[0].error_class",
                "expected a string",
            ),
            (
                with("protocol", Bson::Boolean(true)),
                "data[0].protocol",
                "expected a string",
            ),
            (
                with("attempts", Bson::String("2".into())),
                "data[0].attempts",
                "expected an integer",
            ),
            (
                with("lease", Bson::String("me".into())),
                "data[0].lease",
                "expected a document",
            ),
            (
                with("lease", bson::bson!({"owner": "me"})),
                "data[0].lease.expires",
                "missing",
            ),
            (
                with("tape", Bson::String("L1".into())),
                "data[0].tape",
                "expected a document",
            ),
            (
                doc! {"number": 1, "want": "x/raw"},
                "want",
                "expected an array",
            ),
            (
                doc! {"number": 1, "want": [1]},
                "want[0]",
                "expected a string",
            ),
            (
                doc! {"number": 1, "events": [{"who": "w", "action": "a"}]},
                "events[0].time",
                "missing",
            ),
        ];
        for (doc, field, problem) in cases {
            let shown = format!("{doc}");
            let err = RunDoc::from_document(doc).expect_err(&shown);
            assert_eq!(err.field, field, "{shown}: {err}");
            assert!(err.to_string().contains(problem), "{shown}: {err}");
        }
    }

    /// What cax's DAQ and tools wrote decodes: `checksum: null`, `creation_time` as a list,
    /// type `untriggered`, `location: "n/a"`, a double run number, nulls for optional fields.
    #[test]
    fn legacy_documents_decode() {
        let t = DateTime::from_millis(1_490_870_000_000);
        let doc = doc! {
            "_id": bson::oid::ObjectId::new(),
            "number": 4711.0, "name": "170330_1234", "detector": Bson::Null,
            "size": 10.0, "digest": Bson::Null, "files": Bson::Null,
            "data": [
                { "type": "raw", "host": "eb0", "location": "/data/170330_1234",
                  "status": "transferred", "checksum": Bson::Null, "creation_time": [t, t] },
                { "type": "untriggered", "host": "midway", "location": "n/a",
                  "status": "transferring", "checksum": Bson::Null, "creation_time": t,
                  "pax_version": Bson::Null },
                { "host": "tsm-server", "status": "verifying", "creation_time": [] },
            ],
        };
        let run = RunDoc::from_document(doc).unwrap();
        assert_eq!((run.number, run.detector.as_str()), (4711, "tpc"));
        assert_eq!(run.size, Some(10));
        assert_eq!(run.data[0].creation_time, Some(t));
        assert_eq!(run.data[1].data_type, "untriggered");
        // cax's "n/a" while pending: no location yet.
        assert_eq!(run.data[1].location, None);
        assert!(run.data[1].extra.contains_key("pax_version"));
        assert_eq!(run.data[2].data_type, "raw");
        assert_eq!(run.data[2].creation_time, None);
        // Encoded and decoded again, the value is the same.
        let again = RunDoc::from_document(run.to_document().unwrap()).unwrap();
        assert_eq!(again, run);
    }

    #[test]
    fn cax_statuses_decode_as_failed_copies_and_others_are_refused() {
        for name in ["failed", "RSEreupload", "RSEquota"] {
            let doc = doc! { "number": 1, "data": [ { "host": "midway", "status": name } ] };
            let run = RunDoc::from_document(doc).unwrap();
            assert_eq!(run.data[0].status, CopyStatus::Error, "{name}");
            let why = run.data[0].last_error.as_deref().unwrap();
            assert!(
                why.starts_with("[retryable]") && why.contains(name),
                "{why}"
            );
        }
        let doc = doc! { "number": 1, "data": [ { "host": "midway", "status": "done" } ] };
        assert!(RunDoc::from_document(doc).is_err());
    }

    #[test]
    fn the_failure_class_is_read_from_its_field_before_the_text() {
        use crate::{Failure, FailureClass, Protocol};
        // Ferry's record: the typed class wins over what the text would say.
        let doc = doc! { "number": 1, "data": [ {
            "host": "midway", "status": "error", "protocol": "sftp",
            "last_error": "[retryable] permission denied", "error_class": "fatal",
        } ] };
        let run = RunDoc::from_document(doc).unwrap();
        let c = &run.data[0];
        assert_eq!(c.error_class, Some(FailureClass::Fatal));
        assert_eq!(c.failure_class(), FailureClass::Fatal);
        assert_eq!(c.protocol, Some(Protocol::Sftp));
        assert!(!c.extra.contains_key("error_class"));
        let again = RunDoc::from_document(run.to_document().unwrap()).unwrap();
        assert_eq!(again, run);
        let back = run.to_document().unwrap();
        let entry = back.get_array("data").unwrap()[0].as_document().unwrap();
        assert_eq!(entry.get_str("error_class").unwrap(), "fatal");

        // Recording clears what another tool left and writes both fields; a transition
        // without a failure clears the class and keeps the text.
        let mut c = c.clone();
        c.extra.insert("error_class", "stale");
        let f = Failure::new(FailureClass::Checksum, "from daq: digest differs".into());
        c.record_failure(Some(&f));
        assert_eq!(c.error_class, Some(FailureClass::Checksum));
        assert_eq!(
            c.last_error.as_deref(),
            Some("[checksum] from daq: digest differs")
        );
        assert!(!c.extra.contains_key("error_class"));
        c.record_failure(None);
        assert_eq!(c.error_class, None);
        assert!(c.last_error.is_some());
    }

    #[test]
    fn a_cax_last_error_with_no_class_is_classified_by_its_text() {
        use crate::FailureClass;
        for (text, class) in [
            (
                "rsync: write failed: No space left on device (28)",
                FailureClass::Fatal,
            ),
            ("Checksum mismatch for raw/000.evio", FailureClass::Checksum),
            (
                "ssh: connect to host midway: Connection timed out",
                FailureClass::Retryable,
            ),
        ] {
            let doc = doc! { "number": 1, "data": [
            { "host": "midway", "status": "error", "last_error": text } ] };
            let run = RunDoc::from_document(doc).unwrap();
            assert_eq!(run.data[0].error_class, None, "{text}");
            assert_eq!(run.data[0].failure_class(), class, "{text}");
        }
        // cax's own status names are a typed retryable failure.
        let doc = doc! { "number": 1, "data": [ { "host": "midway", "status": "failed" } ] };
        let run = RunDoc::from_document(doc).unwrap();
        assert_eq!(run.data[0].error_class, Some(FailureClass::Retryable));
        // With a class name of another tool's: kept, and the serde encoding agrees.
        let doc = doc! { "number": 1, "data": [
        { "host": "midway", "status": "RSEquota", "error_class": "quota" } ] };
        let run = RunDoc::from_document(doc).unwrap();
        assert_eq!(run.data[0].error_class, None);
        assert_eq!(run.data[0].failure_class(), FailureClass::Retryable);
        assert_eq!(bson::to_document(&run).unwrap(), run.to_document().unwrap());
    }

    /// A class name this version does not know (a newer agent's) is kept as written and
    /// counts as absent: the text decides, and a round trip does not lose it.
    #[test]
    fn an_unknown_failure_class_is_kept_and_the_text_decides() {
        use crate::{FailureClass, Protocol};
        let doc = doc! { "number": 1, "data": [ {
            "host": "midway", "status": "error", "protocol": "rsync",
            "last_error": "Permission denied", "error_class": "quota",
        } ] };
        let run = RunDoc::from_document(doc).unwrap();
        let c = &run.data[0];
        assert_eq!(c.error_class, None);
        assert_eq!(c.failure_class(), FailureClass::Fatal);
        assert_eq!(c.protocol, Some(Protocol::Other("rsync".into())));
        assert!(!c.is_tape());
        let back = run.to_document().unwrap();
        let entry = back.get_array("data").unwrap()[0].as_document().unwrap();
        assert_eq!(entry.get_str("error_class").unwrap(), "quota");
        assert_eq!(entry.get_str("protocol").unwrap(), "rsync");
        assert_eq!(bson::to_document(&run).unwrap(), back);
    }

    /// Unknown fields keep their exact BSON value: a field that looks like extended JSON
    /// (`{"$numberLong": "5"}`) is not turned into a number on the way back.
    #[test]
    fn unknown_fields_keep_their_exact_value() {
        let odd = doc! { "$numberLong": "5" };
        let doc = doc! { "number": 1, "meta": odd.clone(), "data": [
        { "host": "a", "status": "error", "note": odd.clone() } ] };
        let run = RunDoc::from_document(doc).unwrap();
        let back = run.to_document().unwrap();
        assert_eq!(back.get_document("meta").unwrap(), &odd);
        let c = back.get_array("data").unwrap()[0].as_document().unwrap();
        assert_eq!(c.get_document("note").unwrap(), &odd);
    }

    #[test]
    fn a_file_without_adler32_reads_and_one_with_it_round_trips() {
        let old = doc! { "number": 1, "files": [ { "path": "a", "size": 1, "sha256": "00", "md5": "11" } ], "data": [] };
        let run = RunDoc::from_document(old).unwrap();
        assert_eq!(run.files[0].adler32, None);
        assert!(!run.files[0].to_document().contains_key("adler32"));
        let new = doc! { "number": 1, "files": [ { "path": "a", "size": 1, "sha256": "00", "adler32": "11e60398" } ], "data": [] };
        let run = RunDoc::from_document(new).unwrap();
        assert_eq!(run.files[0].adler32.as_deref(), Some("11e60398"));
        let back = run.to_document().unwrap();
        let f = back.get_array("files").unwrap()[0].as_document().unwrap();
        assert_eq!(f.get_str("adler32").unwrap(), "11e60398");
        assert!(RunDoc::from_document(doc! { "number": 1, "files": [ { "path": "a", "size": 1, "sha256": "00", "adler32": 5 } ], "data": [] }).is_err());
    }

    /// The encoder Ferry stores with and the serde encoder the MongoDB back end pushes new
    /// entries with agree.
    #[test]
    fn manual_and_serde_encodings_agree() {
        let run = RunDoc::from_document(daq_doc()).unwrap();
        let mut run = run;
        run.files.push(FileEntry {
            path: "a".into(),
            size: 3,
            sha256: "00".into(),
            md5: Some("11".into()),
            adler32: Some("11e60398".into()),
        });
        run.push_event(Event::run("w", "registered", None));
        assert_eq!(bson::to_document(&run).unwrap(), run.to_document().unwrap());
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
