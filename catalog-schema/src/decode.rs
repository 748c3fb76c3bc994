//! Decoding run documents field by field, with the path of the field that is wrong.
//!
//! The catalogue is written by other tools too (a DAQ, scripts, an import), so a document
//! may not have the shape Ferry needs. [`crate::RunDoc::from_document`] reads it field by
//! field and says which field is wrong and how ([`DecodeError`]: `data[1].status: unknown
//! copy status "done"`), so the back ends can skip (quarantine) that one document and go on
//! with the rest.
//!
//! What is tolerated, because real documents written by cax's DAQ contain it: a run number
//! or size written as a whole double (mongosh), `checksum: null`, `creation_time` stored as
//! a list (cax issue #40: its first element is the time), `null` for any optional field, a
//! copy without `type` (`raw`), any data type (`untriggered`), any `location` string
//! (cax's `"n/a"` for a pending copy is read as no location), the copy statuses cax and its
//! Rucio tools wrote (`failed`, `RSEreupload`, `RSEquota`: read as `error`, with a
//! `[retryable]` failure saying so when there is no `last_error`; see
//! [`crate::status::LEGACY_STATUSES`]), any `protocol` name (kept as
//! [`crate::Protocol::Other`]), and an `error_class` name this version does not know (kept
//! as written, counted as absent: the class is then read from `last_error`). What is not: a
//! field of the wrong type (an `error_class` that is not a string included), a copy status
//! that is neither Ferry's nor cax's, a negative size, a missing `number`, `host` or
//! `status`.

use bson::{Bson, DateTime, Document};
use std::fmt;

use crate::status::CopyStatus;

/// What is wrong with one field of a run document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required field is absent (or `null`).
    Missing,
    /// The field has another BSON type than the one it must have.
    WrongType {
        /// What it must be (`"an integer"`, `"a string"`, …).
        expected: &'static str,
        /// What it is, with a short view of the value (`string "4711"`).
        found: String,
    },
    /// A copy status that is not one of the five.
    UnknownStatus(String),
    /// A size or count below zero.
    Negative(i64),
    /// A double that is not a whole number, or outside the range of exact integers.
    NotWhole(String),
    /// The bytes are not a BSON document at all.
    NotBson(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            Problem::UnknownStatus(s) => write!(
                f,
                "unknown copy status {s:?} (expected transferring, verifying, transferred, \
                 error or removing)"
            ),
            Problem::Negative(n) => write!(f, "must not be negative, found {n}"),
            Problem::NotWhole(v) => write!(f, "expected a whole number, found {v}"),
            Problem::NotBson(e) => write!(f, "not a BSON document: {e}"),
        }
    }
}

/// A run document that cannot be decoded: which document, which field, what is wrong.
///
/// Displayed as `run document ObjectId("65…") (run 4711 "170330_1234"): field
/// data[1].status: unknown copy status "done" (…)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run document {id}{run}: field {field}: {problem}", run = RunLabel(.run))]
pub struct DecodeError {
    /// The document's `_id` as shown (`ObjectId("…")`, `"a string"`, …), or where the
    /// document is stored when it has none (the embedded catalogue: `row 17`).
    pub id: String,
    /// The run as far as it can be read: its number (or the raw value of `number`) and
    /// name; `None` when neither is readable.
    pub run: Option<String>,
    /// The path of the wrong field: `number`, `files`, `data[1].status`, `files[0].size`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

struct RunLabel<'a>(&'a Option<String>);

impl fmt::Display for RunLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, " (run {r})"),
            None => Ok(()),
        }
    }
}

/// How a document is named in its decode errors: its `_id` and run, read before decoding.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    id: String,
    run: Option<String>,
}

impl Who {
    pub(crate) fn of(doc: &Document) -> Self {
        Who {
            id: doc.get("_id").map_or_else(|| NO_ID.to_string(), shown_id),
            run: run_label(doc),
        }
    }
}

const NO_ID: &str = "without _id";

impl DecodeError {
    pub(crate) fn new(who: &Who, field: String, problem: Problem) -> Self {
        DecodeError {
            id: who.id.clone(),
            run: who.run.clone(),
            field,
            problem,
        }
    }

    /// Bytes that are not a BSON document at all, stored at `id`.
    pub fn not_bson(id: String, run: Option<String>, error: &str) -> Self {
        DecodeError {
            id,
            run,
            field: "(document)".to_string(),
            problem: Problem::NotBson(error.to_string()),
        }
    }

