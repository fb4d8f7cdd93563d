//! The `meta` host: a stand-in for the WhatsApp Cloud API that behaves like
//! it, errors and all. The engine reaches it through its real Cloud API
//! provider (the daemons' `--provider cloud-api`, over the simulated
//! network), so the request shape, the bearer token, the answer and every
//! error code are read by the same code as in production.
//!
//! It takes `POST /{version}/{phone_number_id}/messages`, keys each message
//! by its `biz_opaque_callback_data` (the idempotency key) for the history,
//! and answers as the Cloud API does: `messages[0].id` on success;
//! `(#190)` for a wrong token; `(#130429)` past the phone number's
//! throughput; `(#131056)` for a second message to one recipient too soon;
//! a sender-level code while a fault blocks the sender. Faults make it lose
//! its answer, or give it late. It also plays Meta's webhook sender:
//! signed status callbacks for what it took, and recipients' inbound
//! messages (an opt-out).

use crate::marks::{Mark, MarkKind, PROVIDER_LANE};
use crate::trace::{sim_ms, OwedInbound, OwedStatus, Shared, BASE_MS};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oncesend::net::HttpClient;
use oncesend_core::DeliveryKey;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The port the stand-in listens on.
pub const META_PORT: u16 = 9000;
/// The Graph API version the engine is configured with.
pub const GRAPH_VERSION: &str = "v21.0";
/// The least time between two messages to one recipient (pair rate).
pub const META_PAIR_GAP_MS: u64 = 80;
/// How long the provider takes to answer, normally.
const LATENCY_MS: u64 = 3;

/// A business phone number: which tenant sends from it, and its token.
#[derive(Debug, Clone, Copy)]
pub struct Number {
    /// The tenant.
    pub tenant: &'static str,
    /// `phone_number_id`.
    pub phone_number_id: &'static str,
    /// The access token it takes.
    pub token: &'static str,
    /// Messages a second it may send (its burst too): its throughput tier.
    pub rate_per_s: u64,
}

/// The numbers the stand-in knows: the default tenant's (from the engine's
/// flags) and a second tenant's (stored through the API).
pub const NUMBERS: [Number; 2] = [
    Number {
        tenant: "default",
        phone_number_id: "106540352242922",
        token: "EAAGsim-default",
        rate_per_s: 50,
    },
    Number {
        tenant: "acme",
        phone_number_id: "106540352242923",
        token: "EAAGsim-acme",
        // A new number, in a lower tier than the engine is paced for: the
        // Cloud API's 130429 slows its sender down.
        rate_per_s: 8,
    },
];

