//! Enqueues racing into the same new conversations on PostgreSQL, each
//! batch its own transaction on its own connection: every conversation
//! ends with one head, its oldest run, and no transaction had to be tried
//! again. Before enqueues took a lock per conversation, two of them that
//! both found a conversation without a head both made their run its head;
//! one failed on `runs_one_head` and its whole batch went again, and a
//! 10-minute soak under load gave up on a trigger after 12 such collisions.

use crate::support;

use oncesend::store::sql::SqlClock;
use oncesend::store::Store;
use oncesend_core::{FlowId, NewRun, PlannedStep, Recipient, RunId, StoreOp, StoreReply, TenantId};
use sqlx::Row;
use std::time::Duration;

const TASKS: u64 = 8;
const ROUNDS: u64 = 12;
const CONVERSATIONS_PER_ROUND: u64 = 40;

fn enqueue(task: u64, round: u64, c: u64) -> StoreOp {
    let conversation = round * CONVERSATIONS_PER_ROUND + c;
    StoreOp::Enqueue {
        run: NewRun {
            id: RunId::new(1_700_000_000_000 + round, task << 32 | conversation),
            tenant: TenantId::default_tenant(),
            flow: FlowId::new("race").unwrap(),
            to: Recipient::parse(&format!("+55119{conversation:08}")).unwrap(),
            steps: vec![PlannedStep {
                message: oncesend_core::Message::text("hi"),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            }],
            trigger_key: None,
        },
        now_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_racing_into_new_conversations_never_collide_on_the_head() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "enqueue_race", SqlClock::Caller, TASKS as u32).await;
    // Every task enqueues, round after round, one run into each of the same
    // fresh conversations, so in every round all of them race to make the
    // first run of each conversation its head.
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for round in 0..ROUNDS {
                let ops = (0..CONVERSATIONS_PER_ROUND)
                    .map(|c| enqueue(task, round, c))
                    .collect();
                let replies = store.apply_batch(ops).await.expect("enqueue");
                assert!(replies
                    .iter()
                    .all(|r| matches!(r, StoreReply::Enqueued { created: true, .. })));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("an enqueuer panicked");
    }
    assert_eq!(
        store.retries(),
        0,
        "enqueues into the same conversations collided and were tried again"
    );
    let rows = sqlx::query(
        "SELECT recipient, count(*) AS runs, count(*) FILTER (WHERE is_head) AS heads, \
                bool_and(is_head = (seq = first)) AS oldest_is_head \
         FROM (SELECT recipient, seq, is_head, min(seq) OVER (PARTITION BY recipient) AS first \
               FROM runs_now) r GROUP BY recipient",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len() as u64, ROUNDS * CONVERSATIONS_PER_ROUND);
    for row in rows {
        let recipient: String = row.get("recipient");
        assert_eq!(row.get::<i64, _>("runs") as u64, TASKS, "{recipient}");
        assert_eq!(row.get::<i64, _>("heads"), 1, "{recipient}");
        assert!(
            row.get::<bool, _>("oldest_is_head"),
            "{recipient}: a later run is the head"
        );
    }
}

const LOAD_RUNS_LOCKED: &str =
    include_str!("../../src/store/sql/statements/postgres/load_runs_locked.sql");

/// A holder's write-back locks runs, each with its `heads` row, in run id
/// order; an enqueue locks the heads of its conversations `FOR SHARE`. If
/// the enqueue took them in any other order, the two could each hold a
/// head the other waits for. Here conversation A sorts first by recipient
/// and B's head has the smaller run id: the write-back holds B's head, the
/// enqueue into A and B is seen waiting, then the write-back goes on to
/// A's. Taking the heads by recipient, the enqueue held A by then, and one
/// of the two was killed as a deadlock (under load a soak's enqueue lost
/// twelve times in a row and gave up). By run id, it holds nothing yet and
/// both finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_locks_heads_in_the_order_write_backs_do() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "enqueue_lock_order", SqlClock::Caller, 3).await;
    let (a_to, b_to) = ("+5511933331001", "+5511933331002");
    let (a_head, b_head) = (RunId::new(2, 2), RunId::new(1, 1));
    let first = vec![
        StoreOp::Enqueue {
            run: support::one_step_run(a_head, a_to),
            now_ms: 1,
        },
        StoreOp::Enqueue {
            run: support::one_step_run(b_head, b_to),
            now_ms: 1,
        },
    ];
    store.apply_batch(first).await.unwrap();

    let hex = |id: RunId| format!("[\"{}\"]", hex::encode(id.0.as_bytes()));
    let mut write_back = store.pool().begin().await.unwrap();
    let held = sqlx::query(LOAD_RUNS_LOCKED)
        .bind(hex(b_head))
        .fetch_all(&mut *write_back)
        .await
        .unwrap();
    assert!(held[0].get::<bool, _>("is_head"), "B's run heads B");

    let enqueue = {
        let store = store.clone();
        tokio::spawn(async move {
            let ops = vec![
                StoreOp::Enqueue {
                    run: support::one_step_run(RunId::new(3, 3), a_to),
                    now_ms: 2,
                },
                StoreOp::Enqueue {
                    run: support::one_step_run(RunId::new(4, 4), b_to),
                    now_ms: 2,
                },
            ];
            store.apply_batch(ops).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%heads of the conversations an enqueue%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !enqueue.is_finished(),
            "the enqueue did not wait for B's head"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the enqueue never reached the heads' locks"
        );
        tokio::task::yield_now().await;
    }

    let second = sqlx::query(LOAD_RUNS_LOCKED)
        .bind(hex(a_head))
        .fetch_all(&mut *write_back)
        .await
        .expect("the write-back locks A's run and head after B's");
    assert!(second[0].get::<bool, _>("is_head"), "A's run heads A");
    write_back.commit().await.unwrap();

    let replies = enqueue.await.unwrap().expect("the enqueue commits");
    assert!(replies
        .iter()
        .all(|r| matches!(r, StoreReply::Enqueued { created: true, .. })));
    assert_eq!(store.retries(), 0, "the enqueue was killed and tried again");
}
