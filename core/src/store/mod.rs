//! The storage contract, as data.
//!
//! Every storage backend (the in-memory model here, SQLite and PostgreSQL
//! in `prod/`) applies the same [`StoreOp`]s and must give the same
//! [`StoreReply`]s. Times in an op are relative to the op's `now_ms`, so a
//! production store may substitute its own clock for `now_ms` and every
//! deadline moves with it.

mod mem;
pub mod rules;

pub use mem::MemStore;

use crate::flow::Flow;
use crate::ids::{DeliveryKey, FlowId, RunId, TenantId, WorkerId};
use crate::message::Message;
use crate::recipient::Recipient;
use crate::send::DeliveryOutcome;
use serde::{Deserialize, Serialize};

/// One step of a run, rendered at trigger time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PlannedStepRepr")]
pub struct PlannedStep {
    /// The exact message to send.
    pub message: Message,
    /// Wait this long after the previous step (or the trigger) before
    /// sending; with `after`, counted from when the previous step reached it.
    pub delay_ms: u64,
    /// Not sent before the previous step's status reaches this.
    #[serde(default, skip_serializing_if = "After::is_sent")]
    pub after: After,
    /// How long to wait for `after` at most; then the step goes anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_timeout_ms: Option<u64>,
}

impl PlannedStep {
    /// A text step.
    pub fn text(text: impl Into<String>, delay_ms: u64) -> Self {
        Self {
            message: Message::text(text),
            delay_ms,
            after: After::Sent,
            after_timeout_ms: None,
        }
    }

    /// How long this step waits at most for its `after` state.
    pub fn after_timeout(&self) -> u64 {
        self.after_timeout_ms.unwrap_or(DEFAULT_AFTER_TIMEOUT_MS)
    }
}

/// How long a step with `after` waits for the previous step's status when
/// its flow does not say: ten minutes.
pub const DEFAULT_AFTER_TIMEOUT_MS: u64 = 600_000;

/// How far the previous step must have got before a step is sent
/// (`"after"` in a flow step). The Cloud API takes messages in order but
/// may deliver a large one after a small one that followed it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// The provider accepted it (the default: no wait).
    #[default]
    Sent,
    /// Its status webhook said `delivered` (or `read`).
    Delivered,
    /// Its status webhook said `read`.
    Read,
}

impl After {
    /// True for the default, which waits for nothing.
    pub fn is_sent(&self) -> bool {
        *self == After::Sent
    }

    /// The state's name, as flows and the databases spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            After::Sent => "sent",
            After::Delivered => "delivered",
            After::Read => "read",
        }
    }

    /// Whether a delivery in `state` has got this far.
    pub fn reached_by(self, state: &DeliveryState) -> bool {
        match self {
            After::Sent => state.is_sent(),
            After::Delivered => matches!(state, DeliveryState::Delivered | DeliveryState::Read),
            After::Read => matches!(state, DeliveryState::Read),
        }
    }
}

/// What a `waiting` run waits for, always about its cursor's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "for", content = "state")]
pub enum RunWait {
    /// The provider's word on the step, whose outcome is unknown: a
    /// status webhook, a late reply, or an operator's resolution.
    Outcome,
    /// The previous step's status to reach this state.
    After(After),
}

impl RunWait {
    /// The database spelling: `outcome`, `delivered`, `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunWait::Outcome => "outcome",
            RunWait::After(a) => a.as_str(),
        }
    }

    /// Parses [`RunWait::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcome" => RunWait::Outcome,
            "sent" => RunWait::After(After::Sent),
            "delivered" => RunWait::After(After::Delivered),
            "read" => RunWait::After(After::Read),
            _ => return None,
        })
    }
}

/// A stored step as read back: runs enqueued before message kinds
/// existed carry `{"text": …}`.
#[derive(Deserialize)]
struct PlannedStepRepr {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    text: Option<String>,
    delay_ms: u64,
    #[serde(default)]
    after: After,
    #[serde(default)]
    after_timeout_ms: Option<u64>,
}

impl TryFrom<PlannedStepRepr> for PlannedStep {
    type Error = String;
    fn try_from(r: PlannedStepRepr) -> Result<Self, String> {
        let message = match (r.message, r.text) {
            (Some(m), None) => m,
            (None, Some(t)) => Message::text(t),
            _ => return Err("a step holds exactly one of \"message\" or \"text\"".into()),
        };
        Ok(Self {
            message,
            delay_ms: r.delay_ms,
            after: r.after,
            after_timeout_ms: r.after_timeout_ms,
        })
    }
}