#[derive(Default)]
struct Limits {
    /// Per phone number: milli-messages in the bucket, and when last filled.
    buckets: BTreeMap<&'static str, (u64, u64)>,
    /// Per phone number and recipient: the last message's time.
    last_to: BTreeMap<(&'static str, String), u64>,
}

#[derive(Clone)]
struct Meta {
    shared: Shared,
    limits: Arc<Mutex<Limits>>,
}

fn error(status: StatusCode, code: i64, message: &str, details: &str) -> Response {
    let body = serde_json::json!({"error": {
        "message": format!("(#{code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": format!("Sim{}", sim_ms()),
    }});
    (status, axum::Json(body)).into_response()
}

impl Meta {
    /// Takes one message from the bucket of `number`, and checks the pair
    /// rate to `to`; the refusal the Cloud API gives, if any.
    fn admit(&self, number: &Number, to: &str, now_ms: u64) -> Option<Response> {
        let mut l = self.limits.lock().expect("limits");
        let rate = number.rate_per_s;
        let number = number.phone_number_id;
        let full = rate * 1_000;
        let (tokens, at) = l.buckets.get(number).copied().unwrap_or((full, now_ms));
        let tokens = (tokens + (now_ms - at) * rate).min(full);
        if tokens < 1_000 {
            l.buckets.insert(number, (tokens, now_ms));
            self.shared.note_rate_refusal(130429);
            return Some(error(
                StatusCode::BAD_REQUEST,
                130429,
                "Rate limit hit",
                "Cloud API message throughput has been reached.",
            ));
        }
        let pair = (number, to.to_string());
        if l.last_to
            .get(&pair)
            .is_some_and(|last| now_ms < last + META_PAIR_GAP_MS)
        {
            self.shared.note_rate_refusal(131056);
            return Some(error(
                StatusCode::BAD_REQUEST,
                131056,
                "(Business Account, Consumer Account) pair rate limit hit",
                "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time.",
            ));
        }
        l.buckets.insert(number, (tokens - 1_000, now_ms));
        l.last_to.insert(pair, now_ms);
        None
    }
}

async fn messages(
    State(meta): State<Meta>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let shared = &meta.shared;
    let Some(number) = NUMBERS
        .iter()
        .find(|n| n.phone_number_id == phone_number_id && version == GRAPH_VERSION)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            100,
            "Unsupported post request",
            "Object with ID does not exist, cannot be loaded due to missing permissions, or does not support this operation",
        );
    };
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(number.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "the access token is not the number's",
        );
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                100,
                "Invalid parameter",
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    let to = json["to"].as_str().unwrap_or_default().to_string();
    let key: Option<DeliveryKey> = json["biz_opaque_callback_data"]
        .as_str()
        .and_then(|k| k.parse().ok());
    let (Some(key), false, "whatsapp") = (
        key,
        to.is_empty(),
        json["messaging_product"].as_str().unwrap_or_default(),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "messaging_product, to and biz_opaque_callback_data are required here",
        );
    };
    if let Some(code) = shared.refuse_sender() {
        // Refused before anything went out, as the Cloud API answers an
        // expired token or a blocked account.
        shared.fired("sender_blocked");
        shared.log(format!("provider refused the sender with {code} for {key}"));
        tokio::time::sleep(Duration::from_millis(LATENCY_MS)).await;
        let status = if code == 190 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        return error(status, code, "refused", "the sender is refused");
    }
    if let Some(refusal) = meta.admit(number, &to, sim_ms()) {
        shared.log(format!("provider refused {key} for its rate"));
        return refusal;
    }
    let call = shared.provider_called(key);
    shared.owe_statuses(key, call);
    shared.marks().add(|| Mark {
        epoch: None,
        at_ms: sim_ms(),
        lane: PROVIDER_LANE.into(),
        kind: MarkKind::Deliver { call },
        keys: vec![key],
        text: format!(
            "to {to}: {}",
            json.pointer("/text/body")
                .and_then(|b| b.as_str())
                .unwrap_or("(not text)")
        ),
    });
    shared.log(format!(
        "[WhatsApp Cloud API] {} message to {}: {}   (key {key})",
        number.tenant,
        to,
        json.pointer("/text/body")
            .and_then(|b| b.as_str())
            .unwrap_or("(not text)")
    ));
    tokio::time::sleep(Duration::from_millis(LATENCY_MS)).await;
    if shared.lose_replies() {
        // Taken, but the answer never comes back: the engine's timer turns
        // this into `unknown`.
        shared.note_ambiguous(key, "lost_reply");
        shared.fired("lost_reply");
        shared.log(format!("provider lost the reply for {key}"));
        std::future::pending::<()>().await;
    }
    if let Some(late_ms) = shared.provider_slow_ms() {
        // Past the engine's send timeout: unknown first, then the truth.
        shared.note_ambiguous(key, "late_reply");
        shared.fired("late_reply");
        shared.log(format!("provider answers {key} {late_ms} ms late"));
        tokio::time::sleep(Duration::from_millis(
            crate::world::SEND_TIMEOUT_MS + late_ms,
        ))
        .await;
    }
    shared.provider_replied(key);
    let body = serde_json::json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to.trim_start_matches('+')}],
        "messages": [{"id": message_id(key, call)}],
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Serves the Cloud API stand-in, and sends Meta's webhooks to the engine.
pub async fn serve(shared: Shared, app_secret: &'static str) -> turmoil::Result {
    tokio::spawn(post_webhooks(shared.clone(), app_secret));
    let meta = Meta {
        shared,
        limits: Arc::default(),
    };
    let router = axum::Router::new()
        .route(
            "/{version}/{phone_number_id}/messages",
            axum::routing::post(messages),
        )
        .with_state(meta);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", META_PORT)).await?;
    axum::serve(crate::net::SimListener(listener), router).await?;
    Ok(())
}

