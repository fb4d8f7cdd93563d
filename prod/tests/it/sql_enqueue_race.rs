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