    /// Names the document by where it is stored when it has no `_id` (the embedded
    /// catalogue's row), and by the run the store files it under when its own fields do not
    /// say.
    pub fn stored_at(mut self, place: &str, run: &str) -> Self {
        if self.id == NO_ID {
            self.id = place.to_string();
        }
        if self.run.is_none() {
            self.run = Some(run.to_string());
        }
        self
    }
}

/// An `_id` as shown in messages: an ObjectId's hex, a string quoted, anything else as
/// extended JSON.
fn shown_id(id: &Bson) -> String {
    match id {
        Bson::ObjectId(o) => o.to_hex(),
        Bson::String(s) => format!("{s:?}"),
        other => short(other),
    }
}

/// `4711 "170330_1234"`, `"4711"` (a number written as a string), or `None`.
fn run_label(doc: &Document) -> Option<String> {
    let number = doc.get("number").map(|n| match int_of(n) {
        Ok(n) => n.to_string(),
        Err(_) => short(n),
    });
    let name = doc.get_str("name").ok().map(|n| format!("{n:?}"));
    match (number, name) {
        (Some(n), Some(name)) => Some(format!("{n} {name}")),
        (Some(n), None) => Some(n),
        (None, Some(name)) => Some(name),
        (None, None) => None,
    }
}

/// A value as shown in a message, cut to a readable length.
fn short(v: &Bson) -> String {
    let text = match v {
        Bson::String(s) => format!("{s:?}"),
        other => other.clone().into_relaxed_extjson().to_string(),
    };
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// The BSON type of a value, as named in messages, and the value itself.
pub(crate) fn describe(v: &Bson) -> String {
    let kind = match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "document",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => "javascript",
        Bson::Int32(_) => "int32",
        Bson::Int64(_) => "int64",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binary",
        Bson::ObjectId(_) => "ObjectId",
        Bson::DateTime(_) => "date",
        Bson::Symbol(_) => "symbol",
        Bson::Decimal128(_) => "decimal128",
        Bson::Undefined => "undefined",
        Bson::MaxKey => "maxKey",
        Bson::MinKey => "minKey",
        Bson::DbPointer(_) => "dbPointer",
    };
    match v {
        Bson::Null | Bson::Undefined | Bson::MaxKey | Bson::MinKey => kind.to_string(),
        Bson::Array(a) if a.is_empty() => "an empty array".to_string(),
        Bson::Document(d) if d.is_empty() => "an empty document".to_string(),
        other => format!("{kind} {}", short(other)),
    }
}

/// An integer from int32, int64 or a whole double (mongosh writes numbers as doubles).
pub(crate) fn int_of(v: &Bson) -> Result<i64, Problem> {
    match v {
        Bson::Int32(n) => Ok(i64::from(*n)),
        Bson::Int64(n) => Ok(*n),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Ok(*d as i64)
        }
        Bson::Double(d) => Err(Problem::NotWhole(d.to_string())),
        other => Err(Problem::WrongType {
            expected: "an integer",
            found: describe(other),
        }),
    }
}

