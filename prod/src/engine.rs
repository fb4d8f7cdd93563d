//! The engine driver: owns the core's [`Engine`] machine, executes its
//! effects against a [`Store`] and a [`Provider`], and answers callers.
//! It decides nothing itself.

use crate::clock::TokioClock;
use crate::provider::Provider;
use crate::store::Store;
use oncesend_core::engine::EngineStats;
use oncesend_core::{
    DeliveryOutcome, Engine, EngineConfig, EngineEffect, EngineEvent, SendRequest, SendResponse,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

enum Cmd {
    Send(SendRequest, oneshot::Sender<SendResponse>),
    Event(EngineEvent),
}

/// Requests that may wait for the driver, per request the machine may
/// have in flight: past that the caller hears `Busy` at once, as it would
/// from the machine itself, instead of queueing without bound.
const QUEUED_PER_INFLIGHT: usize = 1;

/// Answers (the store's, the provider's) that may wait for the driver,
/// per request in flight: each request has at most one store op or one
/// provider call outstanding, and late provider answers are bounded by
/// the machine to `max_inflight` too. A full queue makes the answering
/// task wait, never drops the answer.
const EVENTS_PER_INFLIGHT: usize = 2;

/// How long send requests took, from reaching the engine to its answer,
/// in the driver's clock (ms): the figures of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Latency {
    /// Requests answered.
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Longest.
    pub max_ms: u64,
}

/// Send latencies since the window was last taken.
type Window = Arc<Mutex<hdrhistogram::Histogram<u64>>>;

fn window() -> Window {
    Arc::new(Mutex::new(
        hdrhistogram::Histogram::new(2).expect("two significant figures are allowed"),
    ))
}

/// A handle to a running engine driver. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    busy_retry_ms: u64,
    stats: Arc<Mutex<EngineStats>>,
    latency: Window,
}

impl EngineHandle {
    /// Starts the driver on the current tokio runtime.
    pub fn spawn<S: Store, P: Provider>(
        config: EngineConfig,
        store: S,
        provider: P,
        clock: TokioClock,
    ) -> Self {
        let inflight = config.max_inflight.max(1);
        let busy_retry_ms = config.busy_retry_ms;
        let (tx, requests) = mpsc::channel(inflight * QUEUED_PER_INFLIGHT);
        let (events_tx, events) = mpsc::channel(inflight * EVENTS_PER_INFLIGHT);
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let latency = window();
        let driver = Driver {
            engine: Engine::new(config),
            store,
            provider,
            clock,
            tx: events_tx,
            waiters: BTreeMap::new(),
            next_req: 0,
            stats: stats.clone(),
            arrived: BTreeMap::new(),
            latency: latency.clone(),
        };
        tokio::spawn(driver.run(requests, events));
        Self {
            tx,
            busy_retry_ms,
            stats,
            latency,
        }
    }

    /// Sends one step, as `POST /v1/messages` does.
    pub async fn send(&self, request: SendRequest) -> SendResponse {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Cmd::Send(request, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Nothing was written: the worker may safely ask again.
                return SendResponse::Busy {
                    retry_after_ms: self.busy_retry_ms,
                };
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return SendResponse::engine_gone(),
        }
        rx.await.unwrap_or_else(|_| SendResponse::engine_gone())
    }

    /// A handle whose driver has stopped: what callers see when the engine's
    /// send path is gone (for tests of that answer).
    pub fn stopped() -> Self {
        let (tx, _) = mpsc::channel(1);
        Self {
            tx,
            busy_retry_ms: 0,
            stats: Arc::default(),
            latency: window(),
        }
    }

    /// Whether the driver still runs (`/readyz` says not ready otherwise).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The machine's counters.
    pub fn stats(&self) -> EngineStats {
        *self.stats.lock().expect("stats lock")
    }

    /// How long the requests answered since the last call took (`None`
    /// when none was), and starts a new window.
    pub fn take_latency(&self) -> Option<Latency> {
        let mut h = self.latency.lock().expect("latency lock");
        if h.is_empty() {
            return None;
        }
        let l = Latency {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.5),
            p99_ms: h.value_at_quantile(0.99),
            max_ms: h.max(),
        };
        h.reset();
        Some(l)
    }
}

