//! The storage contract's rules for one run and one ledger row.
//!
//! Every backend keeps rows differently (a `BTreeMap` in the model, tables
//! in SQLite and PostgreSQL) but decides what an op does to a row with the
//! functions here, so no backend can drift from another on fencing, retried
//! writes or the ledger. A trigger is planned here too ([`plan_trigger`]),
//! and every enqueue decided here ([`decide_enqueue`]: a trigger key seen
//! before, an opt-out, an id in use, the conversation's head) from facts
//! each backend reads in its own transaction. What stays with each backend
//! is what spans rows: choosing which runs a claim takes, promoting the
//! next head, listing and pruning. Those are held to the model by the
//! differential tests.

use super::{
    After, ClaimedRun, DeliveryRecord, DeliveryState, Guards, Lease, NewRun, PlannedStep, RunEvent,
    RunEventKind, RunStatus, RunView, RunWait, StoreOp, StoreReply, Suppression, TriggerRefusal,
};
use crate::flow::{plan_run, Flow, Trigger};
use crate::ids::{DeliveryKey, FlowId, RunId, TenantId, WorkerId};
use crate::limits::clip_reason;
use crate::recipient::Recipient;
use crate::send::DeliveryOutcome;
use crate::tenant::SenderPause;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A run row as a backend reads it back, before it is checked: the fields
/// of a [`RunRecord`], each as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// The run.
    pub id: RunId,
    /// Trigger order, unique and growing (gaps allowed).
    pub seq: u64,
    /// Whose run.
    pub tenant: TenantId,
    /// Its flow.
    pub flow: FlowId,
    /// The recipient; with `tenant`, the conversation.
    pub to: Recipient,
    /// Its messages, shared: a run's row is copied for every op that reads
    /// it (the batch's before and after), and its messages never change.
    pub steps: Arc<[PlannedStep]>,
    /// The next step to send.
    pub cursor: u32,
    /// Where it stands.
    pub status: RunStatus,
    /// Not to be sent before this store time.
    pub run_at_ms: u64,
    /// Failed attempts at the current step.
    pub attempts: u32,
    /// The latest claim's epoch.
    pub epoch: u64,
    /// The lease, while leased.
    pub lease: Option<Lease>,
    /// What it waits for, while waiting.
    pub wait: Option<RunWait>,
    /// Something it did that its flow did not ask for (a step sent
    /// without the status it was to wait for).
    pub note: Option<String>,
    /// Why it failed, or the last retryable error.
    pub reason: Option<String>,
    /// The trigger's idempotency key.
    pub trigger_key: Option<String>,
    /// When it was enqueued.
    pub created_at_ms: u64,
    /// When it reached a terminal status.
    pub finished_at_ms: Option<u64>,
}

/// A stored run that breaks the rules' invariants: the row is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run}: {problem}")]
pub struct UnsoundRun {
    /// The run.
    pub run: RunId,
    /// What is wrong with it.
    pub problem: String,
}

/// A run as every backend stores it: a [`RunRow`] the rules have checked.
/// A backend reads one back through [`RunRecord::from_row`] and reads its
/// fields through `Deref`; only the rules change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord(RunRow);

impl std::ops::Deref for RunRecord {
    type Target = RunRow;
    fn deref(&self) -> &RunRow {
        &self.0
    }
}

impl RunRecord {
    /// Checks a row read back from a backend: its step count, its cursor,
    /// its lease against its epoch and status, its wait.
    pub fn from_row(row: RunRow) -> Result<Self, UnsoundRun> {
        let record = Self(row);
        match record.soundness() {
            Ok(()) => Ok(record),
            Err(problem) => Err(UnsoundRun {
                run: record.id,
                problem,
            }),
        }
    }
}

impl RunRecord {
    /// A freshly enqueued run: pending, due after its first step's delay.
    pub fn new(run: NewRun, seq: u64, now_ms: u64) -> Self {
        assert!(!run.steps.is_empty(), "a run has at least one step");
        Self(RunRow {
            id: run.id,
            seq,
            tenant: run.tenant,
            flow: run.flow,
            to: run.to,
            run_at_ms: now_ms.saturating_add(run.steps[0].delay_ms),
            steps: run.steps.into(),
            cursor: 0,
            status: RunStatus::Pending,
            attempts: 0,
            epoch: 0,
            lease: None,
            wait: None,
            note: None,
            reason: None,
            trigger_key: run.trigger_key,
            created_at_ms: now_ms,
            finished_at_ms: None,
        })
    }

    fn last_step(&self) -> u32 {
        self.steps.len() as u32 - 1
    }

