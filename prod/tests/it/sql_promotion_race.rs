//! On PostgreSQL a finished head's promotion picks its conversation's next
//! unfinished run under read committed. If another transaction is just
//! cancelling that run, the promotion must wait for it and, once it has
//! committed, take the run after instead: otherwise the conversation's
//! head would be a cancelled run, and the runs behind it would never be
//! claimed. The two transactions are interleaved by hand here: the cancel
//! holds its row until the promotion is seen waiting for it.

use crate::support;

use oncesend::store::sql::SqlClock;
use oncesend::store::Store;
use oncesend_core::{RunId, RunStatus, StoreOp, StoreReply};

const TO: &str = "+5511933330000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_racing_a_cancel_of_the_next_run_takes_the_one_after() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "promotion_race", SqlClock::Caller, 3).await;
    let [a, b, c] = [RunId::new(1, 1), RunId::new(2, 2), RunId::new(3, 3)];
    support::enqueue_one_step_runs(&store, &[a, b, c], TO, 1).await;
    let held = support::claim(&store, "w", 2).await;
    assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);

    // Another transaction cancels B, the run behind A, and holds its row.
    let mut cancel = store.pool().begin().await.unwrap();
    sqlx::query(
        "UPDATE runs SET status = 'cancelled', finished_at_ms = 3, reason = 'cancelled by test' \
         WHERE id = $1",
    )
    .bind(b.0.as_bytes().to_vec())
    .execute(&mut *cancel)
    .await
    .unwrap();

    // A's holder completes it; the promotion reaches B and waits.
    let finishing = {
        let store = store.clone();
        tokio::spawn(async move { support::complete_one_step(&store, a, 1, 4).await })
    };
    support::wait_for_lock(&store, "oldest unfinished", &finishing).await;
    cancel.commit().await.unwrap();
    assert_eq!(finishing.await.unwrap(), StoreReply::Completed);

    // C heads the conversation, and is what the next claim takes.
    let next = support::claim(&store, "w", 5).await;
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [c]);
    let view = support::run_view(&store, b).await;
    assert_eq!(view.status, RunStatus::Cancelled);
}

/// An operator sends a failed run on again (its conversation has no other
/// unfinished run, as far as it can see) while an enqueue into the same
/// conversation has already made its new run the head but not committed.
/// The two must come out as one of them first: the enqueue first, so the
/// retry is refused, as it would be with that run unfinished. Before, the
/// retry's promotion found the head taken and did nothing: the failed run
/// was pending again behind a newer head, and once that head finished the
/// promotion, searching after it, never reached the older run. Here the
/// enqueue is held after its head insert by a trigger key another
/// transaction is inserting, until the retry is seen waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sent_on_again_while_an_enqueue_takes_the_empty_conversation_is_refused() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "reopen_race", SqlClock::Caller, 4).await;
    let (failed, new) = (RunId::new(1, 1), RunId::new(2, 2));
    support::enqueue_one_step_runs(&store, &[failed], TO, 1).await;
    let held = support::claim(&store, "w", 2).await;
    assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), [failed]);
    let fail = StoreOp::Fail {
        run: failed,
        epoch: 1,
        reason: "refused by the provider".into(),
        retry_after_ms: None,
        now_ms: 3,
    };
    assert_eq!(
        store.apply(fail).await.unwrap(),
        StoreReply::Failed { dead: true }
    );

    let mut key = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO trigger_keys (tenant, key, run_id) VALUES ($1, 'k', '\\x00')")
        .bind(oncesend_core::TenantId::default_tenant().as_str())
        .execute(&mut *key)
        .await
        .unwrap();
    let enqueue = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut run = support::one_step_run(new, TO);
            run.trigger_key = Some("k".into());
            store.apply(StoreOp::Enqueue { run, now_ms: 4 }).await
        })
    };
    support::wait_for_lock(&store, "INSERT INTO trigger_keys", &enqueue).await;
    let retry = {
        let store = store.clone();
        tokio::spawn(async move {
            let op = StoreOp::RetryRun {
                run: failed,
                by: "operator".into(),
                now_ms: 5,
            };
            store.apply(op).await
        })
    };
    support::wait_for_lock(&store, "oldest unfinished", &retry).await;
    key.rollback().await.unwrap();

    assert!(matches!(
        enqueue.await.unwrap().unwrap(),
        StoreReply::Enqueued { created: true, .. }
    ));
    let answer = retry.await.unwrap().unwrap();
    assert!(
        matches!(answer, StoreReply::Conflict { .. }),
        "the retry answered {answer:?}"
    );
    assert_eq!(
        support::run_view(&store, failed).await.status,
        RunStatus::Failed
    );
    let next = support::claim(&store, "w", 6).await;
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [new]);
}
