//! The engine machine: the send path behind `POST /v1/messages`.
//!
//! For each request it asks the store to record `sending` (fenced by the
//! worker's epoch, deduplicated by the idempotency key), calls the provider
//! only if that succeeded, records the outcome, and answers. A driver feeds
//! it events and executes the effects it asks for; it decides everything.

use crate::pacing::{Pacer, PacingConfig};
use crate::provider_error::{classify_cloud_api, code_in_reason, retry_later_wait_ms, ErrorClass};
use crate::send::{DeliveryOutcome, OutboundMessage, SendRequest, SendResponse};
use crate::store::{StoreOp, StoreReply, StoreUnavailable};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The Cloud API's "throughput reached" code.
const THROUGHPUT_CODE: i64 = 130429;
/// How long a throttled sender holds still when the provider gave no
/// `Retry-After`.
const THROTTLE_HOLD_MS: u64 = 1_000;

/// A request's number, chosen by the driver and unique among those in flight.
pub type ReqId = u64;

/// How many send timeouts the engine keeps listening for a provider call
/// it has already given up on: an answer inside that window still settles
/// the ledger row it left `unknown` (if the answer says sent); after it, the
/// driver may drop the call.
pub const LATE_REPLY_TIMEOUTS: u64 = 4;

/// Engine limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The longest a provider call may take. The sender's lease must last
    /// at least this long, and a `sending` row older than this is unknown.
    pub send_timeout_ms: u64,
    /// Most requests in flight; past it, requests are answered `Busy`.
    pub max_inflight: usize,
    /// How long a `Busy` answer asks the worker to wait.
    pub busy_retry_ms: u64,
    /// Per-sender rate and per-recipient gap; `None` sends as fast as asked.
    pub pacing: Option<PacingConfig>,
    /// A fingerprint of the `default` tenant's provider settings (they
    /// come from flags). A pause of `default` records it, so an engine
    /// started with other settings (a new token) can lift that pause.
    pub default_settings: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            send_timeout_ms: 10_000,
            max_inflight: 4096,
            busy_retry_ms: 250,
            pacing: None,
            default_settings: None,
        }
    }
}

/// What happened, as the engine hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A worker asked for a send.
    Request {
        /// The driver's number for it.
        req: ReqId,
        /// The request.
        request: SendRequest,
    },
    /// The store answered an op asked for by [`EngineEffect::Store`].
    StoreReplied {
        /// Which request it was for.
        req: ReqId,
        /// The answer, or why there is none.
        reply: Result<StoreReply, StoreUnavailable>,
    },
    /// The provider call asked for by [`EngineEffect::Provide`] came back.
    ProviderReplied {
        /// Which request it was for.
        req: ReqId,
        /// What became of it.
        outcome: DeliveryOutcome,
    },
    /// The time [`Engine::poll_timeout`] named has come.
    Timeout,
}

/// What the engine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEffect {
    /// Apply this op to the store and report back.
    Store {
        /// Which request it is for.
        req: ReqId,
        /// The op.
        op: StoreOp,
    },
    /// Hand this message to the provider and report what it answers. The
    /// engine keeps the call's time limit itself ([`Engine::poll_timeout`]);
    /// the driver may drop the call at `abandon_at_ms`, when nothing it
    /// could answer is listened to any more.
    Provide {
        /// Which request it is for.
        req: ReqId,
        /// The message.
        message: OutboundMessage,
        /// When the engine stops listening for this call's answer.
        abandon_at_ms: u64,
    },
    /// Answer the worker.
    Respond {
        /// Which request.
        req: ReqId,
        /// The answer.
        response: SendResponse,
    },
}

#[derive(Debug)]
enum Stage {
    Begin,
    Provide,
    /// The outcome is being recorded; then, if any, the sender's state
    /// changes (paused, or resumed after a probe), then the answer.
    Finish(SendResponse, Option<StoreOp>),
    /// The sender's state is being changed; then the answer.
    Sender(SendResponse),
}

