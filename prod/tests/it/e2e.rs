//! End to end through the real `oncesend up` process and a mock Cloud API
//! that throttles, refuses and drops: 300 runs of 3 steps over 100
//! recipients, every step delivered exactly once and in order, or reported
//! `unknown` where the mock dropped the reply; on memory, on a SQLite file
//! and on PostgreSQL.

use crate::common::*;
use std::time::Duration;

/// The whole scenario on the database `database_url` names.
async fn three_hundred_runs(database_url: String) {
    let mock = MockCloudApi::start(faults).await;
    let (_up, url) = start_up(
        &[
            FAST,
            &["--workers", "2", "--batch", "50", "--concurrency", "200"],
        ]
        .concat(),
        &[cloud_env(&mock), vec![("DATABASE_URL", database_url)]].concat(),
    )
    .await;
    let api = Api::new(&url, None);
    put_flow(&api).await;
    let accepted = trigger(&api, 300, 100).await;

    // The same Idempotency-Key again: 200, the same run, no second run.
    let (s, _, j) = api
        .raw(
            "POST",
            "/v1/flows/onboarding/runs",
            &[("idempotency-key", "trigger-7".into())],
            Some(br#"{"to":"+5511900010007","vars":{"name":"x","code":1}}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["run_id"].as_str().unwrap(), accepted[7].run.to_string());

    all_finished(&api, accepted.len(), Duration::from_secs(90)).await;
    let outcome = check_exactly_once(&api, &mock, &accepted).await;
    assert!(
        !outcome.dropped.is_empty(),
        "the test should drop some replies"
    );
    // Retryable refusals were retried, and never counted as deliveries.
    let calls = mock.calls();
    for fault in [Fault::Throttle, Fault::PairRate, Fault::ServerError] {
        assert!(
            calls.iter().any(|c| c.fault == fault),
            "no {fault:?} injected"
        );
    }
    let (s, _, _) = api.raw("GET", "/metrics", &[], None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_runs_are_delivered_exactly_once_in_order_through_up_in_memory() {
    three_hundred_runs("memory:".to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_runs_are_delivered_exactly_once_in_order_through_up_on_sqlite() {
    let db = TestDb::sqlite("e2e");
    three_hundred_runs(db.url()).await;
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_runs_are_delivered_exactly_once_in_order_through_up_on_postgres() {
    let Some(db) = TestDb::postgres("e2e").await else {
        return;
    };
    three_hundred_runs(db.url()).await;
    db.remove().await;
}