/// A run to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRun {
    /// Its id (v7, chosen by the caller).
    pub id: RunId,
    /// Whose run.
    pub tenant: TenantId,
    /// Which flow it came from.
    pub flow: FlowId,
    /// The recipient; with `tenant`, the conversation.
    pub to: Recipient,
    /// The messages.
    pub steps: Vec<PlannedStep>,
    /// The trigger's `Idempotency-Key`: a second trigger with the same key
    /// in the same tenant gets this run back instead of a new one.
    pub trigger_key: Option<String>,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for its `run_at`, or for a worker.
    Pending,
    /// A worker holds a lease on it.
    Leased,
    /// Waiting for the provider's word (see [`RunWait`]); holds no lease,
    /// and keeps its conversation's place.
    Waiting,
    /// Every step was delivered.
    Completed,
    /// Stopped for good, with a reason.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl RunStatus {
    /// Completed, failed and cancelled runs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status as the API and the databases spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`RunStatus::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "leased" => Self::Leased,
            "waiting" => Self::Waiting,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A worker's time-limited claim on a run. `epoch` is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it.
    pub owner: WorkerId,
    /// Bumped by every claim; every write by the holder names it.
    pub epoch: u64,
    /// The store's time at which it lapses.
    pub until_ms: u64,
}

/// A run handed to a worker by a claim: everything needed to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedRun {
    /// The run.
    pub id: RunId,
    /// Whose run.
    pub tenant: TenantId,
    /// Its flow.
    pub flow: FlowId,
    /// The recipient.
    pub to: Recipient,
    /// All its messages.
    pub steps: Vec<PlannedStep>,
    /// The next step to send.
    pub cursor: u32,
    /// The fencing token of this claim.
    pub epoch: u64,
    /// The store's time at which this lease lapses.
    pub lease_until_ms: u64,
    /// Failed attempts at the current step so far.
    pub attempts: u32,
    /// True when the run was still leased to a holder whose lease had
    /// lapsed: the claim rescued it.
    pub rescued: bool,
    /// Set when the run was `waiting` and its wait ran out: for
    /// [`RunWait::Outcome`] the worker gives the step up (unless the
    /// ledger settled it meanwhile); for [`RunWait::After`] it sends anyway.
    pub waited: Option<RunWait>,
}

impl ClaimedRun {
    /// Panics, naming the run, unless a claim could have handed it out:
    /// `stored_steps` steps as the row counts them, a cursor on one of
    /// them, an epoch granted. Checked in release builds where a claim is
    /// read back from SQL, before anything is sent for it.
    pub fn assert_sound(&self, stored_steps: usize) {
        let (id, steps) = (self.id, self.steps.len());
        assert_eq!(
            steps, stored_steps,
            "run {id}: {steps} steps read back, the row counts {stored_steps}"
        );
        assert!(
            (1..=crate::limits::MAX_STEPS).contains(&steps),
            "run {id}: {steps} steps"
        );
        assert!(
            (self.cursor as usize) < steps,
            "run {id}: claimed at cursor {} of {steps} steps",
            self.cursor
        );
        assert!(self.epoch > 0, "run {id}: claimed under epoch 0");
    }
}

/// A delivery's state in the engine's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    /// Recorded before the provider call; the call may be under way.
    Sending {
        /// After this store time the call is presumed lost: `unknown`.
        deadline_ms: u64,
    },
    /// The provider accepted it.
    Sent,
    /// The provider reported it reached the recipient's device.
    Delivered,
    /// The provider reported the recipient read it.
    Read,
    /// The provider refused it.
    Failed {
        /// Whether another attempt may begin.
        retryable: bool,
    },
    /// The outcome cannot be known; it is never resent blindly.
    Unknown,
}

impl DeliveryState {
    /// True once the provider has the message: sent, delivered or read.
    pub fn is_sent(&self) -> bool {
        matches!(self, Self::Sent | Self::Delivered | Self::Read)
    }

    /// The state's name, as the API shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sending { .. } => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed { .. } => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// One row of the delivery ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// `run_id:step`.
    pub key: DeliveryKey,
    /// Where it stands.
    pub state: DeliveryState,
    /// The epoch of the lease under which it was last begun.
    pub epoch: u64,
    /// How many times a provider call was begun for it.
    pub attempts: u32,
    /// The provider's id, once sent.
    pub provider_message_id: Option<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Who settled it by hand, when it was unknown (or retried it).
    pub resolved_by: Option<String>,
    /// When they did, in store time.
    pub resolved_at_ms: Option<u64>,
    /// The worker whose lease the last attempt was begun under.
    pub owner: Option<WorkerId>,
}

/// Something that happened to a run that its row and its ledger do not
/// keep: the moments the guards earned their place. Rare by design (none
/// on the happy path), so recording them costs the hot path nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The store's time.
    pub at_ms: u64,
    /// The step it concerned (the run's cursor, or the ledger key's step).
    pub step: u32,
    /// What happened.
    #[serde(flatten)]
    pub kind: RunEventKind,
}

