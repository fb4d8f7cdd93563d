//! What an operator and the provider's status webhook do to runs, through
//! `oncesend up` over HTTPS to the Cloud API stand-in, with statuses
//! posted by hand: a step whose reply was lost waits (its own status,
//! shown by the API) until a status in a batched webhook moves it on; with
//! no status its wait runs out and the run fails saying so; an operator
//! resolves the step and the run goes on; a failed run is retried, alone
//! or in bulk, from its failed step.

use crate::common::*;
use oncesend_core::DeliveryKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "operators-app-secret";

/// The stand-in's answers, set per key by the test: accept by default.
type Plan = Arc<Mutex<Vec<(DeliveryKey, Fault)>>>;

/// Runs the `oncesend` CLI against the engine at `url`; answers its exit
/// success and what it printed.
async fn cli(url: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oncesend"))
        .args(args)
        .env("ONCESEND_ENGINE_URL", url)
        .env_remove("ONCESEND_TOKEN")
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn setup(db: &TestDb) -> (Proc, Api, MockCloudApi, Plan, String) {
    let plan: Plan = Arc::default();
    let mock = {
        let plan = plan.clone();
        MockCloudApi::start(move |key, attempt| {
            let p = plan.lock().unwrap();
            match p.iter().find(|(k, _)| k == key) {
                Some((_, f)) if attempt == 1 => *f,
                _ => Fault::Accept,
            }
        })
        .await
    };
    let (up, url) = start_up(
        FAST,
        &[
            cloud_env(&mock),
            vec![
                ("DATABASE_URL", db.url()),
                ("ONCESEND_APP_SECRET", SECRET.to_string()),
            ],
        ]
        .concat(),
    )
    .await;
    let api = Api::new(&url, None);
    let (s, j) = api
        .json(
            "PUT",
            "/v1/flows/two",
            serde_json::json!({"steps": [
                {"text": "Hi {{name}}", "delay_ms": 0},
                {"text": "Bye {{name}}", "delay_ms": 0},
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    (up, api, mock, plan, url)
}

/// Triggers one run of `two`, with step 0 answered by `first` and step 1
/// by `second`; the run id comes first so the plan can name its keys.
async fn run_with(api: &Api, plan: &Plan, to: &str, first: Fault, second: Fault) -> String {
    // The run's id is only known once it is triggered, so the plan is
    // set before the first step can be claimed: delayed by one second.
    let (s, j) = api
        .json(
            "PUT",
            "/v1/flows/later",
            serde_json::json!({"steps": [
                {"text": "Hi {{name}}", "delay_ms": 1000},
                {"text": "Bye {{name}}", "delay_ms": 0},
            ]}),
        )
        .await;
    assert!(s == 200 || s == 201, "{j}");
    let (s, j) = api
        .json(
            "POST",
            "/v1/flows/later/runs",
            serde_json::json!({"to": to, "vars": {"name": "Ana"}}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let id = j["run_id"].as_str().unwrap().to_string();
    let run = id.parse().unwrap();
    plan.lock().unwrap().extend([
        (DeliveryKey { run, step: 0 }, first),
        (DeliveryKey { run, step: 1 }, second),
    ]);
    id
}

async fn run_until(
    api: &Api,
    id: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = api.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(s, 200, "{v}");
        if ok(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run never {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(key: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("wamid.from-status-{status}"),
        "status": status,
        "timestamp": "1764756000",
        "recipient_id": "5511913390707",
        "biz_opaque_callback_data": key,
    })
}

/// One webhook POST carrying several statuses, as Meta batches them.
async fn post_batch(api: &Api, statuses: Vec<serde_json::Value>) -> serde_json::Value {
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [
            {"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
                "statuses": statuses,
            }},
            // Not ours to act on: counted, ignored, answered 200.
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
        ]}],
    });
    let body = serde_json::to_vec(&body).unwrap();
    let signature = oncesend::api::webhook::sign(SECRET, &body);
    let (s, _, j) = api
        .raw(
            "POST",
            "/v1/providers/cloud-api/webhook",
            &[("x-hub-signature-256", signature)],
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    j
}

async fn unknown_waits_for_its_status(db: TestDb) {
    let (up, api, mock, plan, _) = setup(&db).await;
    let id = run_with(&api, &plan, "+5511913390707", Fault::Drop, Fault::Accept).await;
    let v = run_until(&api, &id, "waited", |v| v["status"] == "waiting").await;
    assert_eq!(v["waiting_for"], "outcome", "{v}");
    assert_eq!(v["steps"][0]["status"], "unknown", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("delivery unknown"),
        "{v}"
    );
    // The list shows it by its status.
    let (_, list) = api.get("/v1/runs?status=waiting").await;
    assert_eq!(list["runs"][0]["run_id"], id.as_str(), "{list}");
    // Nothing more goes while it waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.calls().len(), 1);

    // One POST: a `delivered` for our key, out of order before `sent`,
    // a status for a key we never sent, and one we do not track.
    let key0 = format!("{id}:0");
    let answer = post_batch(
        &api,
        vec![
            status_of(&key0, "delivered"),
            status_of(&key0, "sent"),
            status_of("019b76da-acf6-71f8-ba11-f9f541f93101:0", "read"),
            status_of(&key0, "deleted"),
        ],
    )
    .await;
    assert_eq!(answer["applied"], 1, "{answer}");
    assert_eq!(answer["ignored"], 3, "{answer}");
    let v = run_until(&api, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(v["steps"][0]["status"], "delivered", "{v}");
    assert_eq!(
        v["steps"][0]["provider_message_id"], "wamid.from-status-delivered",
        "{v}"
    );
    let keys: Vec<String> = mock.calls().iter().map(|c| c.key.to_string()).collect();
    assert_eq!(keys, [key0, format!("{id}:1")], "each step once, in order");
    drop(up);
    db.remove().await;
}

async fn operators_resolve_and_retry(db: TestDb) {
    let (up, api, mock, plan, url) = setup(&db).await;
    // No status ever names this lost reply: the run fails when its wait
    // (FAST: 1.5 s) runs out, and says what to do.
    let id = run_with(&api, &plan, "+5511913390001", Fault::Drop, Fault::Accept).await;
    let v = run_until(&api, &id, "failed", |v| v["status"] == "failed").await;
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("unknown timeout"), "{v}");
    assert!(
        reason.contains(&format!("/v1/runs/{id}/steps/0/resolve")),
        "{v}"
    );
    // Retrying is refused while the step's outcome is unknown.
    let (s, j) = api
        .json(
            "POST",
            &format!("/v1/runs/{id}/retry"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, 409, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("resolve"), "{j}");
    // A resolution must say sent or failed.
    let resolve = format!("/v1/runs/{id}/steps/0/resolve");
    let (s, j) = api
        .json("POST", &resolve, serde_json::json!({"as": "maybe"}))
        .await;
    assert_eq!(s, 422, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("\"sent\""), "{j}");
    // The operator finds it with the CLI, checks: the recipient got it.
    // The run goes on.
    let (ok, listed) = cli(&url, &["runs", "--status", "failed", "--flow", "later"]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(&id), "{listed}");
    let (ok, out) = cli(&url, &["run", "resolve", &id, "0", "--as", "sent"]).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["steps"][0]["resolved_by"], "operator", "{v}");
    assert!(v["steps"][0]["resolved_at_ms"].as_u64().is_some(), "{v}");
    run_until(&api, &id, "completed", |v| v["status"] == "completed").await;
    // Twice is refused: the step is no longer unknown.
    let (s, j) = api
        .json("POST", &resolve, serde_json::json!({"as": "failed"}))
        .await;
    assert_eq!(s, 409, "{j}");
    let (s, j) = api
        .json(
            "POST",
            &format!("/v1/runs/{id}/steps/9/resolve"),
            serde_json::json!({"as": "sent"}),
        )
        .await;
    assert_eq!(s, 404, "{j}");

    // Step 1 refused for good (not on WhatsApp): the run fails there.
    let other = run_with(
        &api,
        &plan,
        "+5511913390002",
        Fault::Accept,
        Fault::Error(131026),
    )
    .await;
    run_until(&api, &other, "failed", |v| v["status"] == "failed").await;
    // Bulk actions need a filter.
    let (s, j) = api
        .json("POST", "/v1/runs/retry", serde_json::json!({}))
        .await;
    assert_eq!(s, 422, "{j}");
    // Retry every failed run of the flow whose reason names the code: it
    // goes on from step 1, not from the start.
    let (ok, out) = cli(
        &url,
        &[
            "runs",
            "retry",
            "--flow",
            "later",
            "--reason",
            "131026",
            "--by",
            "ops@example.com",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["retried"], 1, "{j}");
    let v = run_until(&api, &other, "completed", |v| v["status"] == "completed").await;
    assert_eq!(v["steps"][1]["resolved_by"], "ops@example.com", "{v}");
    let sent: Vec<String> = mock
        .calls()
        .iter()
        .filter(|c| c.key.run.to_string() == other)
        .map(|c| c.key.to_string())
        .collect();
    assert_eq!(
        sent,
        [
            format!("{other}:0"),
            format!("{other}:1"),
            format!("{other}:1")
        ],
        "step 0 once; step 1 refused, then sent again on the operator's word"
    );

    // Bulk cancel: the waiting and pending runs of one flow, counted.
    let a = run_with(&api, &plan, "+5511913390003", Fault::Drop, Fault::Accept).await;
    run_until(&api, &a, "waited", |v| v["status"] == "waiting").await;
    let (ok, out) = cli(
        &url,
        &["runs", "cancel", "--flow", "later", "--status", "waiting"],
    )
    .await;
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["cancelled"], 1, "{j}");
    // An action the store refuses fails the CLI with the reason.
    let (ok, out) = cli(&url, &["run", "retry", &a]).await;
    assert!(!ok && out.contains("only a failed run"), "{out}");
    let (_, v) = api.get(&format!("/v1/runs/{a}")).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    drop(up);
    db.remove().await;
}

/// One webhook POST carrying an inbound text from `from` (digits).
async fn post_inbound(api: &Api, from: &str, text: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": from}],
            "messages": [
                {"from": from, "id": "wamid.in1", "timestamp": "1764756000", "type": "text", "text": {"body": text}},
                // A reaction: it opens the window too, and is no keyword.
                {"from": from, "id": "wamid.in2", "timestamp": "1764756001", "type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "👍"}},
            ],
        }}]}],
    });
    let body = serde_json::to_vec(&body).unwrap();
    let signature = oncesend::api::webhook::sign(SECRET, &body);
    let (s, _, j) = api
        .raw(
            "POST",
            "/v1/providers/cloud-api/webhook",
            &[("x-hub-signature-256", signature)],
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    j
}

