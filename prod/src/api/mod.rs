//! The engine's HTTP API (axum). Handlers validate at the edge, pass the
//! core's ops to the store, and hand sends to the engine driver; they make
//! no delivery decisions of their own.

mod problem;
pub mod recipients;
pub mod runs;
pub mod webhook;

pub use problem::Problem;

use crate::clock::TokioClock;
use crate::engine::EngineHandle;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use oncesend_core::flow::Trigger;
use oncesend_core::rng::SplitMix64;
use oncesend_core::worker::WorkerStats;
use oncesend_core::{
    plan_run, Flow, FlowId, ProviderSettings, RawFlowStep, Recipient, RunId, RunView, SendBatch,
    SendBatchResponse, SendRequest, SendResponse, StoreOp, StoreReply, Tenant, TenantId,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Largest request body accepted, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The bearer token every request except the probes must carry, if set.
    pub token: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The Meta app secret that signs status webhooks; without it the
    /// webhook refuses everything.
    pub app_secret: Option<String>,
    /// The token Meta echoes in the webhook's GET verification challenge.
    pub webhook_verify_token: Option<String>,
    /// The provider the `default` tenant sends through (flags), as
    /// `GET /v1/tenants/default` shows it.
    pub default_provider: &'static str,
    /// The fingerprint of the `default` tenant's provider settings, kept
    /// with a pause that a failed status sets (see `EngineConfig`).
    pub default_settings: Option<String>,
    /// The `default` tenant's Cloud API phone number id: inbound messages
    /// to it are the default tenant's.
    pub default_phone_number_id: Option<String>,
    /// Opt-out and opt-in keywords of inbound messages.
    pub keywords: Keywords,
}

/// The inbound texts that opt a recipient out or back in: a text matches
/// when the whole of it, trimmed and case-folded, equals a keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keywords {
    opt_out: Vec<String>,
    opt_in: Vec<String>,
}

impl Keywords {
    /// Keywords as given (any case, surrounding spaces ignored).
    pub fn new(opt_out: &[String], opt_in: &[String]) -> Self {
        let fold = |k: &[String]| {
            k.iter()
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect()
        };
        Self {
            opt_out: fold(opt_out),
            opt_in: fold(opt_in),
        }
    }

    /// `Some(true)` for an opt-out, `Some(false)` for an opt-in.
    pub fn classify(&self, text: &str) -> Option<bool> {
        let t = text.trim().to_lowercase();
        if self.opt_out.contains(&t) {
            Some(true)
        } else if self.opt_in.contains(&t) {
            Some(false)
        } else {
            None
        }
    }
}

impl Default for Keywords {
    fn default() -> Self {
        let words = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        Self::new(
            &words("STOP,UNSUBSCRIBE,PARAR,SAIR,CANCELAR"),
            &words("START,VOLTAR"),
        )
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            app_secret: None,
            webhook_verify_token: None,
            default_provider: "log",
            default_settings: None,
            default_phone_number_id: None,
            keywords: Keywords::default(),
        }
    }
}

/// Called with a tenant's name after its settings were stored, so cached
/// providers can be rebuilt.
pub type TenantHook = Arc<dyn Fn(&TenantId) + Send + Sync>;

/// Everything the handlers share.
pub struct AppState<S> {
    store: S,
    engine: EngineHandle,
    clock: TokioClock,
    ids: Arc<Mutex<SplitMix64>>,
    config: Arc<ApiConfig>,
    workers: Arc<Mutex<Vec<Arc<Mutex<WorkerStats>>>>>,
    tenant_hook: Option<TenantHook>,
    webhook: Arc<WebhookCounts>,
}

/// What the status webhook did with what it was sent, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookCounts {
    /// Statuses and messages that changed something.
    pub applied: std::sync::atomic::AtomicU64,
    /// Ones that were not ours, repeated, late, or of a kind not tracked.
    pub ignored: std::sync::atomic::AtomicU64,
}

