//! Shared by the `catalog_*` integration tests: one back end per test, fresh.
//!
//! - [`Backend`]: which back end; [`Fixture::new`] opens an empty catalogue on it: a SQLite
//!   file in a temp dir, or a unique database on the MongoDB-wire server that this test
//!   binary starts once ([`mongo_server`]).
//! - [`Fixture::insert_raw`]: writes a document as another tool would (driver / import),
//!   bypassing Ferry's types.
//! - helpers building runs, manifests, origin copies and claims.

#![allow(dead_code)]
// each test binary uses a different part
// Test support: a failed set-up step should panic with the cause, like the tests do.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bson::Document;
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::mongo::{MongoCatalog, MongoConfig};
use ferry::catalog::{
    Catalog, CatalogUri, ClaimRequest, CopyRef, FileEntry, Manifest, NewRun, OriginCopy, RunKey,
};
use ferry_tests::{unique_db_name, MongoServer};

/// Which back end a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file in a temp dir.
    Embedded,
    /// A unique database on the shared MongoDB-wire server.
    Mongo,
}

/// The MongoDB-wire server of this test binary, started on first use. It dies with the
/// test process (the harness sets PR_SET_PDEATHSIG).
pub fn mongo_server() -> &'static MongoServer {
    static SERVER: OnceLock<MongoServer> = OnceLock::new();
    SERVER.get_or_init(|| match MongoServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start the MongoDB-wire server: {e:#}"),
    })
}

/// The server's URI with `db` as the database.
pub fn mongo_uri(server: &MongoServer, db: &str) -> String {
    with_database(&server.uri(), db)
}

/// Puts `db` into a `mongodb://host/?opts` URI.
pub fn with_database(uri: &str, db: &str) -> String {
    match uri.split_once("/?") {
        Some((head, opts)) => format!("{head}/{db}?{opts}"),
        None => format!("{}/{db}", uri.trim_end_matches('/')),
    }
}