/// What a [`RunEvent`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEventKind {
    /// A claim took the run from a holder whose lease had lapsed (or,
    /// without fencing, from one whose lease was still live).
    Rescued {
        /// The holder it was taken from.
        from: WorkerId,
        /// That holder's epoch.
        from_epoch: u64,
        /// When that holder's lease lapsed (store time).
        lease_until_ms: u64,
        /// The claimer.
        by: WorkerId,
        /// The new epoch.
        epoch: u64,
    },
    /// A holder's write under an epoch that was no longer the run's was
    /// refused: a stale worker stopped from overwriting the new holder.
    Fenced {
        /// The op refused (`advance`, `begin_delivery`, ...).
        op: String,
        /// The epoch it named.
        epoch: u64,
        /// The run's epoch at the time.
        run_epoch: u64,
    },
    /// A send was begun for a step the ledger already knew about: it was
    /// answered from the ledger and not sent again.
    Replayed {
        /// The epoch the send was begun under.
        epoch: u64,
        /// The ledger's state for the step (`sent`, `sending`, `unknown`...).
        ledger: String,
    },
}

impl RunEventKind {
    /// The kind's name, as the API spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rescued { .. } => "rescued",
            Self::Fenced { .. } => "fenced",
            Self::Replayed { .. } => "replayed",
        }
    }
}

/// Everything known about a run, for `GET /v1/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// The run.
    pub id: RunId,
    /// Whose run.
    pub tenant: TenantId,
    /// Its flow.
    pub flow: FlowId,
    /// The recipient.
    pub to: Recipient,
    /// Where it stands.
    pub status: RunStatus,
    /// The next step to send (equal to the step count once completed).
    pub cursor: u32,
    /// Its messages.
    pub steps: Vec<PlannedStep>,
    /// Failed attempts at the current step.
    pub attempts: u32,
    /// The latest claim's epoch (0 if never claimed).
    pub epoch: u64,
    /// Not to be sent before this store time; for a waiting run, when its
    /// wait runs out.
    pub run_at_ms: u64,
    /// The live or lapsed lease, while leased.
    pub lease: Option<Lease>,
    /// What it waits for, while waiting.
    pub wait: Option<RunWait>,
    /// Something it did that its flow did not ask for (a step sent
    /// without the status it was to wait for).
    pub note: Option<String>,
    /// Why it failed, or the last retryable error.
    pub reason: Option<String>,
    /// When it was enqueued.
    pub created_at_ms: u64,
    /// Its place in trigger order (grows with every run stored): lists
    /// page by it.
    pub seq: u64,
    /// The ledger row of each step, where one exists (empty in lists).
    pub deliveries: Vec<Option<DeliveryRecord>>,
    /// Its [`RunEvent`]s, oldest first (empty in lists).
    pub events: Vec<RunEvent>,
}

/// How long after a recipient's last message a free-form (non-template)
/// message may be sent: WhatsApp's customer-service window, 24 hours.
pub const CUSTOMER_SERVICE_WINDOW_MS: u64 = 24 * 3_600_000;

/// The reason a run cancelled by its recipient's opt-out keeps.
pub const OPTED_OUT: &str = "recipient opted out";

/// A recipient who asked a tenant for no more messages (or whom an
/// operator suppressed): triggers to them are refused and nothing more
/// is sent to them until it is lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// When it was recorded (store time).
    pub since_ms: u64,
    /// Why: the keyword they sent, or who suppressed them.
    pub reason: String,
}

/// What a tenant knows of one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientInfo {
    /// When they last wrote to the tenant (store time), if ever.
    pub last_inbound_ms: Option<u64>,
    /// Their opt-out, if any.
    pub suppressed: Option<Suppression>,
}

impl RecipientInfo {
    /// Whether a free-form message may reach them at `now_ms`: they wrote
    /// within the last 24 hours.
    pub fn window_open(&self, now_ms: u64) -> bool {
        self.last_inbound_ms
            .is_some_and(|t| now_ms < t.saturating_add(CUSTOMER_SERVICE_WINDOW_MS))
    }
}

/// Which runs `ListRuns` answers, besides their status: every field set
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Runs of this flow.
    pub flow: Option<FlowId>,
    /// Runs of this tenant.
    pub tenant: Option<TenantId>,
    /// Runs whose reason holds this text (case as written).
    pub reason_contains: Option<String>,
    /// Runs triggered before this store time.
    pub created_before_ms: Option<u64>,
    /// Runs triggered after this store time.
    pub created_after_ms: Option<u64>,
    /// Runs to this recipient.
    #[serde(default)]
    pub to: Option<Recipient>,
    /// Runs earlier in trigger order than this `seq`: the next page of a
    /// list, by key rather than by offset, so a deep page costs what the
    /// first did.
    #[serde(default)]
    pub before_seq: Option<u64>,
}

