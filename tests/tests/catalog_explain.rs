//! Every query the daemon issues is served by an index:
//! - MongoDB: `explain` (queryPlanner) of each query shows an `IXSCAN` and no `COLLSCAN`;
//! - embedded: `EXPLAIN QUERY PLAN` of each query searches with an index and never scans a
//!   table.
//!
//! The queries explained are built by the same code the daemon's calls use
//! (`explain_daemon_queries` on each back end), each work list in both forms: its first page
//! and a later one (`…_paged`, after a run key).

// Test bodies and helpers.
#![allow(clippy::unwrap_used)]

mod catalog_common;

use catalog_common::{mongo_server, mongo_uri, seed_run};
use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::mongo::{MongoCatalog, MongoConfig};
use ferry::catalog::CatalogUri;
use ferry_tests::unique_db_name;

#[tokio::test]
async fn mongo_daemon_queries_use_indexes() {
    let uri = mongo_uri(mongo_server(), &unique_db_name("explain"));
    let cat = MongoCatalog::connect(MongoConfig::new(CatalogUri::parse(&uri).unwrap()))
        .await
        .unwrap();
    for n in 1..=50 {
        seed_run(&cat, n, if n % 2 == 0 { "daq" } else { "lngs" }).await;
    }
    let plans = cat.explain_daemon_queries().await.unwrap();
    let names: Vec<&str> = plans.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(plans.len(), 12, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with("_paged")).count(), 5);
    let mut indexes: Vec<(String, Vec<String>)> = Vec::new();
    for (name, plan) in plans {
        let winning = plan
            .get_document("queryPlanner")
            .and_then(|q| q.get_document("winningPlan"))
            .unwrap_or_else(|e| panic!("{name}: no queryPlanner.winningPlan ({e}): {plan}"));
        let text = winning.to_string();
        eprintln!("{name}: {text}");
        if name.starts_with("runs_needing_copy") {
            assert!(
                text.contains("\"want\""),
                "{name}: not served by the want index: {text}"
            );
        }
        assert!(text.contains("IXSCAN"), "{name}: no index scan: {text}");
        assert!(
            !text.contains("COLLSCAN"),
            "{name}: collection scan: {text}"
        );
        indexes.push((name, index_names(&text)));
    }
    // The page condition (`number`, `detector`) must not move a query off its index.
    for (name, used) in indexes.iter().filter(|(n, _)| n.ends_with("_paged")) {
        let base = name.trim_end_matches("_paged");
        let first = &indexes.iter().find(|(n, _)| n == base).unwrap().1;
        assert_eq!(used, first, "{name} is served by other indexes than {base}");
    }
}

/// The `indexName`s in a winning plan's text, sorted.
fn index_names(plan: &str) -> Vec<String> {
    let mut out: Vec<String> = plan
        .split("\"indexName\": \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    assert!(!out.is_empty(), "no indexName in {plan}");
    out
}

#[tokio::test]
async fn embedded_daemon_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let cat = EmbeddedCatalog::open(&dir.path().join("c.sqlite"))
        .await
        .unwrap();
    for n in 1..=50 {
        seed_run(&cat, n, if n % 2 == 0 { "daq" } else { "lngs" }).await;
    }
    let plans = cat.explain_daemon_queries().await.unwrap();
    let names: Vec<&str> = plans.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(plans.len(), 10, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with("_paged")).count(), 5);
    for (name, plan) in &plans {
        eprintln!("{name}:\n{plan}");
        if name.starts_with("purge_candidates") {
            // The other site's copy by the run's key, not by reading every transferred copy.
            assert!(
                plan.contains("SEARCH o USING PRIMARY KEY (run_id=?)"),
                "{name}: other copies not looked up by run:\n{plan}"
            );
        }
        if name.starts_with("runs_needing_copy") {
            assert!(
                plan.contains("SEARCH w USING PRIMARY KEY (want=?)"),
                "{name}: not served by the wants table:\n{plan}"
            );
        }
        assert!(
            plan.contains("USING INDEX")
                || plan.contains("USING COVERING INDEX")
                || plan.contains("USING PRIMARY KEY"),
            "{name}: no index used:\n{plan}"
        );
        for line in plan.lines() {
            assert!(
                !line.trim_start().starts_with("SCAN "),
                "{name}: table scan `{line}`:\n{plan}"
            );
        }
    }
    // The page condition must not change how a query is served.
    let searches = |plan: &str| -> Vec<String> {
        let mut s: Vec<String> = plan
            .lines()
            .filter(|l| l.contains("USING"))
            .map(|l| l.trim().to_string())
            .collect();
        s.sort();
        s
    };
    for (name, plan) in plans.iter().filter(|(n, _)| n.ends_with("_paged")) {
        let base = name.trim_end_matches("_paged");
        let first = &plans.iter().find(|(n, _)| n == base).unwrap().1;
        assert_eq!(searches(plan), searches(first), "{name} vs {base}");
    }
}

#[tokio::test]
async fn mongo_indexes_created_at_startup_idempotently() {
    let uri = mongo_uri(mongo_server(), &unique_db_name("indexes"));
    let config = || MongoConfig::new(CatalogUri::parse(&uri).unwrap());
    MongoCatalog::connect(config()).await.unwrap();
    // A second agent starting against the same catalogue: same indexes, no error.
    MongoCatalog::connect(config()).await.unwrap();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let db = client.default_database().unwrap();
    let mut names = db
        .collection::<bson::Document>("runs")
        .list_index_names()
        .await
        .unwrap();
    names.sort();
    let mut expected: Vec<String> = catalog_schema::RUN_INDEXES
        .iter()
        .map(|i| i.name.to_string())
        .chain(["_id_".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}