impl WebhookCounts {
    fn add(&self, applied: u32, ignored: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        self.applied.fetch_add(applied.into(), Relaxed);
        self.ignored.fetch_add(ignored.into(), Relaxed);
    }
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            engine: self.engine.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
            config: self.config.clone(),
            workers: self.workers.clone(),
            tenant_hook: self.tenant_hook.clone(),
            webhook: self.webhook.clone(),
        }
    }
}

impl<S: Store> AppState<S> {
    /// State for a router. `id_seed` seeds run-id randomness (the daemons
    /// draw it from the OS, the simulation from its seed).
    pub fn new(
        store: S,
        engine: EngineHandle,
        clock: TokioClock,
        id_seed: u64,
        config: ApiConfig,
    ) -> Self {
        Self {
            store,
            engine,
            clock,
            ids: Arc::new(Mutex::new(SplitMix64::new(id_seed))),
            config: Arc::new(config),
            workers: Arc::default(),
            tenant_hook: None,
            webhook: Arc::default(),
        }
    }

    /// Calls `hook` after each `PUT /v1/tenants/{tenant}`.
    pub fn on_tenant_put(mut self, hook: TenantHook) -> Self {
        self.tenant_hook = Some(hook);
        self
    }

    /// Adds an in-process worker's counters to `/metrics`.
    pub fn watch_worker(&self, stats: Arc<Mutex<WorkerStats>>) {
        self.workers.lock().expect("workers lock").push(stats);
    }
}

/// The API's routes.
pub fn router<S: Store>(state: AppState<S>) -> Router {
    let max_body = state.config.max_body_bytes;
    let guarded = Router::new()
        .route("/v1/flows/{flow}", put(put_flow::<S>).get(get_flow::<S>))
        .route("/v1/flows/{flow}/runs", post(trigger::<S>))
        .route(
            "/v1/tenants/{tenant}",
            put(put_tenant::<S>).get(get_tenant::<S>),
        )
        .route("/v1/tenants/{tenant}/pause", post(pause_tenant::<S>))
        .route("/v1/tenants/{tenant}/resume", post(resume_tenant::<S>))
        .route(
            "/v1/tenants/{tenant}/suppressions",
            get(recipients::list_suppressed::<S>),
        )
        .route(
            "/v1/tenants/{tenant}/suppressions/{to}",
            get(recipients::get_suppression::<S>)
                .put(recipients::suppress::<S>)
                .delete(recipients::unsuppress::<S>),
        )
        .route(
            "/v1/tenants/{tenant}/recipients/{to}",
            get(recipients::get_recipient::<S>),
        )
        .route("/v1/runs", get(runs::list::<S>))
        .route("/v1/runs/cancel", post(runs::cancel_many::<S>))
        .route("/v1/runs/retry", post(runs::retry_many::<S>))
        .route("/v1/runs/{id}", get(get_run::<S>))
        .route("/v1/runs/{id}/cancel", post(cancel::<S>))
        .route("/v1/runs/{id}/retry", post(runs::retry::<S>))
        .route(
            "/v1/runs/{id}/steps/{step}/resolve",
            post(runs::resolve::<S>),
        )
        .route("/v1/messages", post(send_message::<S>))
        .route("/v1/messages/batch", post(send_batch::<S>))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route(
            "/v1/providers/cloud-api/webhook",
            get(webhook::verify::<S>).post(webhook::receive::<S>),
        )
        .merge(guarded)
        .fallback(|| async { Problem::not_found("no such endpoint; see the README for the API") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Compares digests, so neither the token's content nor its length leaks
/// through timing.
fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn auth<S: Store>(State(st): State<AppState<S>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &st.config.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if token_matches(t, expected) => {}
            Some(_) => {
                return Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "the bearer token is wrong; use the value of ONCESEND_TOKEN",
                )
                .into_response()
            }
            None => return Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing 'Authorization: Bearer <token>' header; use the value of ONCESEND_TOKEN",
            )
            .into_response(),
        }
    }
    next.run(request).await
}