impl RunFilter {
    /// Whether a run with these fields matches.
    pub fn matches(
        &self,
        flow: &FlowId,
        tenant: &TenantId,
        reason: Option<&str>,
        created_at_ms: u64,
    ) -> bool {
        self.flow.as_ref().is_none_or(|f| f == flow)
            && self.tenant.as_ref().is_none_or(|t| t == tenant)
            && self
                .reason_contains
                .as_deref()
                .is_none_or(|needle| reason.is_some_and(|r| r.contains(needle)))
            && self.created_before_ms.is_none_or(|t| created_at_ms < t)
            && self.created_after_ms.is_none_or(|t| created_at_ms > t)
    }

    /// Whether a run to `to` at `seq` in trigger order passes the `to` and
    /// `before_seq` fields (the rest are [`RunFilter::matches`]').
    pub fn admits(&self, to: &Recipient, seq: u64) -> bool {
        self.to.as_ref().is_none_or(|r| r == to) && self.before_seq.is_none_or(|s| seq < s)
    }
}

/// Queue health figures, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Runs waiting (due or not).
    pub pending: u64,
    /// Runs waiting whose `run_at` has passed.
    pub due: u64,
    /// Runs leased.
    pub leased: u64,
    /// Runs waiting for the provider's word.
    pub waiting: u64,
    /// How long the longest-waiting due run has waited, in ms.
    pub oldest_due_age_ms: u64,
    /// Deliveries whose outcome is unknown.
    pub unknown_deliveries: u64,
}

/// How the latest finished runs ended; see [`StoreOp::CountFinished`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedCounts {
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// The most that were counted: when the three add up to it, older
    /// finished runs were left out.
    pub limit: u32,
}