    /// May a claim at `now_ms` take this run, if it is its conversation's
    /// head? A lapsed lease makes a run claimable again. Without fencing a
    /// live lease is ignored too: the old system's read of rows it had not
    /// yet seen marked.
    pub fn claimable(&self, guards: Guards, now_ms: u64) -> bool {
        match self.status {
            // A waiting run is claimed when its wait runs out.
            RunStatus::Pending | RunStatus::Waiting => self.run_at_ms <= now_ms,
            RunStatus::Leased => {
                !guards.fencing || self.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms)
            }
            _ => false,
        }
    }

    /// Panics, naming the run, unless the row is one the rules could have
    /// written: at least one step, a cursor within them (before the last
    /// step's end while unfinished), a lease under the run's own epoch
    /// while leased, a wait while waiting. Checked in release builds on
    /// every run a claim reads back, from the model or from SQL, before
    /// anything is sent for it.
    pub fn assert_sound(&self) {
        if let Err(problem) = self.soundness() {
            panic!("run {}: {problem}", self.id);
        }
    }

    fn soundness(&self) -> Result<(), String> {
        let (steps, cursor) = (self.steps.len(), self.cursor as usize);
        if !(1..=crate::limits::MAX_STEPS).contains(&steps) {
            return Err(format!("{steps} steps stored"));
        }
        if cursor > steps {
            return Err(format!("cursor {cursor} past its {steps} steps"));
        }
        if !(self.status.is_terminal() || cursor < steps) {
            return Err(format!(
                "{} with no step left (cursor {cursor} of {steps})",
                self.status.as_str()
            ));
        }
        if self.status == RunStatus::Leased
            && !(self.lease.as_ref().is_some_and(|l| l.epoch == self.epoch) && self.epoch > 0)
        {
            return Err(format!(
                "leased without a lease under its epoch {}",
                self.epoch
            ));
        }
        if self.status == RunStatus::Waiting && self.wait.is_none() {
            return Err("waiting for nothing".into());
        }
        Ok(())
    }

    /// Leases the run to `owner`, bumping its epoch; a claim that takes
    /// it from another holder leaves a [`RunEventKind::Rescued`] in
    /// `events`.
    pub fn claim(
        &mut self,
        owner: &WorkerId,
        lease_ms: u64,
        now_ms: u64,
        events: &mut Vec<(RunId, RunEvent)>,
    ) -> ClaimedRun {
        self.assert_sound();
        if let (RunStatus::Leased, Some(lease)) = (self.status, &self.lease) {
            events.push((
                self.id,
                rescue_event(lease, owner, self.epoch + 1, self.cursor, now_ms),
            ));
        }
        // A run claimed while still leased had a holder whose lease lapsed:
        // this claim rescues it.
        let rescued = self.status == RunStatus::Leased;
        let waited = if self.status == RunStatus::Waiting {
            self.0.wait.take()
        } else {
            None
        };
        if let Some(RunWait::After(after)) = waited {
            self.0.note = Some(after_expired_note(
                self.cursor,
                after,
                self.steps[self.cursor as usize].after_timeout(),
            ));
        }
        let before = self.epoch;
        self.0.epoch += 1;
        assert!(self.epoch > before, "epochs only grow");
        self.0.status = RunStatus::Leased;
        let until_ms = now_ms.saturating_add(lease_ms);
        self.0.lease = Some(Lease {
            owner: owner.clone(),
            epoch: self.epoch,
            until_ms,
        });
        ClaimedRun {
            id: self.id,
            tenant: self.tenant.clone(),
            flow: self.flow.clone(),
            to: self.to.clone(),
            steps: self.steps.to_vec(),
            cursor: self.cursor,
            epoch: self.epoch,
            lease_until_ms: until_ms,
            attempts: self.attempts,
            rescued,
            waited,
        }
    }

    /// The run as `GetRun` and `ListRuns` show it.
    pub fn view(&self, deliveries: Vec<Option<DeliveryRecord>>, events: Vec<RunEvent>) -> RunView {
        RunView {
            id: self.id,
            tenant: self.tenant.clone(),
            flow: self.flow.clone(),
            to: self.to.clone(),
            status: self.status,
            cursor: self.cursor,
            steps: self.steps.to_vec(),
            attempts: self.attempts,
            epoch: self.epoch,
            run_at_ms: self.run_at_ms,
            lease: self.lease.clone(),
            wait: self.wait,
            note: self.note.clone(),
            reason: self.reason.clone(),
            created_at_ms: self.created_at_ms,
            seq: self.seq,
            deliveries,
            events,
        }
    }

    /// The fence every holder's write passes: the run is leased under this
    /// very epoch. Without fencing only finished runs are refused.
    fn fence(&self, guards: Guards, epoch: u64) -> Result<(), Fenced> {
        let ok = if guards.fencing {
            self.status == RunStatus::Leased && self.epoch == epoch
        } else {
            !self.status.is_terminal()
        };
        if ok {
            Ok(())
        } else {
            Err(Fenced)
        }
    }

    /// A retried write whose effect is already in place under the same
    /// epoch gets the same answer again, so a worker that lost a reply can
    /// simply repeat itself. Epoch 0 was never granted, so it never matches.
    fn already(&self, epoch: u64, status: RunStatus) -> bool {
        epoch > 0 && self.epoch == epoch && self.status == status && self.lease.is_none()
    }

    fn finish(&mut self, status: RunStatus, reason: Option<String>, now_ms: u64) {
        assert!(status.is_terminal());
        self.0.status = status;
        self.0.lease = None;
        self.0.wait = None;
        self.0.reason = reason;
        self.0.finished_at_ms = Some(now_ms);
    }
}

/// The event of a claim that took a run from `from`'s lease: `by` holds
/// it now under `epoch`, at step `step`. Every backend records a rescue
/// through this, the SQL claim from the columns it read.
pub fn rescue_event(from: &Lease, by: &WorkerId, epoch: u64, step: u32, now_ms: u64) -> RunEvent {
    RunEvent {
        at_ms: now_ms,
        step,
        kind: RunEventKind::Rescued {
            from: from.owner.clone(),
            from_epoch: from.epoch,
            lease_until_ms: from.until_ms,
            by: by.clone(),
            epoch,
        },
    }
}

/// A holder's write refused by the fence.
struct Fenced;

impl From<Fenced> for StoreReply {
    fn from(_: Fenced) -> Self {
        StoreReply::Fenced
    }
}

/// Plans the run a `Trigger` asks for, from what the store read in its
/// transaction: whether the tenant is stored (`default` always exists) and
/// the flow, if the tenant has one of that name. The run is then enqueued
/// as [`decide_enqueue`] says.
pub fn plan_trigger(
    tenant_stored: bool,
    flow: Option<&Flow>,
    trigger: Trigger,
    id: RunId,
) -> Result<NewRun, TriggerRefusal> {
    if !tenant_stored && trigger.tenant != TenantId::default_tenant() {
        return Err(TriggerRefusal::NoTenant);
    }
    let Some(flow) = flow else {
        return Err(TriggerRefusal::NoFlow);
    };
    let run = plan_run(flow, trigger, id).map_err(|e| TriggerRefusal::Plan {
        problem: e.to_string(),
        path: e.path(),
    })?;
    assert_eq!(
        run.steps.len(),
        flow.steps().len(),
        "a planned run has one step per flow step"
    );
    Ok(run)
}

/// What a store knows, inside its transaction, about a run it is asked
/// to enqueue.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnqueueFacts<'a> {
    /// The run already created with the same tenant and trigger key.
    pub existing: Option<RunId>,
    /// The recipient's opt-out from the run's tenant.
    pub suppressed: Option<&'a Suppression>,
    /// A run with this id exists.
    pub id_taken: bool,
    /// The conversation (tenant, recipient) has an unfinished run.
    pub conversation_open: bool,
}

/// What an enqueue does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueDecision {
    /// Nothing is inserted: the trigger key created this run before.
    Existing(RunId),
    /// Nothing is inserted: the recipient opted out.
    Suppressed(Suppression),
    /// Nothing is inserted: the id is in use.
    IdTaken,
    /// Insert the run. It is its conversation's head (the one run of it a
    /// claim may take) when the conversation has nothing unfinished ahead
    /// of it.
    Insert {
        /// Whether it is the head.
        is_head: bool,
    },
}

impl EnqueueDecision {
    /// The answer to the enqueue of run `id`.
    pub fn answer(self, id: RunId) -> StoreReply {
        match self {
            Self::Existing(run) => StoreReply::Enqueued {
                run,
                created: false,
            },
            Self::Suppressed(s) => StoreReply::RecipientSuppressed(s),
            Self::IdTaken => StoreReply::Conflict {
                reason: format!("run {id} already exists"),
            },
            Self::Insert { .. } => StoreReply::Enqueued {
                run: id,
                created: true,
            },
        }
    }
}

/// Decides an enqueue: a trigger key seen before answers the run it
/// created, whatever else changed since (so a caller's retry is safe); an
/// opted-out recipient gets nothing; an id in use is a conflict; anything
/// else is inserted behind its conversation's unfinished runs.
pub fn decide_enqueue(run: &NewRun, facts: EnqueueFacts<'_>) -> EnqueueDecision {
    assert!(!run.steps.is_empty(), "a run has at least one step");
    if let (Some(_), Some(existing)) = (&run.trigger_key, facts.existing) {
        return EnqueueDecision::Existing(existing);
    }
    if let Some(s) = facts.suppressed {
        return EnqueueDecision::Suppressed(s.clone());
    }
    if facts.id_taken {
        return EnqueueDecision::IdTaken;
    }
    EnqueueDecision::Insert {
        is_head: !facts.conversation_open,
    }
}

