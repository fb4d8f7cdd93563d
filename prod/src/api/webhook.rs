//! The Cloud API status webhook: `GET` answers Meta's verification
//! challenge, `POST` carries signed status updates. Each status names its
//! delivery by `biz_opaque_callback_data` (the idempotency key we sent) and
//! is applied with the core's forward-only rule, `StoreOp::RecordReceipt`.

use super::body::{parse_json, store_reply, unexpected};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use oncesend_core::{
    CloudApiError, DeliveryKey, DeliveryOutcome, ReceiptStatus, StoreOp, StoreReply,
};
use sha2::Sha256;
use std::collections::BTreeMap;

/// `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`: echo the
/// challenge when the token matches `ONCESEND_WEBHOOK_VERIFY_TOKEN`.
pub async fn verify<S: Store>(
    State(st): State<AppState<S>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, Problem> {
    let Some(expected) = &st.config.webhook_verify_token else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Webhook not configured",
            "set ONCESEND_WEBHOOK_VERIFY_TOKEN to the verify token entered in the Meta app dashboard",
        ));
    };
    let mode = q.get("hub.mode").map(String::as_str);
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or("");
    match (mode, q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if super::token_matches(token, expected) => {
            Ok(challenge.clone().into_response())
        }
        (Some("subscribe"), Some(_)) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "hub.verify_token does not match ONCESEND_WEBHOOK_VERIFY_TOKEN",
        )),
        _ => Err(Problem::bad_request(
            "expected hub.mode=subscribe, hub.verify_token and hub.challenge",
        )),
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` in
/// constant time.
pub fn signature_ok(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some(sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(sig.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The signature header value for `body`, for clients and tests.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One status out of a webhook payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The delivery it names, when `biz_opaque_callback_data` is one of ours.
    pub key: Option<DeliveryKey>,
    /// The status, when it is one we track.
    pub status: Option<ReceiptStatus>,
    /// The provider's message id.
    pub id: Option<String>,
    /// The provider's first error, as the core's error table reads it.
    pub error: Option<CloudApiError>,
}

/// Every status in a webhook payload, in order; parts of another shape
/// are skipped.
pub fn statuses(payload: &serde_json::Value) -> Vec<Status> {
    fn arr(v: Option<&serde_json::Value>) -> &[serde_json::Value] {
        v.and_then(|v| v.as_array()).map_or(&[], Vec::as_slice)
    }
    let mut out = Vec::new();
    for entry in arr(payload.get("entry")) {
        for change in arr(entry.get("changes")) {
            for s in arr(change.pointer("/value/statuses")) {
                let text = |k: &str| s.get(k).and_then(|v| v.as_str());
                let error = s.pointer("/errors/0").map(|e| {
                    let str_at = |p: &str| e.pointer(p).and_then(|v| v.as_str());
                    CloudApiError {
                        code: e.get("code").and_then(|c| c.as_i64()),
                        message: str_at("/title")
                            .or_else(|| str_at("/message"))
                            .unwrap_or("")
                            .to_string(),
                        details: str_at("/error_data/details").map(str::to_string),
                        ..CloudApiError::default()
                    }
                });
                out.push(Status {
                    key: text("biz_opaque_callback_data").and_then(|k| k.parse().ok()),
                    status: text("status").and_then(ReceiptStatus::parse),
                    id: text("id").map(str::to_string),
                    error,
                });
            }
        }
    }
    out
}

/// One inbound message out of a webhook payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The business number it was sent to (`metadata.phone_number_id`).
    pub phone_number_id: Option<String>,
    /// Who wrote, as a recipient (`+` and the `from` digits).
    pub from: Option<oncesend_core::Recipient>,
    /// The text, for a `text` message.
    pub text: Option<String>,
}

/// Every inbound message in a webhook payload, in order.
pub fn inbound(payload: &serde_json::Value) -> Vec<Inbound> {
    fn arr(v: Option<&serde_json::Value>) -> &[serde_json::Value] {
        v.and_then(|v| v.as_array()).map_or(&[], Vec::as_slice)
    }
    let mut out = Vec::new();
    for entry in arr(payload.get("entry")) {
        for change in arr(entry.get("changes")) {
            let phone = change
                .pointer("/value/metadata/phone_number_id")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            for m in arr(change.pointer("/value/messages")) {
                let from = m
                    .get("from")
                    .and_then(|v| v.as_str())
                    .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| oncesend_core::Recipient::parse(&format!("+{d}")).ok());
                let text = (m.get("type").and_then(|t| t.as_str()) == Some("text"))
                    .then(|| m.pointer("/text/body").and_then(|b| b.as_str()))
                    .flatten()
                    .map(str::to_string);
                out.push(Inbound {
                    phone_number_id: phone.clone(),
                    from,
                    text,
                });
            }
        }
    }
    out
}

/// The tenant whose business number is `phone_number_id`.
async fn tenant_of<S: Store>(
    st: &AppState<S>,
    phone_number_id: &str,
    tenants: &mut Option<Vec<oncesend_core::Tenant>>,
) -> Result<Option<oncesend_core::TenantId>, Problem> {
    if st.config.default_phone_number_id.as_deref() == Some(phone_number_id) {
        return Ok(Some(oncesend_core::TenantId::default_tenant()));
    }
    if tenants.is_none() {
        *tenants = Some(
            match store_reply(st.store.apply(StoreOp::ListTenants).await)? {
                StoreReply::Tenants(t) => t,
                other => return Err(unexpected(other)),
            },
        );
    }
    Ok(tenants.iter().flatten().find_map(|t| match &t.provider() {
        oncesend_core::ProviderSettings::CloudApi { cloud_api }
            if cloud_api.phone_number_id == phone_number_id =>
        {
            Some(t.id().clone())
        }
        _ => None,
    }))
}

/// `POST`: verify the signature, then apply each status and inbound
/// message, all in one store transaction.
pub async fn receive<S: Store>(
    State(st): State<AppState<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let Some(secret) = &st.config.app_secret else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Webhook not configured",
            "set ONCESEND_APP_SECRET to the Meta app secret so status webhooks can be verified",
        ));
    };
    let bytes = match &body {
        Ok(b) => b.clone(),
        Err(_) => {
            // Let the shared reader word the size or read error.
            return parse_json::<serde_json::Value>(body, st.config.max_body_bytes)
                .map(|_| unreachable!("a body that could not be read never parses"));
        }
    };
    let header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_ok(secret, header, &bytes) {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Bad signature",
            "X-Hub-Signature-256 is missing or is not sha256=HMAC-SHA256(body, ONCESEND_APP_SECRET)",
        ));
    }
    let payload: serde_json::Value = parse_json(Ok(bytes), st.config.max_body_bytes)?;
    let now_ms = st.clock.now_ms();
    // Meta batches many statuses into one POST: they are applied in one
    // store transaction, in order.
    let mut ignored = 0u32;
    let mut ours = Vec::new();
    for s in statuses(&payload) {
        match (s.key, s.status) {
            (Some(key), Some(status)) => ours.push((key, status, s)),
            // Not one of ours, or a status we do not track.
            _ => ignored += 1,
        }
    }
    let ops: Vec<StoreOp> = ours
        .iter()
        .map(|(key, status, s)| {
            let outcome = s.error.as_ref().map(CloudApiError::outcome);
            StoreOp::RecordReceipt {
                key: *key,
                status: *status,
                provider_message_id: s.id.clone(),
                reason: s.error.as_ref().map(CloudApiError::reason),
                // What the error table makes of the code: a retryable one,
                // or one about the sender rather than the message, leaves
                // the step to be sent again; no code at all is taken as
                // worth another try.
                resend: match outcome {
                    None => true,
                    Some(DeliveryOutcome::Failed { retryable, .. }) => retryable,
                    Some(DeliveryOutcome::SenderBlocked { .. }) => true,
                    Some(_) => false,
                },
                now_ms,
            }
        })
        .collect();
    // Inbound messages: each opens its sender's 24-hour window; an
    // opt-out keyword suppresses them, an opt-in keyword lifts it.
    let mut tenants = None;
    let mut inbound_ops = Vec::new();
    for m in inbound(&payload) {
        let (Some(phone), Some(from)) = (&m.phone_number_id, m.from) else {
            ignored += 1;
            continue;
        };
        let Some(tenant) = tenant_of(&st, phone, &mut tenants).await? else {
            tracing::debug!(phone_number_id = %phone, "inbound message for a number no tenant sends from");
            ignored += 1;
            continue;
        };
        inbound_ops.push(StoreOp::RecordInbound {
            tenant: tenant.clone(),
            to: from.clone(),
            now_ms,
        });
        match m
            .text
            .as_deref()
            .and_then(|t| st.config.keywords.classify(t))
        {
            Some(true) => inbound_ops.push(StoreOp::Suppress {
                tenant,
                to: from,
                reason: format!(
                    "the recipient sent {:?}",
                    m.text.as_deref().unwrap_or("").trim()
                ),
                now_ms,
            }),
            Some(false) => inbound_ops.push(StoreOp::Unsuppress { tenant, to: from }),
            None => {}
        }
    }
    let statuses_len = ops.len();
    let mut ops = ops;
    ops.extend(inbound_ops.iter().cloned());
    let mut replies = if ops.is_empty() {
        Vec::new()
    } else {
        st.store.apply_batch(ops).await.map_err(|e| {
            tracing::warn!(error = %e, "store unavailable");
            Problem::store_down(e)
        })?
    };
    let inbound_replies = replies.split_off(statuses_len);
    let mut applied = 0u32;
    for (op, reply) in inbound_ops.iter().zip(inbound_replies) {
        match (op, reply) {
            (StoreOp::RecordInbound { .. }, StoreReply::InboundRecorded) => applied += 1,
            (
                StoreOp::Suppress {
                    tenant, to, reason, ..
                },
                StoreReply::Suppressed { newly, cancelled },
            ) => {
                tracing::warn!(%tenant, to = %to, reason, newly, cancelled, "recipient opted out: nothing more is sent to them");
            }
            (StoreOp::Unsuppress { tenant, to }, StoreReply::Unsuppressed { was_suppressed }) => {
                tracing::warn!(%tenant, to = %to, was_suppressed, "recipient opted back in");
            }
            (_, other) => return Err(unexpected(other)),
        }
    }
    for ((key, status, s), reply) in ours.into_iter().zip(replies) {
        match reply {
            StoreReply::ReceiptRecorded { state, changed } => {
                tracing::info!(idempotency_key = %key, status = ?status, state = state.as_str(), changed, "status webhook");
                if changed {
                    applied += 1;
                } else {
                    ignored += 1;
                }
            }
            StoreReply::NotFound => {
                tracing::debug!(idempotency_key = %key, "status webhook for a delivery we do not have");
                ignored += 1;
            }
            other => return Err(unexpected(other)),
        }
        // A failure that the table lays on the sender itself (the token
        // expired between the send and its delivery, say) pauses the
        // tenant, as the same code in a send's answer would.
        if status == ReceiptStatus::Failed {
            if let Some(outcome) = s.error.as_ref().map(CloudApiError::outcome) {
                if matches!(outcome, DeliveryOutcome::SenderBlocked { .. }) {
                    pause_for_status(&st, key, &outcome, now_ms).await?;
                }
            }
        }
    }
    st.webhook.add(applied, ignored);
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({"applied": applied, "ignored": ignored})),
    )
        .into_response())
}

/// Pauses the tenant of `key`'s run for a refusal a status reported.
async fn pause_for_status<S: Store>(
    st: &AppState<S>,
    key: DeliveryKey,
    outcome: &DeliveryOutcome,
    now_ms: u64,
) -> Result<(), Problem> {
    let tenant = match store_reply(st.store.apply(StoreOp::GetRun { run: key.run }).await)? {
        StoreReply::Run(v) => v.tenant,
        StoreReply::NotFound => return Ok(()),
        other => return Err(unexpected(other)),
    };
    let settings = st.config.default_settings.as_deref();
    let Some(op) = StoreOp::pause_for(&tenant, outcome, settings, now_ms) else {
        return Ok(());
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Paused { newly } => {
            if newly {
                tracing::warn!(%tenant, idempotency_key = %key, ?outcome, "sender paused by a failed status: nothing more of this tenant goes to the provider until it is resumed");
            }
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"entry":[]}"#;
        let good = sign("s3cret", body);
        assert!(signature_ok("s3cret", Some(&good), body));
        assert!(!signature_ok("other", Some(&good), body));
        assert!(!signature_ok("s3cret", Some(&good), b"{}"));
        assert!(!signature_ok("s3cret", None, body));
        assert!(!signature_ok("s3cret", Some("sha256=zz"), body));
    }
}