/// One operation of the storage contract. Every lease holder's write names
/// its `epoch`; a stale epoch changes nothing and is answered
/// [`StoreReply::Fenced`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// Create or replace a flow.
    PutFlow {
        /// The flow's tenant.
        tenant: TenantId,
        /// The flow.
        flow: Flow,
    },
    /// Create or replace a tenant (never `default`, which the daemon's
    /// configuration defines).
    PutTenant {
        /// The tenant, already checked by [`crate::tenant::Tenant::new`].
        tenant: crate::tenant::Tenant,
    },
    /// Read a stored tenant.
    GetTenant {
        /// Its name.
        tenant: TenantId,
    },
    /// Stored flows, by tenant then name, after `after`.
    ListFlows {
        /// Only flows after this one (paging).
        after: Option<(TenantId, FlowId)>,
        /// At most this many.
        limit: u32,
    },
    /// Read a flow.
    GetFlow {
        /// The flow's tenant.
        tenant: TenantId,
        /// Its name.
        flow: FlowId,
    },
    /// Plan a run of a stored flow for one trigger and enqueue it, in one
    /// transaction: the tenant and the flow are read, the core plans the
    /// run ([`rules::plan_trigger`]) and decides the enqueue
    /// ([`rules::decide_enqueue`]). Answered like `Enqueue`, or
    /// [`StoreReply::TriggerRefused`].
    Trigger {
        /// The flow to run.
        flow: FlowId,
        /// Whose run, for whom, with which variables and key.
        trigger: crate::flow::Trigger,
        /// The id the run gets if it is created.
        run: RunId,
        /// The store's time.
        now_ms: u64,
    },
    /// Accept a run; its first step is due after its own delay.
    Enqueue {
        /// The run.
        run: NewRun,
        /// The store's time.
        now_ms: u64,
    },
    /// Lease up to `max` due runs, each the oldest unfinished run of its
    /// conversation, bumping each one's epoch.
    Claim {
        /// Who claims.
        owner: WorkerId,
        /// At most this many (and at most [`crate::limits::MAX_CLAIM_BATCH`]).
        max: u32,
        /// The lease's length.
        lease_ms: u64,
        /// The store's time.
        now_ms: u64,
    },
    /// Extend a lease.
    Heartbeat {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// New length, from now.
        lease_ms: u64,
        /// The store's time.
        now_ms: u64,
    },
    /// Step `step` was delivered: move the cursor to `step + 1`. With a
    /// delay, the lease is given up and the run is due again after it;
    /// without, the holder keeps the lease and goes on.
    Advance {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// The step just delivered.
        step: u32,
        /// The next step's delay, if it has one.
        delay_ms: Option<u64>,
        /// The store's time.
        now_ms: u64,
    },
    /// The last step, `step`, was delivered: the run is completed.
    Complete {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// The last step's index.
        step: u32,
        /// The store's time.
        now_ms: u64,
    },
    /// The current step failed. With `retry_after_ms`, the lease is given
    /// up, the attempt counted, and the run is due again later; without, the
    /// run fails for good.
    Fail {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// Why.
        reason: String,
        /// When to try again, if at all.
        retry_after_ms: Option<u64>,
        /// The store's time.
        now_ms: u64,
    },
    /// Give the lease up without counting an attempt (shutdown, or a
    /// transient error); the run is due again after `after_ms`.
    Release {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// Due again after this long.
        after_ms: u64,
        /// The store's time.
        now_ms: u64,
    },
    /// The current step's outcome is unknown (the engine answered
    /// `Unknown`): with `wait_ms`, the run gives its lease up and waits
    /// that long for the provider's word; without, its wait ran out and it
    /// fails. Either way, if the ledger already settled the step, the run
    /// goes on as the ledger says instead.
    AwaitOutcome {
        /// The run.
        run: RunId,
        /// The holder's epoch.
        epoch: u64,
        /// The step whose outcome is unknown (the cursor).
        step: u32,
        /// How long to wait (`None`: the wait ran out).
        wait_ms: Option<u64>,
        /// What happened to the send.
        reason: String,
        /// The store's time.
        now_ms: u64,
    },
    /// An operator sends a failed run on from its failed step.
    RetryRun {
        /// The run.
        run: RunId,
        /// Who asked.
        by: String,
        /// The store's time.
        now_ms: u64,
    },
    /// Stop a run that has not finished.
    Cancel {
        /// The run.
        run: RunId,
        /// The store's time.
        now_ms: u64,
    },
    /// The engine is about to call the provider for `key`. Records
    /// `sending` first; answers with the stored result if the key was
    /// already sent, and refuses a stale epoch.
    BeginDelivery {
        /// `run_id:step`.
        key: DeliveryKey,
        /// The sender's lease epoch.
        epoch: u64,
        /// The longest the provider call may take; the lease must last at
        /// least this long, and past it a `sending` row becomes `unknown`.
        send_timeout_ms: u64,
        /// The store's time.
        now_ms: u64,
    },
    /// Record what the provider call begun for `key` came to.
    FinishDelivery {
        /// `run_id:step`.
        key: DeliveryKey,
        /// What happened.
        outcome: DeliveryOutcome,
        /// The store's time.
        now_ms: u64,
    },
    /// An operator settles an `unknown` delivery: `sent` (the run goes
    /// on) or not (the step is sent again). A run that failed waiting
    /// for it goes on too.
    ResolveUnknown {
        /// `run_id:step`.
        key: DeliveryKey,
        /// True: it went out; false: it did not, send it again.
        sent: bool,
        /// Who decided.
        by: String,
        /// The store's time.
        now_ms: u64,
    },
    /// Apply a provider's receipt to the delivery `key`, forward only (see
    /// [`crate::receipt::progress`]). Settles an `unknown` delivery.
    RecordReceipt {
        /// `run_id:step`, as carried back in `biz_opaque_callback_data`.
        key: DeliveryKey,
        /// What the provider reports.
        status: crate::receipt::ReceiptStatus,
        /// The provider's message id, if the receipt names it.
        provider_message_id: Option<String>,
        /// The provider's reason, for a failure.
        reason: Option<String>,
        /// For a failure: whether the step may be sent again (the error
        /// table says retry, or the sender itself was refused).
        resend: bool,
        /// The store's time.
        now_ms: u64,
    },
    /// Hold a sender back: from now on no `BeginDelivery` of the tenant's
    /// runs goes ahead and no claim takes them. A temporary pause allows
    /// one half-open probe after a growing wait; pausing one already
    /// paused keeps its reason and start, and pushes its probe back.
    PauseSender {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        reason: String,
        /// The provider's error code, if one.
        code: Option<i64>,
        /// Whether it may end by itself (368, 131048), after a probe.
        temporary: bool,
        /// The fingerprint of the provider settings the refusal came
        /// under (`default` only; see [`SenderPause::outlived_by`]).
        ///
        /// [`SenderPause::outlived_by`]: crate::tenant::SenderPause::outlived_by
        settings: Option<String>,
        /// The store's time.
        now_ms: u64,
    },
    /// Let a paused sender send again.
    ResumeSender {
        /// The tenant.
        tenant: TenantId,
    },
    /// Read a tenant's pause, if any.
    GetSender {
        /// The tenant.
        tenant: TenantId,
    },
    /// Every paused sender, by tenant.
    ListPausedSenders,
    /// Every stored tenant (not `default`), by name.
    ListTenants,
    /// A recipient opts out of a tenant's messages: recorded, and every
    /// unfinished run to them is cancelled ("recipient opted out").
    Suppress {
        /// The tenant.
        tenant: TenantId,
        /// The recipient.
        to: Recipient,
        /// Why (the keyword, or who).
        reason: String,
        /// The store's time.
        now_ms: u64,
    },
    /// Lifts a recipient's opt-out.
    Unsuppress {
        /// The tenant.
        tenant: TenantId,
        /// The recipient.
        to: Recipient,
    },
    /// What a tenant knows of a recipient.
    GetRecipient {
        /// The tenant.
        tenant: TenantId,
        /// The recipient.
        to: Recipient,
    },
    /// A tenant's suppressed recipients, by number, after `after`.
    ListSuppressed {
        /// The tenant.
        tenant: TenantId,
        /// Only recipients after this one (paging).
        after: Option<Recipient>,
        /// At most this many.
        limit: u32,
    },
    /// A recipient wrote to the tenant: their customer-service window
    /// opens (or stays open) from now.
    RecordInbound {
        /// The tenant.
        tenant: TenantId,
        /// The recipient.
        to: Recipient,
        /// The store's time.
        now_ms: u64,
    },
    /// Read a run with its ledger rows.
    GetRun {
        /// The run.
        run: RunId,
    },
    /// List runs, newest first, optionally of one status.
    ListRuns {
        /// Only runs of this status.
        status: Option<RunStatus>,
        /// Only runs that match this too.
        filter: RunFilter,
        /// At most this many.
        limit: u32,
    },
    /// Queue health figures.
    Stats {
        /// The store's time.
        now_ms: u64,
    },
    /// How the latest `limit` finished runs ended (by finish time, then
    /// trigger order, newest first): bounded work however many runs the
    /// store keeps.
    CountFinished {
        /// At most this many runs are counted.
        limit: u32,
    },
    /// Delete up to `max` runs that finished more than `retention_ms` ago,
    /// with their ledger rows and trigger keys.
    Prune {
        /// Keep finished runs this long.
        retention_ms: u64,
        /// Delete at most this many.
        max: u32,
        /// The store's time.
        now_ms: u64,
    },
}