/// The fields of one (sub)document being decoded: takes known fields out by name, with the
/// path prefix of that document, and leaves the rest as `extra`.
pub(crate) struct Fields<'a> {
    /// Names the run document in errors.
    root: &'a Who,
    /// `""` for the run, `data[1].` for a copy, …
    prefix: String,
    rest: Document,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(root: &'a Who, prefix: String, doc: Document) -> Self {
        Fields {
            root,
            prefix,
            rest: doc,
        }
    }

    /// Names the run document in errors.
    pub(crate) fn who(&self) -> &'a Who {
        self.root
    }

    /// The path of field `key` of this document.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn error(&self, key: &str, problem: Problem) -> DecodeError {
        DecodeError::new(self.root, self.path(key), problem)
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Bson) -> DecodeError {
        self.error(
            key,
            Problem::WrongType {
                expected,
                found: describe(found),
            },
        )
    }

    /// Whether `key` is still there (not taken).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.rest.contains_key(key)
    }

    /// Removes `key`; `null` counts as absent.
    pub(crate) fn take(&mut self, key: &str) -> Option<Bson> {
        match self.rest.remove(key) {
            None | Some(Bson::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Removes `key`, keeping a `null` as it is.
    pub(crate) fn take_raw(&mut self, key: &str) -> Option<Bson> {
        self.rest.remove(key)
    }

    pub(crate) fn opt_string(&mut self, key: &str) -> Result<Option<String>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", &other)),
        }
    }

    pub(crate) fn string(&mut self, key: &str) -> Result<String, DecodeError> {
        self.opt_string(key)?
            .ok_or_else(|| self.error(key, Problem::Missing))
    }

    pub(crate) fn opt_date(&mut self, key: &str) -> Result<Option<DateTime>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Bson::DateTime(d)) => Ok(Some(d)),
            Some(other) => Err(self.wrong(key, "a date", &other)),
        }
    }

    /// A date, or (as cax sometimes stored `creation_time`) a list of dates whose first
    /// element is the time; an empty list (or a first `null`) is no date.
    pub(crate) fn opt_date_or_list(&mut self, key: &str) -> Result<Option<DateTime>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Bson::DateTime(d)) => Ok(Some(d)),
            Some(Bson::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if !matches!(item, Bson::DateTime(_) | Bson::Null) {
                        return Err(self.wrong(
                            &format!("{key}[{i}]"),
                            "a date (in a list of dates, as cax wrote)",
                            item,
                        ));
                    }
                }
                Ok(match items.first() {
                    Some(Bson::DateTime(d)) => Some(*d),
                    _ => None,
                })
            }
            Some(other) => Err(self.wrong(key, "a date (or a list of dates)", &other)),
        }
    }

    pub(crate) fn opt_int(&mut self, key: &str) -> Result<Option<i64>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => int_of(&v).map(Some).map_err(|p| self.error(key, p)),
        }
    }

    pub(crate) fn int(&mut self, key: &str) -> Result<i64, DecodeError> {
        self.opt_int(key)?
            .ok_or_else(|| self.error(key, Problem::Missing))
    }

    /// An integer that must not be negative (sizes).
    pub(crate) fn opt_size(&mut self, key: &str) -> Result<Option<i64>, DecodeError> {
        match self.opt_int(key)? {
            Some(n) if n < 0 => Err(self.error(key, Problem::Negative(n))),
            other => Ok(other),
        }
    }

    /// A name out of a known set (`T::from_str`): `None` when absent; a string that is not
    /// one of the names is left in place (kept in `extra` as written) and is `None` too;
    /// anything but a string is a wrong type.
    pub(crate) fn opt_known<T: std::str::FromStr>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, DecodeError> {
        match self.rest.get(key) {
            None => Ok(None),
            Some(Bson::Null) => {
                self.rest.remove(key);
                Ok(None)
            }
            Some(Bson::String(s)) => match s.parse() {
                Ok(v) => {
                    self.rest.remove(key);
                    Ok(Some(v))
                }
                Err(_) => Ok(None),
            },
            Some(other) => Err(self.wrong(key, "a string", &other.clone())),
        }
    }

    pub(crate) fn opt_document(&mut self, key: &str) -> Result<Option<Document>, DecodeError> {
        match self.take(key) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(other) => Err(self.wrong(key, "a document", &other)),
        }
    }

    /// An array whose elements are documents, each decoded by `each` with its path prefix
    /// (`data[1].`).
    pub(crate) fn documents<T>(
        &mut self,
        key: &str,
        mut each: impl FnMut(Fields<'a>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let items = match self.take(key) {
            None => return Ok(Vec::new()),
            Some(Bson::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "an array", &other)),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{key}[{i}]");
            match item {
                Bson::Document(d) => {
                    out.push(each(Fields::new(
                        self.root,
                        format!("{}.", self.path(&at)),
                        d,
                    ))?);
                }
                other => return Err(self.wrong(&at, "a document", &other)),
            }
        }
        Ok(out)
    }

    /// An array of strings.
    pub(crate) fn strings(&mut self, key: &str) -> Result<Vec<String>, DecodeError> {
        let items = match self.take(key) {
            None => return Ok(Vec::new()),
            Some(Bson::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "an array", &other)),
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Bson::String(s) => Ok(s),
                other => Err(self.wrong(&format!("{key}[{i}]"), "a string", &other)),
            })
            .collect()
    }

    /// A copy status, and the legacy (cax) name it was written as, if it was one
    /// ([`crate::status::legacy_status`]).
    pub(crate) fn status_as_written(
        &mut self,
        key: &str,
    ) -> Result<(CopyStatus, Option<String>), DecodeError> {
        let s = self.string(key)?;
        if let Some(c) = CopyStatus::ALL.into_iter().find(|c| c.as_str() == s) {
            return Ok((c, None));
        }
        match crate::status::legacy_status(&s) {
            Some(c) => Ok((c, Some(s))),
            None => Err(self.error(key, Problem::UnknownStatus(s))),
        }
    }

    /// What is left: fields Ferry does not know, kept as they are.
    pub(crate) fn rest(self) -> Document {
        self.rest
    }
}