/// Reads a JSON body: 413 past the size limit, 400 for what is not JSON,
/// 422 for JSON of the wrong shape.
fn parse_json<T: DeserializeOwned>(
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
fn read_body(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Bytes, Problem> {
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

fn store_reply(
    r: Result<StoreReply, oncesend_core::StoreUnavailable>,
) -> Result<StoreReply, Problem> {
    r.map_err(|e| {
        tracing::warn!(error = %e, "store unavailable");
        Problem::store_down(e)
    })
}

fn unexpected(reply: StoreReply) -> Problem {
    tracing::error!(?reply, "store answered out of contract");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "the store gave an unexpected answer; nothing more was done. Please report this",
    )
}

fn default_tenant() -> String {
    "default".into()
}

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

async fn put_flow<S: Store>(
    State(st): State<AppState<S>>,
    Path(flow): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = FlowId::new(flow).map_err(|e| Problem::invalid(e.to_string()))?;
    let body = read_body(body, st.config.max_body_bytes)?;
    let FlowRequest { tenant, flow } = parse_flow_body(id.clone(), &body)?;
    tenant_exists(&st, &tenant).await?;
    let steps = flow.steps.len();
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantQuery {
    tenant: Option<String>,
}

/// The flow as `GET /v1/flows/{flow}` shows it: its steps exactly as put.
pub fn flow_json(tenant: &TenantId, flow: &Flow) -> serde_json::Value {
    serde_json::json!({
        "flow": flow.id,
        "tenant": tenant,
        "steps": flow.steps,
    })
}

async fn get_flow<S: Store>(
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

async fn trigger<S: Store>(
    State(st): State<AppState<S>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let flow_id = FlowId::new(flow).map_err(|e| Problem::invalid(e.to_string()))?;
    let body = read_body(body, st.config.max_body_bytes)?;
    let TriggerRequest { tenant, to, vars } = parse_trigger_body(&body)?;
    tenant_exists(&st, &tenant).await?;
    let vars = trigger_vars(vars)?;
    let trigger_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
    };
    let flow = match store_reply(
        st.store
            .apply(StoreOp::GetFlow {
                tenant: tenant.clone(),
                flow: flow_id.clone(),
            })
            .await,
    )? {
        StoreReply::Flow(f) => f,
        StoreReply::NotFound => {
            return Err(Problem::not_found(format!(
                "no flow {:?} in tenant {:?}; create it with PUT /v1/flows/{flow_id}",
                flow_id.as_str(),
                tenant.as_str()
            )))
        }
        other => return Err(unexpected(other)),
    };
    let now_ms = st.clock.now_ms();
    let random = st.ids.lock().expect("ids lock").next_u64();
    let (tenant_for_problem, to_for_problem) = (tenant.clone(), to.clone());
    let run = plan_run(
        &flow,
        Trigger {
            tenant,
            to,
            vars,
            trigger_key: trigger_key.clone(),
        },
        RunId::new(now_ms, random),
    )
    .map_err(|e| Problem::invalid(e.to_string()).at(e.path()))?;
    match store_reply(st.store.apply(StoreOp::Enqueue { run, now_ms }).await)? {
        StoreReply::Enqueued { run, created } => {
            tracing::info!(run_id = %run, flow = %flow_id, created, idempotency_key = trigger_key.as_deref().unwrap_or(""), "run triggered");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(serde_json::json!({"run_id": run}))).into_response())
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
                to = to_for_problem,
                tenant = tenant_for_problem.as_str(),
                reason = s.reason,
                since = s.since_ms,
            ),
        )),
        other => Err(unexpected(other)),
    }
}

/// 422 naming the tenant unless it is `default` or stored (a tenant named
/// in a body is invalid input, not a missing resource).
async fn tenant_exists<S: Store>(st: &AppState<S>, tenant: &TenantId) -> Result<(), Problem> {
    match tenant_provider(st, tenant).await {
        Err(p) if p.status == StatusCode::NOT_FOUND => Err(Problem::invalid(format!(
            "unknown tenant {:?}; create it with PUT /v1/tenants/{tenant} or use \"default\"",
            tenant.as_str()
        ))),
        other => other.map(|_| ()),
    }
}

