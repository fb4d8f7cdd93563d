//! A flow using every message kind, end to end over HTTPS to the mock
//! Cloud API: through `oncesend up`, and through `oncesend-engine` with two
//! `oncesend-worker`s, on SQLite and PostgreSQL. Each step reaches the mock
//! once, in order, with exactly the body the Cloud API documents.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const RUNS: usize = 6;

/// One step of every kind, with variables in their strings.
fn every_kind() -> Vec<Value> {
    vec![
        json!({"type": "template", "template": {"name": "order_ready", "language": {"code": "pt_BR"}, "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/{{order}}.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}, {"type": "currency", "currency": {"fallback_value": "R$10", "code": "BRL", "amount_1000": 10000}}]},
            {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "ok-{{order}}"}]}]}}),
        json!({"type": "template", "template": {"name": "welcome_named", "language": {"code": "en_US", "policy": "deterministic"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "{{name}}"}]}]}}),
        json!({"type": "text", "text": {"body": "Olá {{name}}, veja https://example.com/o/{{order}}", "preview_url": true}}),
        json!({"type": "image", "image": {"link": "https://cdn.example.com/{{order}}.jpg", "caption": "Pedido {{order}}"}}),
        json!({"type": "video", "video": {"id": "1166846181421424", "caption": "Como usar"}}),
        json!({"type": "audio", "audio": {"link": "https://cdn.example.com/hello.ogg"}}),
        json!({"type": "document", "document": {"link": "https://cdn.example.com/{{order}}.pdf", "filename": "nota-{{order}}.pdf", "caption": "Sua nota"}}),
        json!({"type": "sticker", "sticker": {"id": "798882015472548"}}),
        json!({"type": "location", "location": {"latitude": -23.5614, "longitude": -46.6559, "name": "Loja Paulista", "address": "Av. Paulista, 1000"}}),
        json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "Suporte", "first_name": "Suporte"}, "phones": [{"phone": "+551130000000", "type": "WORK"}]}]}),
        json!({"type": "interactive", "interactive": {"type": "button", "header": {"type": "text", "text": "Pedido {{order}}"}, "body": {"text": "Tudo certo, {{name}}?"}, "footer": {"text": "Responda"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes-{{order}}", "title": "Sim"}}, {"type": "reply", "reply": {"id": "no-{{order}}", "title": "Não"}}]}}}),
        json!({"type": "interactive", "interactive": {"type": "list", "body": {"text": "Escolha"}, "action": {"button": "Opções", "sections": [
            {"title": "Entrega", "rows": [{"id": "fast", "title": "Expressa", "description": "Amanhã"}, {"id": "std", "title": "Normal"}]},
            {"title": "Retirada", "rows": [{"id": "shop", "title": "Na loja"}]}]}}}),
        json!({"type": "interactive", "interactive": {"type": "cta_url", "body": {"text": "Acompanhe"}, "action": {"name": "cta_url", "parameters": {"display_text": "Rastrear", "url": "https://example.com/t/{{order}}"}}}}),
    ]
}

/// The body the Cloud API must receive for `message` to `to` under `key`,
/// worked out apart from the core: placeholders replaced in the JSON text.
fn expected_body(message: &Value, vars: &[(&str, String)], to: &str, key: &str) -> Value {
    let mut text = message.to_string();
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    let mut body: Value = serde_json::from_str(&text).unwrap();
    let o = body.as_object_mut().unwrap();
    o.insert("messaging_product".into(), "whatsapp".into());
    o.insert("recipient_type".into(), "individual".into());
    o.insert("to".into(), to.into());
    o.insert("biz_opaque_callback_data".into(), key.into());
    body
}

async fn every_kind_once_in_order(api: &Api, mock: &MockCloudApi) {
    let kinds = every_kind();
    let steps: Vec<Value> = kinds
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == 2 {
                // The text shorthand, beside the full text object.
                json!({"text": "Oi {{name}}", "delay_ms": 0})
            } else {
                json!({"message": m, "delay_ms": 0})
            }
        })
        .collect();
    let flow = json!({"steps": steps});
    let (s, j) = api.json("PUT", "/v1/flows/kinds", flow.clone()).await;
    assert_eq!(s, 201, "{j}");
    // Read back exactly as put.
    let (s, j) = api.get("/v1/flows/kinds").await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["steps"], flow["steps"], "{j}");

    let mut runs = Vec::new();
    for r in 0..RUNS {
        let to = format!("+55119{:08}", 20_000 + r);
        let vars = vec![("name", format!("Ana {r}")), ("order", format!("A{r}7"))];
        let body = json!({"to": to, "vars": vars.iter().cloned().collect::<BTreeMap<_, _>>()});
        let (s, _, j) = api
            .raw(
                "POST",
                "/v1/flows/kinds/runs",
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(s, 201, "{j}");
        runs.push((j["run_id"].as_str().unwrap().to_string(), to, vars));
    }
    eventually("every run to complete", Duration::from_secs(60), || async {
        count(api, "completed").await == RUNS
    })
    .await;

    let calls = mock.calls();
    assert!(mock.shape_errors().is_empty(), "{:?}", mock.shape_errors());
    assert_eq!(calls.len(), RUNS * steps.len(), "each step exactly once");
    for (run, to, vars) in &runs {
        let mine: Vec<_> = calls
            .iter()
            .filter(|c| c.key.run.to_string() == *run)
            .collect();
        let order: Vec<u32> = mine.iter().map(|c| c.key.step).collect();
        assert_eq!(
            order,
            (0..steps.len() as u32).collect::<Vec<_>>(),
            "run {run}: steps out of order or repeated"
        );
        for (i, c) in mine.iter().enumerate() {
            let message = if i == 2 {
                json!({"type": "text", "text": {"body": "Oi {{name}}"}})
            } else {
                kinds[i].clone()
            };
            let want = expected_body(&message, vars, to, &format!("{run}:{i}"));
            assert_eq!(c.body, want, "run {run} step {i}");
        }
        // The run shows each step's kind, and the template's name.
        let (s, j) = api.get(&format!("/v1/runs/{run}")).await;
        assert_eq!(s, 200, "{j}");
        let shown: Vec<(String, Value)> = j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["kind"].as_str().unwrap().to_string(),
                    s["template"].clone(),
                )
            })
            .collect();
        assert_eq!(shown[0], ("template".into(), json!("order_ready")), "{j}");
        assert_eq!(shown[1], ("template".into(), json!("welcome_named")));
        assert_eq!(shown[2], ("text".into(), Value::Null));
        assert_eq!(shown[12].0, "interactive");
        for s in j["steps"].as_array().unwrap() {
            assert_eq!(s["status"], "sent", "{j}");
        }
    }
}

