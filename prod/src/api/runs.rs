//! Runs: read one, and what an operator does to runs: list them by
//! filters, cancel one, retry a failed run from its failed step, settle a
//! step whose outcome is unknown, and cancel or retry many at once. Each
//! action is one core op; the store's rules decide whether it fits the run.

use super::body::{optional_json, parse_json, store_reply, unexpected};
use super::{AppState, Problem};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::store::RunFilter;
use oncesend_core::{
    DeliveryKey, FlowId, RunId, RunStatus, RunView, StoreOp, StoreReply, TenantId,
};
use serde::Deserialize;

/// Most runs one list returns.
pub const MAX_LIST: u32 = 1_000;

/// Most runs one bulk call acts on; call again for the rest.
pub const MAX_BULK: u32 = 500;

/// Who an action is recorded as: the API has one token, so `operator`,
/// unless the caller names themselves.
fn actor(by: Option<String>) -> Result<String, Problem> {
    match by {
        None => Ok("operator".into()),
        Some(b) if !b.trim().is_empty() && b.chars().count() <= 64 => Ok(b.trim().to_string()),
        Some(_) => Err(Problem::invalid(
            "\"by\" names who acts, in 1 to 64 characters",
        )),
    }
}

fn conflict(reason: String) -> Problem {
    Problem::new(StatusCode::CONFLICT, "Conflict", reason)
}

/// The filters of `GET /v1/runs` and of the bulk actions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// A run status.
    pub status: Option<String>,
    /// A flow.
    pub flow: Option<String>,
    /// A tenant.
    pub tenant: Option<String>,
    /// Text the run's reason holds.
    pub reason: Option<String>,
    /// Triggered before this time (ms since the Unix epoch).
    pub before_ms: Option<u64>,
    /// Triggered after this time.
    pub after_ms: Option<u64>,
    /// To this recipient (E.164).
    pub to: Option<String>,
    /// Earlier in trigger order than this `seq`: the next page, from the
    /// last page's `next_before_seq`.
    pub before_seq: Option<u64>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Bulk actions: who acts.
    pub by: Option<String>,
}

impl Filters {
    fn parse(&self) -> Result<(Option<RunStatus>, RunFilter), Problem> {
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
                Problem::invalid(format!(
                    "status {s:?} is not one of pending, leased, waiting, completed, failed, cancelled"
                ))
            })?),
        };
        let flow = match self.flow.as_deref() {
            None | Some("") => None,
            Some(f) => {
                Some(FlowId::new(f).map_err(|e| Problem::invalid(format!("flow {f:?}: {e}")))?)
            }
        };
        let tenant = match self.tenant.as_deref() {
            None | Some("") => None,
            Some(t) => {
                Some(TenantId::new(t).map_err(|e| Problem::invalid(format!("tenant {t:?}: {e}")))?)
            }
        };
        let to = match self.to.as_deref() {
            None | Some("") => None,
            Some(t) => Some(oncesend_core::Recipient::parse(t).map_err(|e| {
                Problem::invalid(format!(
                    "to {t:?} is not a phone number in E.164 form (+ and 8 to 15 digits): {e}"
                ))
            })?),
        };
        if self.reason.as_ref().is_some_and(|r| r.len() > 200) {
            return Err(Problem::invalid(
                "reason: at most 200 bytes of text to look for",
            ));
        }
        Ok((
            status,
            RunFilter {
                flow,
                tenant,
                reason_contains: self.reason.clone().filter(|r| !r.is_empty()),
                created_before_ms: self.before_ms,
                created_after_ms: self.after_ms,
                to,
                before_seq: self.before_seq,
            },
        ))
    }
}

fn parse_run_id(id: &str) -> Result<RunId, Problem> {
    id.parse::<RunId>()
        .map_err(|e| Problem::not_found(format!("no run {id:?}: {e}")))
}

