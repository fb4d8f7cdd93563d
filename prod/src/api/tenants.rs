//! Tenants: their provider settings, and pausing or resuming their sender
//! by hand.

use super::body::{parse_json, parse_json_body, read_body, store_reply, unexpected};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::{ProviderSettings, StoreOp, StoreReply, Tenant, TenantId};
use serde::Deserialize;

/// 422 naming the tenant unless it is `default` or stored (a tenant named
/// in a body is invalid input, not a missing resource).
pub(super) async fn tenant_exists<S: Store>(
    st: &AppState<S>,
    tenant: &TenantId,
) -> Result<(), Problem> {
    match tenant_provider(st, tenant).await {
        Err(p) if p.status == StatusCode::NOT_FOUND => Err(Problem::invalid(format!(
            "unknown tenant {:?}; create it with PUT /v1/tenants/{tenant} or use \"default\"",
            tenant.as_str()
        ))),
        other => other.map(|_| ()),
    }
}

pub(super) async fn put_tenant<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = TenantId::new(tenant).map_err(|e| Problem::invalid(e.to_string()))?;
    let settings: ProviderSettings = parse_json(body, st.config.max_body_bytes)?;
    let tenant = Tenant::new(id.clone(), settings).map_err(|e| Problem::invalid(e.to_string()))?;
    if let ProviderSettings::CloudApi { cloud_api } = &tenant.provider() {
        crate::net::HttpUrl::parse(&cloud_api.base_url)
            .map_err(|e| Problem::invalid(format!("cloud_api.base_url: {e}")))?;
    }
    let kind = tenant.provider().kind();
    match store_reply(st.store.apply(StoreOp::PutTenant { tenant }).await)? {
        StoreReply::TenantPut { created } => {
            if let Some(hook) = &st.tenant_hook {
                hook(&id);
            }
            tracing::info!(tenant = %id, provider = kind, created, "tenant stored");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(serde_json::json!({"tenant": id, "provider": kind})),
            )
                .into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// A tenant's provider kind, or 404 when it is neither `default` nor stored.
pub(crate) async fn tenant_provider<S: Store>(
    st: &AppState<S>,
    tenant: &TenantId,
) -> Result<&'static str, Problem> {
    if *tenant == TenantId::default_tenant() {
        return Ok(st.config.default_provider);
    }
    let reply = st
        .store
        .apply(StoreOp::GetTenant {
            tenant: tenant.clone(),
        })
        .await;
    match store_reply(reply)? {
        StoreReply::Tenant(t) => Ok(t.provider().kind()),
        StoreReply::NotFound => Err(Problem::not_found(format!(
            "no tenant {:?}; create it with PUT /v1/tenants/{tenant}",
            tenant.as_str()
        ))),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn parse_tenant(tenant: String) -> Result<TenantId, Problem> {
    TenantId::new(tenant).map_err(|e| Problem::not_found(format!("no such tenant: {e}")))
}

/// `{"tenant","provider","paused"}`: the settings a person may see (never
/// the token) and the sender's state.
async fn tenant_json<S: Store>(
    st: &AppState<S>,
    tenant: &TenantId,
    provider: &'static str,
) -> Result<serde_json::Value, Problem> {
    let reply = st
        .store
        .apply(StoreOp::GetSender {
            tenant: tenant.clone(),
        })
        .await;
    let paused = match store_reply(reply)? {
        StoreReply::Sender(p) => p,
        other => return Err(unexpected(other)),
    };
    Ok(serde_json::json!({
        "tenant": tenant,
        "provider": provider,
        "paused": paused.map(|p| serde_json::json!({
            "reason": p.reason,
            "code": p.code,
            "since_ms": p.since_ms,
            "probe_at_ms": p.probe_at_ms,
        })),
    }))
}

/// `GET /v1/tenants`: `default` and every stored tenant, each as
/// `GET /v1/tenants/{t}` shows it, with the engine's pacing (the same for
/// all).
pub(super) async fn list_tenants<S: Store>(
    State(st): State<AppState<S>>,
) -> Result<Response, Problem> {
    let stored = match store_reply(st.store.apply(StoreOp::ListTenants).await)? {
        StoreReply::Tenants(t) => t,
        other => return Err(unexpected(other)),
    };
    let mut tenants =
        vec![tenant_json(&st, &TenantId::default_tenant(), st.config.default_provider).await?];
    for t in &stored {
        tenants.push(tenant_json(&st, t.id(), t.provider().kind()).await?);
    }
    let pacing = st.config.pacing;
    Ok(Json(serde_json::json!({
        "tenants": tenants,
        "pacing": {
            "rate_per_sec": pacing.rate_per_sec,
            "recipient_gap_ms": pacing.recipient_gap_ms,
        },
    }))
    .into_response())
}

pub(super) async fn get_tenant<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_tenant(tenant)?;
    let provider = tenant_provider(&st, &id).await?;
    Ok(Json(tenant_json(&st, &id, provider).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    reason: Option<String>,
}

/// Most characters of an operator's pause reason.
const MAX_PAUSE_REASON_CHARS: usize = 500;

pub(super) async fn pause_tenant<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = parse_tenant(tenant)?;
    let body = read_body(body, st.config.max_body_bytes)?;
    let PauseBody { reason } = if body.is_empty() {
        PauseBody::default()
    } else {
        parse_json_body(&body).map_err(|mut p: Problem| {
            p.detail = format!(
                "{}; send {{\"reason\": \"why\"}} (a string), or no body",
                p.detail
            );
            p
        })?
    };
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_PAUSE_REASON_CHARS)
    {
        return Err(Problem::invalid(format!(
            "reason: at most {MAX_PAUSE_REASON_CHARS} characters"
        ))
        .at(Some("reason".into())));
    }
    let provider = tenant_provider(&st, &id).await?;
    let reason = match reason {
        Some(r) if !r.trim().is_empty() => format!("paused by an operator: {}", r.trim()),
        _ => "paused by an operator".to_string(),
    };
    let op = StoreOp::PauseSender {
        tenant: id.clone(),
        reason: reason.clone(),
        code: None,
        temporary: false,
        // A pause by hand outlives restarts, whatever their settings.
        settings: None,
        now_ms: st.clock.now_ms(),
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Paused { newly } => {
            if newly {
                tracing::warn!(tenant = %id, reason, "sender paused by an operator: nothing more of this tenant goes to the provider until POST /v1/tenants/{id}/resume");
            }
        }
        other => return Err(unexpected(other)),
    }
    Ok(Json(tenant_json(&st, &id, provider).await?).into_response())
}

pub(super) async fn resume_tenant<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_tenant(tenant)?;
    let provider = tenant_provider(&st, &id).await?;
    let op = StoreOp::ResumeSender { tenant: id.clone() };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Resumed { was_paused } => {
            if was_paused {
                tracing::warn!(tenant = %id, "sender resumed by an operator: its waiting runs go on");
            }
        }
        other => return Err(unexpected(other)),
    }
    Ok(Json(tenant_json(&st, &id, provider).await?).into_response())
}
