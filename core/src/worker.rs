//! The worker machine: claims runs, sends their steps through the engine,
//! and moves them on, one step at a time, in order.
//!
//! Shaped like a sans-IO protocol machine: the driver calls
//! [`Worker::handle`] with each event and the current time, executes what
//! [`Worker::poll_effect`] hands out, and sleeps until
//! [`Worker::poll_timeout`]. The machine never waits with a lease held for a
//! delay: delays are written back to the store as the run's `run_at`.

use crate::ids::{DeliveryKey, RunId, WorkerId};
use crate::retry::RetryPolicy;
use crate::rng::SplitMix64;
use crate::send::{SendRequest, SendResponse};
use crate::store::{ClaimedRun, RunStatus, RunWait, StoreOp, StoreReply, StoreUnavailable};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Waits the engine asks for up to this long are waited out with the lease
/// held; longer ones give the lease up until then.
pub const MAX_HELD_WAIT_MS: u64 = 1_000;
/// How soon a run released because its tenant is paused is due again.
/// Claims skip a paused tenant's runs, so this only bounds how fast a run
/// moves on once the tenant is resumed.
pub const PAUSED_RECHECK_MS: u64 = 1_000;

/// A lease is at least this many send timeouts long, so a provider call
/// begun under it always ends inside it, with room for the heartbeat that
/// renews it.
pub const LEASE_SEND_TIMEOUTS: u64 = 3;

/// A heartbeat that failed is tried again after this fraction of a lease
/// (a tenth): several tries fit in what is left of it.
pub const HEARTBEAT_RETRIES_PER_LEASE: u64 = 10;

/// Heartbeats per lease: a holder renews its lease after a third of it has
/// passed, so two heartbeats in a row may be lost (or answered late) before
/// the lease can lapse under it.
pub const HEARTBEATS_PER_LEASE: u64 = 3;

/// An op's number, unique within one worker.
pub type OpId = u64;

/// Why the worker could not reach the engine. The engine's ledger makes a
/// repeated send safe, so every such failure is simply retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine unreachable: {0}")]
pub struct EngineUnreachable(pub String);

/// Why a worker configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The lease is too short for a send to finish inside it.
    #[error("lease_ms ({lease_ms}) must be at least 3 x send_timeout_ms ({send_timeout_ms}), so a send always finishes inside the lease")]
    LeaseTooShort {
        /// The lease asked for.
        lease_ms: u64,
        /// The send timeout.
        send_timeout_ms: u64,
    },
    /// A batch or concurrency of zero, or a batch over the limit.
    #[error("batch must be 1 to {max} and concurrency at least 1", max = crate::limits::MAX_CLAIM_BATCH)]
    Bounds,
}

/// How a worker behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Its name on leases and in logs.
    pub id: WorkerId,
    /// Length of each lease.
    pub lease_ms: u64,
    /// Most runs per claim.
    pub batch: u32,
    /// Most runs held at once.
    pub concurrency: usize,
    /// How long to wait before claiming again after finding nothing.
    pub poll_ms: u64,
    /// The engine's provider-call limit; a send starts only with at least
    /// twice this much lease left.
    pub send_timeout_ms: u64,
    /// Backoff and attempt limits.
    pub retry: RetryPolicy,
    /// How long a run waits at a step whose outcome is unknown for the
    /// provider's word (a status webhook) before it fails.
    pub unknown_timeout_ms: u64,
}

/// How long a run waits for the provider's word on an unknown step, unless
/// configured: one hour. Meta retries a status webhook for days, but a
/// flow that waits longer has lost its moment.
pub const DEFAULT_UNKNOWN_TIMEOUT_MS: u64 = 3_600_000;

impl WorkerConfig {
    /// Sensible production defaults for a worker named `id`.
    pub fn new(id: WorkerId) -> Self {
        Self {
            id,
            lease_ms: 30_000,
            batch: 10,
            concurrency: 64,
            poll_ms: 500,
            send_timeout_ms: 10_000,
            retry: RetryPolicy::default(),
            unknown_timeout_ms: DEFAULT_UNKNOWN_TIMEOUT_MS,
        }
    }

    /// Checks the bounds the machine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms < LEASE_SEND_TIMEOUTS * self.send_timeout_ms {
            return Err(ConfigError::LeaseTooShort {
                lease_ms: self.lease_ms,
                send_timeout_ms: self.send_timeout_ms,
            });
        }
        if self.batch == 0 || self.batch > crate::limits::MAX_CLAIM_BATCH || self.concurrency == 0 {
            return Err(ConfigError::Bounds);
        }
        Ok(())
    }
}