/// The run as `GET /v1/runs/{id}` shows it.
pub fn run_json(v: &RunView) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = (0..v.steps.len())
        .map(|i| {
            let d = v.deliveries.get(i).cloned().flatten();
            let status = match &d {
                None => "pending",
                Some(d) => d.state.as_str(),
            };
            let message = &v.steps[i].message;
            serde_json::json!({
                "index": i,
                "kind": message.kind(),
                "template": message.template_name(),
                "status": status,
                "provider_message_id": d.as_ref().and_then(|d| d.provider_message_id.clone()),
                "attempts": d.as_ref().map_or(0, |d| d.attempts),
                "epoch": d.as_ref().map(|d| d.epoch),
                "delay_ms": v.steps[i].delay_ms,
                "message": message,
                "last_error": d.as_ref().and_then(|d| d.last_error.clone()),
                "error_code": d.as_ref().and_then(|d| d.last_error.as_deref()).and_then(oncesend_core::provider_error::code_in_reason),
                "after": v.steps[i].after.as_str(),
                "resolved_by": d.as_ref().and_then(|d| d.resolved_by.clone()),
                "resolved_at_ms": d.as_ref().and_then(|d| d.resolved_at_ms),
                "sent_by": d.as_ref().and_then(|d| d.owner.clone()),
            })
        })
        .collect();
    let mut json = run_summary_json(v);
    json["run_at_ms"] = v.run_at_ms.into();
    json["epoch"] = v.epoch.into();
    json["attempts"] = v.attempts.into();
    json["note"] = v.note.clone().into();
    json["lease"] = serde_json::to_value(&v.lease).expect("a lease serializes");
    json["steps"] = steps.into();
    json["events"] = serde_json::to_value(&v.events).expect("events serialize");
    json
}

/// A run as lists show it: where it stands, without its steps.
pub fn run_summary_json(v: &RunView) -> serde_json::Value {
    serde_json::json!({
        "run_id": v.id,
        "tenant": v.tenant,
        "flow": v.flow,
        "to": v.to,
        "status": v.status.as_str(),
        "cursor": v.cursor,
        "steps": v.steps.len(),
        "waiting_for": v.wait.map(|w| w.as_str()),
        "reason": v.reason,
        "created_at_ms": v.created_at_ms,
        "seq": v.seq,
    })
}

