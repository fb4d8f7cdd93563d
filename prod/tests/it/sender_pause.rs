//! A sender that pauses instead of failing, end to end over HTTPS to the
//! Cloud API stand-in: the token expires mid-flow, the tenant pauses at the
//! first refusal with no run failed and only the requests already under way
//! refused, nothing more reaches the provider while it is paused, and a
//! resume delivers everything exactly once. Through `oncesend up` and
//! through an engine with two workers, on SQLite and PostgreSQL.

use crate::common::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const APP_SECRET: &str = "stand-in-app-secret";
const RUNS: u32 = 60;
const RECIPIENTS: u32 = 20;

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

/// What one pause window showed.
struct Figures {
    refused: usize,
    during_pause: usize,
    deliveries: usize,
}

async fn token_expires_mid_flow(split: bool, db: TestDb) -> Figures {
    // The token expires after the tenth request (so some messages went
    // out and most have not), until the test replaces it.
    let replaced = Arc::new(AtomicBool::new(false));
    let mock = {
        let replaced = replaced.clone();
        let requests = AtomicU32::new(0);
        MockCloudApi::start(move |_, _| {
            let n = requests.fetch_add(1, Ordering::SeqCst);
            if n >= 10 && !replaced.load(Ordering::SeqCst) {
                Fault::Error(190)
            } else {
                Fault::Accept
            }
        })
        .await
    };
    let env = [
        cloud_env(&mock),
        vec![
            ("DATABASE_URL", db.url()),
            ("ONCESEND_APP_SECRET", APP_SECRET.to_string()),
        ],
    ]
    .concat();
    let (procs, url) = if split {
        let (engine, url) = start_engine(ENGINE_FAST, &env).await;
        let a = start_worker(&url, &db.url(), "pause-a", &[]).await;
        let b = start_worker(&url, &db.url(), "pause-b", &[]).await;
        (vec![engine, a, b], url)
    } else {
        let (up, url) = start_up(FAST, &env).await;
        (vec![up], url)
    };
    mock.post_statuses_to(&url, APP_SECRET);
    let api = Api::new(&url, None);
    let (s, j) = api.get("/v1/tenants/default").await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");
    assert_eq!(j["provider"], "cloud-api");
    assert!(
        !j.to_string().contains(CLOUD_TOKEN),
        "the token is never shown: {j}"
    );

    put_flow(&api).await;
    let accepted = trigger(&api, RUNS, RECIPIENTS).await;
    eventually("the tenant to pause", Duration::from_secs(30), || async {
        !api.get("/v1/tenants/default").await.1["paused"].is_null()
    })
    .await;
    let paused = api.get("/v1/tenants/default").await.1["paused"].clone();
    assert_eq!(paused["code"], 190, "{paused}");
    let reason = paused["reason"].as_str().unwrap();
    assert!(reason.contains("Session has expired"), "{reason}");
    assert!(reason.contains("fbtrace_id"), "{reason}");
    assert!(paused["since_ms"].as_u64().unwrap() > 0);
    let (_, metrics) = api.text("/metrics").await;
    assert_eq!(
        metric(&metrics, "oncesend_tenant_paused{tenant=\"default\"}"),
        Some(1),
        "{metrics}"
    );

    // Sends begun before the pause was recorded may still be on their
    // way; each reaches the provider within the send timeout (1 s here)
    // or never. After that, a pause of two seconds: every worker polls
    // many times over, and nothing more reaches the provider.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls_at_pause = mock.calls().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_pause = mock.calls().len() - calls_at_pause;
    let refused = mock
        .calls()
        .iter()
        .filter(|c| c.fault == Fault::Error(190))
        .count();
    assert_eq!(count(&api, "failed").await, 0, "a pause fails no run");
    let (_, j) = api.get("/v1/runs?limit=1000").await;
    for r in j["runs"].as_array().unwrap() {
        assert!(r["reason"].is_null(), "{r}");
    }

    // The token is replaced; an operator resumes the sender.
    replaced.store(true, Ordering::SeqCst);
    let (s, _, j) = api
        .raw("POST", "/v1/tenants/default/resume", &[], None)
        .await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");
    all_finished(&api, RUNS as usize, Duration::from_secs(60)).await;
    let outcome = check_exactly_once(&api, &mock, &accepted).await;
    assert_eq!(count(&api, "completed").await, RUNS as usize);
    // The stand-in's status webhooks reached the ledger.
    eventually("read receipts", Duration::from_secs(30), || async {
        let (_, r) = api
            .get(&format!("/v1/runs/{}", accepted[RUNS as usize - 1].run))
            .await;
        r["steps"][2]["status"] == "read"
    })
    .await;
    let (_, metrics) = api.text("/metrics").await;
    assert_eq!(
        metric(&metrics, "oncesend_tenant_paused{tenant=\"default\"}"),
        Some(0)
    );
    drop(procs);
    db.remove().await;
    Figures {
        refused,
        during_pause,
        deliveries: outcome.deliveries.len(),
    }
}