/// The note a run keeps when a step went without its `after` state.
pub fn after_expired_note(step: u32, after: After, timeout_ms: u64) -> String {
    format!(
        "step {step} went without step {}'s `{}` status: none came within {timeout_ms} ms (after_timeout_ms)",
        step.saturating_sub(1),
        after.as_str()
    )
}

/// The run a row op reads and writes: the lease holder's writes, cancel,
/// the ledger ops (which move a run waiting on them), and the operator's
/// retry. Every other op spans rows and is the backend's own.
pub fn row_op_run(op: &StoreOp) -> Option<RunId> {
    match op {
        StoreOp::Heartbeat { run, .. }
        | StoreOp::Advance { run, .. }
        | StoreOp::Complete { run, .. }
        | StoreOp::Fail { run, .. }
        | StoreOp::Release { run, .. }
        | StoreOp::Cancel { run, .. }
        | StoreOp::AwaitOutcome { run, .. }
        | StoreOp::RetryRun { run, .. } => Some(*run),
        StoreOp::BeginDelivery { key, .. }
        | StoreOp::FinishDelivery { key, .. }
        | StoreOp::ResolveUnknown { key, .. }
        | StoreOp::RecordReceipt { key, .. } => Some(key.run),
        _ => None,
    }
}

/// Whether `op` is decided by [`apply_row_op`].
pub fn is_row_op(op: &StoreOp) -> bool {
    row_op_run(op).is_some()
}

/// Whether `op` reads its run's ledger rows, given the run as loaded. The
/// hot writes (heartbeat, advance to a step that waits for nothing,
/// complete, fail, release) do not, so a backend need not load them.
pub fn needs_ledger(op: &StoreOp, run: Option<&RunRecord>) -> bool {
    match op {
        StoreOp::Heartbeat { .. }
        | StoreOp::Complete { .. }
        | StoreOp::Fail { .. }
        | StoreOp::Release { .. }
        | StoreOp::Cancel { .. } => false,
        StoreOp::Advance { step, .. } => run.is_some_and(|r| {
            step.checked_add(1)
                .and_then(|next| r.steps.get(next as usize))
                .is_some_and(|s| !s.after.is_sent())
        }),
        _ => true,
    }
}

/// Whether `op` reads its run's tenant's pause and its recipient's
/// opt-out.
pub fn needs_pause(op: &StoreOp) -> bool {
    matches!(op, StoreOp::BeginDelivery { .. })
}

/// The rows row ops read and write: the model keeps all of them, a SQL
/// store the ones its ops named, loaded and locked for one transaction.
pub struct Rows<'a> {
    /// Runs by id.
    pub runs: &'a mut BTreeMap<RunId, RunRecord>,
    /// Ledger rows by key.
    pub ledger: &'a mut BTreeMap<DeliveryKey, DeliveryRecord>,
    /// Paused senders by tenant.
    pub pauses: &'a mut BTreeMap<TenantId, SenderPause>,
    /// Whether a recipient opted out of a tenant (asked by sends only).
    pub suppressed: &'a dyn Fn(&TenantId, &Recipient) -> bool,
    /// The [`RunEvent`]s the ops left, by run, in the order they happened:
    /// the caller stores them with the rows.
    pub events: &'a mut Vec<(RunId, RunEvent)>,
}

/// Applies one row op (see [`row_op_run`]) to the rows it concerns, which
/// the caller loaded: the run, and where [`needs_ledger`] and
/// [`needs_pause`] say so, the run's ledger rows and its tenant's pause.
/// A run that becomes terminal leaves its conversation's queue, and one
/// that was terminal and goes on rejoins it: both are the caller's to do.
///
/// `other_open` answers whether the run's conversation has another
/// unfinished run; it is asked only before a finished run goes on again
/// (an operator's retry or resolution), which it must not do past another.
///
/// # Panics
/// On an op that is not a row op.
pub fn apply_row_op(
    rows: &mut Rows<'_>,
    guards: Guards,
    op: StoreOp,
    other_open: &dyn Fn(&RunRecord) -> bool,
) -> StoreReply {
    let id = row_op_run(&op).unwrap_or_else(|| panic!("{} is not a row op", op.name()));
    let name = op.name();
    let now_ms = op.now_ms().unwrap_or_default();
    // The epoch a holder's op names, and the step it names, if it does.
    let (epoch, step, key) = match &op {
        StoreOp::Heartbeat { epoch, .. }
        | StoreOp::Fail { epoch, .. }
        | StoreOp::Release { epoch, .. } => (Some(*epoch), None, None),
        StoreOp::Advance { epoch, step, .. }
        | StoreOp::Complete { epoch, step, .. }
        | StoreOp::AwaitOutcome { epoch, step, .. } => (Some(*epoch), Some(*step), None),
        StoreOp::BeginDelivery { key, epoch, .. } => (Some(*epoch), Some(key.step), Some(*key)),
        _ => (None, None, None),
    };
    let reply = decide_row_op(rows, guards, op, id, other_open);
    let event = match (&reply, epoch, rows.runs.get(&id)) {
        (StoreReply::Fenced, Some(epoch), Some(run)) => Some(RunEventKind::Fenced {
            op: name.to_string(),
            epoch,
            run_epoch: run.epoch,
        }),
        (
            StoreReply::AlreadySent { .. } | StoreReply::InProgress | StoreReply::DeliveryUnknown,
            Some(epoch),
            Some(_),
        ) => key
            .and_then(|k| rows.ledger.get(&k))
            .map(|rec| RunEventKind::Replayed {
                epoch,
                ledger: rec.state.as_str().to_string(),
            }),
        _ => None,
    };
    if let Some(kind) = event {
        // Otherwise the run's current step (its last, once finished).
        let run = &rows.runs[&id];
        let step = step
            .filter(|s| (*s as usize) < run.steps.len())
            .unwrap_or_else(|| run.cursor.min(run.last_step()));
        rows.events.push((
            id,
            RunEvent {
                at_ms: now_ms,
                step,
                kind,
            },
        ));
    }
    reply
}

