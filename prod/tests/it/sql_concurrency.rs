//! Concurrent claimers on one database: 16 on PostgreSQL and 4 on SQLite,
//! each on its own connection, drain 10,000 runs of 3 steps over 500
//! conversations while some of them let leases lapse (a claimer that
//! "crashes" holding runs, or stalls past its lease). Everything asserted
//! comes from the database: the runs' rows, and a history table a trigger
//! fills with every change to a run.

use crate::support;

use oncesend::store::sql::{Backend, SqlClock, SqlOptions, SqlStore};
use oncesend::store::Store;
use oncesend_core::rng::SplitMix64;
use oncesend_core::{
    FlowId, NewRun, PlannedStep, Recipient, RunId, StoreOp, StoreReply, TenantId, WorkerId,
};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RUNS: u64 = 10_000;
const STEPS: u32 = 3;
const CONVERSATIONS: u64 = 500;
const LEASE_MS: u64 = 400;

async fn install_history(store: &SqlStore) {
    let sql = match store.backend() {
        // A head's claims change its `heads` row, not its run's, so both
        // tables are watched; the run's own row lags its epoch while it is
        // a head, and its changes are logged without an epoch change.
        Backend::Postgres => {
            "CREATE TABLE run_history ( \
                 id BIGSERIAL PRIMARY KEY, run_id BYTEA, tenant TEXT, recipient TEXT, \
                 old_status TEXT, new_status TEXT, old_step INT, new_step INT, \
                 old_epoch BIGINT, new_epoch BIGINT, old_until BIGINT, at_ms BIGINT); \
             CREATE OR REPLACE FUNCTION log_run_change() RETURNS trigger AS $$ BEGIN \
                 INSERT INTO run_history (run_id, tenant, recipient, old_status, new_status, \
                     old_step, new_step, old_epoch, new_epoch, old_until, at_ms) \
                 VALUES (OLD.id, OLD.tenant, OLD.recipient, OLD.status, NEW.status, \
                     OLD.next_step, NEW.next_step, NEW.epoch, NEW.epoch, OLD.lease_until_ms, \
                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)); \
                 RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER runs_history AFTER UPDATE ON runs \
                 FOR EACH ROW EXECUTE FUNCTION log_run_change(); \
             CREATE OR REPLACE FUNCTION log_head_change() RETURNS trigger AS $$ BEGIN \
                 INSERT INTO run_history (run_id, tenant, recipient, old_status, new_status, \
                     old_step, new_step, old_epoch, new_epoch, old_until, at_ms) \
                 SELECT r.id, OLD.tenant, OLD.recipient, OLD.status, NEW.status, \
                     r.next_step, r.next_step, OLD.epoch, NEW.epoch, OLD.lease_until_ms, \
                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) \
                 FROM runs r WHERE r.seq = OLD.seq; \
                 RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER heads_history AFTER UPDATE ON heads \
                 FOR EACH ROW EXECUTE FUNCTION log_head_change();"
        }
        Backend::Sqlite => {
            "CREATE TABLE run_history ( \
                 id INTEGER PRIMARY KEY AUTOINCREMENT, run_id BLOB, tenant TEXT, recipient TEXT, \
                 old_status TEXT, new_status TEXT, old_step INT, new_step INT, \
                 old_epoch INT, new_epoch INT, old_until INT, at_ms INT); \
             CREATE TRIGGER runs_history AFTER UPDATE ON runs BEGIN \
                 INSERT INTO run_history (run_id, tenant, recipient, old_status, new_status, \
                     old_step, new_step, old_epoch, new_epoch, old_until, at_ms) \
                 VALUES (OLD.id, OLD.tenant, OLD.recipient, OLD.status, NEW.status, \
                     OLD.next_step, NEW.next_step, OLD.epoch, NEW.epoch, OLD.lease_until_ms, \
                     CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)); \
             END;"
        }
    };
    sqlx::raw_sql(sql)
        .execute(store.pool())
        .await
        .expect("install the history trigger");
}

