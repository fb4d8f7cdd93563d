//! PostgreSQL wake-ups: an enqueue in one process notifies the workers
//! listening in another, so they claim at once instead of at their next
//! poll.

use crate::support;

use oncesend::store::sql::{SqlClock, SqlOptions, SqlStore};
use oncesend::store::Store;
use oncesend_core::{RunId, StoreOp};
use std::time::Duration;

#[tokio::test]
async fn an_enqueue_wakes_a_listening_store() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let writer = support::pg_store(&url, "notify", SqlClock::Caller, 1).await;
    let listening = SqlStore::connect(
        &url,
        SqlOptions {
            clock: SqlClock::Caller,
            schema: Some("notify".into()),
            listen: true,
            ..SqlOptions::default()
        },
    )
    .await
    .unwrap();
    let wake = listening.wakeups();
    // The listener connects in the background: enqueue (each run a new
    // conversation, so each notifies) until one notification arrives.
    let mut woken = false;
    for i in 0..50u64 {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let run = support::one_step_run(RunId::new(1_000 + i, i), &format!("+55119133{i:05}"));
        writer
            .apply(StoreOp::Enqueue { run, now_ms: 1 })
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(200), notified)
            .await
            .is_ok()
        {
            woken = true;
            break;
        }
    }
    assert!(woken, "no NOTIFY reached the listening store");
}
