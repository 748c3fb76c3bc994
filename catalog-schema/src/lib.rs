//! Run catalogue document types for Ferry.
//!
//! One document per run, in database `run`, collection `runs`. Field names follow cax
//! (XENON1T's data manager) so that existing tools keep working. This crate uses nothing of
//! the workspace; both catalogue back ends and every tool that reads the catalogue share it.
//!
//! - [`run`]: the run document ([`RunDoc`]), its manifest ([`FileEntry`]) and identity.
//! - [`copy`]: one copy of a run at a site ([`CopyEntry`]) and its [`Lease`].
//! - [`failure`]: why a copy failed ([`Failure`]: its [`FailureClass`] and text).
//! - [`protocol`]: how a copy is reached ([`Protocol`]).
//! - [`status`]: the copy status machine ([`CopyStatus`], [`can_transition`]).
//! - [`decode`]: the decoding rules: field by field, a [`DecodeError`] naming the document,
//!   the field's path and what is wrong; what legacy (cax) documents contain is tolerated.
//! - [`event`]: the bounded audit trail ([`Event`]).
//! - [`index`]: the index specifications the MongoDB back end creates at start-up.
//! - [`heartbeat`]: the one-per-agent heartbeat document.
//! - [`number`]: lenient integer decoding for serde (mongosh writes numbers as doubles).
//!
//! Every struct keeps unknown fields in a flattened `extra` document, so fields written by
//! other tools survive a read / write round trip. `run.schema.json` (next to this crate's
//! `Cargo.toml`) is the JSON Schema of the document, for tools that do not read Rust.

pub mod copy;
pub mod decode;
pub mod event;
pub mod failure;
pub mod heartbeat;
pub mod index;
pub mod number;
pub mod protocol;
pub mod run;
pub mod status;

pub use copy::{CopyEntry, Lease, ERROR_CLASS_FIELD};
pub use decode::{DecodeError, Problem};
pub use event::{Event, MAX_EVENTS};
pub use failure::{Failure, FailureClass, UnknownClass};
pub use heartbeat::Heartbeat;
pub use index::{IndexSpec, HEARTBEAT_INDEXES, RUN_INDEXES};
pub use protocol::Protocol;
pub use run::{check_run_name, want_tag, FileEntry, RunDoc, RunKey, DEFAULT_DETECTOR};
pub use status::{can_transition, legacy_status, CopyStatus, LEGACY_STATUSES};

/// The JSON Schema of a run document (`run.schema.json`).
pub const RUN_SCHEMA_JSON: &str = include_str!("../run.schema.json");

/// A run document that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("run document {run}: {detail}")]
pub struct ShapeError {
    /// The run, as well as it could be identified (`number`, `name` or `_id`).
    pub run: String,
    /// What is wrong, with the field path when the decoder names it.
    pub detail: String,
}

/// Names a raw run document as well as possible: `tpc/4711 (170330_1234)`, else its `_id`.
pub fn identify(doc: &bson::Document) -> String {
    let number = doc.get("number").map(|n| match n {
        bson::Bson::Double(d) => format!("{d}"),
        other => other.to_string(),
    });
    let name = doc.get_str("name").ok();
    let detector = doc.get_str("detector").unwrap_or(DEFAULT_DETECTOR);
    match (number, name) {
        (Some(n), Some(name)) => format!("{detector}/{n} ({name})"),
        (Some(n), None) => format!("{detector}/{n}"),
        (None, Some(name)) => format!("{detector}/? ({name})"),
        (None, None) => match doc.get("_id") {
            Some(id) => format!("_id {id}"),
            None => "<no number, name or _id>".to_string(),
        },
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    /// Every field Ferry writes is described by `run.schema.json`.
    #[test]
    fn json_schema_covers_every_field() {
        let schema: serde_json::Value = serde_json::from_str(RUN_SCHEMA_JSON).unwrap();
        let props = |ptr: &str| -> Vec<String> {
            schema
                .pointer(ptr)
                .and_then(|v| v.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap()
        };
        let now = bson::DateTime::now();
        let mut run = RunDoc::new("tpc", 1, Some("r1"));
        run.id = Some(bson::Bson::Int32(1));
        run.start = Some(now);
        run.end = Some(now);
        run.size = Some(1);
        run.digest = Some("0".repeat(64));
        run.files.push(FileEntry {
            path: "a".into(),
            size: 1,
            sha256: "0".repeat(64),
            md5: Some("0".repeat(32)),
            adler32: None,
        });
        let mut copy = CopyEntry::new("h", "raw", CopyStatus::Transferring, now);
        copy.location = Some("/x".into());
        copy.protocol = Some(Protocol::Sftp);
        copy.checksum = Some("c".into());
        copy.verified_time = Some(now);
        copy.lease = Some(Lease {
            owner: "o".into(),
            expires: now,
        });
        copy.record_failure(Some(&Failure::new(FailureClass::Fatal, "e".into())));
        copy.tape = Some(bson::doc! {"backend": "dir"});
        run.data.push(copy);
        let mut event = Event::copy("w", "status", "h", "raw", Some("r".into()));
        event.error_class = Some(FailureClass::Fatal);
        run.push_event(event);
        let doc = run.to_document().unwrap();
        let check = |d: &bson::Document, ptr: &str| {
            let known = props(ptr);
            for k in d.keys() {
                assert!(known.contains(k), "{k} missing under {ptr}");
            }
        };
        check(&doc, "/properties");
        let sub = |name: &str| {
            doc.get_array(name).unwrap()[0]
                .as_document()
                .unwrap()
                .clone()
        };
        check(&sub("data"), "/$defs/copy/properties");
        check(&sub("files"), "/$defs/file/properties");
        check(&sub("events"), "/$defs/event/properties");
        check(
            sub("data").get_document("lease").unwrap(),
            "/$defs/lease/properties",
        );
    }
}