fn envelope(phone_number_id: &str, value: serde_json::Value) -> serde_json::Value {
    let mut value = value;
    value["messaging_product"] = "whatsapp".into();
    value["metadata"] = serde_json::json!({
        "display_phone_number": "15550783881",
        "phone_number_id": phone_number_id,
    });
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    })
}

/// The id the provider gives the `call`-th message it took for `key`:
/// every call its own, as the Cloud API's `wamid`s are.
fn message_id(key: DeliveryKey, call: u32) -> String {
    format!("wamid.{key}.{call}")
}

/// The Cloud API's status webhook body for `owed`, as Meta sends it.
fn status_payload(owed: &[OwedStatus]) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = owed
        .iter()
        .map(|o| {
            let mut s = serde_json::json!({
                "id": message_id(o.key, o.call),
                "status": o.status,
                "timestamp": ((BASE_MS + o.due_ms) / 1000).to_string(),
                "recipient_id": "5511913390000",
                "biz_opaque_callback_data": o.key.to_string(),
            });
            if let Some(code) = o.code {
                s["errors"] = serde_json::json!([{
                    "code": code,
                    "title": "Something went wrong",
                    "error_data": {"details": "the message could not be delivered"}
                }]);
            }
            s
        })
        .collect();
    envelope(
        NUMBERS[0].phone_number_id,
        serde_json::json!({"statuses": statuses}),
    )
}

/// An inbound message's webhook body, as Meta sends it.
fn inbound_payload(i: &OwedInbound, n: u64) -> serde_json::Value {
    let wa_id = i.from.as_str().trim_start_matches('+');
    envelope(
        i.phone_number_id,
        serde_json::json!({
            "contacts": [{"profile": {"name": "Guest"}, "wa_id": wa_id}],
            "messages": [{
                "from": wa_id,
                "id": format!("wamid.inbound.{n}"),
                "timestamp": ((BASE_MS + i.due_ms) / 1000).to_string(),
                "type": "text",
                "text": {"body": i.text},
            }],
        }),
    )
}

/// Posts owed statuses and inbound messages as they fall due, statuses up
/// to 20 to a POST; what the engine did not answer 200 is posted again
/// later, as Meta retries.
async fn post_webhooks(shared: Shared, app_secret: &'static str) {
    let http = HttpClient::new(
        crate::net::SimConnector::new(format!("engine:{}", crate::world::ENGINE_PORT)),
        "engine",
        None,
        Duration::from_millis(1_000),
    );
    let post = |body: Vec<u8>| {
        let http = http.clone();
        async move {
            let signature = (
                "x-hub-signature-256",
                oncesend::api::webhook::sign(app_secret, &body),
            );
            match http
                .request(
                    hyper::Method::POST,
                    "/v1/providers/cloud-api/webhook",
                    std::slice::from_ref(&signature),
                    Some(body),
                )
                .await
            {
                Ok((s, _, _)) if s.is_success() => Ok(()),
                Ok((s, _, _)) => Err(s.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let mut inbound_n = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let due = shared.take_due_statuses(sim_ms());
        for chunk in due.chunks(20) {
            // A `failed` excuses the key's next call only when it is about
            // the latest one; a repeat about an earlier call excuses nothing.
            for o in chunk.iter().filter(|o| o.status == "failed") {
                if o.call + 1 == shared.calls_of(o.key) {
                    shared.note_said_failed(o.key);
                }
            }
            let body = serde_json::to_vec(&status_payload(chunk)).expect("json");
            if let Err(why) = post(body).await {
                shared.log(format!(
                    "meta: {} statuses not taken ({why}); again later",
                    chunk.len()
                ));
                shared.owe_again(chunk.to_vec(), sim_ms() + 250);
            }
        }
        for i in shared.take_due_inbound(sim_ms()) {
            inbound_n += 1;
            let body = serde_json::to_vec(&inbound_payload(&i, inbound_n)).expect("json");
            match post(body).await {
                Ok(()) => shared.log(format!(
                    "meta: {} said {:?} to {}",
                    i.from, i.text, i.phone_number_id
                )),
                Err(why) => {
                    shared.log(format!("meta: inbound not taken ({why}); again later"));
                    shared.owe_inbound_again(vec![i], sim_ms() + 250);
                }
            }
        }
    }
}
