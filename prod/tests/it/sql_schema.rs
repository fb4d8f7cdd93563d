//! The PostgreSQL schema keeps a claim a heap-only (HOT) update: no index
//! of `runs`, nor any index's predicate, names a column the claim writes,
//! so PostgreSQL can keep the leased version of a head on its page without
//! touching any index. The store path ran about a fifth faster for it.

use crate::support;

use oncesend::store::sql::SqlClock;
use oncesend::store::Store;
use oncesend_core::{RunId, StoreOp};

const CLAIM: &str = include_str!("../../src/store/sql/statements/postgres/claim.sql");

/// The columns the claim statement's `UPDATE runs SET …` writes.
fn claimed_columns() -> Vec<String> {
    let set = CLAIM
        .split_once("UPDATE runs SET")
        .and_then(|(_, rest)| rest.split_once("FROM picked"))
        .map(|(set, _)| set)
        .expect("the claim is an UPDATE runs SET … FROM picked");
    set.split(',')
        .filter_map(|a| a.split_once('=').map(|(col, _)| col.trim().to_string()))
        .collect()
}

fn identifiers(sql: &str) -> Vec<&str> {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn the_claims_columns_are_read_off_the_statement() {
    assert_eq!(
        claimed_columns(),
        ["status", "epoch", "lease_owner", "lease_until_ms", "wait"]
    );
}

#[tokio::test]
async fn no_index_of_runs_names_a_column_a_claim_writes_and_claims_stay_on_their_page() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "schema_hot", SqlClock::Caller, 1).await;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes \
         WHERE schemaname = 'schema_hot' AND tablename = 'runs'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        indexes.iter().any(|(name, _)| name == "runs_waiting"),
        "{indexes:?}"
    );
    let written = claimed_columns();
    for (name, def) in &indexes {
        for column in &written {
            assert!(
                !identifiers(def).contains(&column.as_str()),
                "index {name} names `{column}`, which every claim writes: claims could no \
                 longer be HOT updates ({def})"
            );
        }
    }

    // And PostgreSQL agrees: every head a claim leases is updated in place
    // (ten runs: one page, with room left for a new version of each).
    let runs: Vec<StoreOp> = (0..10u64)
        .map(|i| StoreOp::Enqueue {
            run: support::one_step_run(RunId::new(7_000 + i, i), &format!("+55119144{i:05}")),
            now_ms: 1,
        })
        .collect();
    store.apply_batch(runs).await.unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    let claimed = sqlx::query(CLAIM)
        .bind(10i64)
        .bind(20i64)
        .bind("hot-check")
        .bind(30_010i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('runs'::regclass), \
                pg_stat_get_xact_tuples_hot_updated('runs'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((updated, hot), (10, 10), "claims that were not HOT updates");
}

#[tokio::test]
async fn the_store_warns_exactly_when_the_server_does_not_autovacuum() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "schema_autovacuum", SqlClock::Caller, 1).await;
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let warnings = store.server_warnings().await.unwrap();
    if setting == "on" {
        assert!(warnings.is_empty(), "{warnings:?}");
    } else {
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("autovacuum is {setting}")),
            "{warnings:?}"
        );
    }
}
