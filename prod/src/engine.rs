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
use std::time::Duration;
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
            return SendResponse::Busy {
                retry_after_ms: 1_000,
            };
        }
        rx.await.unwrap_or(SendResponse::Busy {
            retry_after_ms: 1_000,
        })
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
        while let Some(cmd) = rx.recv().await {
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
                    timeout_ms,
                } => {
                    let provider = self.provider.clone();
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let key = message.key;
                        let outcome = match tokio::time::timeout(
                            Duration::from_millis(timeout_ms),
                            provider.send(message),
                        )
                        .await
                        {
                            Ok(outcome) => outcome,
                            Err(_) => DeliveryOutcome::Unknown {
                                reason: format!("provider gave no answer within {timeout_ms} ms"),
                            },
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