async fn enqueue_all(store: &SqlStore) {
    let tenant = TenantId::default_tenant();
    let ops: Vec<StoreOp> = (0..RUNS)
        .map(|i| StoreOp::Enqueue {
            run: NewRun {
                id: RunId::new(1_700_000_000_000 + i, i),
                tenant: tenant.clone(),
                flow: FlowId::new("load").unwrap(),
                to: Recipient::parse(&format!("+55119{:08}", i % CONVERSATIONS)).unwrap(),
                steps: (0..STEPS)
                    .map(|s| PlannedStep {
                        message: oncesend_core::Message::text(format!("step {s}")),
                        delay_ms: 0,
                        after: Default::default(),
                        after_timeout_ms: None,
                    })
                    .collect(),
                trigger_key: None,
            },
            now_ms: 0,
        })
        .collect();
    for chunk in ops.chunks(500) {
        let replies = store.apply_batch(chunk.to_vec()).await.expect("enqueue");
        assert!(replies
            .iter()
            .all(|r| matches!(r, StoreReply::Enqueued { created: true, .. })));
    }
}

/// One claimer: claims up to 10 runs, then sends every remaining step of
/// each as one batch. Now and then it abandons what it claimed (as if it
/// crashed) or stalls past its lease before writing.
async fn claimer(store: SqlStore, n: u64, done: Arc<AtomicBool>, fenced: Arc<AtomicU64>) {
    let owner = WorkerId::new(format!("claimer-{n}")).unwrap();
    let mut rng = SplitMix64::new(0x5EED ^ n);
    while !done.load(Ordering::Relaxed) {
        let claimed = match store
            .apply(StoreOp::Claim {
                owner: owner.clone(),
                max: 10,
                lease_ms: LEASE_MS,
                now_ms: 0,
            })
            .await
            .expect("claim")
        {
            StoreReply::Claimed(runs) => runs,
            other => panic!("claim answered {other:?}"),
        };
        if claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let roll = rng.next_u64() % 100;
        if roll < 2 {
            continue; // crashed: its leases lapse and others rescue the runs
        }
        if roll < 4 {
            tokio::time::sleep(Duration::from_millis(LEASE_MS + 100)).await;
        }
        let mut ops = Vec::new();
        for run in &claimed {
            let last = run.steps.len() as u32 - 1;
            for step in run.cursor..=last {
                ops.push(if step == last {
                    StoreOp::Complete {
                        run: run.id,
                        epoch: run.epoch,
                        step,
                        now_ms: 0,
                    }
                } else {
                    StoreOp::Advance {
                        run: run.id,
                        epoch: run.epoch,
                        step,
                        delay_ms: None,
                        now_ms: 0,
                    }
                });
            }
        }
        for reply in store.apply_batch(ops).await.expect("steps") {
            match reply {
                StoreReply::Advanced { .. } | StoreReply::Completed => {}
                StoreReply::Fenced => {
                    fenced.fetch_add(1, Ordering::Relaxed);
                }
                // A fenced advance leaves the next ops of that run facing a
                // cursor they do not expect, or a run already finished.
                StoreReply::Conflict { .. } => {}
                other => panic!("a holder's write answered {other:?}"),
            }
        }
    }
}