/// What happened, as the worker hears of it.
// A store reply is as large as a run's view; each event is moved once,
// next to a network round trip, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Time passed.
    Tick,
    /// The store says work was enqueued: claim now rather than at the next
    /// poll (unless backing off from a store that failed).
    Wake,
    /// A store op asked for by [`WorkerEffect::Store`] came back.
    StoreReplied {
        /// Which op.
        op: OpId,
        /// The answer, or why there is none.
        reply: Result<StoreReply, StoreUnavailable>,
    },
    /// A send asked for by [`WorkerEffect::Send`] came back.
    SendReplied {
        /// Which op.
        op: OpId,
        /// The engine's answer, or why there is none.
        reply: Result<SendResponse, EngineUnreachable>,
    },
    /// Stop claiming; finish or release what is held.
    Shutdown,
}

/// What the worker asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEffect {
    /// Apply this op to the store; answer with [`WorkerEvent::StoreReplied`].
    Store {
        /// Its number.
        op: OpId,
        /// The op.
        request: StoreOp,
    },
    /// Send this through the engine; answer with [`WorkerEvent::SendReplied`].
    Send {
        /// Its number.
        op: OpId,
        /// The request.
        request: SendRequest,
    },
}

/// Counters an operator wants on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Runs leased by this worker's claims.
    pub claimed: u64,
    /// Runs claimed whose earlier lease had lapsed (another holder vanished).
    pub rescued: u64,
    /// Steps the engine confirmed sent.
    pub sent: u64,
    /// Writes or sends refused for a stale epoch.
    pub fenced: u64,
    /// Runs dropped because their lease ran out before it could be extended.
    pub lease_lost: u64,
    /// Runs completed.
    pub completed: u64,
    /// Runs failed for good.
    pub failed: u64,
    /// Runs left waiting for the provider's word on an unknown step.
    pub awaiting: u64,
}

#[derive(Debug, Clone)]
enum Stage {
    /// Ready to send the cursor's step at this time.
    Ready { at_ms: u64 },
    /// The send is in flight.
    Sending,
    /// A write is in flight; kept so it can be repeated.
    Writing { op: Box<StoreOp> },
    /// A write failed to reach the store; repeat it at this time.
    WriteAgain { at_ms: u64, op: Box<StoreOp> },
}

#[derive(Debug, Clone)]
struct Held {
    run: ClaimedRun,
    /// Our own conservative view of the lease: counted from when the claim
    /// (or heartbeat) was *sent*, so it ends no later than the store's.
    lease_until_ms: u64,
    stage: Stage,
    heartbeat_in_flight: bool,
    next_heartbeat_ms: u64,
    /// Consecutive failures to reach the engine or store for this step.
    transient: u32,
    /// The time this run is filed under in [`Worker::timers`].
    filed_ms: u64,
}