#[derive(Debug)]
struct InFlight {
    request: SendRequest,
    stage: Stage,
    /// This send is a paused sender's half-open probe.
    probe: bool,
    /// The ledger's attempt number for the key (from 1), once begun.
    attempt: u32,
    /// While the provider is called: when the call's time is up.
    deadline_ms: u64,
}

/// A provider call the engine gave up on, still listened to.
#[derive(Debug)]
struct Late {
    key: crate::ids::DeliveryKey,
    abandon_at_ms: u64,
}

/// Counters an operator wants on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Provider calls made.
    pub provider_calls: u64,
    /// Provider calls that sent the message.
    pub sent: u64,
    /// Provider calls the provider refused.
    pub failed: u64,
    /// Requests answered from the ledger with nothing sent.
    pub replayed: u64,
    /// Requests refused for a stale epoch.
    pub fenced: u64,
    /// Provider calls whose outcome is unknown.
    pub unknown: u64,
    /// Requests turned away at capacity.
    pub busy: u64,
    /// Requests held back by pacing (sender rate or recipient gap).
    pub paced: u64,
    /// Sends refused for the sender's throughput (130429); each slows it.
    pub throttled: u64,
    /// Provider calls refused because of the sender itself (they pause it).
    pub sender_blocked: u64,
    /// Requests not sent because their tenant is paused.
    pub held_for_pause: u64,
    /// Provider calls that ran past the send timeout (counted in `unknown`).
    pub timed_out: u64,
    /// Answers to timed-out calls that came in time to be recorded.
    pub late_replies: u64,
}

/// The engine's send-path state machine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    inflight: BTreeMap<ReqId, InFlight>,
    effects: VecDeque<EngineEffect>,
    stats: EngineStats,
    pacer: Option<Pacer>,
    late: BTreeMap<ReqId, Late>,
    /// Every deadline the engine keeps, by time: a provider call's (while
    /// in flight) and the end of listening for a late answer. Kept with
    /// the entries they time, so the next deadline is read, not searched.
    timers: BTreeSet<(u64, ReqId)>,
}

impl Engine {
    /// An idle engine.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            pacer: config.pacing.map(Pacer::new),
            config,
            inflight: BTreeMap::new(),
            effects: VecDeque::new(),
            stats: EngineStats::default(),
            late: BTreeMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Its limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Requests not yet answered.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<EngineEffect> {
        self.effects.pop_front()
    }