struct Driver<S, P> {
    engine: Engine,
    store: S,
    provider: P,
    clock: TokioClock,
    /// Where the store's and the provider's answers come back.
    tx: mpsc::Sender<EngineEvent>,
    waiters: BTreeMap<u64, oneshot::Sender<SendResponse>>,
    next_req: u64,
    stats: Arc<Mutex<EngineStats>>,
    /// When each request in the machine arrived.
    arrived: BTreeMap<u64, u64>,
    latency: Window,
}

impl<S: Store, P: Provider> Driver<S, P> {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Cmd>,
        mut events: mpsc::Receiver<EngineEvent>,
    ) {
        loop {
            // The machine keeps every timer; the driver only says the time came.
            let wake = self.engine.poll_timeout().map(|t| self.clock.instant_at(t));
            // Answers first: they finish work in flight and free room for
            // new requests.
            let cmd = tokio::select! {
                biased;
                event = events.recv() => Cmd::Event(event.expect("the driver holds a sender")),
                cmd = requests.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => return,
                },
                _ = sleep_until(wake) => Cmd::Event(EngineEvent::Timeout),
            };
            let now_ms = self.clock.now_ms();
            match cmd {
                Cmd::Send(request, reply) => {
                    self.next_req += 1;
                    let req = self.next_req;
                    self.waiters.insert(req, reply);
                    self.arrived.insert(req, now_ms);
                    self.engine
                        .handle(EngineEvent::Request { req, request }, now_ms);
                }
                Cmd::Event(event) => self.engine.handle(event, now_ms),
            }
            self.drain(now_ms);
        }
    }

    fn drain(&mut self, now_ms: u64) {
        while let Some(effect) = self.engine.poll_effect() {
            match effect {
                EngineEffect::Store { req, op } => {
                    let store = self.store.clone();
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let reply = store.apply(op).await;
                        let _ = tx.send(EngineEvent::StoreReplied { req, reply }).await;
                    });
                }
                EngineEffect::Provide {
                    req,
                    message,
                    abandon_at_ms,
                } => {
                    let provider = self.provider.clone();
                    let tx = self.tx.clone();
                    let abandon_at = self.clock.instant_at(abandon_at_ms);
                    tokio::spawn(async move {
                        let key = message.key;
                        // Past `abandon_at` the machine listens no more.
                        let Ok(outcome) =
                            tokio::time::timeout_at(abandon_at, provider.send(message)).await
                        else {
                            tracing::warn!(idempotency_key = %key, "provider call dropped: no answer long after the send timeout");
                            return;
                        };
                        match &outcome {
                            DeliveryOutcome::Sent {
                                provider_message_id,
                            } => {
                                tracing::info!(idempotency_key = %key, provider_message_id, "provider accepted")
                            }
                            DeliveryOutcome::Failed {
                                retryable, reason, ..
                            } => {
                                tracing::warn!(idempotency_key = %key, retryable, reason, "provider refused")
                            }
                            DeliveryOutcome::Unknown { reason } => {
                                tracing::warn!(idempotency_key = %key, reason, "provider outcome unknown; the key will not be resent")
                            }
                            DeliveryOutcome::SenderBlocked {
                                reason,
                                code,
                                temporary,
                            } => {
                                tracing::warn!(idempotency_key = %key, reason, code, temporary, "provider refused the sender itself")
                            }
                        }
                        let _ = tx.send(EngineEvent::ProviderReplied { req, outcome }).await;
                    });
                }
                EngineEffect::Respond { req, response } => {
                    if let Some(w) = self.waiters.remove(&req) {
                        let _ = w.send(response);
                    }
                    if let Some(at) = self.arrived.remove(&req) {
                        self.latency
                            .lock()
                            .expect("latency lock")
                            .saturating_record(now_ms.saturating_sub(at));
                    }
                }
            }
        }
        *self.stats.lock().expect("stats lock") = self.engine.stats();
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use oncesend_core::{DeliveryKey, Message, Recipient, RunId, TenantId};

    /// A provider that never answers.
    #[derive(Clone)]
    struct Silent;

    impl Provider for Silent {
        async fn send(&self, _: oncesend_core::OutboundMessage) -> DeliveryOutcome {
            std::future::pending().await
        }
    }

    fn request(n: u64) -> SendRequest {
        SendRequest {
            key: DeliveryKey {
                run: RunId::new(n, n),
                step: 0,
            },
            epoch: 1,
            tenant: TenantId::default_tenant(),
            to: Recipient::parse("+5511913390707").unwrap(),
            message: Message::text("hi"),
        }
    }

    /// Requests past the queue's bound are answered `Busy` at once, before
    /// the driver sees them: nothing queues without bound in front of the
    /// machine, and nothing is written for them.
    #[tokio::test(flavor = "current_thread")]
    async fn past_the_queue_bound_a_request_is_busy_at_once() {
        let config = EngineConfig {
            max_inflight: 2,
            busy_retry_ms: 77,
            ..EngineConfig::default()
        };
        let engine = EngineHandle::spawn(
            config,
            MemoryStore::new(Default::default()),
            Silent,
            TokioClock::new(0),
        );
        // Polled one after another in this task, before the driver runs:
        // two fit in the queue, the rest are turned away.
        let sends: Vec<_> = (0..5).map(|n| Box::pin(engine.send(request(n)))).collect();
        let mut answers = Vec::new();
        for mut send in sends {
            tokio::select! {
                biased;
                answer = &mut send => answers.push(Some(answer)),
                _ = std::future::ready(()) => answers.push(None),
            }
        }
        assert_eq!(
            answers[..2],
            [None, None],
            "the first two wait in the queue"
        );
        for a in &answers[2..] {
            assert_eq!(a, &Some(SendResponse::Busy { retry_after_ms: 77 }));
        }
        assert!(engine.is_running());
    }

    /// A provider that answers `sent` after a quarter of a second.
    #[derive(Clone)]
    struct Slow;

    impl Provider for Slow {
        async fn send(&self, m: oncesend_core::OutboundMessage) -> DeliveryOutcome {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            DeliveryOutcome::Sent {
                provider_message_id: format!("wamid.{}", m.key),
            }
        }
    }

    /// Each answered request's time in the engine, in its clock, goes into
    /// the window `take_latency` reads and empties.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn send_latency_is_measured_per_window() {
        use oncesend_core::{NewRun, PlannedStep, StoreOp, StoreReply, WorkerId};
        let store = MemoryStore::new(Default::default());
        let mut epochs = Vec::new();
        for n in 0..3 {
            let to = format!("+55119133907{n:02}");
            let run = NewRun {
                id: RunId::new(n, n),
                tenant: TenantId::default_tenant(),
                flow: oncesend_core::FlowId::new("f").unwrap(),
                to: Recipient::parse(&to).unwrap(),
                steps: vec![PlannedStep {
                    message: Message::text("hi"),
                    delay_ms: 0,
                    after: Default::default(),
                    after_timeout_ms: None,
                }],
                trigger_key: None,
            };
            store.apply_now(StoreOp::Enqueue { run, now_ms: 0 });
            let StoreReply::Claimed(c) = store.apply_now(StoreOp::Claim {
                owner: WorkerId::new("w").unwrap(),
                max: 1,
                lease_ms: 600_000,
                now_ms: 0,
            }) else {
                panic!("claimed")
            };
            epochs.push((to, c[0].epoch));
        }
        let engine = EngineHandle::spawn(EngineConfig::default(), store, Slow, TokioClock::new(0));
        assert_eq!(engine.take_latency(), None, "nothing answered yet");
        for (n, (to, epoch)) in epochs.into_iter().enumerate() {
            let mut r = request(n as u64);
            r.to = Recipient::parse(&to).unwrap();
            r.epoch = epoch;
            let answer = engine.send(r).await;
            assert!(matches!(answer, SendResponse::Sent { .. }), "{answer:?}");
        }
        let l = engine.take_latency().expect("three answered");
        assert_eq!(l.count, 3);
        assert!(
            (250..300).contains(&l.p50_ms) && l.p99_ms >= l.p50_ms && l.max_ms >= l.p99_ms,
            "{l:?}"
        );
        assert_eq!(engine.take_latency(), None, "the window starts afresh");
    }
}