/// [`apply_row_op`]'s decision, without the events.
fn decide_row_op(
    rows: &mut Rows<'_>,
    guards: Guards,
    op: StoreOp,
    id: RunId,
    other_open: &dyn Fn(&RunRecord) -> bool,
) -> StoreReply {
    match op {
        StoreOp::Heartbeat {
            epoch,
            lease_ms,
            now_ms,
            ..
        } => with_run(rows, id, |row| {
            heartbeat(row, guards, epoch, lease_ms, now_ms)
        }),
        StoreOp::Advance {
            epoch,
            step,
            delay_ms,
            now_ms,
            ..
        } => {
            let Some(row) = rows.runs.get_mut(&id) else {
                return StoreReply::NotFound;
            };
            advance(row, rows.ledger, guards, epoch, step, delay_ms, now_ms)
        }
        StoreOp::Complete {
            epoch,
            step,
            now_ms,
            ..
        } => with_run(rows, id, |row| complete(row, guards, epoch, step, now_ms)),
        StoreOp::Fail {
            epoch,
            reason,
            retry_after_ms,
            now_ms,
            ..
        } => with_run(rows, id, |row| {
            fail(row, guards, epoch, &reason, retry_after_ms, now_ms)
        }),
        StoreOp::Release {
            epoch,
            after_ms,
            now_ms,
            ..
        } => with_run(rows, id, |row| {
            release(row, guards, epoch, after_ms, now_ms)
        }),
        StoreOp::Cancel { now_ms, .. } => with_run(rows, id, |row| cancel(row, now_ms)),
        StoreOp::AwaitOutcome {
            epoch,
            step,
            wait_ms,
            reason,
            now_ms,
            ..
        } => {
            let Some(row) = rows.runs.get_mut(&id) else {
                return StoreReply::NotFound;
            };
            await_outcome(
                row,
                rows.ledger,
                guards,
                epoch,
                step,
                wait_ms,
                &reason,
                now_ms,
            )
        }
        StoreOp::RetryRun { by, now_ms, .. } => {
            let Some(row) = rows.runs.get_mut(&id) else {
                return StoreReply::NotFound;
            };
            retry_run(row, rows.ledger, other_open, &by, now_ms)
        }
        StoreOp::BeginDelivery {
            key,
            epoch,
            send_timeout_ms,
            now_ms,
        } => {
            let run = rows.runs.get(&key.run);
            // Nothing more goes to a recipient once their opt-out is
            // recorded: checked here, in the transaction that would
            // record `sending`.
            if let Some(r) = run.filter(|r| (rows.suppressed)(&r.tenant, &r.to)) {
                if !r.status.is_terminal()
                    && rows.ledger.get(&key).is_none_or(|d| !d.state.is_sent())
                {
                    return StoreReply::DeliveryFailed {
                        reason: super::OPTED_OUT.to_string(),
                    };
                }
            }
            let tenant = run.map(|r| r.tenant.clone());
            let mut rec = rows.ledger.get(&key).cloned();
            let mut pause = tenant.as_ref().and_then(|t| rows.pauses.get(t).cloned());
            let reply = begin_delivery(
                run,
                &mut rec,
                &mut pause,
                guards,
                key,
                epoch,
                send_timeout_ms,
                now_ms,
            );
            if let Some(rec) = rec {
                rows.ledger.insert(key, rec);
            }
            if let (Some(t), Some(p)) = (tenant, pause) {
                rows.pauses.insert(t, p);
            }
            reply
        }
        StoreOp::FinishDelivery {
            key,
            outcome,
            now_ms,
        } => {
            let reply = finish_delivery(rows.ledger.get_mut(&key), guards, outcome);
            follow_run(rows, key.run, now_ms);
            reply
        }
        StoreOp::RecordReceipt {
            key,
            status,
            provider_message_id,
            reason,
            resend,
            now_ms,
        } => {
            let reply = record_receipt(
                rows.ledger.get_mut(&key),
                status,
                provider_message_id,
                reason,
                resend,
            );
            follow_run(rows, key.run, now_ms);
            reply
        }
        StoreOp::ResolveUnknown {
            key,
            sent,
            by,
            now_ms,
        } => resolve_unknown(rows, key, sent, &by, other_open, now_ms),
        _ => unreachable!("row_op_run named it"),
    }
}

fn with_run(
    rows: &mut Rows<'_>,
    id: RunId,
    f: impl FnOnce(&mut RunRecord) -> StoreReply,
) -> StoreReply {
    match rows.runs.get_mut(&id) {
        Some(row) => f(row),
        None => StoreReply::NotFound,
    }
}

fn follow_run(rows: &mut Rows<'_>, id: RunId, now_ms: u64) {
    if let Some(row) = rows.runs.get_mut(&id) {
        follow(row, rows.ledger, now_ms);
    }
}

fn key_of(row: &RunRecord, step: u32) -> DeliveryKey {
    DeliveryKey { run: row.id, step }
}

/// A waiting run goes on if the ledger now settles what it waits for;
/// answers whether it moved.
fn follow(
    row: &mut RunRecord,
    ledger: &BTreeMap<DeliveryKey, DeliveryRecord>,
    now_ms: u64,
) -> bool {
    if row.status != RunStatus::Waiting {
        return false;
    }
    let step = row.cursor;
    match row.wait {
        Some(RunWait::Outcome) => {
            let Some(rec) = ledger.get(&key_of(row, step)) else {
                return false;
            };
            let said = rec
                .last_error
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            match rec.state {
                ref s if s.is_sent() => go_on(row, ledger, now_ms),
                DeliveryState::Failed { retryable: true } => {
                    row.0.status = RunStatus::Pending;
                    row.0.wait = None;
                    row.0.attempts += 1;
                    row.0.run_at_ms = now_ms;
                    row.0.reason = Some(clip_reason(&format!(
                        "step {step}: the provider reported it failed, so it is sent again: {said}"
                    )));
                }
                DeliveryState::Failed { retryable: false } => row.finish(
                    RunStatus::Failed,
                    Some(clip_reason(&format!(
                        "step {step}: the provider reported it failed: {said}"
                    ))),
                    now_ms,
                ),
                _ => return false,
            }
            true
        }
        Some(RunWait::After(after)) => {
            if !after_met(row, ledger, after) {
                return false;
            }
            let delay = row.steps[step as usize].delay_ms;
            row.0.status = RunStatus::Pending;
            row.0.wait = None;
            row.0.run_at_ms = now_ms.saturating_add(delay);
            true
        }
        None => false,
    }
}

/// Whether the step before the cursor got as far as `after` asks, or can
/// no longer get there (its delivery failed).
fn after_met(
    row: &RunRecord,
    ledger: &BTreeMap<DeliveryKey, DeliveryRecord>,
    after: After,
) -> bool {
    let Some(prev) = row.cursor.checked_sub(1) else {
        return true;
    };
    ledger.get(&key_of(row, prev)).is_some_and(|r| {
        after.reached_by(&r.state) || r.state == DeliveryState::Failed { retryable: false }
    })
}

/// The cursor's step went out: the run moves to the next step (or is
/// completed), without a lease.
fn go_on(row: &mut RunRecord, ledger: &BTreeMap<DeliveryKey, DeliveryRecord>, now_ms: u64) {
    let step = row.cursor;
    row.0.attempts = 0;
    row.0.reason = None;
    row.0.lease = None;
    row.0.wait = None;
    row.0.cursor = step + 1;
    if step >= row.last_step() {
        row.finish(RunStatus::Completed, None, now_ms);
        return;
    }
    let delay = row.steps[row.cursor as usize].delay_ms;
    enter_step(row, ledger, delay, now_ms);
}

/// The run, released, has just moved to its cursor's step: it is due
/// after `delay_ms`, or, if the step waits for the previous one's status
/// and that has not come, it waits for it.
fn enter_step(
    row: &mut RunRecord,
    ledger: &BTreeMap<DeliveryKey, DeliveryRecord>,
    delay_ms: u64,
    now_ms: u64,
) {
    let next = &row.steps[row.cursor as usize];
    let (after, timeout) = (next.after, next.after_timeout());
    row.0.lease = None;
    if !after.is_sent() && !after_met(row, ledger, after) {
        row.0.status = RunStatus::Waiting;
        row.0.wait = Some(RunWait::After(after));
        row.0.run_at_ms = now_ms.saturating_add(timeout);
    } else {
        row.0.status = RunStatus::Pending;
        row.0.wait = None;
        row.0.run_at_ms = now_ms.saturating_add(delay_ms);
    }
}