impl Held {
    /// The earliest time something falls due for this run with no reply
    /// arriving: its lease running out, its heartbeat, or its next send or
    /// repeated write.
    fn due_ms(&self) -> u64 {
        let mut due = self.lease_until_ms;
        if !self.heartbeat_in_flight {
            due = due.min(self.next_heartbeat_ms);
        }
        match &self.stage {
            Stage::Ready { at_ms } | Stage::WriteAgain { at_ms, .. } => due.min(*at_ms),
            Stage::Sending | Stage::Writing { .. } => due,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Claim,
    Heartbeat,
    Send,
    Write,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: OpKind,
    run: Option<(RunId, u64)>,
    sent_at_ms: u64,
}

/// The worker's state machine.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    rng: SplitMix64,
    held: BTreeMap<RunId, Held>,
    /// Every held run, by the time it next needs attention, so an event
    /// looks only at the runs it concerns and the runs that fell due.
    timers: BTreeSet<(u64, RunId)>,
    /// Runs an event changed, to be looked at before it returns.
    touched: Vec<RunId>,
    pending: BTreeMap<OpId, Pending>,
    next_op: OpId,
    claim_in_flight: bool,
    next_claim_ms: u64,
    claim_failures: u32,
    draining: bool,
    effects: VecDeque<WorkerEffect>,
    stats: WorkerStats,
}

impl Worker {
    /// A worker that has claimed nothing yet. `seed` feeds its backoff
    /// jitter; the same seed gives the same behaviour.
    pub fn new(config: WorkerConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            rng: SplitMix64::new(seed),
            held: BTreeMap::new(),
            timers: BTreeSet::new(),
            touched: Vec::new(),
            pending: BTreeMap::new(),
            next_op: 0,
            claim_in_flight: false,
            next_claim_ms: 0,
            claim_failures: 0,
            draining: false,
            effects: VecDeque::new(),
            stats: WorkerStats::default(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// Runs held right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// True once a shutdown has finished: nothing held, nothing claiming.
    pub fn is_idle(&self) -> bool {
        self.draining && self.held.is_empty() && !self.claim_in_flight
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<WorkerEffect> {
        self.effects.pop_front()
    }

    /// When to call [`Worker::handle`] with [`WorkerEvent::Tick`] next, if
    /// no reply arrives first.
    pub fn poll_timeout(&self) -> Option<u64> {
        let claim = self.may_claim().then_some(self.next_claim_ms);
        let run = self.timers.first().map(|&(t, _)| t);
        match (claim, run) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one event at local time `now_ms`, then does whatever is due.
    pub fn handle(&mut self, event: WorkerEvent, now_ms: u64) {
        match event {
            WorkerEvent::Tick => {}
            WorkerEvent::Wake => {
                if self.claim_failures == 0 {
                    self.next_claim_ms = self.next_claim_ms.min(now_ms);
                }
            }
            WorkerEvent::Shutdown => {
                if !self.draining {
                    tracing::info!(worker_id = %self.config.id, held = self.held.len(), "shutting down: no more claims");
                }
                self.draining = true;
            }
            WorkerEvent::StoreReplied { op, reply } => {
                if let Some(p) = self.pending.remove(&op) {
                    self.touched.extend(p.run.map(|(id, _)| id));
                    self.on_store(p, reply, now_ms);
                }
            }
            WorkerEvent::SendReplied { op, reply } => {
                if let Some(p) = self.pending.remove(&op) {
                    self.touched.extend(p.run.map(|(id, _)| id));
                    self.on_send(p, reply, now_ms);
                }
            }
        }
        self.drive(now_ms);
        // A wake-up already due would make the driver spin without time
        // passing: everything due must have been acted on above.
        debug_assert!(
            self.poll_timeout().is_none_or(|t| t > now_ms),
            "poll_timeout {:?} is not after now {now_ms}",
            self.poll_timeout()
        );
        #[cfg(debug_assertions)]
        self.check_timers();
    }

    /// Every held run is filed once, under the time it is next due.
    #[cfg(debug_assertions)]
    fn check_timers(&self) {
        assert_eq!(self.timers.len(), self.held.len(), "one timer per held run");
        for (id, h) in &self.held {
            assert_eq!(
                h.filed_ms,
                h.due_ms(),
                "run {id} is filed under a stale time"
            );
            assert!(
                self.timers.contains(&(h.filed_ms, *id)),
                "run {id} is not filed"
            );
        }
    }

    /// Starts holding a claimed run, replacing any earlier hold of it.
    fn hold(&mut self, held: Held) {
        let id = held.run.id;
        if let Some(old) = self.held.insert(id, held) {
            self.timers.remove(&(old.filed_ms, id));
        }
        self.touched.push(id);
    }

    /// Stops holding a run.
    fn unhold(&mut self, id: RunId) -> Option<Held> {
        let h = self.held.remove(&id)?;
        self.timers.remove(&(h.filed_ms, id));
        Some(h)
    }

    /// Files a held run under the time it is next due.
    fn refile(&mut self, id: RunId) {
        if let Some(h) = self.held.get_mut(&id) {
            self.timers.remove(&(h.filed_ms, id));
            h.filed_ms = h.due_ms();
            self.timers.insert((h.filed_ms, id));
        }
    }

    fn may_claim(&self) -> bool {
        !self.draining && !self.claim_in_flight && self.held.len() < self.config.concurrency
    }

    fn jitter(&mut self, attempt: u32) -> u64 {
        let r = self.rng.next_u64();
        // Never zero: a retry always lets time pass.
        self.config.retry.backoff_ms(attempt, r).max(1)
    }

    fn issue(&mut self, kind: OpKind, run: Option<(RunId, u64)>, now_ms: u64) -> OpId {
        self.next_op += 1;
        self.pending.insert(
            self.next_op,
            Pending {
                kind,
                run,
                sent_at_ms: now_ms,
            },
        );
        self.next_op
    }

    fn store(&mut self, kind: OpKind, run: Option<(RunId, u64)>, request: StoreOp, now_ms: u64) {
        let op = self.issue(kind, run, now_ms);
        self.effects.push_back(WorkerEffect::Store { op, request });
    }

    /// Finds the held run an op was for, if it is still held under the
    /// same epoch; replies for runs since dropped or re-claimed are stale.
    fn held_for<'a>(held: &'a mut BTreeMap<RunId, Held>, p: &Pending) -> Option<&'a mut Held> {
        let (id, epoch) = p.run?;
        held.get_mut(&id).filter(|h| h.run.epoch == epoch)
    }

    fn drop_run(&mut self, id: RunId, why: &'static str) {
        if let Some(h) = self.unhold(id) {
            tracing::debug!(worker_id = %self.config.id, run_id = %id, step = h.run.cursor, epoch = h.run.epoch, why, "run let go");
        }
    }

    fn drive(&mut self, now_ms: u64) {
        // The runs this event changed and the runs now due, in id order;
        // nothing is due for any other.
        let mut ids = std::mem::take(&mut self.touched);
        ids.extend(
            self.timers
                .iter()
                .take_while(|&&(t, _)| t <= now_ms)
                .map(|&(_, id)| id),
        );
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if self.held.contains_key(&id) {
                self.drive_run(id, now_ms);
                self.refile(id);
            }
        }
        if self.may_claim() && now_ms >= self.next_claim_ms {
            let room = self.config.concurrency - self.held.len();
            let max = (self.config.batch as usize).min(room) as u32;
            self.claim_in_flight = true;
            let request = StoreOp::Claim {
                owner: self.config.id.clone(),
                max,
                lease_ms: self.config.lease_ms,
                now_ms,
            };
            self.store(OpKind::Claim, None, request, now_ms);
        }
    }

    fn drive_run(&mut self, id: RunId, now_ms: u64) {
        let lease_ms = self.config.lease_ms;
        let send_timeout_ms = self.config.send_timeout_ms;
        let draining = self.draining;
        let h = self.held.get_mut(&id).expect("driving a held run");
        if now_ms >= h.lease_until_ms {
            // We can no longer prove the lease is ours: another worker may
            // claim the run at any moment, so we must not send for it.
            tracing::warn!(worker_id = %self.config.id, run_id = %id, step = h.run.cursor, epoch = h.run.epoch, "lease lapsed before it could be extended; no longer sending for this run");
            self.stats.lease_lost += 1;
            self.unhold(id);
            return;
        }
        let epoch = h.run.epoch;
        if !h.heartbeat_in_flight && now_ms >= h.next_heartbeat_ms {
            h.heartbeat_in_flight = true;
            h.next_heartbeat_ms = now_ms + lease_ms / HEARTBEAT_RETRIES_PER_LEASE;
            let request = StoreOp::Heartbeat {
                run: id,
                epoch,
                lease_ms,
                now_ms,
            };
            self.store(OpKind::Heartbeat, Some((id, epoch)), request, now_ms);
        }
        let h = self.held.get_mut(&id).expect("still held");
        let max_attempts = self.config.retry.max_attempts;
        match &h.stage {
            Stage::Ready { .. } if h.run.waited == Some(RunWait::Outcome) => {
                // The wait for the provider's word on this step ran out:
                // the store gives it up, unless the ledger settled it.
                h.run.waited = None;
                let request = StoreOp::AwaitOutcome {
                    run: id,
                    epoch,
                    step: h.run.cursor,
                    wait_ms: None,
                    reason: "no status from the provider".into(),
                    now_ms,
                };
                self.write(id, epoch, request, now_ms);
            }
            Stage::Ready { .. } if h.run.attempts >= max_attempts => {
                // The provider reported the step failed once too often.
                let step = h.run.cursor;
                let reason = format!(
                    "step {step}: gave up after {} attempts: the provider kept reporting it failed",
                    h.run.attempts
                );
                let request = StoreOp::Fail {
                    run: id,
                    epoch,
                    reason,
                    retry_after_ms: None,
                    now_ms,
                };
                self.write(id, epoch, request, now_ms);
            }
            Stage::Ready { at_ms } if *at_ms <= now_ms => {
                if draining {
                    let request = StoreOp::Release {
                        run: id,
                        epoch,
                        after_ms: 0,
                        now_ms,
                    };
                    self.write(id, epoch, request, now_ms);
                } else if h.lease_until_ms >= now_ms + 2 * send_timeout_ms {
                    h.stage = Stage::Sending;
                    let step = h.run.cursor;
                    let request = SendRequest {
                        key: DeliveryKey { run: id, step },
                        epoch,
                        tenant: h.run.tenant.clone(),
                        to: h.run.to.clone(),
                        message: h.run.steps[step as usize].message.clone(),
                    };
                    let op = self.issue(OpKind::Send, Some((id, epoch)), now_ms);
                    self.effects.push_back(WorkerEffect::Send { op, request });
                } else {
                    // Too little lease is left for a send to finish inside
                    // it: wait for the heartbeat to extend it (its reply
                    // wakes the run), or for the lease to lapse.
                    h.stage = Stage::Ready {
                        at_ms: h.lease_until_ms,
                    };
                }
            }
            Stage::WriteAgain { at_ms, op } if *at_ms <= now_ms => {
                let mut request = (**op).clone();
                request.set_now_ms(now_ms);
                self.write(id, epoch, request, now_ms);
            }
            _ => {}
        }
    }

    fn on_store(&mut self, p: Pending, reply: Result<StoreReply, StoreUnavailable>, now_ms: u64) {
        match p.kind {
            OpKind::Claim => self.on_claimed(p, reply, now_ms),
            OpKind::Heartbeat => {
                let lease_ms = self.config.lease_ms;
                let Some(h) = Self::held_for(&mut self.held, &p) else {
                    return;
                };
                h.heartbeat_in_flight = false;
                match reply {
                    Ok(StoreReply::Heartbeated { .. }) => {
                        h.lease_until_ms = h.lease_until_ms.max(p.sent_at_ms + lease_ms);
                        h.next_heartbeat_ms = p.sent_at_ms + lease_ms / HEARTBEATS_PER_LEASE;
                        if let Stage::Ready { at_ms } = &mut h.stage {
                            *at_ms = (*at_ms).min(now_ms);
                        }
                    }
                    Ok(_) => {
                        self.stats.fenced += 1;
                        let (id, _) = p.run.expect("heartbeats name a run");
                        self.drop_run(id, "heartbeat fenced");
                    }
                    // Try again soon; the lease check stops sends in time.
                    Err(_) => {}
                }
            }
            OpKind::Write => self.on_written(p, reply, now_ms),
            OpKind::Send => unreachable!("sends are answered by SendReplied"),
        }
    }

    fn on_claimed(&mut self, p: Pending, reply: Result<StoreReply, StoreUnavailable>, now_ms: u64) {
        self.claim_in_flight = false;
        match reply {
            Ok(StoreReply::Claimed(runs)) => {
                self.claim_failures = 0;
                let full = runs.len() as u32 >= self.config.batch;
                for run in runs {
                    self.stats.claimed += 1;
                    if run.rescued {
                        self.stats.rescued += 1;
                        tracing::info!(worker_id = %self.config.id, run_id = %run.id, step = run.cursor, epoch = run.epoch, "rescued a run whose lease had lapsed");
                    }
                    tracing::debug!(worker_id = %self.config.id, run_id = %run.id, step = run.cursor, epoch = run.epoch, "claimed");
                    let lease_until_ms = p.sent_at_ms + self.config.lease_ms;
                    self.hold(Held {
                        run,
                        lease_until_ms,
                        stage: Stage::Ready { at_ms: now_ms },
                        heartbeat_in_flight: false,
                        next_heartbeat_ms: p.sent_at_ms
                            + self.config.lease_ms / HEARTBEATS_PER_LEASE,
                        transient: 0,
                        filed_ms: 0,
                    });
                }
                self.next_claim_ms = if full {
                    now_ms
                } else {
                    now_ms + self.config.poll_ms
                };
            }
            Ok(other) => {
                tracing::error!(worker_id = %self.config.id, reply = ?other, "claim got an answer it cannot use");
                self.next_claim_ms = now_ms + self.config.poll_ms;
            }
            Err(e) => {
                self.claim_failures = self.claim_failures.saturating_add(1);
                let wait = self.jitter(self.claim_failures).max(self.config.poll_ms);
                tracing::warn!(worker_id = %self.config.id, error = %e, retry_in_ms = wait, "cannot claim: store unavailable; backing off");
                self.next_claim_ms = now_ms + wait;
            }
        }
    }

    /// Issues a holder's write and remembers it, so a lost reply can be
    /// answered by repeating it.
    fn write(&mut self, id: RunId, epoch: u64, request: StoreOp, now_ms: u64) {
        if let Some(h) = self.held.get_mut(&id) {
            h.stage = Stage::Writing {
                op: Box::new(request.clone()),
            };
            self.store(OpKind::Write, Some((id, epoch)), request, now_ms);
        }
    }

    fn on_written(&mut self, p: Pending, reply: Result<StoreReply, StoreUnavailable>, now_ms: u64) {
        let (id, _) = p.run.expect("writes name a run");
        let worker_id = self.config.id.clone();
        let Some(h) = Self::held_for(&mut self.held, &p) else {
            return;
        };
        let Stage::Writing { op } = &h.stage else {
            return;
        };
        let op = op.clone();
        match reply {
            Ok(StoreReply::Advanced {
                cursor,
                released: false,
            }) => {
                h.run.cursor = cursor;
                h.run.attempts = 0;
                h.transient = 0;
                h.stage = Stage::Ready { at_ms: now_ms };
            }
            Ok(StoreReply::Completed) => {
                self.stats.completed += 1;
                tracing::info!(worker_id = %worker_id, run_id = %id, "run completed");
                self.drop_run(id, "completed");
            }
            Ok(StoreReply::Failed { dead: true }) => {
                self.stats.failed += 1;
                self.drop_run(id, "failed");
            }
            Ok(StoreReply::RunIs { status }) => {
                match status {
                    RunStatus::Waiting => self.stats.awaiting += 1,
                    RunStatus::Failed => self.stats.failed += 1,
                    RunStatus::Completed => self.stats.completed += 1,
                    _ => {}
                }
                tracing::info!(worker_id = %worker_id, run_id = %id, status = status.as_str(), "run handed to the provider's word");
                self.drop_run(id, "awaiting the provider");
            }
            Ok(StoreReply::Advanced { released: true, .. })
            | Ok(StoreReply::Failed { dead: false })
            | Ok(StoreReply::Released) => self.drop_run(id, "released"),
            Ok(StoreReply::Fenced) => {
                self.stats.fenced += 1;
                tracing::warn!(worker_id = %worker_id, run_id = %id, epoch = h.run.epoch, op = op.name(), "write fenced: another worker holds the run now");
                self.drop_run(id, "write fenced");
            }
            Ok(other) => {
                tracing::error!(worker_id = %worker_id, run_id = %id, reply = ?other, "write refused; letting the run go");
                self.drop_run(id, "write refused");
            }
            Err(e) => {
                // Every holder's write is idempotent under its epoch, so a
                // write whose reply was lost is simply repeated.
                h.transient += 1;
                let attempt = h.transient;
                let wait = self.jitter(attempt);
                let h = self.held.get_mut(&id).expect("held");
                tracing::warn!(worker_id = %worker_id, run_id = %id, step = h.run.cursor, epoch = h.run.epoch, error = %e, retry_in_ms = wait, "write did not reach the store; repeating it");
                h.stage = Stage::WriteAgain {
                    at_ms: now_ms + wait,
                    op,
                };
            }
        }
    }

    fn on_send(&mut self, p: Pending, reply: Result<SendResponse, EngineUnreachable>, now_ms: u64) {
        let (id, epoch) = p.run.expect("sends name a run");
        let worker_id = self.config.id.clone();
        let retry = self.config.retry;
        let Some(h) = Self::held_for(&mut self.held, &p) else {
            return;
        };
        if !matches!(h.stage, Stage::Sending) {
            return;
        }
        let step = h.run.cursor;
        let key = DeliveryKey { run: id, step };
        let last = h.run.steps.len() as u32 - 1;
        let attempts = h.run.attempts;
        let write = match reply {
            Ok(SendResponse::Sent {
                provider_message_id,
                replayed,
            }) => {
                self.stats.sent += 1;
                tracing::info!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, provider_message_id, replayed, "step sent");
                if step == last {
                    StoreOp::Complete {
                        run: id,
                        epoch,
                        step,
                        now_ms,
                    }
                } else {
                    let next = &h.run.steps[step as usize + 1];
                    let delay = next.delay_ms;
                    // A delay, a wait for this step's status, or a
                    // shutdown gives the lease up; the next step is then
                    // claimed afresh when it falls due.
                    let delay_ms =
                        (delay > 0 || !next.after.is_sent() || self.draining).then_some(delay);
                    StoreOp::Advance {
                        run: id,
                        epoch,
                        step,
                        delay_ms,
                        now_ms,
                    }
                }
            }
            Ok(SendResponse::InProgress) => {
                h.transient += 1;
                let attempt = h.transient;
                let wait = self.jitter(attempt.min(4));
                let h = self.held.get_mut(&id).expect("held");
                h.stage = Stage::Ready {
                    at_ms: now_ms + wait,
                };
                return;
            }
            Ok(SendResponse::Paused { reason }) => {
                // The tenant is paused: no attempt is counted, and claims
                // skip its runs until it is resumed.
                tracing::info!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, reason, "tenant paused; the run waits");
                StoreOp::Release {
                    run: id,
                    epoch,
                    after_ms: PAUSED_RECHECK_MS,
                    now_ms,
                }
            }
            Ok(SendResponse::Busy { retry_after_ms }) if retry_after_ms < MAX_HELD_WAIT_MS => {
                h.stage = Stage::Ready {
                    at_ms: now_ms + retry_after_ms.max(1),
                };
                return;
            }
            Ok(SendResponse::Busy { retry_after_ms }) => {
                // A long wait (a recipient gap, say) is a delay: it is
                // written back as the run's `run_at`, never slept through
                // with the lease held.
                tracing::debug!(worker_id = %worker_id, run_id = %id, step, epoch, retry_after_ms, "engine asks for a long wait; releasing the run until then");
                StoreOp::Release {
                    run: id,
                    epoch,
                    after_ms: retry_after_ms,
                    now_ms,
                }
            }
            Ok(SendResponse::Failed {
                retryable: true,
                reason,
                retry_after_ms,
            }) if retry.may_retry(attempts + 1) => {
                let wait = self.jitter(attempts).max(retry_after_ms.unwrap_or(0));
                tracing::warn!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, reason, retry_in_ms = wait, attempt = attempts + 1, "send failed; will retry");
                StoreOp::Fail {
                    run: id,
                    epoch,
                    reason,
                    retry_after_ms: Some(wait),
                    now_ms,
                }
            }
            Ok(SendResponse::Failed {
                retryable, reason, ..
            }) => {
                let reason = if retryable {
                    format!(
                        "step {step}: gave up after {} attempts: {reason}",
                        attempts + 1
                    )
                } else {
                    format!("step {step}: {reason}")
                };
                tracing::warn!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, reason, "send failed for good");
                StoreOp::Fail {
                    run: id,
                    epoch,
                    reason,
                    retry_after_ms: None,
                    now_ms,
                }
            }
            Ok(SendResponse::Unknown { reason }) => {
                // It may have been delivered: never resend it blindly. The
                // run waits at this step, without a lease, for the
                // provider's status (or an operator) to settle it.
                let wait_ms = self.config.unknown_timeout_ms;
                tracing::warn!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, reason, wait_ms, "delivery outcome unknown; the run waits at this step for the provider's status");
                StoreOp::AwaitOutcome {
                    run: id,
                    epoch,
                    step,
                    wait_ms: Some(wait_ms),
                    reason,
                    now_ms,
                }
            }
            Ok(SendResponse::Fenced) => {
                self.stats.fenced += 1;
                tracing::warn!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, "send fenced: the lease is stale");
                self.drop_run(id, "send fenced");
                return;
            }
            Err(e) => {
                h.transient += 1;
                let attempt = h.transient;
                let wait = self.jitter(attempt);
                tracing::warn!(worker_id = %worker_id, run_id = %id, step, epoch, idempotency_key = %key, error = %e, retry_in_ms = wait, "engine unreachable; the same key will be sent again, which the ledger makes safe");
                let h = self.held.get_mut(&id).expect("held");
                if retry.may_retry(attempt) {
                    h.stage = Stage::Ready {
                        at_ms: now_ms + wait,
                    };
                    return;
                }
                // Long trouble: let the run go so another worker may try.
                StoreOp::Release {
                    run: id,
                    epoch,
                    after_ms: wait,
                    now_ms,
                }
            }
        };
        self.write(id, epoch, write, now_ms);
    }
}