/// `GET /v1/runs/{id}`: the run and each of its steps.
pub(super) async fn get_run<S: Store>(
    State(st): State<AppState<S>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let run = parse_run_id(&id)?;
    match store_reply(st.store.apply(StoreOp::GetRun { run }).await)? {
        StoreReply::Run(v) => Ok(Json(run_json(&v)).into_response()),
        StoreReply::NotFound => Err(Problem::not_found(format!("no run {run}"))),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/runs/{id}/cancel`: an unfinished run stops where it is.
pub(super) async fn cancel<S: Store>(
    State(st): State<AppState<S>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let run = parse_run_id(&id)?;
    let now_ms = st.clock.now_ms();
    match store_reply(st.store.apply(StoreOp::Cancel { run, now_ms }).await)? {
        StoreReply::Cancelled => {
            tracing::info!(run_id = %run, "run cancelled");
            Ok(Json(serde_json::json!({"run_id": run, "status": "cancelled"})).into_response())
        }
        StoreReply::NotFound => Err(Problem::not_found(format!("no run {run}"))),
        StoreReply::Conflict { reason } => Err(Problem::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "{reason}; only an unfinished run (pending, leased or waiting) can be cancelled"
            ),
        )),
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/runs?status=&flow=&tenant=&to=&reason=&before_ms=&after_ms=&before_seq=&limit=`:
/// newest first; `next_before_seq`, while more may follow, asks for the
/// next page.
pub async fn list<S: Store>(
    State(st): State<AppState<S>>,
    query: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let (status, filter) = q.parse()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let op = StoreOp::ListRuns {
        status,
        filter,
        limit,
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::Runs(runs) => {
            let next = match runs.last() {
                Some(last) if runs.len() as u32 == limit => Some(last.seq),
                _ => None,
            };
            let runs: Vec<serde_json::Value> = runs.iter().map(run_summary_json).collect();
            Ok(Json(serde_json::json!({ "runs": runs, "next_before_seq": next })).into_response())
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByBody {
    by: Option<String>,
}

async fn show<S: Store>(st: &AppState<S>, run: oncesend_core::RunId) -> Result<Response, Problem> {
    match store_reply(st.store.apply(StoreOp::GetRun { run }).await)? {
        StoreReply::Run(v) => Ok(Json(run_json(&v)).into_response()),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/runs/{id}/retry`: a failed run goes on from its failed step.
pub async fn retry<S: Store>(
    State(st): State<AppState<S>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let run = parse_run_id(&id)?;
    let b: ByBody = optional_json(body, st.config.max_body_bytes)?;
    let by = actor(b.by)?;
    let now_ms = st.clock.now_ms();
    match store_reply(
        st.store
            .apply(StoreOp::RetryRun {
                run,
                by: by.clone(),
                now_ms,
            })
            .await,
    )? {
        StoreReply::RunIs { status } => {
            tracing::warn!(run_id = %run, by, status = status.as_str(), "run retried by an operator from its failed step");
            show(&st, run).await
        }
        StoreReply::NotFound => Err(Problem::not_found(format!("no run {run}"))),
        StoreReply::Conflict { reason } => Err(conflict(reason)),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    #[serde(rename = "as")]
    outcome: String,
    by: Option<String>,
}

/// `POST /v1/runs/{id}/steps/{i}/resolve {"as":"sent"|"failed"}`: an
/// operator settles a step whose outcome is unknown.
pub async fn resolve<S: Store>(
    State(st): State<AppState<S>>,
    Path((id, step)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let run = parse_run_id(&id)?;
    let step: u32 = step
        .parse()
        .map_err(|_| Problem::not_found(format!("no step {step:?}: steps are numbered from 0")))?;
    let b: ResolveBody = parse_json(body, st.config.max_body_bytes)?;
    let sent = match b.outcome.as_str() {
        "sent" => true,
        "failed" => false,
        other => {
            return Err(Problem::invalid(format!(
                "\"as\" is {other:?}; say \"sent\" (the recipient got it: the run goes on) or \"failed\" (it did not go out: it is sent again)"
            )))
        }
    };
    let by = actor(b.by)?;
    let now_ms = st.clock.now_ms();
    let key = DeliveryKey { run, step };
    let op = StoreOp::ResolveUnknown {
        key,
        sent,
        by: by.clone(),
        now_ms,
    };
    match store_reply(st.store.apply(op).await)? {
        StoreReply::RunIs { status } => {
            tracing::warn!(run_id = %run, step, idempotency_key = %key, by, resolved_as = b.outcome, status = status.as_str(), "unknown step resolved by an operator");
            show(&st, run).await
        }
        StoreReply::NotFound => Err(Problem::not_found(format!(
            "no run {run} with a step {step}"
        ))),
        StoreReply::Conflict { reason } => Err(conflict(reason)),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/runs/cancel` and `POST /v1/runs/retry`: the action on up to
/// `limit` (at most [`MAX_BULK`]) runs matching the filters, newest first,
/// in one store transaction; answers how many it acted on, how many it
/// matched, and whether more may match (call again).
async fn bulk<S: Store>(
    st: AppState<S>,
    body: Result<Bytes, BytesRejection>,
    retry: bool,
) -> Result<Response, Problem> {
    let f: Filters = parse_json(body, st.config.max_body_bytes)?;
    let (mut status, filter) = f.parse()?;
    if filter == RunFilter::default() && status.is_none() {
        return Err(Problem::invalid(
            "give at least one filter (status, flow, tenant, to, reason, before_ms, after_ms): a bulk action never applies to every run by accident",
        ));
    }
    if retry {
        match status {
            None => status = Some(RunStatus::Failed),
            Some(RunStatus::Failed) => {}
            Some(s) => {
                return Err(Problem::invalid(format!(
                    "only failed runs can be retried, not {}",
                    s.as_str()
                )))
            }
        }
    }
    let by = actor(f.by.clone())?;
    let limit = f.limit.unwrap_or(MAX_BULK).clamp(1, MAX_BULK);
    let list = StoreOp::ListRuns {
        status,
        filter,
        limit,
    };
    let runs = match store_reply(st.store.apply(list).await)? {
        StoreReply::Runs(runs) => runs,
        other => return Err(unexpected(other)),
    };
    let now_ms = st.clock.now_ms();
    let ops: Vec<StoreOp> = runs
        .iter()
        .filter(|v| retry || !v.status.is_terminal())
        .map(|v| {
            if retry {
                StoreOp::RetryRun {
                    run: v.id,
                    by: by.clone(),
                    now_ms,
                }
            } else {
                StoreOp::Cancel { run: v.id, now_ms }
            }
        })
        .collect();
    let matched = runs.len();
    let replies = if ops.is_empty() {
        Vec::new()
    } else {
        store_reply_batch(st.store.apply_batch(ops).await)?
    };
    let done = replies
        .iter()
        .filter(|r| matches!(r, StoreReply::Cancelled | StoreReply::RunIs { .. }))
        .count();
    let action = if retry { "retried" } else { "cancelled" };
    tracing::warn!(by, matched, done, action, "bulk action by an operator");
    Ok(Json(serde_json::json!({
        action: done,
        "matched": matched,
        "refused": matched - done,
        "more": matched as u32 == limit,
    }))
    .into_response())
}

fn store_reply_batch(
    r: Result<Vec<StoreReply>, oncesend_core::StoreUnavailable>,
) -> Result<Vec<StoreReply>, Problem> {
    r.map_err(|e| {
        tracing::warn!(error = %e, "store unavailable");
        Problem::store_down(e)
    })
}

/// `POST /v1/runs/cancel` with filters.
pub async fn cancel_many<S: Store>(
    State(st): State<AppState<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    bulk(st, body, false).await
}

/// `POST /v1/runs/retry` with filters.
pub async fn retry_many<S: Store>(
    State(st): State<AppState<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    bulk(st, body, true).await
}