/// The answer to a [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReply {
    /// `PutFlow` done; `created` is false when it replaced one.
    FlowPut {
        /// Whether the flow is new.
        created: bool,
    },
    /// `GetFlow`'s flow.
    Flow(Flow),
    /// `ListFlows`' flows, each with its tenant.
    Flows(Vec<(TenantId, Flow)>),
    /// `PutTenant` done; `created` is false when it replaced one.
    TenantPut {
        /// Whether the tenant is new.
        created: bool,
    },
    /// `GetTenant`'s tenant.
    Tenant(crate::tenant::Tenant),
    /// `Enqueue` done; `created` is false when the trigger key matched.
    Enqueued {
        /// The run (the earlier one, when the key matched).
        run: RunId,
        /// Whether a new run was made.
        created: bool,
    },
    /// The runs a `Claim` leased, in the order they fell due.
    Claimed(Vec<ClaimedRun>),
    /// The lease now lasts until this store time.
    Heartbeated {
        /// The new end of the lease.
        until_ms: u64,
    },
    /// The cursor moved.
    Advanced {
        /// Its new value.
        cursor: u32,
        /// Whether the lease was given up for a delay.
        released: bool,
    },
    /// The run is completed.
    Completed,
    /// The failure is recorded.
    Failed {
        /// True when the run failed for good; false when it will retry.
        dead: bool,
    },
    /// The lease was given up.
    Released,
    /// The run is cancelled.
    Cancelled,
    /// `AwaitOutcome`, `RetryRun` or `ResolveUnknown` done: the run's
    /// status now.
    RunIs {
        /// Its status.
        status: RunStatus,
    },
    /// `sending` recorded: call the provider now.
    Begun {
        /// The attempt's number, from 1.
        attempt: u32,
        /// True when the tenant is paused and this send is its one
        /// half-open probe: success resumes it.
        probe: bool,
    },
    /// The run's tenant is paused: nothing was recorded or sent.
    SenderPaused {
        /// Why the tenant is paused.
        reason: String,
    },
    /// `PauseSender` done; `newly` is false when it was paused already.
    Paused {
        /// Whether this op paused it.
        newly: bool,
    },
    /// `ResumeSender` done.
    Resumed {
        /// Whether it was paused.
        was_paused: bool,
    },
    /// `GetSender`'s pause (`None`: active).
    Sender(Option<crate::tenant::SenderPause>),
    /// `ListPausedSenders`' pauses.
    PausedSenders(Vec<(TenantId, crate::tenant::SenderPause)>),
    /// `ListTenants`' tenants.
    Tenants(Vec<crate::tenant::Tenant>),
    /// `Suppress` done.
    Suppressed {
        /// False when they were suppressed already.
        newly: bool,
        /// Unfinished runs to them that were cancelled.
        cancelled: u32,
    },
    /// `Unsuppress` done.
    Unsuppressed {
        /// Whether they were suppressed.
        was_suppressed: bool,
    },
    /// `GetRecipient`'s answer (all empty for a stranger).
    RecipientIs(RecipientInfo),
    /// `ListSuppressed`' recipients.
    Suppressions(Vec<(Recipient, Suppression)>),
    /// `RecordInbound` done.
    InboundRecorded,
    /// `Enqueue` refused: the recipient opted out of this tenant.
    RecipientSuppressed(Suppression),
    /// `Trigger` refused before anything was enqueued.
    TriggerRefused(TriggerRefusal),
    /// The key was sent before; nothing is to be sent again.
    AlreadySent {
        /// The provider's id from that send.
        provider_message_id: String,
    },
    /// A call for this key is under way.
    InProgress,
    /// The key's outcome is unknown; it is not to be resent.
    DeliveryUnknown,
    /// The provider refused this key for good.
    DeliveryFailed {
        /// Why.
        reason: String,
    },
    /// The provider's outcome is recorded; the key is now in this state.
    Finished(DeliveryState),
    /// The unknown delivery is settled.
    Resolved,
    /// `RecordReceipt` done: the delivery's state now, and whether the
    /// receipt moved it.
    ReceiptRecorded {
        /// The state after the receipt.
        state: DeliveryState,
        /// False when the receipt was late or repeated.
        changed: bool,
    },
    /// `GetRun`'s run.
    Run(RunView),
    /// `ListRuns`' runs.
    Runs(Vec<RunView>),
    /// `Stats`' figures.
    Stats(QueueStats),
    /// `CountFinished`'s counts.
    FinishedCounts(FinishedCounts),
    /// How many runs `Prune` deleted.
    Pruned {
        /// Runs deleted.
        runs: u32,
    },
    /// The writer's epoch is stale or its lease is gone: nothing changed.
    Fenced,
    /// No such run, flow or delivery.
    NotFound,
    /// The op does not fit the current state; nothing changed.
    Conflict {
        /// Why.
        reason: String,
    },
}

