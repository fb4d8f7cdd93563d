//! The PostgreSQL schema keeps the hot path's updates heap-only (HOT):
//! no index, nor any index's predicate, names a column they write, so
//! PostgreSQL keeps each new row version on its page without touching an
//! index. A claim writes a conversation's narrow `heads` row and nothing of
//! `runs`; a holder's write of a run, its finish included, changes no
//! indexed column of `runs` either, nor a send's outcome one of
//! `deliveries`. Only a promotion (a new `heads` row), a finish's entry in
//! the narrow `finished_runs` and an unknown outcome's in
//! `unknown_deliveries` add index entries.

use crate::support;

use oncesend::store::sql::SqlClock;
use oncesend::store::Store;
use oncesend_core::{RunId, StoreOp};

const CLAIM: &str = include_str!("../../src/store/sql/statements/postgres/claim.sql");
const WRITE_RUNS: &str = include_str!("../../src/store/sql/statements/postgres/write_runs.sql");
const WRITE_DELIVERIES: &str =
    include_str!("../../src/store/sql/statements/postgres/write_deliveries.sql");

/// The columns an `UPDATE {table} SET … {until}` in `sql` writes.
fn set_columns(sql: &str, table: &str, until: &str) -> Vec<String> {
    columns_between(sql, &format!("UPDATE {table} SET"), until)
}

/// The columns a `{from} a = …, b = … {until}` in `sql` assigns (to its
/// end when `until` is empty).
fn columns_between(sql: &str, from: &str, until: &str) -> Vec<String> {
    let set = sql
        .split_once(from)
        .and_then(|(_, rest)| match until {
            "" => Some(rest),
            _ => rest.split_once(until).map(|(set, _)| set),
        })
        .unwrap_or_else(|| panic!("no {from} … {until} in {sql}"));
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
fn the_written_columns_are_read_off_the_statements() {
    assert_eq!(
        set_columns(CLAIM, "heads", "FROM picked"),
        ["status", "epoch", "lease_owner", "lease_until_ms", "wait"]
    );
    assert!(!CLAIM.contains("UPDATE runs"), "a claim writes no run");
    assert_eq!(
        set_columns(WRITE_RUNS, "runs", "FROM json_to_recordset"),
        [
            "status",
            "next_step",
            "run_at_ms",
            "attempts",
            "epoch",
            "lease_owner",
            "lease_until_ms",
            "reason",
            "finished_at_ms",
            "wait",
            "note"
        ]
    );
    assert_eq!(
        columns_between(WRITE_DELIVERIES, "DO UPDATE SET", ""),
        [
            "state",
            "deadline_ms",
            "retryable",
            "epoch",
            "attempts",
            "provider_message_id",
            "last_error",
            "resolved_by",
            "resolved_at_ms",
            "owner"
        ]
    );
}

async fn indexes(store: &oncesend::store::sql::SqlStore, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes \
         WHERE schemaname = 'schema_hot' AND tablename = $1",
    )
    .bind(table)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// This transaction's row counts so far: for each (kind, table), PostgreSQL's
/// `pg_stat_get_xact_tuples_{kind}` of that table.
async fn xact_counts<const N: usize>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    of: [(&str, &str); N],
) -> [i64; N] {
    let mut out = [0; N];
    for (count, (kind, table)) in out.iter_mut().zip(of) {
        *count = sqlx::query_scalar(&format!(
            "SELECT pg_stat_get_xact_tuples_{kind}('{table}'::regclass)"
        ))
        .fetch_one(&mut **tx)
        .await
        .unwrap();
    }
    out
}