async fn put_tenant<S: Store>(
    State(st): State<AppState<S>>,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = TenantId::new(tenant).map_err(|e| Problem::invalid(e.to_string()))?;
    let settings: ProviderSettings = parse_json(body, st.config.max_body_bytes)?;
    let tenant = Tenant::new(id.clone(), settings).map_err(|e| Problem::invalid(e.to_string()))?;
    if let ProviderSettings::CloudApi { cloud_api } = &tenant.provider {
        crate::net::HttpUrl::parse(&cloud_api.base_url)
            .map_err(|e| Problem::invalid(format!("cloud_api.base_url: {e}")))?;
    }
    let kind = tenant.provider.kind();
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
        StoreReply::Tenant(t) => Ok(t.provider.kind()),
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

async fn get_tenant<S: Store>(
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

async fn pause_tenant<S: Store>(
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

async fn resume_tenant<S: Store>(
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

/// Most runs one list returns.
pub const MAX_LIST: u32 = 1_000;

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
                "last_error": d.as_ref().and_then(|d| d.last_error.clone()),
                "error_code": d.as_ref().and_then(|d| d.last_error.as_deref()).and_then(oncesend_core::provider_error::code_in_reason),
                "after": v.steps[i].after.as_str(),
                "resolved_by": d.as_ref().and_then(|d| d.resolved_by.clone()),
                "resolved_at_ms": d.as_ref().and_then(|d| d.resolved_at_ms),
            })
        })
        .collect();
    let mut json = run_summary_json(v);
    json["run_at_ms"] = v.run_at_ms.into();
    json["note"] = v.note.clone().into();
    json["steps"] = steps.into();
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
    })
}

async fn get_run<S: Store>(
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

async fn cancel<S: Store>(
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

async fn send_message<S: Store>(
    State(st): State<AppState<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request: SendRequest = parse_json(body, st.config.max_body_bytes)?;
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
async fn send_batch<S: Store>(
    State(st): State<AppState<S>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let batch = parse_send_batch(&read_body(body, st.config.max_body_bytes)?)?;
    let sends = batch.messages.into_iter().map(|m| st.engine.send(m));
    let results = futures_util::future::join_all(sends).await;
    Ok((StatusCode::OK, Json(SendBatchResponse { results })).into_response())
}

async fn readyz<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    if !st.engine.is_running() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Engine stopped",
            "the engine's send path has stopped; every send is answered busy and nothing goes out. Restart the engine",
        ));
    }
    let now_ms = st.clock.now_ms();
    match store_reply(st.store.apply(StoreOp::Stats { now_ms }).await)? {
        StoreReply::Stats(_) => Ok("ready\n".into_response()),
        other => Err(unexpected(other)),
    }
}