fn heartbeat(
    row: &mut RunRecord,
    guards: Guards,
    epoch: u64,
    lease_ms: u64,
    now: u64,
) -> StoreReply {
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    let until_ms = now.saturating_add(lease_ms);
    match row.0.lease.as_mut() {
        Some(lease) => {
            lease.until_ms = lease.until_ms.max(until_ms);
            StoreReply::Heartbeated {
                until_ms: lease.until_ms,
            }
        }
        None => StoreReply::Fenced,
    }
}

fn advance(
    row: &mut RunRecord,
    ledger: &BTreeMap<DeliveryKey, DeliveryRecord>,
    guards: Guards,
    epoch: u64,
    step: u32,
    delay_ms: Option<u64>,
    now_ms: u64,
) -> StoreReply {
    // A step that waits for the previous one's status is never sent
    // under the lease that sent the previous one.
    let waits = step
        .checked_add(1)
        .and_then(|next| row.steps.get(next as usize))
        .is_some_and(|s| !s.after.is_sent());
    let released = delay_ms.is_some() || waits;
    let repeat = epoch > 0
        && row.epoch == epoch
        && step.checked_add(1) == Some(row.cursor)
        && match released {
            true => {
                matches!(row.status, RunStatus::Pending | RunStatus::Waiting) && row.lease.is_none()
            }
            false => row.status == RunStatus::Leased,
        };
    if repeat {
        return StoreReply::Advanced {
            cursor: row.cursor,
            released,
        };
    }
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    if guards.fencing && row.cursor != step {
        return StoreReply::Conflict {
            reason: format!("cursor is at step {}, not {step}", row.cursor),
        };
    }
    if step >= row.last_step() {
        return StoreReply::Conflict {
            reason: format!("step {step} is the last; complete the run instead"),
        };
    }
    row.0.cursor = step + 1;
    row.0.attempts = 0;
    row.0.reason = None;
    if released {
        let delay = delay_ms.unwrap_or(row.steps[row.cursor as usize].delay_ms);
        enter_step(row, ledger, delay, now_ms);
    }
    StoreReply::Advanced {
        cursor: row.cursor,
        released,
    }
}

fn complete(row: &mut RunRecord, guards: Guards, epoch: u64, step: u32, now: u64) -> StoreReply {
    if row.already(epoch, RunStatus::Completed) {
        return StoreReply::Completed;
    }
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    if step != row.last_step() || (guards.fencing && row.cursor != step) {
        return StoreReply::Conflict {
            reason: format!(
                "cursor is at step {} of {}, not at the last step {step}",
                row.cursor,
                row.steps.len()
            ),
        };
    }
    row.0.cursor = step + 1;
    row.finish(RunStatus::Completed, None, now);
    StoreReply::Completed
}

fn fail(
    row: &mut RunRecord,
    guards: Guards,
    epoch: u64,
    reason: &str,
    retry_after_ms: Option<u64>,
    now_ms: u64,
) -> StoreReply {
    let dead = retry_after_ms.is_none();
    let settled = if dead {
        RunStatus::Failed
    } else {
        RunStatus::Pending
    };
    if row.already(epoch, settled) {
        return StoreReply::Failed { dead };
    }
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    let reason = clip_reason(reason);
    match retry_after_ms {
        Some(after) => {
            row.0.status = RunStatus::Pending;
            row.0.lease = None;
            row.0.attempts += 1;
            row.0.run_at_ms = now_ms.saturating_add(after);
            row.0.reason = Some(reason);
        }
        None => row.finish(RunStatus::Failed, Some(reason), now_ms),
    }
    StoreReply::Failed { dead }
}

fn release(row: &mut RunRecord, guards: Guards, epoch: u64, after_ms: u64, now: u64) -> StoreReply {
    if row.already(epoch, RunStatus::Pending) {
        return StoreReply::Released;
    }
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    row.0.status = RunStatus::Pending;
    row.0.lease = None;
    row.0.run_at_ms = now.saturating_add(after_ms);
    StoreReply::Released
}

/// The recipient of an unfinished run opted out: it is cancelled, saying
/// so. Answers whether it was unfinished.
pub fn opt_out(row: &mut RunRecord, now_ms: u64) -> bool {
    if row.status.is_terminal() {
        return false;
    }
    row.finish(
        RunStatus::Cancelled,
        Some(super::OPTED_OUT.to_string()),
        now_ms,
    );
    true
}

fn cancel(row: &mut RunRecord, now_ms: u64) -> StoreReply {
    if row.status.is_terminal() {
        return StoreReply::Conflict {
            reason: format!("run is already {}", row.status.as_str()),
        };
    }
    row.finish(RunStatus::Cancelled, None, now_ms);
    StoreReply::Cancelled
}

/// A `sending` row whose deadline has passed can no longer expect its
/// reply: it may have been sent, so it is unknown.
fn lapse(rec: &mut DeliveryRecord, now_ms: u64) {
    if let DeliveryState::Sending { deadline_ms } = rec.state {
        if now_ms >= deadline_ms {
            rec.state = DeliveryState::Unknown;
            rec.last_error = Some("no outcome before the send deadline".into());
        }
    }
}

#[allow(clippy::too_many_arguments)] // One rule, all of whose inputs are rows or fields of the op.
fn await_outcome(
    row: &mut RunRecord,
    ledger: &mut BTreeMap<DeliveryKey, DeliveryRecord>,
    guards: Guards,
    epoch: u64,
    step: u32,
    wait_ms: Option<u64>,
    reason: &str,
    now_ms: u64,
) -> StoreReply {
    if let Err(refused) = row.fence(guards, epoch) {
        return refused.into();
    }
    if row.cursor != step {
        return StoreReply::Conflict {
            reason: format!("cursor is at step {}, not {step}", row.cursor),
        };
    }
    if let Some(rec) = ledger.get_mut(&key_of(row, step)) {
        lapse(rec, now_ms);
    }
    row.0.lease = None;
    row.0.status = RunStatus::Waiting;
    row.0.wait = Some(RunWait::Outcome);
    row.0.run_at_ms = now_ms.saturating_add(wait_ms.unwrap_or(0));
    row.0.reason = Some(clip_reason(&format!(
        "step {step}: delivery unknown ({reason}); waiting up to {} ms for the provider's status",
        wait_ms.unwrap_or(0)
    )));
    if !follow(row, ledger, now_ms) && wait_ms.is_none() {
        let id = row.id;
        row.finish(
            RunStatus::Failed,
            Some(clip_reason(&format!(
                "step {step}: delivery unknown and no status from the provider within the unknown timeout; \
                 if the recipient got it, resolve the step as sent, if not, as failed to send it again \
                 (POST /v1/runs/{id}/steps/{step}/resolve)"
            ))),
            now_ms,
        );
    }
    StoreReply::RunIs { status: row.status }
}

