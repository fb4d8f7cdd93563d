//! Shared by the SQL store tests: fresh SQLite files and PostgreSQL
//! schemas, and the rule for PostgreSQL tests: with `TEST_DATABASE_URL`
//! unset they say so and pass without a server; with it set, a server that
//! does not answer fails them.
#![allow(dead_code)]

use oncesend::store::sql::{SqlClock, SqlOptions, SqlStore};
use std::path::PathBuf;

/// `TEST_DATABASE_URL`, if set.
pub fn pg_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "TEST_DATABASE_URL is not set: the PostgreSQL half of this test does not run"
            );
            None
        }
    }
}

/// A store in its own, emptied PostgreSQL schema. Panics (fails the test)
/// when the server does not answer.
pub async fn pg_store(url: &str, schema: &str, clock: SqlClock, connections: u32) -> SqlStore {
    let store = SqlStore::connect(
        url,
        SqlOptions {
            clock,
            max_connections: connections,
            schema: Some(schema.to_string()),
            ..SqlOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but PostgreSQL does not answer: {e}"));
    sqlx::raw_sql("DROP TABLE IF EXISTS run_history")
        .execute(store.pool())
        .await
        .expect("drop the old history");
    store.recreate().await.expect("drop old tables and migrate");
    store
}

/// A path for a fresh SQLite file, removed first.
pub fn sqlite_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oncesend-test-{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    path
}

/// A store on a fresh SQLite file.
pub async fn sqlite_store(name: &str, clock: SqlClock) -> SqlStore {
    let url = format!("sqlite://{}?mode=rwc", sqlite_path(name).display());
    let store = SqlStore::connect(
        &url,
        SqlOptions {
            clock,
            ..SqlOptions::default()
        },
    )
    .await
    .expect("open sqlite");
    store.migrate().await.expect("migrate");
    store
}

/// Empties every table, and starts runs' `seq` from 1 again, as the
/// reference store does when it is new.
pub async fn reset(store: &SqlStore) {
    for table in store.tables() {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(store.pool())
            .await
            .expect("empty a table");
    }
    let restart = match store.backend() {
        oncesend::store::sql::Backend::Postgres => "ALTER TABLE runs ALTER COLUMN seq RESTART",
        oncesend::store::sql::Backend::Sqlite => "DELETE FROM sqlite_sequence WHERE name = 'runs'",
    };
    sqlx::query(restart)
        .execute(store.pool())
        .await
        .expect("restart runs' seq");
}

/// A run of one text step, due at once, of the default tenant's flow `f`,
/// to `to`.
pub fn one_step_run(id: oncesend_core::RunId, to: &str) -> oncesend_core::NewRun {
    oncesend_core::NewRun {
        id,
        tenant: oncesend_core::TenantId::default_tenant(),
        flow: oncesend_core::FlowId::new("f").unwrap(),
        to: oncesend_core::Recipient::parse(to).unwrap(),
        steps: vec![oncesend_core::PlannedStep {
            message: oncesend_core::Message::text("hi"),
            delay_ms: 0,
            after: Default::default(),
            after_timeout_ms: None,
        }],
        trigger_key: None,
    }
}

/// Claims up to 10 runs as `owner` at `now_ms`, with a 30 s lease.
pub async fn claim(
    store: &impl oncesend::store::Store,
    owner: &str,
    now_ms: u64,
) -> Vec<oncesend_core::ClaimedRun> {
    let op = oncesend_core::StoreOp::Claim {
        owner: oncesend_core::WorkerId::new(owner).unwrap(),
        max: 10,
        lease_ms: 30_000,
        now_ms,
    };
    match store.apply(op).await.unwrap() {
        oncesend_core::StoreReply::Claimed(runs) => runs,
        other => panic!("a claim answered {other:?}"),
    }
}

/// Records a one-step run's only step sent under `epoch`: the store's answer.
pub async fn complete_one_step(
    store: &impl oncesend::store::Store,
    run: oncesend_core::RunId,
    epoch: u64,
    now_ms: u64,
) -> oncesend_core::StoreReply {
    let op = oncesend_core::StoreOp::Complete {
        run,
        epoch,
        step: 0,
        now_ms,
    };
    store.apply(op).await.unwrap()
}

/// A run as the store shows it.
pub async fn run_view(
    store: &impl oncesend::store::Store,
    run: oncesend_core::RunId,
) -> oncesend_core::store::RunView {
    match store
        .apply(oncesend_core::StoreOp::GetRun { run })
        .await
        .unwrap()
    {
        oncesend_core::StoreReply::Run(view) => view,
        other => panic!("GetRun answered {other:?}"),
    }
}

/// Sees `marker` in a statement of this database waiting on a lock, or
/// fails once `task` is done or 30 s have passed.
pub async fn wait_for_lock<T>(
    store: &oncesend::store::sql::SqlStore,
    marker: &str,
    task: &tokio::task::JoinHandle<T>,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND strpos(query, $1) > 0",
        )
        .bind(marker)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(!task.is_finished(), "'{marker}' did not wait");
        assert!(
            tokio::time::Instant::now() < deadline,
            "'{marker}' never reached its lock"
        );
        tokio::task::yield_now().await;
    }
}

/// Enqueues one-step runs (`one_step_run`) to `to`, in this order, in one
/// batch.
pub async fn enqueue_one_step_runs(
    store: &impl oncesend::store::Store,
    ids: &[oncesend_core::RunId],
    to: &str,
    now_ms: u64,
) {
    let ops = ids
        .iter()
        .map(|id| oncesend_core::StoreOp::Enqueue {
            run: one_step_run(*id, to),
            now_ms,
        })
        .collect();
    store.apply_batch(ops).await.expect("enqueue");
}
