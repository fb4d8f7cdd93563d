//! The engine's send API: `POST /v1/messages` and `/v1/messages/batch`,
//! which hand each step to the engine driver.

use super::body::{parse_json, parse_json_body, read_body};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::{SendBatch, SendBatchResponse, SendRequest, SendResponse};
use serde::Deserialize;

pub(super) async fn send_message<S: Store>(
    State(st): State<AppState<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request: SendRequest = parse_json(body, st.config.max_body_bytes)?;
    if let Err(e) = request.message.check_size() {
        return Err(Problem::invalid(format!("message: {}", e.problem)));
    }
    let key = request.key.to_string();
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if k == key => {}
        Some(k) => {
            return Err(Problem::bad_request(format!(
                "Idempotency-Key header {k:?} must equal the body's key {key:?}"
            )))
        }
        None => {
            return Err(Problem::bad_request(format!(
                "missing Idempotency-Key header; send the body's key {key:?}"
            )))
        }
    }
    let response = st.engine.send(request).await;
    let status = match &response {
        SendResponse::Fenced => StatusCode::CONFLICT,
        SendResponse::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    };
    let mut r = (status, Json(&response)).into_response();
    if let SendResponse::Busy { retry_after_ms } = response {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_ms.div_ceil(1000)),
        );
    }
    Ok(r)
}

/// Checks a `POST /v1/messages/batch` body: 400/422 as for any body, and
/// 422 when it holds no message or more than the limit.
pub fn parse_send_batch(body: &[u8]) -> Result<SendBatch, Problem> {
    let batch: SendBatch = match parse_json_body(body) {
        Ok(batch) => batch,
        Err(problem) => return Err(locate_bad_message(body).unwrap_or(problem)),
    };
    let max = oncesend_core::limits::MAX_SEND_BATCH;
    if batch.messages.is_empty() {
        return Err(Problem::invalid(
            "\"messages\" is empty; send at least one message",
        ));
    }
    if batch.messages.len() > max {
        return Err(Problem::invalid(format!(
            "\"messages\" holds {} messages; send at most {max} per request",
            batch.messages.len()
        )));
    }
    for (i, m) in batch.messages.iter().enumerate() {
        if let Err(e) = m.message.check_size() {
            return Err(Problem::invalid(format!(
                "messages[{i}].message: {}",
                e.problem
            )));
        }
    }
    Ok(batch)
}

/// For a batch that did not parse: the first message that is wrong, by
/// index, when the batch's outer shape is right.
fn locate_bad_message(body: &[u8]) -> Option<Problem> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Loose {
        messages: Vec<serde_json::Value>,
    }
    let loose: Loose = serde_json::from_slice(body).ok()?;
    loose.messages.into_iter().enumerate().find_map(|(i, m)| {
        serde_json::from_value::<SendRequest>(m)
            .err()
            .map(|e| Problem::invalid(format!("messages[{i}]: {e}")))
    })
}

/// Sends many steps at once. Each is handed to the engine on its own, all
/// concurrently, and answered in order; the batch itself always answers
/// 200 once it is well formed, and each result says what became of its
/// message (a `busy` or `fenced` result is that message's alone).
pub(super) async fn send_batch<S: Store>(
    State(st): State<AppState<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let batch = parse_send_batch(&read_body(body, st.config.max_body_bytes)?)?;
    let sends = batch.messages.into_iter().map(|m| st.engine.send(m));
    let results = futures_util::future::join_all(sends).await;
    Ok((StatusCode::OK, Json(SendBatchResponse { results })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(step: u32) -> serde_json::Value {
        serde_json::json!({
            "key": format!("01a223cc-8d84-7a53-b07a-5027eed1b529:{step}"),
            "epoch": 1,
            "tenant": "default",
            "to": "+5511913390707",
            "message": {"type": "text", "text": {"body": "hi"}},
        })
    }

    fn body(messages: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "messages": messages })).unwrap()
    }

    #[test]
    fn a_send_batch_holds_one_to_the_limit() {
        let max = oncesend_core::limits::MAX_SEND_BATCH;
        let full = parse_send_batch(&body((0..max as u32).map(message).collect())).unwrap();
        assert_eq!(full.messages.len(), max);
        assert_eq!(full.messages[7].key.step, 7);
        let over = parse_send_batch(&body((0..=max as u32).map(message).collect())).unwrap_err();
        assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(over.detail.contains("at most 1000"), "{}", over.detail);
        let empty = parse_send_batch(&body(vec![])).unwrap_err();
        assert!(empty.detail.contains("at least one"), "{}", empty.detail);
    }

    #[test]
    fn a_bad_message_in_a_batch_is_named_by_its_index() {
        let mut bad = message(2);
        bad["to"] = "12".into();
        let e = parse_send_batch(&body(vec![message(0), message(1), bad])).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.detail.starts_with("messages[2]: "), "{}", e.detail);
        let mut extra = message(0);
        extra["bogus"] = 1.into();
        let e = parse_send_batch(&body(vec![extra])).unwrap_err();
        assert!(e.detail.starts_with("messages[0]: "), "{}", e.detail);
        assert!(e.detail.contains("bogus"), "{}", e.detail);
        let e = parse_send_batch(br#"{"messages":[],"x":1}"#).unwrap_err();
        assert!(e.detail.contains('x'), "{}", e.detail);
    }

    #[test]
    fn a_message_over_the_size_bound_is_refused_by_index_before_the_engine() {
        let max = oncesend_core::limits::MAX_MESSAGE_BYTES;
        let sized = |step: u32, body_len: usize| {
            let mut m = message(step);
            m["message"]["text"]["body"] = "a".repeat(body_len).into();
            m
        };
        // {"type":"text","text":{"body":"…"}} is 34 bytes around the body.
        let fits = parse_send_batch(&body(vec![sized(0, max - 34)])).unwrap();
        assert_eq!(fits.messages[0].message.encoded_len(), max);
        let e = parse_send_batch(&body(vec![sized(0, 1), sized(1, max - 33)])).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            e.detail.starts_with("messages[1].message: ")
                && e.detail
                    .contains(&format!("{} bytes as JSON; at most {max}", max + 1)),
            "{}",
            e.detail
        );
    }
}