/// The refusal for a finished run that would go on past another
/// unfinished run of its conversation.
fn overtakes() -> StoreReply {
    StoreReply::Conflict {
        reason: "another run to this recipient is unfinished; this one going on now would \
                 interleave their messages: wait for it to finish, or cancel it, then try again"
            .into(),
    }
}

/// A finished run goes on from its cursor, due now, as an operator asked.
fn revive(row: &mut RunRecord, ledger: &BTreeMap<DeliveryKey, DeliveryRecord>, now_ms: u64) {
    row.0.status = RunStatus::Pending;
    row.0.finished_at_ms = None;
    row.0.lease = None;
    row.0.wait = None;
    row.0.attempts = 0;
    row.0.reason = None;
    row.0.run_at_ms = now_ms;
    let sent = ledger
        .get(&key_of(row, row.cursor))
        .is_some_and(|r| r.state.is_sent());
    if sent {
        go_on(row, ledger, now_ms);
        // The operator asked for it to go on: it does not wait again.
        if row.status == RunStatus::Waiting {
            row.0.status = RunStatus::Pending;
            row.0.wait = None;
            row.0.run_at_ms = now_ms;
        }
    }
}

fn retry_run(
    row: &mut RunRecord,
    ledger: &mut BTreeMap<DeliveryKey, DeliveryRecord>,
    other_open: &dyn Fn(&RunRecord) -> bool,
    by: &str,
    now_ms: u64,
) -> StoreReply {
    if row.status != RunStatus::Failed {
        return StoreReply::Conflict {
            reason: format!(
                "run is {}; only a failed run can be retried",
                row.status.as_str()
            ),
        };
    }
    let key = key_of(row, row.cursor);
    if let Some(rec) = ledger.get_mut(&key) {
        lapse(rec, now_ms);
        if rec.state == DeliveryState::Unknown {
            return StoreReply::Conflict {
                reason: format!(
                    "step {}'s outcome is unknown: resolve it as sent or failed first \
                     (POST /v1/runs/{}/steps/{}/resolve)",
                    key.step, key.run, key.step
                ),
            };
        }
    }
    if other_open(row) {
        return overtakes();
    }
    if let Some(rec) = ledger.get_mut(&key) {
        // The operator asks for the step again: a refusal that was final
        // no longer stops it.
        if rec.state == (DeliveryState::Failed { retryable: false }) {
            rec.state = DeliveryState::Failed { retryable: true };
        }
        rec.resolved_by = Some(by.to_string());
        rec.resolved_at_ms = Some(now_ms);
    }
    revive(row, ledger, now_ms);
    StoreReply::RunIs { status: row.status }
}

fn resolve_unknown(
    rows: &mut Rows<'_>,
    key: DeliveryKey,
    sent: bool,
    by: &str,
    other_open: &dyn Fn(&RunRecord) -> bool,
    now_ms: u64,
) -> StoreReply {
    let Some(row) = rows.runs.get_mut(&key.run) else {
        return StoreReply::NotFound;
    };
    if key.step as usize >= row.steps.len() {
        return StoreReply::NotFound;
    }
    let Some(rec) = rows.ledger.get_mut(&key) else {
        return StoreReply::Conflict {
            reason: format!(
                "step {} was never sent; there is nothing to resolve",
                key.step
            ),
        };
    };
    lapse(rec, now_ms);
    if rec.state != DeliveryState::Unknown {
        return StoreReply::Conflict {
            reason: format!(
                "step {} is {}, not unknown; only a step whose outcome is unknown can be resolved",
                key.step,
                rec.state.as_str()
            ),
        };
    }
    let finished = row.status == RunStatus::Failed && row.cursor == key.step;
    if finished && other_open(row) {
        return overtakes();
    }
    if sent {
        rec.state = DeliveryState::Sent;
        rec.last_error = None;
    } else {
        rec.state = DeliveryState::Failed { retryable: true };
        rec.last_error = Some(clip_reason(&format!(
            "resolved as not sent by {by}; it is sent again"
        )));
    }
    rec.resolved_by = Some(by.to_string());
    rec.resolved_at_ms = Some(now_ms);
    if finished {
        revive(row, rows.ledger, now_ms);
    } else {
        follow(row, rows.ledger, now_ms);
    }
    StoreReply::RunIs { status: row.status }
}

/// `BeginDelivery` for `key`, given its run (`None`: no such run) and its
/// ledger row (`None` until first begun; the function may create it). The
/// run is only read.
#[allow(clippy::too_many_arguments)] // One rule, all of whose inputs are rows or fields of the op.
pub fn begin_delivery(
    run: Option<&RunRecord>,
    ledger: &mut Option<DeliveryRecord>,
    pause: &mut Option<SenderPause>,
    guards: Guards,
    key: DeliveryKey,
    epoch: u64,
    send_timeout_ms: u64,
    now_ms: u64,
) -> StoreReply {
    let Some(row) = run else {
        return StoreReply::NotFound;
    };
    if key.step as usize >= row.steps.len() {
        return StoreReply::NotFound;
    }
    // The ledger is read before the fence: a worker whose lease went stale
    // may still learn that its key was sent.
    let mut attempts = 0;
    if guards.ledger {
        if let Some(rec) = ledger.as_mut() {
            attempts = rec.attempts;
            lapse(rec, now_ms);
            match rec.state {
                DeliveryState::Sent | DeliveryState::Delivered | DeliveryState::Read => {
                    return StoreReply::AlreadySent {
                        provider_message_id: rec.provider_message_id.clone().unwrap_or_default(),
                    }
                }
                DeliveryState::Unknown => return StoreReply::DeliveryUnknown,
                DeliveryState::Failed { retryable: false } => {
                    return StoreReply::DeliveryFailed {
                        reason: rec.last_error.clone().unwrap_or_default(),
                    }
                }
                DeliveryState::Sending { .. } => return StoreReply::InProgress,
                DeliveryState::Failed { retryable: true } => {}
            }
        }
    }
    if guards.fencing {
        // Enough lease must be left for the whole provider call, so no
        // other worker can claim the run while the call is under way.
        let live = row.status == RunStatus::Leased
            && row.epoch == epoch
            && row.cursor == key.step
            && row
                .lease
                .as_ref()
                .is_some_and(|l| l.until_ms >= now_ms.saturating_add(send_timeout_ms));
        if !live {
            return StoreReply::Fenced;
        }
    }
    // A paused sender sends nothing, except its one half-open probe when
    // that is due; taking the probe pushes the next one back, so two
    // engines never probe at once.
    let mut probe = false;
    if let Some(p) = pause.as_mut() {
        if !p.probe_due(now_ms) {
            return StoreReply::SenderPaused {
                reason: p.reason.clone(),
            };
        }
        p.probes = p.probes.saturating_add(1);
        p.probe_at_ms = Some(now_ms.saturating_add(SenderPause::probe_wait_ms(p.probes)));
        probe = true;
    }
    attempts += 1;
    if guards.ledger {
        let rec = ledger.get_or_insert_with(|| DeliveryRecord {
            key,
            state: DeliveryState::Sent,
            epoch,
            attempts: 0,
            provider_message_id: None,
            last_error: None,
            resolved_by: None,
            resolved_at_ms: None,
            owner: None,
        });
        rec.state = DeliveryState::Sending {
            deadline_ms: now_ms.saturating_add(send_timeout_ms),
        };
        rec.epoch = epoch;
        rec.owner = row.lease.as_ref().map(|l| l.owner.clone());
        rec.attempts = attempts;
    }
    StoreReply::Begun {
        attempt: attempts,
        probe,
    }
}