async fn metrics<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    let now_ms = st.clock.now_ms();
    let stats = match store_reply(st.store.apply(StoreOp::Stats { now_ms }).await)? {
        StoreReply::Stats(s) => s,
        other => return Err(unexpected(other)),
    };
    let paused = match store_reply(st.store.apply(StoreOp::ListPausedSenders).await)? {
        StoreReply::PausedSenders(p) => p,
        other => return Err(unexpected(other)),
    };
    let e = st.engine.stats();
    let mut w = WorkerStats::default();
    for cell in st.workers.lock().expect("workers lock").iter() {
        let s = *cell.lock().expect("worker stats lock");
        w.claimed += s.claimed;
        w.rescued += s.rescued;
        w.sent += s.sent;
        w.fenced += s.fenced;
        w.lease_lost += s.lease_lost;
        w.completed += s.completed;
        w.failed += s.failed;
    }
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "oncesend_queue_depth",
        "gauge",
        "Runs waiting, due or not.",
        &[("", stats.pending)],
    );
    metric(
        "oncesend_queue_due",
        "gauge",
        "Runs waiting whose time has come.",
        &[("", stats.due)],
    );
    metric(
        "oncesend_runs_leased",
        "gauge",
        "Runs held by a worker.",
        &[("", stats.leased)],
    );
    metric(
        "oncesend_runs_waiting",
        "gauge",
        "Runs waiting for the provider's word: a status for an unknown step, or for the step before.",
        &[("", stats.waiting)],
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            "oncesend_webhook_items_total",
            "counter",
            "Statuses and messages the Cloud API webhook brought, by what became of them.",
            &[
                ("{result=\"applied\"}", st.webhook.applied.load(Relaxed)),
                ("{result=\"ignored\"}", st.webhook.ignored.load(Relaxed)),
            ],
        );
    }
    metric(
        "oncesend_oldest_pending_age_ms",
        "gauge",
        "How long the longest-waiting due run has waited.",
        &[("", stats.oldest_due_age_ms)],
    );
    metric(
        "oncesend_unknown_deliveries",
        "gauge",
        "Deliveries whose outcome is unknown.",
        &[("", stats.unknown_deliveries)],
    );
    metric(
        "oncesend_sends_total",
        "counter",
        "Send requests answered by the engine, by outcome.",
        &[
            ("{outcome=\"sent\"}", e.sent),
            ("{outcome=\"failed\"}", e.failed),
            ("{outcome=\"unknown\"}", e.unknown),
            ("{outcome=\"replayed\"}", e.replayed),
            ("{outcome=\"fenced\"}", e.fenced),
            ("{outcome=\"busy\"}", e.busy),
            ("{outcome=\"paced\"}", e.paced),
            ("{outcome=\"throttled\"}", e.throttled),
            ("{outcome=\"sender_blocked\"}", e.sender_blocked),
            ("{outcome=\"held_for_pause\"}", e.held_for_pause),
        ],
    );
    // Every paused tenant at 1, and `default` always, so the series exists
    // before its first pause.
    let mut paused_labels: Vec<(String, u64)> = paused
        .iter()
        .map(|(t, _)| (format!("{{tenant=\"{t}\"}}"), 1))
        .collect();
    if !paused.iter().any(|(t, _)| *t == TenantId::default_tenant()) {
        paused_labels.push(("{tenant=\"default\"}".to_string(), 0));
        paused_labels.sort();
    }
    let paused_samples: Vec<(&str, u64)> = paused_labels
        .iter()
        .map(|(l, v)| (l.as_str(), *v))
        .collect();
    metric(
        "oncesend_tenant_paused",
        "gauge",
        "1 while the tenant's sender is paused (nothing of it goes to the provider).",
        &paused_samples,
    );
    metric(
        "oncesend_fenced_writes_total",
        "counter",
        "Worker writes and sends refused for a stale epoch.",
        &[("", w.fenced)],
    );
    metric(
        "oncesend_lease_rescues_total",
        "counter",
        "Runs claimed again after another worker's lease lapsed.",
        &[("", w.rescued)],
    );
    metric(
        "oncesend_leases_lost_total",
        "counter",
        "Runs a worker let go because its lease ran out.",
        &[("", w.lease_lost)],
    );
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
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

    #[tokio::test]
    async fn a_stopped_engine_is_not_ready_and_answers_busy_with_nothing_sent() {
        use tower::ServiceExt;
        let engine = EngineHandle::stopped();
        assert!(!engine.is_running());
        let store = crate::store::MemoryStore::new(oncesend_core::MemStore::new());
        let state = AppState::new(
            store.clone(),
            engine.clone(),
            TokioClock::new(1_000),
            1,
            ApiConfig::default(),
        );
        let ready = router(state)
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(ready.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("Restart the engine"));
        let request: SendRequest = serde_json::from_value(message(0)).unwrap();
        assert_eq!(engine.send(request).await, SendResponse::engine_gone());
        // And a running one is ready.
        let live = EngineHandle::spawn(
            oncesend_core::EngineConfig::default(),
            store.clone(),
            crate::provider::NullProvider::default(),
            TokioClock::new(1_000),
        );
        assert!(live.is_running());
        let state = AppState::new(store, live, TokioClock::new(1_000), 1, ApiConfig::default());
        let ready = router(state)
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
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
}