    /// When the engine next wants [`EngineEvent::Timeout`]: the earliest
    /// deadline of a provider call in flight, or of listening for a late one.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|&(at_ms, _)| at_ms)
    }

    /// Takes one event at store time `now_ms`.
    pub fn handle(&mut self, event: EngineEvent, now_ms: u64) {
        match event {
            EngineEvent::Request { req, request } => self.on_request(req, request, now_ms),
            EngineEvent::StoreReplied { req, reply } => self.on_store(req, reply, now_ms),
            EngineEvent::ProviderReplied { req, outcome } => self.on_provider(req, outcome, now_ms),
            EngineEvent::Timeout => self.on_timeout(now_ms),
        }
    }

    /// Calls past their deadline are `unknown`: the request may have
    /// reached the provider. Their answers are still listened to until
    /// [`LATE_REPLY_TIMEOUTS`] send timeouts from the deadline.
    fn on_timeout(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        while let Some(&(at_ms, req)) = self.timers.first() {
            if at_ms > now_ms {
                break;
            }
            self.timers.pop_first();
            if self
                .late
                .get(&req)
                .is_some_and(|l| l.abandon_at_ms == at_ms)
            {
                self.late.remove(&req);
            } else if self
                .inflight
                .get(&req)
                .is_some_and(|f| matches!(f.stage, Stage::Provide) && f.deadline_ms == at_ms)
            {
                due.push(req);
            }
        }
        // In request order, as the calls were made.
        due.sort_unstable();
        let timeout_ms = self.config.send_timeout_ms;
        for req in due {
            let key = self.inflight[&req].request.key;
            self.stats.timed_out += 1;
            self.on_provider(
                req,
                DeliveryOutcome::Unknown {
                    reason: format!("provider gave no answer within {timeout_ms} ms"),
                },
                now_ms,
            );
            // Bounded like the calls themselves; past the bound a late
            // answer is left to the status webhook.
            if self.late.len() >= self.config.max_inflight {
                continue;
            }
            let abandon_at_ms =
                now_ms.saturating_add(timeout_ms.saturating_mul(LATE_REPLY_TIMEOUTS));
            self.late.insert(req, Late { key, abandon_at_ms });
            self.timers.insert((abandon_at_ms, req));
        }
    }

    /// The engine's in-flight bound holds; a request beyond it is `Busy`.
    fn at_capacity(&self) -> bool {
        self.inflight.len() >= self.config.max_inflight
    }

    fn on_request(&mut self, req: ReqId, request: SendRequest, now_ms: u64) {
        assert!(
            !self.inflight.contains_key(&req) && !self.late.contains_key(&req),
            "request number {req} is already in use: a driver numbers each request afresh"
        );
        // Every way in checks it: flows and rendered steps when stored, the
        // send API when a worker hands one over.
        let len = request.message.encoded_len();
        assert!(
            len <= crate::limits::MAX_MESSAGE_BYTES,
            "a message of {len} bytes reached the engine, over {}",
            crate::limits::MAX_MESSAGE_BYTES
        );
        if self.at_capacity() {
            self.stats.busy += 1;
            self.respond(
                req,
                SendResponse::Busy {
                    retry_after_ms: self.config.busy_retry_ms,
                },
            );
            return;
        }
        // Pacing is asked before anything is written: a message held back
        // leaves no `sending` row behind, so the worker may simply come back.
        if let Some(pacer) = &mut self.pacer {
            if let Err(wait_ms) = pacer.admit(&request.tenant, &request.to, now_ms) {
                self.stats.paced += 1;
                self.respond(
                    req,
                    SendResponse::Busy {
                        retry_after_ms: wait_ms.max(1),
                    },
                );
                return;
            }
        }
        self.effects.push_back(EngineEffect::Store {
            req,
            op: StoreOp::BeginDelivery {
                key: request.key,
                epoch: request.epoch,
                send_timeout_ms: self.config.send_timeout_ms,
                now_ms,
            },
        });
        self.inflight.insert(
            req,
            InFlight {
                request,
                stage: Stage::Begin,
                probe: false,
                attempt: 0,
                deadline_ms: 0,
            },
        );
        assert!(
            self.inflight.len() <= self.config.max_inflight,
            "the engine holds {} requests, over its bound of {}",
            self.inflight.len(),
            self.config.max_inflight
        );
    }

    fn on_store(&mut self, req: ReqId, reply: Result<StoreReply, StoreUnavailable>, now_ms: u64) {
        let Some(flight) = self.inflight.get_mut(&req) else {
            return;
        };
        match std::mem::replace(&mut flight.stage, Stage::Provide) {
            Stage::Begin => {
                let response = match reply {
                    Ok(StoreReply::Begun { probe, attempt }) => {
                        self.stats.provider_calls += 1;
                        flight.probe = probe;
                        flight.attempt = attempt;
                        if probe {
                            tracing::info!(tenant = %flight.request.tenant, idempotency_key = %flight.request.key, "probing a paused sender with one send");
                        }
                        let timeout_ms = self.config.send_timeout_ms;
                        flight.deadline_ms = now_ms.saturating_add(timeout_ms);
                        self.timers.insert((flight.deadline_ms, req));
                        let r = &flight.request;
                        self.effects.push_back(EngineEffect::Provide {
                            req,
                            message: OutboundMessage {
                                key: r.key,
                                tenant: r.tenant.clone(),
                                to: r.to.clone(),
                                message: r.message.clone(),
                            },
                            abandon_at_ms: flight
                                .deadline_ms
                                .saturating_add(timeout_ms.saturating_mul(LATE_REPLY_TIMEOUTS)),
                        });
                        return;
                    }
                    Ok(StoreReply::AlreadySent {
                        provider_message_id,
                    }) => {
                        self.stats.replayed += 1;
                        SendResponse::Sent {
                            provider_message_id,
                            replayed: true,
                        }
                    }
                    Ok(StoreReply::InProgress) => SendResponse::InProgress,
                    Ok(StoreReply::DeliveryUnknown) => SendResponse::Unknown {
                        reason: "an earlier attempt's outcome is unknown".into(),
                    },
                    Ok(StoreReply::DeliveryFailed { reason }) => SendResponse::Failed {
                        retryable: false,
                        reason,
                        retry_after_ms: None,
                    },
                    Ok(StoreReply::SenderPaused { reason }) => {
                        self.stats.held_for_pause += 1;
                        SendResponse::Paused { reason }
                    }
                    Ok(StoreReply::Fenced) | Ok(StoreReply::NotFound) => {
                        self.stats.fenced += 1;
                        SendResponse::Fenced
                    }
                    Ok(other) => unreachable!("BeginDelivery never answers {other:?}"),
                    // Nothing was sent; the worker may safely ask again.
                    Err(_) => SendResponse::Busy {
                        retry_after_ms: self.config.busy_retry_ms,
                    },
                };
                self.respond(req, response);
            }
            Stage::Provide => unreachable!("no store op is pending while the provider is called"),
            Stage::Finish(response, then) => {
                // Whether or not the outcome could be recorded, it is the
                // truth; if it was lost, the row turns unknown at its
                // deadline and the key is still never resent.
                if let Err(e) = reply {
                    tracing::warn!(key = %flight.request.key, error = %e, "could not record the delivery outcome");
                }
                match then {
                    Some(op) => {
                        flight.stage = Stage::Sender(response);
                        self.effects.push_back(EngineEffect::Store { req, op });
                    }
                    None => self.respond(req, response),
                }
            }
            Stage::Sender(response) => {
                let tenant = &flight.request.tenant;
                match reply {
                    Ok(StoreReply::Paused { newly: true }) => {
                        let reason = match &response {
                            SendResponse::Paused { reason } => reason.as_str(),
                            _ => "",
                        };
                        tracing::warn!(%tenant, idempotency_key = %flight.request.key, reason, "sender paused: nothing more of this tenant goes to the provider, and its runs wait, until it is resumed (POST /v1/tenants/{tenant}/resume, new settings, or a successful probe for a temporary block)");
                    }
                    Ok(StoreReply::Resumed { was_paused: true }) => {
                        tracing::warn!(%tenant, idempotency_key = %flight.request.key, "sender resumed: its probe went through");
                    }
                    Ok(_) => {}
                    // Not recorded: the next blocked send pauses it again.
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "could not record the sender's state")
                    }
                }
                self.respond(req, response);
            }
        }
    }

    fn on_provider(&mut self, req: ReqId, outcome: DeliveryOutcome, now_ms: u64) {
        if let Some(late) = self.late.remove(&req) {
            self.timers.remove(&(late.abandon_at_ms, req));
            // The worker was told `unknown` already. Only "sent" is passed
            // on to the ledger: it is true whenever it comes. A late refusal
            // is true of this call only, and by the time it lands another
            // attempt of the key may be under way.
            if !matches!(outcome, DeliveryOutcome::Sent { .. }) {
                tracing::info!(idempotency_key = %late.key, outcome = ?outcome, "a provider answer came after the send timeout; the step stays unknown");
                return;
            }
            self.stats.late_replies += 1;
            tracing::info!(idempotency_key = %late.key, outcome = ?outcome, "a provider answer came after the send timeout; recording it");
            self.effects.push_back(EngineEffect::Store {
                req,
                op: StoreOp::FinishDelivery {
                    key: late.key,
                    outcome,
                    now_ms,
                },
            });
            return;
        }
        let Some(flight) = self.inflight.get_mut(&req) else {
            return;
        };
        if !matches!(flight.stage, Stage::Provide) {
            return;
        }
        self.timers.remove(&(flight.deadline_ms, req));
        let mut then = None;
        let response = match &outcome {
            DeliveryOutcome::Sent {
                provider_message_id,
            } => {
                self.stats.sent += 1;
                SendResponse::Sent {
                    provider_message_id: provider_message_id.clone(),
                    replayed: false,
                }
            }
            DeliveryOutcome::SenderBlocked { reason, .. } => {
                // The sender, not this message, is refused: pause the
                // tenant; the run waits and loses no attempt.
                self.stats.sender_blocked += 1;
                then = StoreOp::pause_for(
                    &flight.request.tenant,
                    &outcome,
                    self.config.default_settings.as_deref(),
                    now_ms,
                );
                SendResponse::Paused {
                    reason: reason.clone(),
                }
            }
            DeliveryOutcome::Failed {
                retryable,
                reason,
                retry_after_ms,
            } => {
                self.stats.failed += 1;
                let code = code_in_reason(reason);
                let mut retry_after_ms = *retry_after_ms;
                if code == Some(THROUGHPUT_CODE) {
                    // Over the sender's throughput: every later send of
                    // the tenant waits out the provider's Retry-After,
                    // then goes at half the rate, climbing back.
                    self.stats.throttled += 1;
                    if let Some(pacer) = &mut self.pacer {
                        let tenant = &flight.request.tenant;
                        let hold_ms = retry_after_ms.unwrap_or(THROTTLE_HOLD_MS);
                        pacer.throttle(tenant, hold_ms, now_ms);
                        let rate_per_s = pacer.rate_at(tenant, now_ms.saturating_add(hold_ms));
                        tracing::warn!(%tenant, idempotency_key = %flight.request.key, hold_ms, rate_per_s, "provider throughput reached: the sender slows down");
                    }
                } else if code
                    .is_some_and(|c| classify_cloud_api(0, Some(c)) == ErrorClass::RetryLater)
                {
                    // Meta asks for a much later try: the waits double
                    // with each attempt of the key.
                    let wait_ms = retry_later_wait_ms(flight.attempt);
                    retry_after_ms = Some(retry_after_ms.unwrap_or(0).max(wait_ms));
                }
                SendResponse::Failed {
                    retryable: *retryable,
                    reason: reason.clone(),
                    retry_after_ms,
                }
            }
            DeliveryOutcome::Unknown { reason } => {
                self.stats.unknown += 1;
                SendResponse::Unknown {
                    reason: reason.clone(),
                }
            }
        };
        // A probe the provider answered about the message itself (sent,
        // or refused for the message's own sake) shows the sender is
        // taken again; an unknown outcome shows nothing.
        if flight.probe
            && matches!(
                outcome,
                DeliveryOutcome::Sent { .. } | DeliveryOutcome::Failed { .. }
            )
        {
            then = Some(StoreOp::ResumeSender {
                tenant: flight.request.tenant.clone(),
            });
        }
        flight.stage = Stage::Finish(response, then);
        self.effects.push_back(EngineEffect::Store {
            req,
            op: StoreOp::FinishDelivery {
                key: flight.request.key,
                outcome,
                now_ms,
            },
        });
    }

    fn respond(&mut self, req: ReqId, response: SendResponse) {
        self.inflight.remove(&req);
        self.effects
            .push_back(EngineEffect::Respond { req, response });
    }
}