/// `PauseSender` on a tenant's pause row (`None`: active).
pub fn pause_sender(
    pause: &mut Option<SenderPause>,
    reason: &str,
    code: Option<i64>,
    temporary: bool,
    settings: Option<&str>,
    now_ms: u64,
) -> StoreReply {
    match pause {
        None => {
            *pause = Some(SenderPause {
                reason: clip_reason(reason),
                code,
                since_ms: now_ms,
                probe_at_ms: temporary
                    .then(|| now_ms.saturating_add(SenderPause::probe_wait_ms(0))),
                probes: 0,
                settings: settings.map(str::to_string),
            });
            StoreReply::Paused { newly: true }
        }
        Some(p) => {
            match (p.probe_at_ms, temporary) {
                // A failed probe, or another temporary refusal: the next
                // probe no sooner than the growing wait.
                (Some(at), true) => {
                    let next = now_ms.saturating_add(SenderPause::probe_wait_ms(p.probes));
                    p.probe_at_ms = Some(at.max(next));
                }
                // Something only a person can fix: no more probes.
                (Some(_), false) => {
                    p.probe_at_ms = None;
                    p.reason = clip_reason(reason);
                    p.code = code;
                }
                (None, _) => {}
            }
            StoreReply::Paused { newly: false }
        }
    }
}

/// `FinishDelivery`: what the provider call begun for the row's key came to.
pub fn finish_delivery(
    ledger: Option<&mut DeliveryRecord>,
    guards: Guards,
    outcome: DeliveryOutcome,
) -> StoreReply {
    if !guards.ledger {
        return StoreReply::Finished(outcome_state(&outcome));
    }
    let Some(rec) = ledger else {
        return StoreReply::NotFound;
    };
    match (&rec.state, outcome) {
        // The normal case: the call begun has come back.
        (DeliveryState::Sending { .. }, outcome) => record(rec, outcome),
        // A reply that arrives after the deadline turned the row unknown
        // still tells the truth, if it says sent.
        (DeliveryState::Unknown, outcome @ DeliveryOutcome::Sent { .. }) => record(rec, outcome),
        // Anything else is late or repeated; what is recorded stands.
        _ => {}
    }
    StoreReply::Finished(rec.state.clone())
}

/// Whether a status naming the provider's message `said` is about an
/// earlier call for the key than the one the ledger now tracks.
///
/// The provider gives every call it takes its own message id, and the
/// ledger keeps the last id it learned. While a call is under way
/// (`sending`, or `unknown`) its own id is not known yet, so a kept id is
/// an earlier call's, one that failed and is being sent again: a status
/// naming it (a late or repeated `failed`, say) must not settle the new
/// call. Once a call is settled, the id kept is its own, and a status
/// naming any other is about an earlier call. A status with no id, or a
/// key with no id kept, is taken as it comes.
fn about_an_earlier_attempt(rec: &DeliveryRecord, said: Option<&str>) -> bool {
    let (Some(said), Some(kept)) = (said, rec.provider_message_id.as_deref()) else {
        return false;
    };
    let under_way = matches!(
        rec.state,
        DeliveryState::Sending { .. } | DeliveryState::Unknown
    );
    if under_way {
        said == kept
    } else {
        said != kept
    }
}

/// `RecordReceipt`: a provider's receipt, applied forward only, and only
/// to the call it is about.
pub fn record_receipt(
    ledger: Option<&mut DeliveryRecord>,
    status: crate::receipt::ReceiptStatus,
    provider_message_id: Option<String>,
    reason: Option<String>,
    resend: bool,
) -> StoreReply {
    let Some(rec) = ledger else {
        return StoreReply::NotFound;
    };
    let unchanged = |rec: &DeliveryRecord| StoreReply::ReceiptRecorded {
        state: rec.state.clone(),
        changed: false,
    };
    if about_an_earlier_attempt(rec, provider_message_id.as_deref()) {
        return unchanged(rec);
    }
    let Some(next) = crate::receipt::progress(&rec.state, status, resend) else {
        return unchanged(rec);
    };
    if provider_message_id.is_some() {
        rec.provider_message_id = provider_message_id;
    }
    if let DeliveryState::Failed { .. } = next {
        rec.last_error = Some(clip_reason(
            reason
                .as_deref()
                .unwrap_or("the provider reported it failed"),
        ));
    } else if !matches!(rec.state, DeliveryState::Sent) {
        // Settled from unknown or sending: the old error no longer holds.
        rec.last_error = None;
    }
    rec.state = next;
    StoreReply::ReceiptRecorded {
        state: rec.state.clone(),
        changed: true,
    }
}

fn outcome_state(outcome: &DeliveryOutcome) -> DeliveryState {
    match outcome {
        DeliveryOutcome::Sent { .. } => DeliveryState::Sent,
        DeliveryOutcome::Failed { retryable, .. } => DeliveryState::Failed {
            retryable: *retryable,
        },
        DeliveryOutcome::Unknown { .. } => DeliveryState::Unknown,
        // Nothing went out: the step may be sent once the sender resumes.
        DeliveryOutcome::SenderBlocked { .. } => DeliveryState::Failed { retryable: true },
    }
}