async fn check(split: bool, db: TestDb) {
    let f = token_expires_mid_flow(split, db).await;
    // check_exactly_once held every delivery to the checker: no key
    // twice, in order, nothing lost.
    eprintln!(
        "pause: {RUNS} runs, {} deliveries, {} requests refused, {} requests while paused",
        f.deliveries, f.refused, f.during_pause
    );
    assert_eq!(
        f.during_pause, 0,
        "requests reached the provider while paused"
    );
    // Refused: the first, and those already under way when it came back
    // (at most one per conversation head, 20 here), never more.
    assert!(
        (1..=RECIPIENTS as usize).contains(&f.refused),
        "{} requests were refused: more than those under way when the first refusal came",
        f.refused
    );
    assert_eq!(f.deliveries, RUNS as usize * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_pauses_the_sender_and_a_resume_delivers_everything_once_through_up_on_sqlite(
) {
    check(false, TestDb::sqlite("pause-up")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_pauses_the_sender_and_a_resume_delivers_everything_once_through_up_on_postgres(
) {
    let Some(db) = TestDb::postgres("pause_up").await else {
        return;
    };
    check(false, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_pauses_the_sender_and_a_resume_delivers_everything_once_through_an_engine_and_two_workers_on_sqlite(
) {
    check(true, TestDb::sqlite("pause-split")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_pauses_the_sender_and_a_resume_delivers_everything_once_through_an_engine_and_two_workers_on_postgres(
) {
    let Some(db) = TestDb::postgres("pause_split").await else {
        return;
    };
    check(true, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pause_holds_every_send_until_resumed_and_new_settings_end_a_pause() {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let db = TestDb::sqlite("pause-by-hand");
    let (up, url) = start_up(
        FAST,
        &[
            cloud_env(&mock),
            vec![
                ("DATABASE_URL", db.url()),
                ("ONCESEND_APP_SECRET", APP_SECRET.to_string()),
            ],
        ]
        .concat(),
    )
    .await;
    let api = Api::new(&url, None);
    // Resuming an active tenant is fine and changes nothing.
    let (s, j) = api
        .json("POST", "/v1/tenants/default/resume", serde_json::json!({}))
        .await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");
    let (s, j) = api
        .json(
            "POST",
            "/v1/tenants/default/pause",
            serde_json::json!({"reason": "campaign on hold"}),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        j["paused"]["reason"],
        "paused by an operator: campaign on hold"
    );
    assert!(j["paused"]["code"].is_null(), "{j}");
    assert!(
        j["paused"]["probe_at_ms"].is_null(),
        "a pause by hand never probes: {j}"
    );
    // Pausing again keeps the first pause.
    let (_, again) = api
        .json("POST", "/v1/tenants/default/pause", serde_json::json!({}))
        .await;
    assert_eq!(again["paused"], j["paused"]);

    put_flow(&api).await;
    let accepted = trigger(&api, 10, 5).await;
    // The worker polls every 20 ms: a second is fifty chances to send.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        mock.calls().is_empty(),
        "sent while paused: {:?}",
        mock.calls()
    );
    assert_eq!(count(&api, "completed").await, 0);
    let (s, j) = api
        .json("POST", "/v1/tenants/default/resume", serde_json::json!({}))
        .await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");
    all_finished(&api, 10, Duration::from_secs(30)).await;
    check_exactly_once(&api, &mock, &accepted).await;

    // A `failed` status with a sender-level code (the account's payment
    // failed after the send) pauses the tenant as a send's answer would;
    // the step stays sent and nothing is resent.
    let (code, title, details) = documented_error(131042);
    assert_eq!(code, 400);
    let failed = serde_json::json!({"id": "wamid.1", "status": "failed", "timestamp": "1764756000",
        "recipient_id": "5511900010000", "biz_opaque_callback_data": format!("{}:0", accepted[0].run),
        "errors": [{"code": 131042, "title": title, "message": title, "error_data": {"details": details}}]});
    let (s, _, j) = post_status(&api, APP_SECRET, failed).await;
    assert_eq!(s, 200, "{j}");
    let (_, j) = api.get("/v1/tenants/default").await;
    assert_eq!(j["paused"]["code"], 131042, "{j}");
    assert!(
        j["paused"]["reason"]
            .as_str()
            .unwrap()
            .contains("payment method"),
        "{j}"
    );
    let calls = mock.calls().len();
    let (_, r) = api.get(&format!("/v1/runs/{}", accepted[0].run)).await;
    assert_eq!(r["status"], "completed", "{r}");
    let (s, j) = api
        .json("POST", "/v1/tenants/default/resume", serde_json::json!({}))
        .await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");
    assert_eq!(mock.calls().len(), calls, "nothing was resent");

    // A stored tenant: paused by hand, then new settings end the pause.
    let settings = serde_json::json!({"provider": "cloud-api", "cloud_api": {
        "base_url": mock.url(), "version": VERSION, "phone_number_id": PHONE_NUMBER_ID, "token": CLOUD_TOKEN}});
    let (s, j) = api.json("PUT", "/v1/tenants/acme", settings.clone()).await;
    assert_eq!(s, 201, "{j}");
    let (s, j) = api
        .json("POST", "/v1/tenants/acme/pause", serde_json::json!({}))
        .await;
    assert_eq!(
        (s, j["paused"]["reason"].as_str()),
        (200, Some("paused by an operator"))
    );
    let (s, j) = api.json("PUT", "/v1/tenants/acme", settings).await;
    assert_eq!(s, 200, "{j}");
    let (_, j) = api.get("/v1/tenants/acme").await;
    assert_eq!(j["paused"], serde_json::Value::Null, "{j}");
    assert_eq!(j["provider"], "cloud-api");
    assert!(!j.to_string().contains(CLOUD_TOKEN), "{j}");
    drop(up);
    db.remove().await;
}