async fn drain(url: String, claimers: u64, schema: Option<&str>) {
    let store = match schema {
        Some(schema) => support::pg_store(&url, schema, SqlClock::Database, 4).await,
        None => {
            let store = SqlStore::connect(
                &url,
                SqlOptions {
                    clock: SqlClock::Database,
                    ..SqlOptions::default()
                },
            )
            .await
            .unwrap();
            store.migrate().await.unwrap();
            store
        }
    };
    install_history(&store).await;
    enqueue_all(&store).await;

    let done = Arc::new(AtomicBool::new(false));
    let fenced = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..claimers {
        // Each claimer on its own connection.
        let own = SqlStore::connect(
            &url,
            SqlOptions {
                clock: SqlClock::Database,
                max_connections: 1,
                schema: schema.map(str::to_string),
                ..SqlOptions::default()
            },
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(claimer(own, n, done.clone(), fenced.clone())));
    }
    // Watch for two leased runs in one conversation while they work, and
    // wait for every run to finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let doubled: i64 = sqlx::query(
            "SELECT COUNT(*) FROM (SELECT tenant, recipient FROM runs_now WHERE status = 'leased' \
             GROUP BY tenant, recipient HAVING COUNT(*) > 1) d",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
        assert_eq!(doubled, 0, "two leased runs in one conversation");
        let open: i64 = sqlx::query("SELECT COUNT(*) FROM runs WHERE status <> 'completed'")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} runs still open after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a claimer panicked");
    }

    // Every run completed, with its cursor past its last step.
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(CASE WHEN status = 'completed' AND next_step = step_count \
         AND NOT is_head AND lease_owner IS NULL THEN 1 END) FROM runs_now",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>(0), RUNS as i64);
    assert_eq!(row.get::<i64, _>(1), RUNS as i64, "every run completed");

    // The history, in the order the changes were made.
    let rows = sqlx::query(
        "SELECT run_id, tenant, recipient, old_status, new_status, old_step, new_step, \
         old_epoch, new_epoch, old_until, at_ms FROM run_history ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut advanced: BTreeMap<(Vec<u8>, i64), u32> = BTreeMap::new();
    let mut rescues = 0;
    // Per conversation: the run whose changes are being seen, and the runs
    // already seen to finish. Another run's change while one is open means
    // two runs of one conversation were in flight together.
    let mut current: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let mut finished: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
    for r in &rows {
        let run: Vec<u8> = r.get(0);
        let conv = (r.get::<String, _>(1), r.get::<String, _>(2));
        let (old_status, new_status): (String, String) = (r.get(3), r.get(4));
        let (old_step, new_step): (i64, i64) = (r.get(5), r.get(6));
        let (old_epoch, new_epoch): (i64, i64) = (r.get(7), r.get(8));
        let old_until: Option<i64> = r.get(9);
        let at_ms: i64 = r.get(10);
        if new_epoch != old_epoch {
            assert_eq!(new_epoch, old_epoch + 1, "a claim bumps the epoch by one");
            assert_eq!(new_status, "leased");
            if old_status == "leased" {
                // Never two live leases: a leased run is only claimed again
                // once its lease has lapsed.
                let until = old_until.expect("a leased run has a lease");
                assert!(
                    until <= at_ms,
                    "claimed while its lease ran to {until} (at {at_ms})"
                );
                rescues += 1;
            }
        }
        // One change may carry several steps (a holder's batch is written
        // as one row change); the steps it covers are old..new.
        assert!(new_step >= old_step, "the cursor never moves back");
        for step in old_step..new_step {
            *advanced.entry((run.clone(), step)).or_default() += 1;
        }
        if r.get::<String, _>(3) != "completed" {
            assert!(!finished.contains_key(&run), "a finished run changed again");
        }
        match current.get(&conv) {
            Some(open) if *open != run => panic!("two runs of one conversation in flight together"),
            _ => {}
        }
        if new_status == "completed" {
            current.remove(&conv);
            finished.insert(run, true);
        } else if new_status == "leased" {
            current.insert(conv, run);
        }
    }
    // Every step advanced exactly once.
    assert_eq!(advanced.len() as u64, RUNS * STEPS as u64);
    assert!(
        advanced.values().all(|&n| n == 1),
        "a step advanced more than once"
    );
    assert_eq!(finished.len() as u64, RUNS);
    eprintln!(
        "{claimers} claimers: {} changes, {rescues} rescues, {} fenced writes",
        rows.len(),
        fenced.load(Ordering::Relaxed)
    );
    assert!(rescues > 0, "the lapsed leases were rescued");
    assert!(
        fenced.load(Ordering::Relaxed) > 0,
        "stalled holders were fenced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_postgres_claimers_deliver_every_step_once() {
    let Some(url) = support::pg_url() else {
        return;
    };
    drain(url, 16, Some("concurrency")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sqlite_claimers_deliver_every_step_once() {
    let path = support::sqlite_path("concurrency");
    drain(format!("sqlite://{}?mode=rwc", path.display()), 4, None).await;
}