fn record(rec: &mut DeliveryRecord, outcome: DeliveryOutcome) {
    rec.state = outcome_state(&outcome);
    match outcome {
        DeliveryOutcome::Sent {
            provider_message_id,
        } => {
            rec.provider_message_id = Some(provider_message_id);
            rec.last_error = None;
        }
        DeliveryOutcome::Failed { reason, .. }
        | DeliveryOutcome::Unknown { reason }
        | DeliveryOutcome::SenderBlocked { reason, .. } => {
            rec.last_error = Some(clip_reason(&reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_for(steps: usize) -> RunRecord {
        RunRecord::new(
            NewRun {
                id: RunId::new(1, 7),
                tenant: TenantId::default_tenant(),
                flow: FlowId::new("f").unwrap(),
                to: Recipient::parse("+5511913390001").unwrap(),
                steps: vec![
                    PlannedStep {
                        message: crate::Message::text("hi"),
                        delay_ms: 0,
                        after: Default::default(),
                        after_timeout_ms: None,
                    };
                    steps
                ],
                trigger_key: None,
            },
            1,
            100,
        )
    }

    /// Applies `op` to `row` alone, with no ledger rows and no pauses.
    fn apply_to_run(row: Option<&mut RunRecord>, guards: Guards, op: &StoreOp) -> StoreReply {
        let mut ledger = BTreeMap::new();
        apply_with_ledger(
            row.expect("a row"),
            &mut ledger,
            guards,
            op,
            &mut Vec::new(),
        )
    }

    /// Applies `op` to `row` and its ledger rows, keeping its events.
    fn apply_with_ledger(
        row: &mut RunRecord,
        ledger: &mut BTreeMap<DeliveryKey, DeliveryRecord>,
        guards: Guards,
        op: &StoreOp,
        events: &mut Vec<(RunId, RunEvent)>,
    ) -> StoreReply {
        let mut runs = BTreeMap::from([(row.id, row.clone())]);
        let mut pauses = BTreeMap::new();
        let mut rows = Rows {
            runs: &mut runs,
            ledger,
            pauses: &mut pauses,
            suppressed: &|_, _| false,
            events,
        };
        let reply = apply_row_op(&mut rows, guards, op.clone(), &|_| false);
        *row = runs.remove(&row.id).expect("still there");
        reply
    }

    fn worker(name: &str) -> WorkerId {
        WorkerId::new(name).unwrap()
    }

    fn begin(row: &RunRecord, epoch: u64, now_ms: u64) -> StoreOp {
        StoreOp::BeginDelivery {
            key: DeliveryKey {
                run: row.id,
                step: row.cursor,
            },
            epoch,
            send_timeout_ms: 10,
            now_ms,
        }
    }

    #[test]
    fn the_happy_path_leaves_no_event_and_the_ledger_names_the_sender() {
        let mut row = record_for(1);
        let (mut ledger, mut events) = (BTreeMap::new(), Vec::new());
        let claimed = row.claim(&worker("w-1"), 50, 100, &mut events);
        let key = DeliveryKey {
            run: row.id,
            step: 0,
        };
        let guards = Guards::default();
        for op in [
            begin(&row, claimed.epoch, 101),
            StoreOp::FinishDelivery {
                key,
                outcome: DeliveryOutcome::Sent {
                    provider_message_id: "m1".into(),
                },
                now_ms: 102,
            },
            StoreOp::Complete {
                run: row.id,
                epoch: claimed.epoch,
                step: 0,
                now_ms: 103,
            },
        ] {
            apply_with_ledger(&mut row, &mut ledger, guards, &op, &mut events);
        }
        assert_eq!(row.status, RunStatus::Completed);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(ledger[&key].owner, Some(worker("w-1")));
        assert_eq!(ledger[&key].epoch, claimed.epoch);
    }

    #[test]
    fn a_rescue_a_fenced_write_and_a_replayed_send_are_recorded_where_they_happened() {
        let mut row = record_for(2);
        let (mut ledger, mut events) = (BTreeMap::new(), Vec::new());
        let guards = Guards::default();
        // w-1 claims, begins step 0 and the provider takes it; then w-1
        // stalls past its lease.
        let first = row.claim(&worker("w-1"), 50, 100, &mut events);
        let op = begin(&row, 1, 101);
        apply_with_ledger(&mut row, &mut ledger, guards, &op, &mut events);
        let key = DeliveryKey {
            run: row.id,
            step: 0,
        };
        let sent = StoreOp::FinishDelivery {
            key,
            outcome: DeliveryOutcome::Sent {
                provider_message_id: "m1".into(),
            },
            now_ms: 102,
        };
        apply_with_ledger(&mut row, &mut ledger, guards, &sent, &mut events);
        assert!(events.is_empty());
        // w-2 takes the run over once the lease has lapsed.
        let second = row.claim(&worker("w-2"), 50, 200, &mut events);
        assert!(second.rescued);
        // w-2 begins step 0 again: the ledger answers, nothing is sent.
        let op = begin(&row, 2, 201);
        let again = apply_with_ledger(&mut row, &mut ledger, guards, &op, &mut events);
        assert!(matches!(again, StoreReply::AlreadySent { .. }), "{again:?}");
        // w-1 wakes and writes its advance under the old epoch: refused.
        let stale = StoreOp::Advance {
            run: row.id,
            epoch: first.epoch,
            step: 0,
            delay_ms: None,
            now_ms: 202,
        };
        let refused = apply_with_ledger(&mut row, &mut ledger, guards, &stale, &mut events);
        assert_eq!(refused, StoreReply::Fenced);
        assert_eq!(row.cursor, 0, "the stale write changed nothing");
        let events: Vec<RunEvent> = events
            .into_iter()
            .map(|(id, e)| {
                assert_eq!(id, row.id);
                e
            })
            .collect();
        assert_eq!(
            events,
            vec![
                RunEvent {
                    at_ms: 200,
                    step: 0,
                    kind: RunEventKind::Rescued {
                        from: worker("w-1"),
                        from_epoch: 1,
                        lease_until_ms: 150,
                        by: worker("w-2"),
                        epoch: 2,
                    },
                },
                RunEvent {
                    at_ms: 201,
                    step: 0,
                    kind: RunEventKind::Replayed {
                        epoch: 2,
                        ledger: "sent".into(),
                    },
                },
                RunEvent {
                    at_ms: 202,
                    step: 0,
                    kind: RunEventKind::Fenced {
                        op: "advance".into(),
                        epoch: 1,
                        run_epoch: 2,
                    },
                },
            ]
        );
        // The ledger still names the worker whose lease the send began under.
        assert_eq!(ledger[&key].owner, Some(worker("w-1")));
    }

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let event = RunEvent {
            at_ms: 5,
            step: 1,
            kind: RunEventKind::Fenced {
                op: "complete".into(),
                epoch: 3,
                run_epoch: 4,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at_ms": 5, "step": 1, "kind": "fenced",
                "op": "complete", "epoch": 3, "run_epoch": 4})
        );
        assert_eq!(serde_json::from_value::<RunEvent>(json).unwrap(), event);
        assert_eq!(event.kind.as_str(), "fenced");
    }

    #[test]
    fn advance_at_the_largest_step_is_refused_not_overflowed() {
        let mut row = record_for(2);
        let claimed = row.claim(&WorkerId::new("w").unwrap(), 50, 100, &mut Vec::new());
        let op = StoreOp::Advance {
            run: row.id,
            epoch: claimed.epoch,
            step: u32::MAX,
            delay_ms: None,
            now_ms: 110,
        };
        let reply = apply_to_run(Some(&mut row), Guards::default(), &op);
        assert!(matches!(reply, StoreReply::Conflict { .. }), "{reply:?}");
        assert_eq!(row.cursor, 0);
    }

    #[test]
    fn a_repeated_advance_after_release_gets_the_same_answer() {
        let mut row = record_for(3);
        let claimed = row.claim(&WorkerId::new("w").unwrap(), 50, 100, &mut Vec::new());
        let op = StoreOp::Advance {
            run: row.id,
            epoch: claimed.epoch,
            step: 0,
            delay_ms: Some(10),
            now_ms: 110,
        };
        let first = apply_to_run(Some(&mut row), Guards::default(), &op);
        let again = apply_to_run(Some(&mut row), Guards::default(), &op);
        assert_eq!(first, again);
        assert_eq!(row.cursor, 1);
        assert_eq!(row.status, RunStatus::Pending);
    }
}
