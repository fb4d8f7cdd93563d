//! A PostgreSQL database written under the schema before `heads`
//! (migrations 0001–0007: a head was a flag on its run, and the finished
//! runs an index of `runs`) upgrades in place on the next start: its
//! leased head keeps its holder, epoch and lease, a waiting head its wait,
//! a queued run its place, a finished run its place in the counts and in
//! pruning, and the store goes on from there.

use crate::support;

use oncesend::store::sql::SqlClock;
use oncesend::store::Store;
use oncesend_core::store::{FinishedCounts, RunWait};
use oncesend_core::{RunId, RunStatus, StoreOp, StoreReply};
use sqlx::Row;

#[tokio::test]
async fn a_database_from_before_heads_upgrades_with_its_leases_waits_and_queue() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "upgrade", SqlClock::Caller, 2).await;
    // Back to an empty schema, migrated only as far as 0007.
    sqlx::raw_sql("DROP SCHEMA upgrade CASCADE; CREATE SCHEMA upgrade")
        .execute(store.pool())
        .await
        .unwrap();
    let mut before = sqlx::migrate!("./migrations/postgres");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version <= 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(store.pool()).await.unwrap();

    // Conversation A: its head leased by a worker of the old release until
    // 5000, a second run queued behind it. Conversation B: its head waiting
    // for a step's outcome until 3000.
    let a1 = RunId::new(1, 1);
    let a2 = RunId::new(2, 2);
    let b1 = RunId::new(3, 3);
    let steps = serde_json::to_string(&support::one_step_run(a1, "+5511911110000").steps).unwrap();
    for (id, to, status, is_head, epoch, owner, until, wait, run_at) in [
        (
            a1,
            "+5511911110000",
            "leased",
            true,
            1i64,
            Some("old-worker"),
            Some(5_000i64),
            None,
            0i64,
        ),
        (
            a2,
            "+5511911110000",
            "pending",
            false,
            0,
            None,
            None,
            None,
            0,
        ),
        (
            b1,
            "+5511922220000",
            "waiting",
            true,
            2,
            None,
            None,
            Some("outcome"),
            3_000,
        ),
    ] {
        sqlx::query(
            "INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, next_step, \
             status, is_head, run_at_ms, attempts, epoch, lease_owner, lease_until_ms, wait, \
             created_at_ms) VALUES ($1, 'default', 'f', $2, $3, 1, 0, $4, $5, $6, 0, $7, $8, $9, \
             $10, 0)",
        )
        .bind(id.0.as_bytes().to_vec())
        .bind(to)
        .bind(&steps)
        .bind(status)
        .bind(is_head)
        .bind(run_at)
        .bind(epoch)
        .bind(owner)
        .bind(until)
        .bind(wait)
        .execute(store.pool())
        .await
        .unwrap();
    }

    // Conversation C: a run cancelled at 100.
    let c1 = RunId::new(4, 4);
    sqlx::query(
        "INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, next_step, \
         status, is_head, run_at_ms, attempts, epoch, reason, created_at_ms, finished_at_ms) \
         VALUES ($1, 'default', 'f', '+5511933330000', $2, 1, 0, 'cancelled', FALSE, 0, 0, \
         0, 'cancelled by an operator', 0, 100)",
    )
    .bind(c1.0.as_bytes().to_vec())
    .bind(&steps)
    .execute(store.pool())
    .await
    .unwrap();

    // B's step went out with no answer: its outcome is unknown.
    sqlx::query(
        "INSERT INTO deliveries (run_id, step, state, deadline_ms, epoch, attempts, owner) \
         VALUES ($1, 0, 'unknown', 2000, 2, 1, 'old-worker')",
    )
    .bind(b1.0.as_bytes().to_vec())
    .execute(store.pool())
    .await
    .unwrap();

    // The next start migrates.
    store.migrate().await.unwrap();
    match store.apply(StoreOp::Stats { now_ms: 4_000 }).await.unwrap() {
        StoreReply::Stats(stats) => assert_eq!(stats.unknown_deliveries, 1),
        other => panic!("Stats answered {other:?}"),
    }
    let counts = |completed, cancelled| {
        StoreReply::FinishedCounts(FinishedCounts {
            completed,
            failed: 0,
            cancelled,
            limit: 10,
        })
    };
    let count_finished = StoreOp::CountFinished { limit: 10 };
    assert_eq!(
        store.apply(count_finished.clone()).await.unwrap(),
        counts(0, 1)
    );
    let heads = sqlx::query(
        "SELECT recipient, status, epoch, lease_owner, lease_until_ms, wait, run_at_ms \
         FROM heads ORDER BY recipient",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(heads.len(), 2, "one head per conversation");
    assert_eq!(heads[0].get::<String, _>("status"), "leased");
    assert_eq!(heads[0].get::<i64, _>("epoch"), 1);
    assert_eq!(
        heads[0].get::<Option<String>, _>("lease_owner").as_deref(),
        Some("old-worker")
    );
    assert_eq!(
        heads[0].get::<Option<i64>, _>("lease_until_ms"),
        Some(5_000)
    );
    assert_eq!(heads[1].get::<String, _>("status"), "waiting");
    assert_eq!(
        heads[1].get::<Option<String>, _>("wait").as_deref(),
        Some("outcome")
    );
    assert_eq!(heads[1].get::<i64, _>("run_at_ms"), 3_000);

    let a = support::run_view(&store, a1).await;
    assert_eq!((a.status, a.epoch), (RunStatus::Leased, 1));
    assert_eq!(
        a.lease.as_ref().map(|l| l.owner.as_str()),
        Some("old-worker")
    );
    assert_eq!(
        support::run_view(&store, a2).await.status,
        RunStatus::Pending
    );
    let b = support::run_view(&store, b1).await;
    assert_eq!(
        (b.status, b.wait),
        (RunStatus::Waiting, Some(RunWait::Outcome))
    );

    // At 4000 B's wait is over and A's lease is not: only B is claimed,
    // with the next epoch and what it waited for.
    let claimed = support::claim(&store, "new-worker", 4_000).await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(
        (claimed[0].id, claimed[0].epoch, claimed[0].waited),
        (b1, 3, Some(RunWait::Outcome))
    );
    // The old holder's write under its epoch still lands, and hands the
    // conversation on to the run queued behind it.
    let done = support::complete_one_step(&store, a1, 1, 4_500).await;
    assert_eq!(done, StoreReply::Completed);
    assert_eq!(
        support::run_view(&store, a1).await.status,
        RunStatus::Completed
    );
    let claimed = support::claim(&store, "new-worker", 4_600).await;
    assert_eq!(
        claimed.iter().map(|c| (c.id, c.epoch)).collect::<Vec<_>>(),
        [(a2, 1)]
    );
    assert_eq!(
        store.apply(count_finished.clone()).await.unwrap(),
        counts(1, 1)
    );
    // Pruning at 5000 with a second's retention takes the run that
    // finished before the upgrade, and only it.
    let pruned = store
        .apply(StoreOp::Prune {
            retention_ms: 1_000,
            max: 10,
            now_ms: 5_000,
        })
        .await
        .unwrap();
    assert_eq!(pruned, StoreReply::Pruned { runs: 1 });
    assert_eq!(
        store.apply(StoreOp::GetRun { run: c1 }).await.unwrap(),
        StoreReply::NotFound
    );
    assert_eq!(store.apply(count_finished).await.unwrap(), counts(1, 0));
}
