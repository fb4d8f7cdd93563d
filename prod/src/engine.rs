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

/// A handle to a running engine driver. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    busy_retry_ms: u64,
    stats: Arc<Mutex<EngineStats>>,
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
        let driver = Driver {
            engine: Engine::new(config),
            store,
            provider,
            clock,
            tx: events_tx,
            waiters: BTreeMap::new(),
            next_req: 0,
            stats: stats.clone(),
        };
        tokio::spawn(driver.run(requests, events));
        Self {
            tx,
            busy_retry_ms,
            stats,
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
                    self.engine
                        .handle(EngineEvent::Request { req, request }, now_ms);
                }
                Cmd::Event(event) => self.engine.handle(event, now_ms),
            }
            self.drain();
        }
    }

    fn drain(&mut self) {
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
}
