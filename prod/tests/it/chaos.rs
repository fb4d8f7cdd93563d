//! Every flow finishes under chaos, as real processes on one database: an
//! `oncesend-engine` and two `oncesend-worker`s against a Cloud API
//! stand-in that loses 5% of its replies after taking the message (and
//! still sends its status webhooks, retrying while the engine is down).
//! Both workers are SIGKILLed and restarted, the engine once. Every run
//! ends `completed`, nothing reaches the provider twice, every step in
//! order: a step whose reply was lost waits for its status, and one whose
//! send died with the engine before it reached the provider is resolved
//! by an operator who checked the provider's record.

use crate::common::*;
use oncesend_core::DeliveryKey;
use std::collections::BTreeSet;
use std::time::Duration;

const SECRET: &str = "chaos-app-secret";
/// Small claims, so every worker gets some; statuses come within seconds,
/// however long the engine is down, so runs may wait a minute for them.
const SMALL: &[&str] = &[
    "--batch",
    "4",
    "--concurrency",
    "8",
    "--unknown-timeout-ms",
    "60000",
];

/// 5% of keys: the message is taken and the reply lost. 3%: a 500 on the
/// first try.
fn chaos(key: &DeliveryKey, attempt: u32) -> Fault {
    let bucket = {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.to_string().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h % 100
    };
    match (bucket, attempt) {
        (0..=4, 1) => Fault::Drop,
        (5..=7, 1) => Fault::ServerError,
        _ => Fault::Accept,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn engine(listen: &str, db_url: &str, mock: &MockCloudApi) -> Proc {
    let (p, _) = start_engine(
        &[ENGINE_FAST, &["--listen", listen]].concat(),
        &[
            cloud_env(mock),
            vec![
                ("DATABASE_URL", db_url.to_string()),
                ("ONCESEND_APP_SECRET", SECRET.to_string()),
            ],
        ]
        .concat(),
    )
    .await;
    p
}

/// The operator: a run waiting for the provider's word on a step the
/// provider never took (its send died with the engine, before the call or
/// after a refusal) will hear nothing; checked against the provider's
/// record of messages taken, it is resolved as not sent, so it goes
/// again. Answers how many it resolved.
async fn resolve_what_never_left(api: &Api, mock: &MockCloudApi) -> usize {
    let (s, j) = api.get("/v1/runs?status=waiting&limit=1000").await;
    assert_eq!(s, 200, "{j}");
    let taken: BTreeSet<DeliveryKey> = mock.deliveries().iter().map(|c| c.key).collect();
    let mut resolved = 0;
    for r in j["runs"].as_array().unwrap() {
        if r["waiting_for"] != "outcome" {
            continue;
        }
        let key = DeliveryKey {
            run: r["run_id"].as_str().unwrap().parse().unwrap(),
            step: r["cursor"].as_u64().unwrap() as u32,
        };
        if taken.contains(&key) {
            continue;
        }
        let (s, v) = api
            .json(
                "POST",
                &format!("/v1/runs/{}/steps/{}/resolve", key.run, key.step),
                serde_json::json!({"as": "failed", "by": "chaos-operator"}),
            )
            .await;
        assert!(s == 200 || s == 409, "{s} {v}");
        if s == 200 {
            let step = &v["steps"][key.step as usize];
            assert_eq!(step["resolved_by"], "chaos-operator", "{v}");
            resolved += 1;
        }
    }
    resolved
}

async fn chaos_run(db: TestDb) {
    let db_url = db.url();
    let mock = MockCloudApi::start(chaos).await;
    mock.set_latency(Duration::from_millis(60));
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let mut eng = engine(&listen, &db_url, &mock).await;
    mock.post_statuses_to(&url, SECRET);
    let api = Api::new(&url, None);
    put_flow(&api).await;
    let mut a = start_worker(&url, &db_url, "worker-a", SMALL).await;
    let mut b = start_worker(&url, &db_url, "worker-b", SMALL).await;
    let accepted = trigger(&api, 120, 40).await;

    // Kill each worker once it holds runs, and the engine once, each
    // brought back as a supervisor would.
    let holds = |w: &Proc| !w.logs.with_message("claimed runs").is_empty();
    eventually("worker-a to claim", Duration::from_secs(30), || {
        let h = holds(&a);
        async move { h }
    })
    .await;
    a.signal("KILL");
    a.exit_within(Duration::from_secs(5)).await;
    eng.signal("KILL");
    eng.exit_within(Duration::from_secs(5)).await;
    a = start_worker(&url, &db_url, "worker-a", SMALL).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    eng = engine(&listen, &db_url, &mock).await;
    eventually("worker-b to claim", Duration::from_secs(30), || {
        let h = holds(&b);
        async move { h }
    })
    .await;
    b.signal("KILL");
    b.exit_within(Duration::from_secs(5)).await;
    b = start_worker(&url, &db_url, "worker-b", SMALL).await;

    let mut resolved = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        resolved += resolve_what_never_left(&api, &mock).await;
        let done = count(&api, "completed").await
            + count(&api, "failed").await
            + count(&api, "cancelled").await;
        if done == accepted.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {} runs finished; waiting: {}",
            accepted.len(),
            api.get("/v1/runs?status=waiting").await.1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Before the checker, the story of any run that did not complete.
    let (_, failed) = api.get("/v1/runs?status=failed").await;
    for r in failed["runs"].as_array().unwrap() {
        let (_, v) = api
            .get(&format!("/v1/runs/{}", r["run_id"].as_str().unwrap()))
            .await;
        let calls: Vec<String> = mock
            .calls()
            .iter()
            .filter(|c| c.key.run.to_string() == r["run_id"].as_str().unwrap())
            .map(|c| format!("{} {:?} {:?}", c.key, c.fault, c.message_id))
            .collect();
        eprintln!("failed run: {v}\n  stand-in calls: {calls:?}");
    }
    let outcome = check_exactly_once(&api, &mock, &accepted).await;
    assert_eq!(
        outcome.finals.len(),
        accepted.len(),
        "every run is accounted for"
    );
    assert!(
        !outcome.dropped.is_empty(),
        "no reply was lost: the chaos proved nothing"
    );
    let (_, metrics) = api.text("/metrics").await;
    eprintln!(
        "chaos: {} deliveries, {} replies lost and settled by their status, {resolved} resolved by the operator, {} statuses taken\n{}",
        outcome.deliveries.len(),
        outcome.dropped.len(),
        mock.statuses_posted(),
        metrics
            .lines()
            .filter(|l| l.starts_with("oncesend_webhook") || l.starts_with("oncesend_runs_waiting"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop((a, b, eng));
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_completes_through_lost_replies_and_killed_processes_on_sqlite() {
    chaos_run(TestDb::sqlite("chaos")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_completes_through_lost_replies_and_killed_processes_on_postgres() {
    if let Some(db) = TestDb::postgres("chaos").await {
        chaos_run(db).await;
    }
}