#[tokio::test]
async fn no_index_names_a_column_the_hot_path_writes_and_claims_stay_on_their_page() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "schema_hot", SqlClock::Caller, 2).await;
    let heads = indexes(&store, "heads").await;
    assert!(
        heads.iter().any(|(name, _)| name == "heads_due"),
        "{heads:?}"
    );
    for (name, def) in &heads {
        for column in set_columns(CLAIM, "heads", "FROM picked") {
            assert!(
                !identifiers(def).contains(&column.as_str()),
                "index {name} names `{column}`, which every claim writes: claims could no \
                 longer be HOT updates ({def})"
            );
        }
    }
    let runs = indexes(&store, "runs").await;
    assert!(
        runs.iter().any(|(name, _)| name == "runs_by_recipient"),
        "{runs:?}"
    );
    for (name, def) in &runs {
        for column in set_columns(WRITE_RUNS, "runs", "FROM json_to_recordset") {
            assert!(
                !identifiers(def).contains(&column.as_str()),
                "index {name} names `{column}`, which a holder's write changes: steps \
                 and finishes could no longer be HOT updates ({def})"
            );
        }
    }

    let deliveries = indexes(&store, "deliveries").await;
    assert!(!deliveries.is_empty());
    for (name, def) in &deliveries {
        for column in columns_between(WRITE_DELIVERIES, "DO UPDATE SET", "") {
            assert!(
                !identifiers(def).contains(&column.as_str()),
                "index {name} names `{column}`, which a send's outcome writes: outcomes \
                 could no longer be HOT updates ({def})"
            );
        }
    }

    // And PostgreSQL agrees: every head a claim leases is updated in place,
    // and no run's row is written at all.
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
    let [updated, hot, runs_updated] = xact_counts(
        &mut tx,
        [
            ("updated", "heads"),
            ("hot_updated", "heads"),
            ("updated", "runs"),
        ],
    )
    .await;
    assert_eq!((updated, hot), (10, 10), "claims that were not HOT updates");
    assert_eq!(runs_updated, 0, "a claim wrote runs");

    // Each run finishes (its row takes the claim state back): ten updates
    // of `runs` in place, and ten entries in the list of finished runs.
    let finishes: Vec<serde_json::Value> = claimed
        .iter()
        .map(|row| {
            use sqlx::Row;
            serde_json::json!({
                "id": hex::encode(row.try_get::<Vec<u8>, _>("id").unwrap()),
                "read_epoch": row.try_get::<i64, _>("epoch").unwrap(),
                "head": true, "status": "completed", "next_step": 1,
                "run_at_ms": 10, "attempts": 0,
                "epoch": row.try_get::<i64, _>("epoch").unwrap(),
                "lease_owner": null, "lease_until_ms": null, "reason": null,
                "finished_at_ms": 20, "wait": null, "note": null,
                "read_finished_at_ms": null,
            })
        })
        .collect();
    let written: i64 = sqlx::query_scalar(WRITE_RUNS)
        .bind(serde_json::to_string(&finishes).unwrap())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(written, 10);
    let [updated, hot, listed] = xact_counts(
        &mut tx,
        [
            ("updated", "runs"),
            ("hot_updated", "runs"),
            ("inserted", "finished_runs"),
        ],
    )
    .await;
    // Their sends: begun (ten ledger rows, committed), then nine outcomes
    // known and one unknown, each row updated in place.
    let ledger = |sent: &str, last: &str| {
        let rows: Vec<serde_json::Value> = claimed
            .iter()
            .enumerate()
            .map(|(i, row)| {
                use sqlx::Row;
                serde_json::json!({
                    "run_id": hex::encode(row.try_get::<Vec<u8>, _>("id").unwrap()),
                    "step": 0, "state": if i == 9 { last } else { sent },
                    "deadline_ms": 40, "retryable": null, "epoch": 1, "attempts": 1,
                    "provider_message_id": null, "last_error": null,
                    "resolved_by": null, "resolved_at_ms": null, "owner": "hot-check",
                })
            })
            .collect();
        serde_json::to_string(&rows).unwrap()
    };
    sqlx::query(WRITE_DELIVERIES)
        .bind(ledger("sending", "sending"))
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(WRITE_DELIVERIES)
        .bind(ledger("sent", "unknown"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let [ledger_updated, ledger_hot] = xact_counts(
        &mut tx,
        [("updated", "deliveries"), ("hot_updated", "deliveries")],
    )
    .await;
    tx.rollback().await.unwrap();
    assert_eq!(
        (ledger_updated, ledger_hot),
        (10, 10),
        "outcomes that were not HOT updates"
    );
    assert_eq!(
        (updated, hot),
        (10, 10),
        "finishes that were not HOT updates"
    );
    assert_eq!(listed, 10, "finishes missing from finished_runs");
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