/// The decoding rules as a MongoDB `$jsonSchema` query: a document matches it only if it
/// has the types [`crate::RunDoc::from_document`] needs.
///
/// The MongoDB back end adds it to the filter of every state change, so an update never
/// matches a document Ferry could not read (one another tool broke after Ferry read it),
/// and Ferry never writes into such a document. It is as strict as the decoder or
/// stricter, never looser: what it cannot express (a double beyond the exact integers)
/// only makes the decoder refuse more. `crate::RunDoc` tests and the catalogue behaviour
/// suite check the two agree on every malformed field they know.
pub fn readable_filter() -> Document {
    use bson::doc;
    let int = || bson::bson!(["int", "long", "double"]);
    let opt = |t: &str| bson::bson!([t, "null"]);
    let size =
        || doc! { "bsonType": ["int", "long", "double", "null"], "minimum": 0, "multipleOf": 1 };
    let statuses: Vec<&str> = CopyStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(crate::status::LEGACY_STATUSES.iter().map(|(n, _)| *n))
        .collect();
    let file = doc! {
        "bsonType": "object",
        "required": ["path", "size", "sha256"],
        "properties": {
            "path": { "bsonType": "string" },
            "size": { "bsonType": int(), "minimum": 0, "multipleOf": 1 },
            "sha256": { "bsonType": "string" },
            "md5": { "bsonType": opt("string") },
            "adler32": { "bsonType": opt("string") },
        },
    };
    let copy = doc! {
        "bsonType": "object",
        "required": ["host", "status"],
        "properties": {
            "type": { "bsonType": opt("string") },
            "host": { "bsonType": "string" },
            "location": { "bsonType": opt("string") },
            "protocol": { "bsonType": opt("string") },
            "status": { "bsonType": "string", "enum": statuses },
            "checksum": { "bsonType": opt("string") },
            "verified_time": { "bsonType": opt("date") },
            "creation_time": {
                "bsonType": ["date", "array", "null"],
                "items": { "bsonType": opt("date") },
            },
            "updated_time": { "bsonType": opt("date") },
            "lease": {
                "bsonType": ["object", "null"],
                "required": ["owner", "expires"],
                "properties": {
                    "owner": { "bsonType": "string" },
                    "expires": { "bsonType": "date" },
                },
            },
            "attempts": { "bsonType": ["int", "long", "double", "null"], "multipleOf": 1 },
            "last_error": { "bsonType": opt("string") },
            "error_class": { "bsonType": opt("string") },
            "tape": { "bsonType": opt("object") },
        },
    };
    let event = doc! {
        "bsonType": "object",
        "required": ["time", "who", "action"],
        "properties": {
            "time": { "bsonType": "date" },
            "who": { "bsonType": "string" },
            "action": { "bsonType": "string" },
            "host": { "bsonType": opt("string") },
            "type": { "bsonType": opt("string") },
            "reason": { "bsonType": opt("string") },
            "error_class": { "bsonType": opt("string") },
        },
    };
    doc! { "$jsonSchema": {
        "bsonType": "object",
        "required": ["number"],
        "properties": {
            "number": { "bsonType": int(), "multipleOf": 1 },
            "name": { "bsonType": opt("string") },
            "detector": { "bsonType": opt("string") },
            "start": { "bsonType": opt("date") },
            "end": { "bsonType": opt("date") },
            "files": { "bsonType": opt("array"), "items": file },
            "size": size(),
            "digest": { "bsonType": opt("string") },
            "data": { "bsonType": opt("array"), "items": copy },
            "want": { "bsonType": opt("array"), "items": { "bsonType": "string" } },
            "events": { "bsonType": opt("array"), "items": event },
        },
    } }
}
