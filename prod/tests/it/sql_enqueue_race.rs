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
    support::wait_for_lock(&store, "heads of the conversations an enqueue", &enqueue).await;

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

/// An enqueue waiting for a conversation's head that a write-back is
/// finishing: once the write-back commits, the head it locked is gone
/// (the statement skips it) and the conversation's next run heads it in a
/// new row the enqueue's statement does not see. The enqueue must not
/// make its own run the head then, nor fail on the conversation's key:
/// before, it did, its whole batch was tried again, and in an overloaded
/// minute (2,000 runs/s) one enqueue met this twelve times and gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_that_finds_its_head_just_finished_joins_the_next_one() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "enqueue_head_finished", SqlClock::Caller, 4).await;
    let to = "+5511933332001";
    let [head, next, new] = [RunId::new(1, 1), RunId::new(2, 2), RunId::new(3, 3)];
    support::enqueue_one_step_runs(&store, &[head, next], to, 1).await;
    let held = support::claim(&store, "w", 2).await;
    assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), [head]);

    // The head's row is held, so the write-back that finishes it queues
    // first and the enqueue behind it.
    let mut hold = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM heads WHERE recipient = $1 FOR UPDATE")
        .bind(to)
        .fetch_all(&mut *hold)
        .await
        .unwrap();
    let finishing = {
        let store = store.clone();
        tokio::spawn(async move { support::complete_one_step(&store, head, 1, 3).await })
    };
    support::wait_for_lock(&store, "Runs by id, locked in id order", &finishing).await;
    let enqueue = {
        let store = store.clone();
        tokio::spawn(async move {
            let op = StoreOp::Enqueue {
                run: support::one_step_run(new, to),
                now_ms: 4,
            };
            store.apply_batch(vec![op]).await
        })
    };
    support::wait_for_lock(&store, "heads of the conversations an enqueue", &enqueue).await;
    hold.commit().await.unwrap();

    assert_eq!(finishing.await.unwrap(), StoreReply::Completed);
    let replies = enqueue.await.unwrap().expect("the enqueue commits");
    assert!(matches!(
        replies[..],
        [StoreReply::Enqueued { created: true, .. }]
    ));
    assert_eq!(store.retries(), 0, "the enqueue was tried again");
    // The run behind the finished head is next, then the new one.
    let claimed = support::claim(&store, "w", 5).await;
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), [next]);
    assert_eq!(
        support::complete_one_step(&store, next, 1, 6).await,
        StoreReply::Completed
    );
    let claimed = support::claim(&store, "w", 7).await;
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), [new]);
}
