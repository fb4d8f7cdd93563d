//! The worker driver: runs the core's [`Worker`] machine against a
//! [`Store`] and an engine, executing its effects and feeding back results.
//! It decides nothing itself.

use crate::clock::TokioClock;
use crate::engine::EngineHandle;
use crate::net::{Connector, HttpClient, HttpError};
use crate::store::Store;
use hyper::{Method, StatusCode};
use oncesend_core::worker::{EngineUnreachable, WorkerStats};
use oncesend_core::{SendRequest, SendResponse, Worker, WorkerEffect, WorkerEvent};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How a worker reaches the engine's send API.
pub trait EngineClient: Clone + Send + Sync + 'static {
    /// Asks the engine to send one step.
    fn send(
        &self,
        request: SendRequest,
    ) -> impl Future<Output = Result<SendResponse, EngineUnreachable>> + Send;
}

/// An engine in the same process.
impl EngineClient for EngineHandle {
    async fn send(&self, request: SendRequest) -> Result<SendResponse, EngineUnreachable> {
        Ok(EngineHandle::send(self, request).await)
    }
}

/// The engine over HTTP: `POST /v1/messages` with the idempotency key.
#[derive(Clone)]
pub struct HttpEngineClient<C> {
    http: HttpClient<C>,
}

impl<C: Connector> HttpEngineClient<C> {
    /// A client over `http`.
    pub fn new(http: HttpClient<C>) -> Self {
        Self { http }
    }
}

impl<C: Connector> EngineClient for HttpEngineClient<C> {
    async fn send(&self, request: SendRequest) -> Result<SendResponse, EngineUnreachable> {
        let body = serde_json::to_vec(&request).expect("a send request serializes");
        let headers = [("idempotency-key", request.key.to_string())];
        let (status, _, bytes) = self
            .http
            .request(Method::POST, "/v1/messages", &headers, Some(body))
            .await
            .map_err(|e| match e {
                HttpError::Connect(e) => EngineUnreachable(format!("cannot connect: {e}")),
                HttpError::Exchange(e) => EngineUnreachable(e),
            })?;
        match status {
            StatusCode::OK | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS => {
                serde_json::from_slice(&bytes).map_err(|e| {
                    EngineUnreachable(format!(
                        "engine answered {status} with a body that is not a send response: {e}"
                    ))
                })
            }
            _ => Err(EngineUnreachable(format!(
                "engine answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ))),
        }
    }
}

/// Runs a worker until `shutdown` resolves and everything it holds is
/// finished or released. Its counters are published to `stats`.
pub async fn run_worker<S: Store, E: EngineClient>(
    worker: Worker,
    store: S,
    engine: E,
    clock: TokioClock,
    shutdown: impl Future<Output = ()> + Send,
    stats: Arc<Mutex<WorkerStats>>,
) {
    run_worker_woken(worker, store, engine, clock, shutdown, stats, None).await
}

/// [`run_worker`], also claiming at once whenever `wakeups` is notified
/// (PostgreSQL's `NOTIFY` on enqueue), instead of only at its next poll.
pub async fn run_worker_woken<S: Store, E: EngineClient>(
    mut worker: Worker,
    store: S,
    engine: E,
    clock: TokioClock,
    shutdown: impl Future<Output = ()> + Send,
    stats: Arc<Mutex<WorkerStats>>,
    wakeups: Option<Arc<tokio::sync::Notify>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkerEvent>();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    let worker_id = worker.config().id.clone();
    tracing::info!(worker_id = %worker_id, lease_ms = worker.config().lease_ms, batch = worker.config().batch, "worker started");
    worker.handle(WorkerEvent::Tick, clock.now_ms());
    loop {
        while let Some(effect) = worker.poll_effect() {
            let tx = tx.clone();
            match effect {
                WorkerEffect::Store { op, request } => {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let reply = store.apply(request).await;
                        let _ = tx.send(WorkerEvent::StoreReplied { op, reply });
                    });
                }
                WorkerEffect::Send { op, request } => {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        let reply = engine.send(request).await;
                        let _ = tx.send(WorkerEvent::SendReplied { op, reply });
                    });
                }
            }
        }
        let now = worker.stats();
        let before = std::mem::replace(&mut *stats.lock().expect("stats lock"), now);
        if now.claimed > before.claimed {
            tracing::debug!(
                worker_id = %worker_id,
                claimed = now.claimed - before.claimed,
                rescued = now.rescued - before.rescued,
                held = worker.held(),
                claimed_total = now.claimed,
                rescued_total = now.rescued,
                "claimed runs"
            );
        }
        if worker.is_idle() {
            break;
        }
        let wake = worker.poll_timeout().map(|t| clock.instant_at(t));
        tokio::select! {
            biased;
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                worker.handle(WorkerEvent::Shutdown, clock.now_ms());
            }
            Some(event) = rx.recv() => worker.handle(event, clock.now_ms()),
            _ = sleep_until(wake) => worker.handle(WorkerEvent::Tick, clock.now_ms()),
            _ = notified(wakeups.as_deref()), if !stopping => {
                worker.handle(WorkerEvent::Wake, clock.now_ms());
            }
        }
    }
    let s = worker.stats();
    tracing::info!(
        worker_id = %worker_id,
        claimed = s.claimed,
        rescued = s.rescued,
        sent = s.sent,
        completed = s.completed,
        failed = s.failed,
        fenced = s.fenced,
        lease_lost = s.lease_lost,
        "worker stopped: nothing held"
    );
}

async fn notified(wakeups: Option<&tokio::sync::Notify>) {
    match wakeups {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