/// Why a `Trigger` enqueued nothing (besides an opt-out or a conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerRefusal {
    /// The tenant does not exist.
    NoTenant,
    /// The tenant has no flow of that name.
    NoFlow,
    /// The flow cannot be planned for this trigger (a missing variable, a
    /// message that would be too long, a bad key).
    Plan {
        /// What is wrong, as [`crate::flow::PlanError`] says it.
        problem: String,
        /// The JSON path of what is wrong, where there is one.
        path: Option<String>,
    },
}

/// Which of the two guards against double sends are on. Both are always on
/// outside ablation tests, which turn one or both off to show that each
/// alone stops the old race and that without both it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    /// Claims honour live leases, and every holder's write (and every
    /// `BeginDelivery`) is conditional on the epoch.
    pub fencing: bool,
    /// The engine's ledger answers a key already begun instead of sending.
    pub ledger: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            fencing: true,
            ledger: true,
        }
    }
}

/// A store that could not be reached or did not answer. The op may or may
/// not have been applied; every op is safe to repeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

impl StoreOp {
    /// The pause a provider's refusal of the sender itself calls for
    /// (`None` for any other outcome), whether the refusal answered a send
    /// or came in a `failed` status webhook. `default_settings` is the
    /// fingerprint of the `default` tenant's settings, kept with its pause
    /// (see [`crate::tenant::SenderPause::outlived_by`]).
    pub fn pause_for(
        tenant: &TenantId,
        outcome: &DeliveryOutcome,
        default_settings: Option<&str>,
        now_ms: u64,
    ) -> Option<StoreOp> {
        let DeliveryOutcome::SenderBlocked {
            reason,
            code,
            temporary,
        } = outcome
        else {
            return None;
        };
        Some(StoreOp::PauseSender {
            tenant: tenant.clone(),
            reason: reason.clone(),
            code: *code,
            temporary: *temporary,
            settings: default_settings
                .filter(|_| *tenant == TenantId::default_tenant())
                .map(str::to_string),
            now_ms,
        })
    }

    /// The store time the op carries, if any.
    pub fn now_ms(&self) -> Option<u64> {
        match self {
            StoreOp::Enqueue { now_ms, .. }
            | StoreOp::Trigger { now_ms, .. }
            | StoreOp::Claim { now_ms, .. }
            | StoreOp::Heartbeat { now_ms, .. }
            | StoreOp::Advance { now_ms, .. }
            | StoreOp::Complete { now_ms, .. }
            | StoreOp::Fail { now_ms, .. }
            | StoreOp::Release { now_ms, .. }
            | StoreOp::Cancel { now_ms, .. }
            | StoreOp::AwaitOutcome { now_ms, .. }
            | StoreOp::RetryRun { now_ms, .. }
            | StoreOp::BeginDelivery { now_ms, .. }
            | StoreOp::FinishDelivery { now_ms, .. }
            | StoreOp::ResolveUnknown { now_ms, .. }
            | StoreOp::RecordReceipt { now_ms, .. }
            | StoreOp::PauseSender { now_ms, .. }
            | StoreOp::Suppress { now_ms, .. }
            | StoreOp::RecordInbound { now_ms, .. }
            | StoreOp::Stats { now_ms }
            | StoreOp::Prune { now_ms, .. } => Some(*now_ms),
            StoreOp::PutFlow { .. }
            | StoreOp::GetFlow { .. }
            | StoreOp::ListFlows { .. }
            | StoreOp::CountFinished { .. }
            | StoreOp::PutTenant { .. }
            | StoreOp::GetTenant { .. }
            | StoreOp::ResumeSender { .. }
            | StoreOp::GetSender { .. }
            | StoreOp::ListPausedSenders
            | StoreOp::ListTenants
            | StoreOp::Unsuppress { .. }
            | StoreOp::GetRecipient { .. }
            | StoreOp::ListSuppressed { .. }
            | StoreOp::GetRun { .. }
            | StoreOp::ListRuns { .. } => None,
        }
    }