/// A fresh, empty catalogue.
pub struct Fixture {
    /// The catalogue under test.
    pub catalog: Box<dyn Catalog>,
    /// Its URI (for other processes).
    pub uri: String,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

enum Raw {
    Mongo(mongodb::Collection<Document>),
    Embedded(EmbeddedCatalog, PathBuf),
}

impl Fixture {
    /// Opens an empty catalogue on `backend`; `name` labels the database.
    pub async fn new(backend: Backend, name: &str) -> Fixture {
        match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let path: PathBuf = dir.path().join("catalog.sqlite");
                let cat = EmbeddedCatalog::open(&path).await.unwrap();
                Fixture {
                    catalog: Box::new(cat.clone()),
                    uri: format!("sqlite:{}", path.display()),
                    raw: Raw::Embedded(cat, path),
                    _dir: Some(dir),
                }
            }
            Backend::Mongo => {
                let server = mongo_server();
                let db = unique_db_name(name);
                let uri = mongo_uri(server, &db);
                let parsed = CatalogUri::parse(&uri).unwrap();
                let cat = MongoCatalog::connect(MongoConfig::new(parsed))
                    .await
                    .unwrap();
                let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
                Fixture {
                    catalog: Box::new(cat),
                    raw: Raw::Mongo(client.database(&db).collection("runs")),
                    uri,
                    _dir: None,
                }
            }
        }
    }

    /// Writes a document as another tool would.
    pub async fn insert_raw(&self, doc: Document) {
        match &self.raw {
            Raw::Mongo(c) => {
                c.insert_one(doc).await.unwrap();
            }
            Raw::Embedded(e, _) => e.import_document(doc).await.unwrap(),
        }
    }

    /// Writes a document as another tool with direct access would, whatever its shape: on
    /// MongoDB with the driver, in the SQLite file with SQL (filed under `number`).
    pub async fn insert_raw_anyhow(&self, number: i64, doc: Document) {
        match &self.raw {
            Raw::Mongo(c) => {
                c.insert_one(doc).await.unwrap();
            }
            Raw::Embedded(_, path) => {
                let mut blob = Vec::new();
                doc.to_writer(&mut blob).unwrap();
                let db = rusqlite::Connection::open(path).unwrap();
                db.execute(
                    "INSERT INTO runs (detector, number, name, start, doc) \
                     VALUES ('tpc', ?1, NULL, NULL, ?2)",
                    rusqlite::params![number, blob],
                )
                .unwrap();
            }
        }
    }

    /// Replaces the stored document of run `key` as another tool would (MongoDB: the
    /// driver's `replace_one`; SQLite: an `UPDATE` of the document only, its indexed copies
    /// left as they were), so the work lists still find it.
    pub async fn overwrite_raw(&self, key: &RunKey, doc: Document) {
        match &self.raw {
            Raw::Mongo(c) => {
                let r = c
                    .replace_one(bson::doc! {"number": key.number}, doc)
                    .await
                    .unwrap();
                assert_eq!(r.matched_count, 1);
            }
            Raw::Embedded(_, path) => {
                let mut blob = Vec::new();
                doc.to_writer(&mut blob).unwrap();
                let db = rusqlite::Connection::open(path).unwrap();
                let n = db
                    .execute(
                        "UPDATE runs SET doc = ?3 WHERE detector = ?1 AND number = ?2",
                        rusqlite::params![key.detector, key.number, blob],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
    }

    /// The bytes of every stored run document, by number (to show nothing changed).
    pub async fn raw_bytes(&self) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        match &self.raw {
            Raw::Mongo(c) => {
                use futures::TryStreamExt;
                let docs: Vec<Document> = c
                    .find(bson::doc! {})
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                for d in docs {
                    let n = match d.get("number") {
                        Some(bson::Bson::Int64(n)) => *n,
                        Some(bson::Bson::Int32(n)) => i64::from(*n),
                        _ => -1,
                    };
                    let mut blob = Vec::new();
                    d.to_writer(&mut blob).unwrap();
                    out.push((n, blob));
                }
            }
            Raw::Embedded(_, path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let mut st = db
                    .prepare("SELECT number, doc FROM runs ORDER BY id")
                    .unwrap();
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                    .unwrap();
                for r in rows {
                    out.push(r.unwrap());
                }
            }
        }
        out.sort();
        out
    }

    /// Reads a run document as stored, bypassing Ferry's types.
    pub async fn read_raw(&self, key: &RunKey) -> Document {
        match &self.raw {
            Raw::Mongo(c) => c
                // Documents written by a DAQ may have no `detector`.
                .find_one(bson::doc! {"number": key.number})
                .await
                .unwrap()
                .unwrap(),
            Raw::Embedded(e, _) => e.raw_document(key).await.unwrap().unwrap(),
        }
    }
}

/// `tpc/N`.
pub fn key(n: i64) -> RunKey {
    RunKey::new("tpc", n)
}

/// A one-file manifest whose digest depends on `seed`.
pub fn manifest(seed: &str) -> Manifest {
    Manifest {
        files: vec![FileEntry {
            path: "raw/000.evio".into(),
            size: 1024,
            sha256: format!("{:0>64}", seed),
            md5: Some(format!("{:0>32}", seed)),
            adler32: None,
        }],
        size: 1024,
        digest: format!("{:f>64}", seed),
    }
}

/// Run N, named `runN`, with a manifest, wanting a raw copy at `lngs`.
pub fn new_run(n: i64) -> NewRun {
    NewRun {
        key: key(n),
        name: Some(format!("run{n}")),
        start: Some(bson::DateTime::from_millis(
            1_700_000_000_000 + n * 3_600_000,
        )),
        end: None,
        manifest: Some(manifest(&n.to_string())),
        want: vec!["lngs/raw".into()],
        who: "test".into(),
    }
}

/// The origin copy of run N at `site`.
pub fn origin(n: i64, site: &str) -> OriginCopy {
    OriginCopy {
        copy: CopyRef::new(key(n), site, "raw"),
        location: format!("/data/{site}/run{n}"),
        protocol: "local".into(),
        manifest: manifest(&n.to_string()),
        who: "test".into(),
    }
}

/// A claim of run N's raw copy at `site` by `owner`.
pub fn claim(n: i64, site: &str, owner: &str, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        copy: CopyRef::new(key(n), site, "raw"),
        location: format!("/data/{site}/run{n}"),
        protocol: "sftp".into(),
        owner: owner.into(),
        lease_for: lease,
    }
}

/// Registers run N with its origin copy at `site`.
pub async fn seed_run(c: &dyn Catalog, n: i64, site: &str) {
    c.register_run(&new_run(n)).await.unwrap();
    assert_eq!(
        c.add_origin_copy(&origin(n, site)).await.unwrap(),
        ferry::catalog::Cas::Done
    );
}
