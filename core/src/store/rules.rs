//! The storage contract's rules for one run and one ledger row.
//!
//! Every backend keeps rows differently (a `BTreeMap` in the model, tables
//! in SQLite and PostgreSQL) but decides what an op does to a row with the
//! functions here, so no backend can drift from another on fencing, retried
//! writes or the ledger. What stays with each backend is what spans rows:
//! choosing which runs a claim takes, keeping one head per conversation,
//! the trigger keys, listing and pruning. Those are held to the model by the
//! differential tests.

use super::{
    ClaimedRun, DeliveryRecord, DeliveryState, Guards, Lease, NewRun, PlannedStep, RunStatus,
    RunView, StoreOp, StoreReply,
};
use crate::ids::{DeliveryKey, FlowId, RunId, TenantId, WorkerId};
use crate::limits::clip_reason;
use crate::recipient::Recipient;
use crate::send::DeliveryOutcome;
use crate::tenant::SenderPause;

/// A run as every backend stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
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
    /// Its messages.
    pub steps: Vec<PlannedStep>,
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
    /// Why it failed, or the last retryable error.
    pub reason: Option<String>,
    /// The trigger's idempotency key.
    pub trigger_key: Option<String>,
    /// When it was enqueued.
    pub created_at_ms: u64,
    /// When it reached a terminal status.
    pub finished_at_ms: Option<u64>,
}

impl RunRecord {
    /// A freshly enqueued run: pending, due after its first step's delay.
    pub fn new(run: NewRun, seq: u64, now_ms: u64) -> Self {
        assert!(!run.steps.is_empty(), "a run has at least one step");
        Self {
            id: run.id,
            seq,
            tenant: run.tenant,
            flow: run.flow,
            to: run.to,
            run_at_ms: now_ms.saturating_add(run.steps[0].delay_ms),
            steps: run.steps,
            cursor: 0,
            status: RunStatus::Pending,
            attempts: 0,
            epoch: 0,
            lease: None,
            reason: None,
            trigger_key: run.trigger_key,
            created_at_ms: now_ms,
            finished_at_ms: None,
        }
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
            RunStatus::Pending => self.run_at_ms <= now_ms,
            RunStatus::Leased => {
                !guards.fencing || self.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms)
            }
            _ => false,
        }
    }

    /// Leases the run to `owner`, bumping its epoch.
    pub fn claim(&mut self, owner: &WorkerId, lease_ms: u64, now_ms: u64) -> ClaimedRun {
        // A run claimed while still leased had a holder whose lease lapsed:
        // this claim rescues it.
        let rescued = self.status == RunStatus::Leased;
        let before = self.epoch;
        self.epoch += 1;
        assert!(self.epoch > before, "epochs only grow");
        self.status = RunStatus::Leased;
        let until_ms = now_ms.saturating_add(lease_ms);
        self.lease = Some(Lease {
            owner: owner.clone(),
            epoch: self.epoch,
            until_ms,
        });
        ClaimedRun {
            id: self.id,
            tenant: self.tenant.clone(),
            flow: self.flow.clone(),
            to: self.to.clone(),
            steps: self.steps.clone(),
            cursor: self.cursor,
            epoch: self.epoch,
            lease_until_ms: until_ms,
            attempts: self.attempts,
            rescued,
        }
    }

    /// The run as `GetRun` and `ListRuns` show it.
    pub fn view(&self, deliveries: Vec<Option<DeliveryRecord>>) -> RunView {
        RunView {
            id: self.id,
            tenant: self.tenant.clone(),
            flow: self.flow.clone(),
            to: self.to.clone(),
            status: self.status,
            cursor: self.cursor,
            steps: self.steps.clone(),
            attempts: self.attempts,
            epoch: self.epoch,
            run_at_ms: self.run_at_ms,
            lease: self.lease.clone(),
            reason: self.reason.clone(),
            created_at_ms: self.created_at_ms,
            deliveries,
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
        self.status = status;
        self.lease = None;
        self.reason = reason;
        self.finished_at_ms = Some(now_ms);
    }
}

/// A holder's write refused by the fence.
struct Fenced;

impl From<Fenced> for StoreReply {
    fn from(_: Fenced) -> Self {
        StoreReply::Fenced
    }
}

/// The ops [`apply_to_run`] decides: the lease holder's writes and cancel.
pub fn is_run_op(op: &StoreOp) -> Option<RunId> {
    match op {
        StoreOp::Heartbeat { run, .. }
        | StoreOp::Advance { run, .. }
        | StoreOp::Complete { run, .. }
        | StoreOp::Fail { run, .. }
        | StoreOp::Release { run, .. }
        | StoreOp::Cancel { run, .. } => Some(*run),
        _ => None,
    }
}

