//! Several processors at once, as real processes on one database:
//! `oncesend up` (with its own worker inside) and two `oncesend-worker`s,
//! against a mock Cloud API. Every step still reaches the provider exactly
//! once and in order when the workers run side by side, when one is
//! SIGKILLed mid-run and restarted, and when one is told to stop with
//! SIGTERM while it holds runs. Also: the daemons wait for a database that
//! is down, and stop promptly while waiting.

use crate::common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tokio::time::Instant;

/// Lease of every processor here, in ms (`FAST` and `start_worker`).
const LEASE_MS: u64 = 3_000;
/// Claim a few runs at a time, so that every processor gets some.
const SMALL: &[&str] = &["--batch", "4", "--concurrency", "8"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    None,
    /// SIGKILL worker A once it holds runs, then start it again.
    Crash,
    /// SIGTERM worker B once it holds runs.
    Shutdown,
}

fn field(line: &serde_json::Value, name: &str) -> u64 {
    line.pointer(&format!("/fields/{name}"))
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Waits until `w` has logged a claim that left it holding runs.
async fn holds_runs(w: &Proc) {
    let logs = w.logs.clone();
    eventually("the worker to hold runs", Duration::from_secs(30), || {
        let holds = logs
            .with_message("claimed runs")
            .iter()
            .any(|l| field(l, "held") > 0);
        async move { holds }
    })
    .await;
}

/// SIGTERMs `w` and returns the totals of its last words.
async fn stop(mut w: Proc) -> serde_json::Value {
    w.signal("TERM");
    let status = w.exit_within(Duration::from_millis(LEASE_MS + 1_000)).await;
    assert_eq!(status.code(), Some(0), "{}", w.logs.dump());
    let logs = w.logs.clone();
    eventually("the worker's last line", Duration::from_secs(5), || {
        let done = !logs.with_message("worker stopped: nothing held").is_empty();
        async move { done }
    })
    .await;
    w.logs.with_message("worker stopped: nothing held")[0].clone()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn processors(db: TestDb, trouble: Trouble) {
    let db_url = db.url();
    let mock = MockCloudApi::start(faults).await;
    // Each provider call takes a while, so that runs are held for a while.
    mock.set_latency(Duration::from_millis(150));
    let (up, url) = start_up(
        &[FAST, SMALL, &["--workers", "1"]].concat(),
        &[cloud_env(&mock), vec![("DATABASE_URL", db_url.clone())]].concat(),
    )
    .await;
    let api = Api::new(&url, None);
    put_flow(&api).await;
    let mut a = start_worker(&url, &db_url, "worker-a", SMALL).await;
    let b = start_worker(&url, &db_url, "worker-b", SMALL).await;
    let accepted = trigger(&api, 120, 40).await;

    let mut a_claimed = 0;
    let mut b = Some(b);
    match trouble {
        Trouble::None => {}
        Trouble::Crash => {
            holds_runs(&a).await;
            a.signal("KILL");
            let status = a.exit_within(Duration::from_secs(5)).await;
            assert_eq!(status.signal(), Some(9));
            let claims = a.logs.with_message("claimed runs");
            a_claimed = claims.iter().map(|l| field(l, "claimed")).sum();
            // The same worker again, as a supervisor would restart it.
            a = start_worker(&url, &db_url, "worker-a", SMALL).await;
        }
        Trouble::Shutdown => {
            let mut w = b.take().unwrap();
            holds_runs(&w).await;
            let t0 = Instant::now();
            w.signal("TERM");
            let status = w.exit_within(Duration::from_millis(LEASE_MS + 2_000)).await;
            let took = t0.elapsed();
            assert_eq!(status.code(), Some(0), "{}", w.logs.dump());
            assert!(
                took < Duration::from_millis(LEASE_MS + 500),
                "exited {took:?} after SIGTERM; the lease is {LEASE_MS} ms"
            );
            let draining = w.logs.with_message("shutting down: no more claims");
            assert_eq!(draining.len(), 1, "{}", w.logs.dump());
            assert!(field(&draining[0], "held") > 0, "{}", draining[0]);
            let last = w.logs.with_message("worker stopped: nothing held");
            assert_eq!(last.len(), 1, "{}", w.logs.dump());
            assert!(field(&last[0], "claimed") > 0, "{}", last[0]);
            eprintln!(
                "worker-b held {} runs at SIGTERM and exited in {took:?}",
                field(&draining[0], "held")
            );
        }
    }

    // The others finish everything, worker B's runs included.
    all_finished(&api, accepted.len(), Duration::from_secs(45)).await;
    let outcome = check_exactly_once(&api, &mock, &accepted).await;
    assert_eq!(outcome.finals.len(), 120);

    // The external workers really worked: each claimed runs of its own.
    let (s, metrics) = api.text("/metrics").await;
    assert_eq!(s, 200);
    let up_rescued = metric(&metrics, "oncesend_lease_rescues_total");
    let a_last = stop(a).await;
    a_claimed += field(&a_last, "claimed");
    assert!(a_claimed > 0, "worker-a claimed nothing");
    let mut rescued = up_rescued + field(&a_last, "rescued");
    if let Some(b) = b {
        let b_last = stop(b).await;
        assert!(field(&b_last, "claimed") > 0, "worker-b claimed nothing");
        rescued += field(&b_last, "rescued");
    }
    if trouble == Trouble::Crash {
        // The killed worker's runs were taken over once its lease lapsed.
        assert!(rescued > 0, "nobody rescued the killed worker's runs");
    }
    eprintln!(
        "{trouble:?}: {} deliveries, {} dropped, {rescued} rescues",
        outcome.deliveries.len(),
        outcome.dropped.len()
    );
    drop(up);
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_and_two_workers_deliver_exactly_once_on_sqlite() {
    processors(TestDb::sqlite("procs-together"), Trouble::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_and_two_workers_deliver_exactly_once_on_postgres() {
    if let Some(db) = TestDb::postgres("procs_together").await {
        processors(db, Trouble::None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_and_doubles_nothing_on_sqlite() {
    processors(TestDb::sqlite("procs-crash"), Trouble::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_and_doubles_nothing_on_postgres() {
    if let Some(db) = TestDb::postgres("procs_crash").await {
        processors(db, Trouble::Crash).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_exits_0_within_a_lease_and_others_finish_on_sqlite() {
    processors(TestDb::sqlite("procs-term"), Trouble::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_exits_0_within_a_lease_and_others_finish_on_postgres() {
    if let Some(db) = TestDb::postgres("procs_term").await {
        processors(db, Trouble::Shutdown).await;
    }
}

/// A PostgreSQL URL nobody answers on.
const DOWN: &str = "postgres://postgres@127.0.0.1:1/oncesend";

/// The daemon keeps retrying with a clear line, and exits 0 promptly on
/// SIGTERM while it waits.
async fn waits_for_the_database(mut p: Proc) {
    let logs = p.logs.clone();
    // The first attempt ends at the pool's acquire timeout (5 s).
    eventually("a retry logged", Duration::from_secs(20), || {
        let n = logs.with_message("database unavailable; retrying").len();
        async move { n >= 1 }
    })
    .await;
    assert!(p.running(), "{}", p.logs.dump());
    let line = &p.logs.with_message("database unavailable; retrying")[0];
    assert_eq!(line["level"], "WARN", "{line}");
    let error = line.pointer("/fields/error").unwrap().as_str().unwrap();
    assert!(error.contains("127.0.0.1:1"), "{error}");
    let t0 = Instant::now();
    p.signal("TERM");
    let status = p.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", p.logs.dump());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_with_the_database_down_retries_and_stops_on_sigterm() {
    waits_for_the_database(spawn_daemon(
        "oncesend-worker",
        env!("CARGO_BIN_EXE_oncesend-worker"),
        &["--engine-url", "http://127.0.0.1:1"],
        &[("DATABASE_URL", DOWN.to_string())],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_with_the_database_down_retries_and_stops_on_sigterm() {
    waits_for_the_database(spawn_daemon(
        "oncesend-engine",
        env!("CARGO_BIN_EXE_oncesend-engine"),
        &["--listen", "127.0.0.1:0"],
        &[("DATABASE_URL", DOWN.to_string())],
    ))
    .await;
}