async fn through_up(db: TestDb) {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let (up, url) = start_up(
        FAST,
        &[cloud_env(&mock), vec![("DATABASE_URL", db.url())]].concat(),
    )
    .await;
    every_kind_once_in_order(&Api::new(&url, None), &mock).await;
    drop(up);
    db.remove().await;
}

async fn through_engine_and_two_workers(db: TestDb) {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let (engine, url) = start_engine(
        ENGINE_FAST,
        &[cloud_env(&mock), vec![("DATABASE_URL", db.url())]].concat(),
    )
    .await;
    let a = start_worker(&url, &db.url(), "kinds-a", &[]).await;
    let b = start_worker(&url, &db.url(), "kinds-b", &[]).await;
    every_kind_once_in_order(&Api::new(&url, None), &mock).await;
    drop((a, b, engine));
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_goes_out_once_in_order_with_its_exact_body_through_up_on_sqlite() {
    through_up(TestDb::sqlite("kinds-up")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_goes_out_once_in_order_with_its_exact_body_through_up_on_postgres() {
    let Some(db) = TestDb::postgres("kinds_up").await else {
        return;
    };
    through_up(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_goes_out_once_in_order_through_an_engine_and_two_workers_on_sqlite() {
    through_engine_and_two_workers(TestDb::sqlite("kinds-split")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_goes_out_once_in_order_through_an_engine_and_two_workers_on_postgres() {
    let Some(db) = TestDb::postgres("kinds_split").await else {
        return;
    };
    through_engine_and_two_workers(db).await;
}
