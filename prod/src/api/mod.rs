//! The engine's HTTP API (axum). Handlers validate at the edge, pass the
//! core's ops to the store, and hand sends to the engine driver; they make
//! no delivery decisions of their own.
//!
//! This module holds what every handler shares (settings, state, the
//! router with every route, the bearer check); each resource's handlers
//! live in a module of their own.

mod body;
pub mod console;
mod flows;
mod health;
pub mod history;
mod messages;
mod problem;
pub mod recipients;
pub mod runs;
mod tenants;
mod triggers;
pub mod webhook;

pub use body::parse_json_body;
pub use flows::{flow_json, parse_flow_body, FlowRequest};
pub use messages::parse_send_batch;
pub use problem::Problem;
pub use runs::{run_json, run_summary_json, MAX_LIST};
pub use triggers::{parse_trigger_body, trigger_vars, TriggerRequest};

use crate::clock::TokioClock;
use crate::engine::EngineHandle;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use oncesend_core::rng::SplitMix64;
use oncesend_core::worker::WorkerStats;
use oncesend_core::TenantId;
use sha2::{Digest, Sha256};
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
    /// The engine's pacing, the same for every sender, as
    /// `GET /v1/tenants` shows it.
    pub pacing: Pacing,
}

/// How fast the engine lets each sender go: the same for every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pacing {
    /// Messages per second per sender (0: not known to the API).
    pub rate_per_sec: u32,
    /// Least gap between two messages to one recipient, in ms.
    pub recipient_gap_ms: u64,
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
            pacing: Pacing::default(),
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
    history: Arc<history::History>,
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
            history: self.history.clone(),
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
            history: Arc::default(),
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
        .route("/v1/flows", get(flows::list_flows::<S>))
        .route("/v1/tenants", get(tenants::list_tenants::<S>))
        .route("/v1/stats", get(health::stats::<S>))
        .route("/v1/stats/history", get(history::history::<S>))
        .route(
            "/v1/flows/{flow}",
            put(flows::put_flow::<S>).get(flows::get_flow::<S>),
        )
        .route("/v1/flows/{flow}/runs", post(triggers::trigger::<S>))
        .route(
            "/v1/tenants/{tenant}",
            put(tenants::put_tenant::<S>).get(tenants::get_tenant::<S>),
        )
        .route(
            "/v1/tenants/{tenant}/pause",
            post(tenants::pause_tenant::<S>),
        )
        .route(
            "/v1/tenants/{tenant}/resume",
            post(tenants::resume_tenant::<S>),
        )
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
        .route("/v1/runs/{id}", get(runs::get_run::<S>))
        .route("/v1/runs/{id}/cancel", post(runs::cancel::<S>))
        .route("/v1/runs/{id}/retry", post(runs::retry::<S>))
        .route(
            "/v1/runs/{id}/steps/{step}/resolve",
            post(runs::resolve::<S>),
        )
        .route("/v1/messages", post(messages::send_message::<S>))
        .route("/v1/messages/batch", post(messages::send_batch::<S>))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(health::readyz::<S>))
        .route("/metrics", get(health::metrics::<S>))
        .route(
            "/v1/providers/cloud-api/webhook",
            get(webhook::verify::<S>).post(webhook::receive::<S>),
        )
        .merge(console::routes())
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
