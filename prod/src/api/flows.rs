//! Flows: `PUT` and `GET /v1/flows/{flow}`, and `GET /v1/flows` (every
//! flow, a page at a time).

use super::body::{default_tenant, parse_json_body, read_body, store_reply, unexpected};
use super::tenants::tenant_exists;
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::{Flow, FlowId, RawFlowStep, StoreOp, StoreReply, TenantId};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowBody {
    #[serde(default = "default_tenant")]
    tenant: String,
    steps: Vec<RawFlowStep>,
}

/// A `PUT /v1/flows/{flow}` body, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRequest {
    /// The flow's tenant (not yet looked up).
    pub tenant: TenantId,
    /// The flow, within its bounds.
    pub flow: Flow,
}

/// Parses and checks the body of `PUT /v1/flows/{id}`, exactly as the
/// handler does before it looks the tenant up.
pub fn parse_flow_body(id: FlowId, body: &[u8]) -> Result<FlowRequest, Problem> {
    let body: FlowBody = parse_json_body(body)?;
    let tenant = TenantId::new(body.tenant).map_err(|e| Problem::invalid(e.to_string()))?;
    let flow =
        Flow::from_raw(id, body.steps).map_err(|e| Problem::invalid(e.to_string()).at(e.path()))?;
    Ok(FlowRequest { tenant, flow })
}

pub(super) async fn put_flow<S: Store>(
    State(st): State<AppState<S>>,
    Path(flow): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = FlowId::new(flow).map_err(|e| Problem::invalid(e.to_string()))?;
    let body = read_body(body, st.config.max_body_bytes)?;
    let FlowRequest { tenant, flow } = parse_flow_body(id.clone(), &body)?;
    tenant_exists(&st, &tenant).await?;
    let steps = flow.steps().len();
    match store_reply(st.store.apply(StoreOp::PutFlow { tenant, flow }).await)? {
        StoreReply::FlowPut { created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            tracing::info!(flow = %id, steps, created, "flow stored");
            Ok((
                status,
                Json(serde_json::json!({"flow": id, "steps": steps})),
            )
                .into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// The query of `GET /v1/flows/{flow}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantQuery {
    tenant: Option<String>,
}

/// The flow as `GET /v1/flows/{flow}` shows it: its steps exactly as put.
pub fn flow_json(tenant: &TenantId, flow: &Flow) -> serde_json::Value {
    serde_json::json!({
        "flow": flow.id(),
        "tenant": tenant,
        "steps": flow.steps(),
    })
}

/// Most flows one `GET /v1/flows` returns.
pub const MAX_FLOW_LIST: u32 = 500;

/// The query of `GET /v1/flows`: the page after the flow named by both
/// `after_tenant` and `after_flow`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    after_tenant: Option<String>,
    after_flow: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/flows?after_tenant=&after_flow=&limit=`: flows by tenant then
/// name, each as `GET /v1/flows/{flow}` shows it; `next` names the key to
/// pass for the next page, while there may be one.
pub(super) async fn list_flows<S: Store>(
    State(st): State<AppState<S>>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let axum::extract::Query(q) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let after = match (q.after_tenant, q.after_flow) {
        (None, None) => None,
        (Some(t), Some(f)) => Some((
            TenantId::new(t).map_err(|e| Problem::invalid(format!("after_tenant: {e}")))?,
            FlowId::new(f).map_err(|e| Problem::invalid(format!("after_flow: {e}")))?,
        )),
        _ => {
            return Err(Problem::invalid(
                "give after_tenant and after_flow together (both from the last page's \"next\"), or neither",
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_FLOW_LIST);
    match store_reply(st.store.apply(StoreOp::ListFlows { after, limit }).await)? {
        StoreReply::Flows(flows) => {
            let next = match flows.last() {
                Some((t, f)) if flows.len() as u32 == limit => {
                    serde_json::json!({"after_tenant": t, "after_flow": f.id()})
                }
                _ => serde_json::Value::Null,
            };
            let flows: Vec<serde_json::Value> =
                flows.iter().map(|(t, f)| flow_json(t, f)).collect();
            Ok(Json(serde_json::json!({"flows": flows, "next": next})).into_response())
        }
        other => Err(unexpected(other)),
    }
}

pub(super) async fn get_flow<S: Store>(
    State(st): State<AppState<S>>,
    Path(flow): Path<String>,
    query: Result<axum::extract::Query<TenantQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let axum::extract::Query(q) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let id = FlowId::new(flow).map_err(|e| Problem::invalid(e.to_string()))?;
    let tenant = TenantId::new(q.tenant.unwrap_or_else(default_tenant))
        .map_err(|e| Problem::invalid(format!("tenant: {e}")))?;
    let op = StoreOp::GetFlow {
        tenant: tenant.clone(),
        flow: id.clone(),
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Flow(f) => Ok(Json(flow_json(&tenant, &f)).into_response()),
        StoreReply::NotFound => Err(Problem::not_found(format!(
            "no flow {:?} in tenant {:?}; create it with PUT /v1/flows/{id}",
            id.as_str(),
            tenant.as_str()
        ))),
        other => Err(unexpected(other)),
    }
}
