//! Reading request bodies and store answers the same way in every handler:
//! the size limit, JSON's shape, a store that is down or answers out of
//! contract.

use super::Problem;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use oncesend_core::StoreReply;
use serde::de::DeserializeOwned;

/// Reads a JSON body: 413 past the size limit, 400 for what is not JSON,
/// 422 for JSON of the wrong shape.
pub(super) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Result<T, Problem> {
    parse_json_body(&read_body(body, max_body)?)
}

/// An optional JSON body: none at all gives the default.
pub(crate) fn optional_json<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Result<T, Problem> {
    match &body {
        Ok(b) if b.is_empty() => Ok(T::default()),
        _ => parse_json(body, max_body),
    }
}

/// The request body, or 413 past the size limit and 400 when it could not
/// be read.
pub(super) fn read_body(
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Result<Bytes, Problem> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                format!("the request body is over {max_body} bytes; send less"),
            )
        } else {
            Problem::bad_request(format!("could not read the request body: {e}"))
        }
    })
}

/// Parses a body that was read whole: 400 when it is empty or not JSON,
/// 422 for JSON of the wrong shape.
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if body.is_empty() {
        return Err(Problem::bad_request("expected a JSON body, got nothing"));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Problem::invalid(format!("{e}")),
            _ => Problem::bad_request(format!("malformed JSON: {e}")),
        }
    })
}

pub(super) fn store_reply(
    r: Result<StoreReply, oncesend_core::StoreUnavailable>,
) -> Result<StoreReply, Problem> {
    r.map_err(|e| {
        tracing::warn!(error = %e, "store unavailable");
        Problem::store_down(e)
    })
}

pub(super) fn unexpected(reply: StoreReply) -> Problem {
    tracing::error!(?reply, "store answered out of contract");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "the store gave an unexpected answer; nothing more was done. Please report this",
    )
}

pub(super) fn default_tenant() -> String {
    "default".into()
}