    /// Replaces the op's time with the store's own clock. A store that
    /// keeps time itself calls this, so a caller's skewed clock cannot move
    /// a lease.
    pub fn set_now_ms(&mut self, clock_ms: u64) {
        match self {
            StoreOp::Enqueue { now_ms, .. }
            | StoreOp::Trigger { now_ms, .. }
            | StoreOp::Claim { now_ms, .. }
            | StoreOp::Heartbeat { now_ms, .. }
            | StoreOp::Advance { now_ms, .. }
            | StoreOp::Complete { now_ms, .. }
            | StoreOp::Fail { now_ms, .. }
            | StoreOp::Release { now_ms, .. }
            | StoreOp::Cancel { now_ms, .. }
            | StoreOp::AwaitOutcome { now_ms, .. }
            | StoreOp::RetryRun { now_ms, .. }
            | StoreOp::BeginDelivery { now_ms, .. }
            | StoreOp::FinishDelivery { now_ms, .. }
            | StoreOp::ResolveUnknown { now_ms, .. }
            | StoreOp::RecordReceipt { now_ms, .. }
            | StoreOp::PauseSender { now_ms, .. }
            | StoreOp::Suppress { now_ms, .. }
            | StoreOp::RecordInbound { now_ms, .. }
            | StoreOp::Stats { now_ms }
            | StoreOp::Prune { now_ms, .. } => *now_ms = clock_ms,
            StoreOp::PutFlow { .. }
            | StoreOp::GetFlow { .. }
            | StoreOp::ListFlows { .. }
            | StoreOp::CountFinished { .. }
            | StoreOp::PutTenant { .. }
            | StoreOp::GetTenant { .. }
            | StoreOp::ResumeSender { .. }
            | StoreOp::GetSender { .. }
            | StoreOp::ListPausedSenders
            | StoreOp::ListTenants
            | StoreOp::Unsuppress { .. }
            | StoreOp::GetRecipient { .. }
            | StoreOp::ListSuppressed { .. }
            | StoreOp::GetRun { .. }
            | StoreOp::ListRuns { .. } => {}
        }
    }

    /// The op's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StoreOp::PutFlow { .. } => "put_flow",
            StoreOp::GetFlow { .. } => "get_flow",
            StoreOp::PutTenant { .. } => "put_tenant",
            StoreOp::GetTenant { .. } => "get_tenant",
            StoreOp::Enqueue { .. } => "enqueue",
            StoreOp::Trigger { .. } => "trigger",
            StoreOp::Claim { .. } => "claim",
            StoreOp::Heartbeat { .. } => "heartbeat",
            StoreOp::Advance { .. } => "advance",
            StoreOp::Complete { .. } => "complete",
            StoreOp::Fail { .. } => "fail",
            StoreOp::Release { .. } => "release",
            StoreOp::Cancel { .. } => "cancel",
            StoreOp::AwaitOutcome { .. } => "await_outcome",
            StoreOp::RetryRun { .. } => "retry_run",
            StoreOp::BeginDelivery { .. } => "begin_delivery",
            StoreOp::FinishDelivery { .. } => "finish_delivery",
            StoreOp::ResolveUnknown { .. } => "resolve_unknown",
            StoreOp::RecordReceipt { .. } => "record_receipt",
            StoreOp::PauseSender { .. } => "pause_sender",
            StoreOp::ResumeSender { .. } => "resume_sender",
            StoreOp::GetSender { .. } => "get_sender",
            StoreOp::ListPausedSenders => "list_paused_senders",
            StoreOp::ListTenants => "list_tenants",
            StoreOp::ListFlows { .. } => "list_flows",
            StoreOp::Suppress { .. } => "suppress",
            StoreOp::Unsuppress { .. } => "unsuppress",
            StoreOp::GetRecipient { .. } => "get_recipient",
            StoreOp::ListSuppressed { .. } => "list_suppressed",
            StoreOp::RecordInbound { .. } => "record_inbound",
            StoreOp::GetRun { .. } => "get_run",
            StoreOp::ListRuns { .. } => "list_runs",
            StoreOp::Stats { .. } => "stats",
            StoreOp::CountFinished { .. } => "count_finished",
            StoreOp::Prune { .. } => "prune",
        }
    }
}
