//! The worker driver: runs the core's [`Worker`] machine against a
//! [`Store`] and an engine, executing its effects and feeding back results.
//! It decides nothing itself.

use crate::clock::TokioClock;
use crate::coalesce::{CoalesceOptions, Coalescer};
use crate::engine::EngineHandle;
use crate::net::{Connector, HttpClient, HttpError};
use crate::store::Store;
use hyper::{Method, StatusCode};
use oncesend_core::worker::{EngineUnreachable, WorkerStats};
use oncesend_core::{
    SendBatchResponse, SendRequest, SendResponse, Worker, WorkerEffect, WorkerEvent,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// How a worker daemon gathers its sends: up to 256 a batch (split by
/// body size), four requests at once.
pub const SEND_BATCH: CoalesceOptions = CoalesceOptions {
    max_batch: 256,
    in_flight: 4,
};

/// Request bodies a [`BatchedHttpEngineClient`] aims to stay under: well
/// within the API's default 64 KiB limit.
pub const SEND_BATCH_BODY_BUDGET: usize = 32 * 1024;

/// The engine over HTTP, many sends to a request: concurrent
/// [`EngineClient::send`] calls are gathered (see [`crate::coalesce`]) and
/// go out together as `POST /v1/messages/batch`, split so each body stays
/// under [`SEND_BATCH_BODY_BUDGET`]. To the worker machine each send is
/// still its own call with its own answer; when a request fails, every send
/// in it fails as it would have alone (`EngineUnreachable`, retried).
#[derive(Clone)]
pub struct BatchedHttpEngineClient {
    calls: Coalescer<SendRequest, Result<SendResponse, EngineUnreachable>>,
    counts: Arc<BatchCounts>,
}

#[derive(Default)]
struct BatchCounts {
    posts: AtomicU64,
    shared: AtomicU64,
    planted_bug: AtomicBool,
}

impl BatchedHttpEngineClient {
    /// Gathers up to `options.max_batch` sends a request, with at most
    /// `options.in_flight` requests at once. Must be called on a tokio
    /// runtime.
    pub fn new<C: Connector>(http: HttpClient<C>, options: CoalesceOptions) -> Self {
        let counts = Arc::new(BatchCounts::default());
        let counting = counts.clone();
        let calls = Coalescer::spawn(options, move |requests: Vec<SendRequest>| {
            let http = http.clone();
            let counts = counting.clone();
            async move {
                let mut chunks: Vec<(Vec<u8>, usize)> = Vec::new();
                let mut body = Vec::new();
                let mut count = 0;
                for request in &requests {
                    let item = serde_json::to_vec(request).expect("a send request serializes");
                    if count > 0 && body.len() + item.len() + 2 > SEND_BATCH_BODY_BUDGET {
                        body.extend_from_slice(b"]}");
                        chunks.push((std::mem::take(&mut body), count));
                        count = 0;
                    }
                    body.extend_from_slice(if count == 0 { b"{\"messages\":[" } else { b"," });
                    body.extend_from_slice(&item);
                    count += 1;
                }
                body.extend_from_slice(b"]}");
                chunks.push((body, count));
                for (_, count) in &chunks {
                    counts.posts.fetch_add(1, Ordering::Relaxed);
                    if *count > 1 {
                        counts.shared.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let posts = chunks
                    .into_iter()
                    .map(|(body, count)| post_batch(&http, body, count));
                let results: Vec<_> = futures_util::future::join_all(posts)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                if counts.planted_bug.load(Ordering::Relaxed) {
                    // The planted bug: a batch whose answer was lost is
                    // taken to have gone out.
                    return results
                        .into_iter()
                        .map(|r| {
                            r.or(Ok(SendResponse::Sent {
                                provider_message_id: String::new(),
                                replayed: false,
                            }))
                        })
                        .collect();
                }
                results
            }
        });
        Self { calls, counts }
    }

    /// `POST /v1/messages/batch` requests made so far, and of those, how
    /// many carried more than one send.
    pub fn posts(&self) -> (u64, u64) {
        (
            self.counts.posts.load(Ordering::Relaxed),
            self.counts.shared.load(Ordering::Relaxed),
        )
    }

    /// Test-only: plants a bug in the error handling, so the simulation can
    /// show it finds one. A batch whose request failed is then answered
    /// "sent" for every send in it, instead of "engine unreachable" (which
    /// the worker retries, and the ledger makes safe to retry).
    #[doc(hidden)]
    pub fn plant_bug_failed_batch_taken_as_sent(&self) {
        self.counts.planted_bug.store(true, Ordering::Relaxed);
    }
}

async fn post_batch<C: Connector>(
    http: &HttpClient<C>,
    body: Vec<u8>,
    count: usize,
) -> Vec<Result<SendResponse, EngineUnreachable>> {
    let outcome = async {
        let (status, _, bytes) = http
            .request(Method::POST, "/v1/messages/batch", &[], Some(body))
            .await
            .map_err(|e| match e {
                HttpError::Connect(e) => EngineUnreachable(format!("cannot connect: {e}")),
                HttpError::Exchange(e) => EngineUnreachable(e),
            })?;
        if status != StatusCode::OK {
            return Err(EngineUnreachable(format!(
                "engine answered {status} to a batch of {count}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        let answer: SendBatchResponse = serde_json::from_slice(&bytes).map_err(|e| {
            EngineUnreachable(format!(
                "engine answered a batch with a body that is not a batch response: {e}"
            ))
        })?;
        if answer.results.len() != count {
            return Err(EngineUnreachable(format!(
                "engine answered {} results to a batch of {count}",
                answer.results.len()
            )));
        }
        Ok(answer.results)
    }
    .await;
    match outcome {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); count],
    }
}

impl EngineClient for BatchedHttpEngineClient {
    async fn send(&self, request: SendRequest) -> Result<SendResponse, EngineUnreachable> {
        self.calls.call(request).await.unwrap_or_else(|| {
            Err(EngineUnreachable(
                "the send's batch was dropped before it answered".to_string(),
            ))
        })
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

/// Answers that may wait for the worker's loop, per run a claim may take.
const EVENTS_PER_RUN: usize = 2;

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
    // Each claimed run has at most one store op or one send outstanding,
    // and the claim and the heartbeats one more each: answers beyond that
    // make their task wait, never get dropped.
    let (tx, mut rx) =
        mpsc::channel::<WorkerEvent>(worker.config().batch.max(1) as usize * EVENTS_PER_RUN + 2);
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
                        let _ = tx.send(WorkerEvent::StoreReplied { op, reply }).await;
                    });
                }
                WorkerEffect::Send { op, request } => {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        let reply = engine.send(request).await;
                        let _ = tx.send(WorkerEvent::SendReplied { op, reply }).await;
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
