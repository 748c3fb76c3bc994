//! `Retrying` against a real outage: the MongoDB-wire server is stopped while the agent
//! works and restarted a moment later (same port, same data). Without retries the call fails
//! with a retryable `Unreachable`; wrapped in `Retrying` the same call succeeds once the
//! server is back, and nothing is written twice.

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use std::time::Duration;

use catalog_common::{key, new_run, with_database};
use ferry::catalog::mongo::{MongoCatalog, MongoConfig};
use ferry::catalog::{Backoff, Catalog, CatalogError, CatalogUri, Registered, Retrying};
use ferry_tests::{unique_db_name, MongoServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_outage_is_retried_until_the_server_is_back() {
    let mut server = MongoServer::start().unwrap();
    let uri = with_database(&server.uri(), &unique_db_name("retry"));
    // Short server selection, so each attempt during the outage fails fast.
    let uri = format!("{uri}&serverSelectionTimeoutMS=400");
    let config = MongoConfig::new(CatalogUri::parse(&uri).unwrap());
    let backend = MongoCatalog::connect(config).await.unwrap();
    let once = Retrying::new(
        backend.clone(),
        Backoff {
            attempts: 1,
            initial: Duration::ZERO,
            max: Duration::ZERO,
        },
    );
    let patient = Retrying::new(
        backend,
        Backoff {
            attempts: 20,
            initial: Duration::from_millis(200),
            max: Duration::from_millis(800),
        },
    );

    server.stop();
    let err = once.register_run(&new_run(1)).await.unwrap_err();
    assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.is_connection());
    assert!(err.to_string().contains("127.0.0.1"), "{err}");

    // The server comes back 1.5 s into the patient call.
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1500));
        server.restart().unwrap();
        server
    });
    let outcome = patient.register_run(&new_run(1)).await.unwrap();
    let _server = restarter.await.unwrap();
    assert_eq!(outcome, Registered::Created);
    let run = patient.get_run(&key(1)).await.unwrap().unwrap();
    assert_eq!(run.events.len(), 1, "registered once: {:?}", run.events);
    assert_eq!(
        patient.register_run(&new_run(1)).await.unwrap(),
        Registered::Existing
    );
}

/// A write applied by an attempt whose reply was lost: the retry finds the state already
/// changed. `Retrying` must report the write as done (the copy is in the state it writes),
/// not as a lost race — else an agent would think another agent took its copy, and a
/// removal would look undone. A real lost race after such a failure stays lost.
async fn lost_replies_are_settled_by_reading_the_copy_back<C: Catalog>(backend: C) {
    use catalog_common::{claim, seed_run};
    use ferry::catalog::faults::{Fault, Faulty};
    use ferry::catalog::{Cas, Claim, CopyRef, CopyStatus, Protector, Transition};

    let faulty = Faulty::new(backend);
    let quick = Backoff {
        attempts: 3,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(1),
    };
    let cat = Retrying::new(faulty, quick);
    seed_run(&cat, 1, "daq").await;
    let lngs = CopyRef::new(key(1), "lngs", "raw");

    cat.inner().inject("claim", Fault::LoseReply);
    let won = cat.claim_copy(&claim(1, "lngs", "a", LEASE)).await.unwrap();
    assert!(matches!(won, Claim::Won(_)), "{won:?}");

    let mut t = Transition::new(
        CopyStatus::Transferring,
        CopyStatus::Verifying,
        Some("a"),
        "a",
    );
    t.checksum = Some("abc".into());
    cat.inner().inject("transition", Fault::LoseReply);
    assert_eq!(cat.transition(&lngs, &t).await.unwrap(), Cas::Done);
    let run = cat.get_run(&key(1)).await.unwrap().unwrap();
    let verifying = run
        .events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("transferring -> verifying"))
        .count();
    assert_eq!(verifying, 1, "applied once: {:?}", run.events);

    // Not ours: another owner's copy stays a lost race even after an ambiguous failure.
    let theirs = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        Some("b"),
        "b",
    );
    cat.inner().inject("transition", Fault::LoseReply);
    assert_eq!(cat.transition(&lngs, &theirs).await.unwrap(), Cas::Lost);

    let mut done = Transition::new(
        CopyStatus::Verifying,
        CopyStatus::Transferred,
        Some("a"),
        "a",
    );
    done.checksum = Some("abc".into());
    // The tape details travel through both wrappers and settle a lost reply too.
    done.tape = Some(bson::doc! { "backend": "lto", "volumes": ["L00001"] });
    cat.inner().inject("transition", Fault::LoseReply);
    assert_eq!(cat.transition(&lngs, &done).await.unwrap(), Cas::Done);
    let run = cat.get_run(&key(1)).await.unwrap().unwrap();
    assert_eq!(run.copy("lngs", "raw").unwrap().tape, done.tape);
    // Protected by the origin's copy, as the purge task marks it.
    let origin = run.copy("daq", "raw").unwrap();
    let by_daq = [Protector {
        host: "daq".into(),
        data_type: "raw".into(),
        checksum: origin.checksum.clone().unwrap(),
        verified_after: origin.verified_time,
    }];
    cat.inner().inject("mark removing", Fault::LoseReply);
    assert_eq!(
        cat.mark_removing(&lngs, CopyStatus::Transferred, &by_daq, "a", "test")
            .await
            .unwrap(),
        Cas::Done
    );
    cat.inner().inject("remove copy", Fault::LoseReply);
    assert_eq!(
        cat.remove_copy(&lngs, "a", "test").await.unwrap(),
        Cas::Done
    );
    let run = cat.get_run(&key(1)).await.unwrap().unwrap();
    assert!(run.copy("lngs", "raw").is_none(), "{run:?}");

    // A failure before anything was written is retried and applies once.
    cat.inner().inject("request copy", Fault::FailBefore);
    assert_eq!(
        cat.request_copy(&key(1), "lngs", "raw").await.unwrap(),
        Cas::Done
    );
}

const LEASE: Duration = Duration::from_secs(600);

#[tokio::test]
async fn lost_replies_are_settled_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let cat = ferry::catalog::embedded::EmbeddedCatalog::open(&dir.path().join("c.sqlite"))
        .await
        .unwrap();
    lost_replies_are_settled_by_reading_the_copy_back(cat).await;
}

#[tokio::test]
async fn lost_replies_are_settled_mongo() {
    let uri = catalog_common::mongo_uri(catalog_common::mongo_server(), &unique_db_name("lost"));
    let cat = MongoCatalog::connect(MongoConfig::new(CatalogUri::parse(&uri).unwrap()))
        .await
        .unwrap();
    lost_replies_are_settled_by_reading_the_copy_back(cat).await;
}