async fn opt_out_and_back_in(db: TestDb) {
    let (up, api, mock, plan, _) = setup(&db).await;
    let to = "+5511913390009";
    // A run whose first step is a second away.
    let id = run_with(&api, &plan, to, Fault::Accept, Fault::Accept).await;
    // The recipient writes " Stop " (any case, spaces around).
    post_inbound(&api, "5511913390009", " Stop ").await;
    let (_, v) = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["reason"], "recipient opted out", "{v}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        mock.calls().iter().all(|c| c.to != to),
        "nothing is sent after the opt-out"
    );
    // A trigger to them is refused, saying how to lift it.
    let trigger = serde_json::json!({"to": to, "vars": {"name": "Ana"}});
    let (s, j) = api
        .json("POST", "/v1/flows/two/runs", trigger.clone())
        .await;
    assert_eq!(s, 409, "{j}");
    let detail = j["detail"].as_str().unwrap();
    assert!(detail.contains(to), "{j}");
    assert!(
        detail.contains(&format!("DELETE /v1/tenants/default/suppressions/{to}")),
        "{j}"
    );
    let (s, j) = api
        .get(&format!("/v1/tenants/default/suppressions/{to}"))
        .await;
    assert_eq!(s, 200, "{j}");
    assert!(j["reason"].as_str().unwrap().contains("Stop"), "{j}");
    let (_, list) = api.get("/v1/tenants/default/suppressions?limit=10").await;
    assert_eq!(list["suppressions"][0]["to"], to, "{list}");
    let (s, r) = api
        .get(&format!("/v1/tenants/default/recipients/{to}"))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["customer_service_window_open"], true, "{r}");
    assert!(r["last_inbound_ms"].as_u64().is_some(), "{r}");
    assert!(r["suppressed"].is_object(), "{r}");
    // A stranger's window is closed; a number that is no number is refused.
    let (_, r) = api
        .get("/v1/tenants/default/recipients/+5511913390010")
        .await;
    assert_eq!(r["customer_service_window_open"], false, "{r}");
    assert_eq!(r["last_inbound_ms"], serde_json::Value::Null, "{r}");
    let (s, _) = api.get("/v1/tenants/default/recipients/12ab").await;
    assert_eq!(s, 422);
    // "VOLTAR" opts them back in; triggers go again.
    post_inbound(&api, "5511913390009", "voltar").await;
    let (s, j) = api
        .json("POST", "/v1/flows/two/runs", trigger.clone())
        .await;
    assert_eq!(s, 201, "{j}");
    let again = j["run_id"].as_str().unwrap().to_string();
    run_until(&api, &again, "completed", |v| v["status"] == "completed").await;

    // By hand: PUT suppresses (cancelling what is open), DELETE lifts.
    let later = run_with(&api, &plan, to, Fault::Accept, Fault::Accept).await;
    let path = format!("/v1/tenants/default/suppressions/{to}");
    let (s, j) = api
        .json(
            "PUT",
            &path,
            serde_json::json!({"reason": "asked by phone"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    assert_eq!(j["cancelled"], 1, "{j}");
    let (_, v) = api.get(&format!("/v1/runs/{later}")).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    let (s, _, _) = api.raw("DELETE", &path, &[], None).await;
    assert_eq!(s, 204);
    let (s, _, _) = api.raw("DELETE", &path, &[], None).await;
    assert_eq!(s, 404);
    drop(up);
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_who_sends_stop_gets_nothing_more_until_they_opt_in_on_sqlite() {
    opt_out_and_back_in(TestDb::sqlite("ops-optout")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_who_sends_stop_gets_nothing_more_until_they_opt_in_on_postgres() {
    if let Some(db) = TestDb::postgres("ops_optout").await {
        opt_out_and_back_in(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_step_waits_for_its_status_on_sqlite() {
    unknown_waits_for_its_status(TestDb::sqlite("ops-wait")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_step_waits_for_its_status_on_postgres() {
    if let Some(db) = TestDb::postgres("ops_wait").await {
        unknown_waits_for_its_status(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_resolve_unknown_steps_and_retry_failed_runs_on_sqlite() {
    operators_resolve_and_retry(TestDb::sqlite("ops-act")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_resolve_unknown_steps_and_retry_failed_runs_on_postgres() {
    if let Some(db) = TestDb::postgres("ops_act").await {
        operators_resolve_and_retry(db).await;
    }
}
