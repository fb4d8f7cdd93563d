//! Triggers: `POST /v1/flows/{flow}/runs` plans a run of the flow for one
//! recipient and enqueues it.

use super::body::{default_tenant, parse_json_body, read_body, store_reply, unexpected};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::flow::Trigger;
use oncesend_core::store::TriggerRefusal;
use oncesend_core::{FlowId, Recipient, RunId, StoreOp, StoreReply, TenantId};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default = "default_tenant")]
    tenant: String,
    to: String,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
}

/// A `POST /v1/flows/{flow}/runs` body, checked up to its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRequest {
    /// The run's tenant (not yet looked up).
    pub tenant: TenantId,
    /// The recipient.
    pub to: Recipient,
    /// The variables as sent; [`trigger_vars`] checks them, after the
    /// tenant is known to exist.
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// Parses and checks the body of a trigger, exactly as the handler does
/// before it looks the tenant up.
pub fn parse_trigger_body(body: &[u8]) -> Result<TriggerRequest, Problem> {
    let body: TriggerBody = parse_json_body(body)?;
    let tenant = TenantId::new(body.tenant).map_err(|e| Problem::invalid(e.to_string()))?;
    let to = Recipient::parse(&body.to).map_err(|e| Problem::invalid(format!("to: {e}")))?;
    Ok(TriggerRequest {
        tenant,
        to,
        vars: body.vars,
    })
}

/// A trigger's variables as template text: strings as they are, numbers
/// and booleans as JSON writes them; anything else is 422.
pub fn trigger_vars(
    vars: BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, Problem> {
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        let v = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(Problem::invalid(format!(
                    "vars.{k}: must be a string, number or boolean"
                )))
            }
        };
        out.insert(k, v);
    }
    Ok(out)
}

/// The handler parses and checks the request; the store decides the rest
/// in one call (`StoreOp::Trigger`): the tenant, the flow, the opt-out,
/// the plan and the enqueue, under one transaction.
pub(super) async fn trigger<S: Store>(
    State(st): State<AppState<S>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let flow_id = FlowId::new(flow).map_err(|e| Problem::invalid(e.to_string()))?;
    let body = read_body(body, st.config.max_body_bytes)?;
    let TriggerRequest { tenant, to, vars } = parse_trigger_body(&body)?;
    let vars = trigger_vars(vars)?;
    let trigger_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
    };
    let now_ms = st.clock.now_ms();
    let random = st.ids.lock().expect("ids lock").next_u64();
    let op = StoreOp::Trigger {
        flow: flow_id.clone(),
        trigger: Trigger {
            tenant: tenant.clone(),
            to: to.clone(),
            vars,
            trigger_key: trigger_key.clone(),
        },
        run: RunId::new(now_ms, random),
        now_ms,
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Enqueued { run, created } => {
            tracing::info!(run_id = %run, flow = %flow_id, tenant = %tenant, created, idempotency_key = trigger_key.as_deref().unwrap_or(""), "run triggered");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(serde_json::json!({"run_id": run}))).into_response())
        }
        StoreReply::TriggerRefused(TriggerRefusal::NoTenant) => Err(Problem::invalid(format!(
            "unknown tenant {:?}; create it with PUT /v1/tenants/{tenant} or use \"default\"",
            tenant.as_str()
        ))),
        StoreReply::TriggerRefused(TriggerRefusal::NoFlow) => Err(Problem::not_found(format!(
            "no flow {:?} in tenant {:?}; create it with PUT /v1/flows/{flow_id}",
            flow_id.as_str(),
            tenant.as_str()
        ))),
        StoreReply::TriggerRefused(TriggerRefusal::Plan { problem, path }) => {
            Err(Problem::invalid(problem).at(path))
        }
        StoreReply::Conflict { reason } => Err(Problem::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("{reason}; retry the trigger"),
        )),
        StoreReply::RecipientSuppressed(s) => Err(Problem::new(
            StatusCode::CONFLICT,
            "Recipient opted out",
            format!(
                "{to} opted out of tenant {tenant:?}'s messages ({reason}) at {since} ms; nothing is sent to them until they opt in again (an opt-in keyword such as START) or an operator lifts it: DELETE /v1/tenants/{tenant}/suppressions/{to}",
                tenant = tenant.as_str(),
                reason = s.reason,
                since = s.since_ms,
            ),
        )),
        other => Err(unexpected(other)),
    }
}
