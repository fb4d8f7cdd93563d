//! What a tenant knows of its recipients: who opted out (and lifting or
//! setting that by hand), and when each last wrote, which opens WhatsApp's
//! 24-hour customer-service window for free-form messages.

use super::body::{optional_json, store_reply, unexpected};
use super::tenants::{parse_tenant, tenant_provider};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::store::{RecipientInfo, Suppression};
use oncesend_core::{Recipient, StoreOp, StoreReply, TenantId};
use serde::Deserialize;

fn parse_to(to: &str) -> Result<Recipient, Problem> {
    Recipient::parse(to).map_err(|e| {
        Problem::invalid(format!(
            "{to:?} is not a phone number in E.164 form (+ and 8 to 15 digits): {e}"
        ))
    })
}

async fn tenant_and_to<S: Store>(
    st: &AppState<S>,
    tenant: String,
    to: &str,
) -> Result<(TenantId, Recipient), Problem> {
    let tenant = parse_tenant(tenant)?;
    tenant_provider(st, &tenant).await?;
    Ok((tenant, parse_to(to)?))
}

fn suppression_json(to: &Recipient, s: &Suppression) -> serde_json::Value {
    serde_json::json!({"to": to, "since_ms": s.since_ms, "reason": s.reason})
}

async fn info<S: Store>(
    st: &AppState<S>,
    tenant: &TenantId,
    to: &Recipient,
) -> Result<RecipientInfo, Problem> {
    let op = StoreOp::GetRecipient {
        tenant: tenant.clone(),
        to: to.clone(),
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::RecipientIs(i) => Ok(i),
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/tenants/{t}/suppressions/{to}`: 200 with the opt-out, or 404.
pub async fn get_suppression<S: Store>(
    State(st): State<AppState<S>>,
    Path((tenant, to)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (tenant, to) = tenant_and_to(&st, tenant, &to).await?;
    match info(&st, &tenant, &to).await?.suppressed {
        Some(s) => Ok(Json(suppression_json(&to, &s)).into_response()),
        None => Err(Problem::not_found(format!(
            "{to} has not opted out of tenant {:?}'s messages",
            tenant.as_str()
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressBody {
    reason: Option<String>,
}

/// `PUT /v1/tenants/{t}/suppressions/{to}` (`{"reason"}` optional): the
/// recipient gets nothing more; their unfinished runs are cancelled.
pub async fn suppress<S: Store>(
    State(st): State<AppState<S>>,
    Path((tenant, to)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let (tenant, to) = tenant_and_to(&st, tenant, &to).await?;
    let b: SuppressBody = optional_json(body, st.config.max_body_bytes)?;
    let reason = b
        .reason
        .unwrap_or_else(|| "suppressed by an operator".into());
    if reason.trim().is_empty() || reason.chars().count() > 500 {
        return Err(Problem::invalid("\"reason\" is 1 to 500 characters"));
    }
    let now_ms = st.clock.now_ms();
    let op = StoreOp::Suppress {
        tenant: tenant.clone(),
        to: to.clone(),
        reason,
        now_ms,
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Suppressed { newly, cancelled } => {
            tracing::warn!(%tenant, to = %to, cancelled, "recipient suppressed by an operator");
            let s = info(&st, &tenant, &to).await?.suppressed;
            let mut body = s.map_or(serde_json::json!({}), |s| suppression_json(&to, &s));
            body["cancelled"] = cancelled.into();
            let status = if newly {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(body)).into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// `DELETE /v1/tenants/{t}/suppressions/{to}`: 204, or 404 when there
/// was none.
pub async fn unsuppress<S: Store>(
    State(st): State<AppState<S>>,
    Path((tenant, to)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (tenant, to) = tenant_and_to(&st, tenant, &to).await?;
    let op = StoreOp::Unsuppress {
        tenant: tenant.clone(),
        to: to.clone(),
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Unsuppressed {
            was_suppressed: true,
        } => {
            tracing::warn!(%tenant, to = %to, "recipient's opt-out lifted by an operator");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        StoreReply::Unsuppressed {
            was_suppressed: false,
        } => Err(Problem::not_found(format!(
            "{to} has not opted out of tenant {:?}'s messages",
            tenant.as_str()
        ))),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/tenants/{t}/suppressions?after=+55…&limit=100`: by number;
/// `next` is the `after` of the next page, or null at the end.
pub async fn list_suppressed<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let tenant = parse_tenant(tenant)?;
    tenant_provider(&st, &tenant).await?;
    let after = q.after.as_deref().map(parse_to).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, super::MAX_LIST);
    let op = StoreOp::ListSuppressed {
        tenant,
        after,
        limit,
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Suppressions(list) => {
            let next = (list.len() as u32 == limit)
                .then(|| list.last().map(|(to, _)| to.clone()))
                .flatten();
            let items: Vec<serde_json::Value> =
                list.iter().map(|(to, s)| suppression_json(to, s)).collect();
            Ok(Json(serde_json::json!({"suppressions": items, "next": next})).into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/tenants/{t}/recipients/{to}`: when they last wrote, whether
/// the 24-hour window for free-form messages is open, and their opt-out.
pub async fn get_recipient<S: Store>(
    State(st): State<AppState<S>>,
    Path((tenant, to)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let (tenant, to) = tenant_and_to(&st, tenant, &to).await?;
    let i = info(&st, &tenant, &to).await?;
    let now_ms = st.clock.now_ms();
    Ok(Json(serde_json::json!({
        "tenant": tenant,
        "to": to,
        "last_inbound_ms": i.last_inbound_ms,
        "customer_service_window_open": i.window_open(now_ms),
        "window_closes_at_ms": i.last_inbound_ms.map(|t| t + oncesend_core::store::CUSTOMER_SERVICE_WINDOW_MS),
        "suppressed": i.suppressed.map(|s| suppression_json(&to, &s)),
    }))
    .into_response())
}
