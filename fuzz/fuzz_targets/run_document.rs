//! Run document decoding: arbitrary bytes as a BSON document (or, after a leading `J`, as
//! extended JSON, which reaches nested shapes far sooner) → `RunDoc::from_document`.
//!
//! Properties: no panic; a refusal names a field and displays; a decoded document
//! re-encodes, decodes again, and encodes to the same bytes (compared as bytes, since a
//! NaN in an unknown field is never equal to itself); a document that decodes matches the
//! decoder's own rules again after the round trip (`_id`, `number`, copies kept).
#![no_main]

use bson::Document;
use catalog_schema::RunDoc;
use libfuzzer_sys::fuzz_target;

fn document(data: &[u8]) -> Option<Document> {
    match data.split_first() {
        Some((b'J', json)) => {
            let value: serde_json::Value = serde_json::from_slice(json).ok()?;
            // Only what BSON can hold (JSON allows a NUL in a key, BSON does not): the
            // document as bytes, read back.
            let bson::Bson::Document(d) = bson::Bson::try_from(value).ok()? else {
                return None;
            };
            let mut raw = Vec::new();
            d.to_writer(&mut raw).ok()?;
            Document::from_reader(raw.as_slice()).ok()
        }
        _ => Document::from_reader(data).ok(),
    }
}

fn bytes(d: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    d.to_writer(&mut out).expect("a document Ferry encoded is valid BSON");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(doc) = document(data) else { return };
    match RunDoc::from_document(doc.clone()) {
        Err(e) => {
            assert!(!e.field.is_empty(), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
        Ok(run) => {
            let first = run.to_document().expect("encodes");
            let again = RunDoc::from_document(first.clone())
                .unwrap_or_else(|e| panic!("re-encoded document does not decode: {e}"));
            let second = again.to_document().expect("encodes again");
            assert_eq!(bytes(&first), bytes(&second), "round trip changed the document");
            assert_eq!(again.number, run.number);
            assert_eq!(again.key(), run.key());
            assert_eq!(again.data.len(), run.data.len());
            assert_eq!(doc.get("_id"), first.get("_id"));
        }
    }
});
