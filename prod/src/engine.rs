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

/// A handle to a running engine driver. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Cmd>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let driver = Driver {
            engine: Engine::new(config),
            store,
            provider,
            clock,
            tx: tx.clone(),
            waiters: BTreeMap::new(),
            next_req: 0,
            stats: stats.clone(),
        };
        tokio::spawn(driver.run(rx));
        Self { tx, stats }
    }

    /// Sends one step, as `POST /v1/messages` does.
    pub async fn send(&self, request: SendRequest) -> SendResponse {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Send(request, reply)).is_err() {
            return SendResponse::engine_gone();
        }
        rx.await.unwrap_or_else(|_| SendResponse::engine_gone())
    }

    /// A handle whose driver has stopped: what callers see when the engine's
    /// send path is gone (for tests of that answer).
    pub fn stopped() -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Self {
            tx,
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
    tx: mpsc::UnboundedSender<Cmd>,
    waiters: BTreeMap<u64, oneshot::Sender<SendResponse>>,
    next_req: u64,
    stats: Arc<Mutex<EngineStats>>,
}

impl<S: Store, P: Provider> Driver<S, P> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            // The machine keeps every timer; the driver only says the time came.
            let wake = self.engine.poll_timeout().map(|t| self.clock.instant_at(t));
            let cmd = tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
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
                        let _ = tx.send(Cmd::Event(EngineEvent::StoreReplied { req, reply }));
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
                        let _ = tx.send(Cmd::Event(EngineEvent::ProviderReplied { req, outcome }));
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