/// Applies a holder's write (heartbeat, advance, complete, fail, release)
/// or a cancel to its run. The caller found the row (`None`: no such run)
/// and stores it back if it changed; a run that becomes terminal leaves its
/// conversation's queue, which is the caller's to do.
///
/// # Panics
/// On an op [`is_run_op`] does not name.
pub fn apply_to_run(row: Option<&mut RunRecord>, guards: Guards, op: &StoreOp) -> StoreReply {
    let Some(row) = row else {
        return StoreReply::NotFound;
    };
    match *op {
        StoreOp::Heartbeat {
            epoch,
            lease_ms,
            now_ms,
            ..
        } => heartbeat(row, guards, epoch, lease_ms, now_ms),
        StoreOp::Advance {
            epoch,
            step,
            delay_ms,
            now_ms,
            ..
        } => advance(row, guards, epoch, step, delay_ms, now_ms),
        StoreOp::Complete {
            epoch,
            step,
            now_ms,
            ..
        } => complete(row, guards, epoch, step, now_ms),
        StoreOp::Fail {
            epoch,
            ref reason,
            retry_after_ms,
            now_ms,
            ..
        } => fail(row, guards, epoch, reason, retry_after_ms, now_ms),
        StoreOp::Release {
            epoch,
            after_ms,
            now_ms,
            ..
        } => release(row, guards, epoch, after_ms, now_ms),
        StoreOp::Cancel { now_ms, .. } => cancel(row, now_ms),
        ref other => panic!("{} is not an op on one run", other.name()),
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
    match row.lease.as_mut() {
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
    guards: Guards,
    epoch: u64,
    step: u32,
    delay_ms: Option<u64>,
    now_ms: u64,
) -> StoreReply {
    let released = delay_ms.is_some();
    let repeat = epoch > 0
        && row.epoch == epoch
        && step.checked_add(1) == Some(row.cursor)
        && match released {
            true => row.status == RunStatus::Pending && row.lease.is_none(),
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
    row.cursor = step + 1;
    row.attempts = 0;
    row.reason = None;
    if let Some(delay_ms) = delay_ms {
        row.status = RunStatus::Pending;
        row.lease = None;
        row.run_at_ms = now_ms.saturating_add(delay_ms);
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
    row.cursor = step + 1;
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
            row.status = RunStatus::Pending;
            row.lease = None;
            row.attempts += 1;
            row.run_at_ms = now_ms.saturating_add(after);
            row.reason = Some(reason);
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
    row.status = RunStatus::Pending;
    row.lease = None;
    row.run_at_ms = now.saturating_add(after_ms);
    StoreReply::Released
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
                // Past its deadline a call's reply can no longer be
                // expected: it may have been sent, so it is unknown.
                DeliveryState::Sending { deadline_ms } if now_ms >= deadline_ms => {
                    rec.state = DeliveryState::Unknown;
                    rec.last_error = Some("no outcome before the send deadline".into());
                    return StoreReply::DeliveryUnknown;
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
        });
        rec.state = DeliveryState::Sending {
            deadline_ms: now_ms.saturating_add(send_timeout_ms),
        };
        rec.epoch = epoch;
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

/// `ResolveUnknown`: settle an unknown delivery as sent or failed.
pub fn resolve_unknown(
    ledger: Option<&mut DeliveryRecord>,
    outcome: DeliveryOutcome,
) -> StoreReply {
    let Some(rec) = ledger else {
        return StoreReply::NotFound;
    };
    if rec.state != DeliveryState::Unknown {
        return StoreReply::Conflict {
            reason: format!(
                "delivery {} is {}, not unknown",
                rec.key,
                rec.state.as_str()
            ),
        };
    }
    match outcome {
        DeliveryOutcome::Unknown { .. } | DeliveryOutcome::SenderBlocked { .. } => {
            StoreReply::Conflict {
                reason: "resolve an unknown delivery as sent or failed".into(),
            }
        }
        DeliveryOutcome::Failed { reason, .. } => {
            record(
                rec,
                DeliveryOutcome::Failed {
                    retryable: false,
                    reason,
                    retry_after_ms: None,
                },
            );
            StoreReply::Resolved
        }
        sent @ DeliveryOutcome::Sent { .. } => {
            record(rec, sent);
            StoreReply::Resolved
        }
    }
}

/// `RecordReceipt`: a provider's receipt, applied forward only.
pub fn record_receipt(
    ledger: Option<&mut DeliveryRecord>,
    status: crate::receipt::ReceiptStatus,
    provider_message_id: Option<String>,
    reason: Option<String>,
) -> StoreReply {
    let Some(rec) = ledger else {
        return StoreReply::NotFound;
    };
    let Some(next) = crate::receipt::progress(&rec.state, status) else {
        return StoreReply::ReceiptRecorded {
            state: rec.state.clone(),
            changed: false,
        };
    };
    if rec.provider_message_id.is_none() {
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

/// Applies a ledger op (finish, resolve, receipt) to its row.
///
/// # Panics
/// On any other op.
pub fn apply_to_delivery(
    ledger: Option<&mut DeliveryRecord>,
    guards: Guards,
    op: StoreOp,
) -> StoreReply {
    match op {
        StoreOp::FinishDelivery { outcome, .. } => finish_delivery(ledger, guards, outcome),
        StoreOp::ResolveUnknown { outcome, .. } => resolve_unknown(ledger, outcome),
        StoreOp::RecordReceipt {
            status,
            provider_message_id,
            reason,
            ..
        } => record_receipt(ledger, status, provider_message_id, reason),
        other => panic!("{} is not a ledger op", other.name()),
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
                    };
                    steps
                ],
                trigger_key: None,
            },
            1,
            100,
        )
    }

    #[test]
    fn advance_at_the_largest_step_is_refused_not_overflowed() {
        let mut row = record_for(2);
        let claimed = row.claim(&WorkerId::new("w").unwrap(), 50, 100);
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
        let claimed = row.claim(&WorkerId::new("w").unwrap(), 50, 100);
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
