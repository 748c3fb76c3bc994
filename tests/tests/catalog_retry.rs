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
