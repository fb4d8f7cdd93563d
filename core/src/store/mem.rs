//! `MemStore`: the reference model of the storage contract.
//!
//! This is the oracle the SQL stores and the simulation are held to, so it
//! favours being obviously right over being fast: plain `BTreeMap`s, one
//! function per op, and the subtle rules commented where they apply.

use super::{
    ClaimedRun, DeliveryRecord, DeliveryState, Guards, Lease, NewRun, PlannedStep, QueueStats,
    RunStatus, RunView, StoreOp, StoreReply,
};
use crate::flow::Flow;
use crate::ids::{DeliveryKey, FlowId, RunId, TenantId, WorkerId};
use crate::limits::{clip_reason, MAX_CLAIM_BATCH};
use crate::recipient::Recipient;
use crate::send::DeliveryOutcome;
use std::collections::BTreeMap;

/// A conversation: runs to one recipient of one tenant go out one run at a
/// time, in trigger order.
type Conversation = (TenantId, Recipient);

#[derive(Debug, Clone)]
struct RunRow {
    id: RunId,
    seq: u64,
    tenant: TenantId,
    flow: FlowId,
    to: Recipient,
    steps: Vec<PlannedStep>,
    cursor: u32,
    status: RunStatus,
    run_at_ms: u64,
    attempts: u32,
    epoch: u64,
    lease: Option<Lease>,
    reason: Option<String>,
    trigger_key: Option<String>,
    created_at_ms: u64,
    finished_at_ms: Option<u64>,
}

impl RunRow {
    fn conversation(&self) -> Conversation {
        (self.tenant.clone(), self.to.clone())
    }

    fn last_step(&self) -> u32 {
        self.steps.len() as u32 - 1
    }
}

/// The in-memory reference store. Deterministic: the same ops give the same
/// replies, byte for byte.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    guards: Guards,
    flows: BTreeMap<(TenantId, FlowId), Flow>,
    tenants: BTreeMap<TenantId, crate::tenant::Tenant>,
    runs: BTreeMap<RunId, RunRow>,
    next_seq: u64,
    /// Unfinished runs of each conversation, by trigger order. The first
    /// entry is the conversation's head: the only one that may be claimed.
    open: BTreeMap<Conversation, BTreeMap<u64, RunId>>,
    trigger_keys: BTreeMap<(TenantId, String), RunId>,
    ledger: BTreeMap<DeliveryKey, DeliveryRecord>,
}

impl MemStore {
    /// An empty store with both guards on.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given guards. Turning a guard off is for
    /// ablation tests only: it reintroduces the race it exists to stop.
    pub fn with_guards(guards: Guards) -> Self {
        Self {
            guards,
            ..Self::default()
        }
    }

    /// The guards in force.
    pub fn guards(&self) -> Guards {
        self.guards
    }

    /// Applies one op and returns its reply.
    pub fn apply(&mut self, op: StoreOp) -> StoreReply {
        match op {
            StoreOp::PutFlow { tenant, flow } => {
                let created = self.flows.insert((tenant, flow.id.clone()), flow).is_none();
                StoreReply::FlowPut { created }
            }
            StoreOp::PutTenant { tenant } => {
                assert!(
                    tenant.id != TenantId::default_tenant(),
                    "the default tenant is never stored"
                );
                let created = self.tenants.insert(tenant.id.clone(), tenant).is_none();
                StoreReply::TenantPut { created }
            }
            StoreOp::GetTenant { tenant } => match self.tenants.get(&tenant) {
                Some(t) => StoreReply::Tenant(t.clone()),
                None => StoreReply::NotFound,
            },
            StoreOp::GetFlow { tenant, flow } => match self.flows.get(&(tenant, flow)) {
                Some(f) => StoreReply::Flow(f.clone()),
                None => StoreReply::NotFound,
            },
            StoreOp::Enqueue { run, now_ms } => self.enqueue(run, now_ms),
            StoreOp::Claim {
                owner,
                max,
                lease_ms,
                now_ms,
            } => self.claim(owner, max, lease_ms, now_ms),
            StoreOp::Heartbeat {
                run,
                epoch,
                lease_ms,
                now_ms,
            } => self.heartbeat(run, epoch, lease_ms, now_ms),
            StoreOp::Advance {
                run,
                epoch,
                step,
                delay_ms,
                now_ms,
            } => self.advance(run, epoch, step, delay_ms, now_ms),
            StoreOp::Complete {
                run,
                epoch,
                step,
                now_ms,
            } => self.complete(run, epoch, step, now_ms),
            StoreOp::Fail {
                run,
                epoch,
                reason,
                retry_after_ms,
                now_ms,
            } => self.fail(run, epoch, reason, retry_after_ms, now_ms),
            StoreOp::Release {
                run,
                epoch,
                after_ms,
                now_ms,
            } => self.release(run, epoch, after_ms, now_ms),
            StoreOp::Cancel { run, now_ms } => self.cancel(run, now_ms),
            StoreOp::BeginDelivery {
                key,
                epoch,
                send_timeout_ms,
                now_ms,
            } => self.begin_delivery(key, epoch, send_timeout_ms, now_ms),
            StoreOp::FinishDelivery { key, outcome, .. } => self.finish_delivery(key, outcome),
            StoreOp::ResolveUnknown { key, outcome, .. } => self.resolve_unknown(key, outcome),
            StoreOp::RecordReceipt {
                key,
                status,
                provider_message_id,
                reason,
                ..
            } => self.record_receipt(key, status, provider_message_id, reason),
            StoreOp::GetRun { run } => match self.runs.get(&run) {
                Some(row) => StoreReply::Run(self.view(row, true)),
                None => StoreReply::NotFound,
            },
            StoreOp::ListRuns { status, limit } => {
                // Newest first: by trigger order, descending.
                let mut rows: Vec<&RunRow> = self
                    .runs
                    .values()
                    .filter(|r| status.is_none_or(|s| r.status == s))
                    .collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.seq));
                StoreReply::Runs(
                    rows.into_iter()
                        .take(limit as usize)
                        .map(|r| self.view(r, false))
                        .collect(),
                )
            }
            StoreOp::Stats { now_ms } => StoreReply::Stats(self.stats(now_ms)),
            StoreOp::Prune {
                retention_ms,
                max,
                now_ms,
            } => self.prune(retention_ms, max, now_ms),
        }
    }

    fn enqueue(&mut self, run: NewRun, now_ms: u64) -> StoreReply {
        assert!(!run.steps.is_empty(), "a run has at least one step");
        if let Some(key) = &run.trigger_key {
            if let Some(existing) = self.trigger_keys.get(&(run.tenant.clone(), key.clone())) {
                return StoreReply::Enqueued {
                    run: *existing,
                    created: false,
                };
            }
        }
        if self.runs.contains_key(&run.id) {
            return StoreReply::Conflict {
                reason: format!("run {} already exists", run.id),
            };
        }
        self.next_seq += 1;
        let row = RunRow {
            id: run.id,
            seq: self.next_seq,
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
        };
        if let Some(key) = &row.trigger_key {
            self.trigger_keys
                .insert((row.tenant.clone(), key.clone()), row.id);
        }
        self.open
            .entry(row.conversation())
            .or_default()
            .insert(row.seq, row.id);
        let id = row.id;
        self.runs.insert(id, row);
        StoreReply::Enqueued {
            run: id,
            created: true,
        }
    }

    /// Is this head-of-conversation run claimable at `now_ms`?
    fn claimable(&self, row: &RunRow, now_ms: u64) -> bool {
        match row.status {
            RunStatus::Pending => row.run_at_ms <= now_ms,
            // A lapsed lease makes the run claimable again. Without fencing,
            // a live lease is ignored too: the old system's read of rows it
            // had not yet seen marked.
            RunStatus::Leased => {
                !self.guards.fencing || row.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms)
            }
            _ => false,
        }
    }

    fn claim(&mut self, owner: WorkerId, max: u32, lease_ms: u64, now_ms: u64) -> StoreReply {
        let max = max.min(MAX_CLAIM_BATCH) as usize;
        // Only each conversation's head is a candidate, so one claim can
        // never take two runs of one conversation.
        let mut due: Vec<(u64, u64, RunId)> = self
            .open
            .values()
            .filter_map(|runs| runs.values().next())
            .map(|id| &self.runs[id])
            .filter(|row| self.claimable(row, now_ms))
            .map(|row| (row.run_at_ms, row.seq, row.id))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, _, id) in due {
            let row = self.runs.get_mut(&id).expect("open runs exist");
            // A run claimed while still leased had a holder whose lease
            // lapsed: this claim rescues it.
            let rescued = row.status == RunStatus::Leased;
            let before = row.epoch;
            row.epoch += 1;
            assert!(row.epoch > before, "epochs only grow");
            row.status = RunStatus::Leased;
            let until_ms = now_ms.saturating_add(lease_ms);
            row.lease = Some(Lease {
                owner: owner.clone(),
                epoch: row.epoch,
                until_ms,
            });
            claimed.push(ClaimedRun {
                id,
                tenant: row.tenant.clone(),
                flow: row.flow.clone(),
                to: row.to.clone(),
                steps: row.steps.clone(),
                cursor: row.cursor,
                epoch: row.epoch,
                lease_until_ms: until_ms,
                attempts: row.attempts,
                rescued,
            });
        }
        StoreReply::Claimed(claimed)
    }

    /// The fence every holder's write passes: the run is leased under this
    /// very epoch. Without fencing only finished runs are refused.
    fn fence(&mut self, run: RunId, epoch: u64) -> Result<&mut RunRow, Refused> {
        let fencing = self.guards.fencing;
        let row = self.runs.get_mut(&run).ok_or(Refused::NotFound)?;
        let ok = if fencing {
            row.status == RunStatus::Leased && row.epoch == epoch
        } else {
            !row.status.is_terminal()
        };
        if ok {
            Ok(row)
        } else {
            Err(Refused::Fenced)
        }
    }

    /// A retried write whose effect is already in place under the same
    /// epoch gets the same answer again, so a worker that lost a reply can
    /// simply repeat itself. Epoch 0 was never granted, so it never matches.
    fn already(&self, run: RunId, epoch: u64, status: RunStatus) -> bool {
        self.runs.get(&run).is_some_and(|r| {
            epoch > 0 && r.epoch == epoch && r.status == status && r.lease.is_none()
        })
    }

    fn heartbeat(&mut self, run: RunId, epoch: u64, lease_ms: u64, now_ms: u64) -> StoreReply {
        let row = match self.fence(run, epoch) {
            Ok(row) => row,
            Err(refused) => return refused.into(),
        };
        let until_ms = now_ms.saturating_add(lease_ms);
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
        &mut self,
        run: RunId,
        epoch: u64,
        step: u32,
        delay_ms: Option<u64>,
        now_ms: u64,
    ) -> StoreReply {
        if let Some(r) = self.runs.get(&run) {
            let released = delay_ms.is_some();
            let repeat = epoch > 0
                && r.epoch == epoch
                && r.cursor == step + 1
                && match released {
                    true => r.status == RunStatus::Pending && r.lease.is_none(),
                    false => r.status == RunStatus::Leased,
                };
            if repeat {
                return StoreReply::Advanced {
                    cursor: r.cursor,
                    released,
                };
            }
        }
        let fencing = self.guards.fencing;
        let row = match self.fence(run, epoch) {
            Ok(row) => row,
            Err(refused) => return refused.into(),
        };
        if fencing && row.cursor != step {
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
            released: delay_ms.is_some(),
        }
    }

    fn complete(&mut self, run: RunId, epoch: u64, step: u32, now_ms: u64) -> StoreReply {
        if self.already(run, epoch, RunStatus::Completed) {
            return StoreReply::Completed;
        }
        let fencing = self.guards.fencing;
        let row = match self.fence(run, epoch) {
            Ok(row) => row,
            Err(refused) => return refused.into(),
        };
        if step != row.last_step() || (fencing && row.cursor != step) {
            return StoreReply::Conflict {
                reason: format!(
                    "cursor is at step {} of {}, not at the last step {step}",
                    row.cursor,
                    row.steps.len()
                ),
            };
        }
        row.cursor = step + 1;
        self.finish(run, RunStatus::Completed, None, now_ms);
        StoreReply::Completed
    }

    fn fail(
        &mut self,
        run: RunId,
        epoch: u64,
        reason: String,
        retry_after_ms: Option<u64>,
        now_ms: u64,
    ) -> StoreReply {
        let dead = retry_after_ms.is_none();
        let settled = if dead {
            RunStatus::Failed
        } else {
            RunStatus::Pending
        };
        if self.already(run, epoch, settled) {
            return StoreReply::Failed { dead };
        }
        let row = match self.fence(run, epoch) {
            Ok(row) => row,
            Err(refused) => return refused.into(),
        };
        let reason = clip_reason(&reason);
        match retry_after_ms {
            Some(after) => {
                row.status = RunStatus::Pending;
                row.lease = None;
                row.attempts += 1;
                row.run_at_ms = now_ms.saturating_add(after);
                row.reason = Some(reason);
            }
            None => self.finish(run, RunStatus::Failed, Some(reason), now_ms),
        }
        StoreReply::Failed { dead }
    }

    fn release(&mut self, run: RunId, epoch: u64, after_ms: u64, now_ms: u64) -> StoreReply {
        if self.already(run, epoch, RunStatus::Pending) {
            return StoreReply::Released;
        }
        let row = match self.fence(run, epoch) {
            Ok(row) => row,
            Err(refused) => return refused.into(),
        };
        row.status = RunStatus::Pending;
        row.lease = None;
        row.run_at_ms = now_ms.saturating_add(after_ms);
        StoreReply::Released
    }

    fn cancel(&mut self, run: RunId, now_ms: u64) -> StoreReply {
        let Some(row) = self.runs.get(&run) else {
            return StoreReply::NotFound;
        };
        if row.status.is_terminal() {
            return StoreReply::Conflict {
                reason: format!("run is already {}", row.status.as_str()),
            };
        }
        self.finish(run, RunStatus::Cancelled, None, now_ms);
        StoreReply::Cancelled
    }

    /// Moves a run to a terminal status and out of its conversation's queue,
    /// which lets the conversation's next run become the head.
    fn finish(&mut self, run: RunId, status: RunStatus, reason: Option<String>, now_ms: u64) {
        assert!(status.is_terminal());
        let row = self.runs.get_mut(&run).expect("finish an existing run");
        row.status = status;
        row.lease = None;
        row.reason = reason;
        row.finished_at_ms = Some(now_ms);
        let conversation = row.conversation();
        let seq = row.seq;
        if let Some(queue) = self.open.get_mut(&conversation) {
            queue.remove(&seq);
            if queue.is_empty() {
                self.open.remove(&conversation);
            }
        }
    }

    fn begin_delivery(
        &mut self,
        key: DeliveryKey,
        epoch: u64,
        send_timeout_ms: u64,
        now_ms: u64,
    ) -> StoreReply {
        let Some(row) = self.runs.get(&key.run) else {
            return StoreReply::NotFound;
        };
        if key.step as usize >= row.steps.len() {
            return StoreReply::NotFound;
        }
        // The ledger is read before the fence: a worker whose lease went
        // stale may still learn that its key was sent.
        let mut attempts = 0;
        if self.guards.ledger {
            if let Some(rec) = self.ledger.get_mut(&key) {
                attempts = rec.attempts;
                match rec.state {
                    DeliveryState::Sent | DeliveryState::Delivered | DeliveryState::Read => {
                        return StoreReply::AlreadySent {
                            provider_message_id: rec
                                .provider_message_id
                                .clone()
                                .unwrap_or_default(),
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
        if self.guards.fencing {
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
        attempts += 1;
        if self.guards.ledger {
            let rec = self.ledger.entry(key).or_insert(DeliveryRecord {
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
        StoreReply::Begun { attempt: attempts }
    }

    fn finish_delivery(&mut self, key: DeliveryKey, outcome: DeliveryOutcome) -> StoreReply {
        if !self.guards.ledger {
            return StoreReply::Finished(outcome_state(&outcome));
        }
        let Some(rec) = self.ledger.get_mut(&key) else {
            return StoreReply::NotFound;
        };
        match (&rec.state, outcome) {
            // The normal case: the call begun has come back.
            (DeliveryState::Sending { .. }, outcome) => record(rec, outcome),
            // A reply that arrives after the deadline turned the row
            // unknown still tells the truth, if it says sent.
            (DeliveryState::Unknown, outcome @ DeliveryOutcome::Sent { .. }) => {
                record(rec, outcome)
            }
            // Anything else is late or repeated; what is recorded stands.
            _ => {}
        }
        StoreReply::Finished(rec.state.clone())
    }

    fn resolve_unknown(&mut self, key: DeliveryKey, outcome: DeliveryOutcome) -> StoreReply {
        let Some(rec) = self.ledger.get_mut(&key) else {
            return StoreReply::NotFound;
        };
        if rec.state != DeliveryState::Unknown {
            return StoreReply::Conflict {
                reason: format!("delivery {key} is {}, not unknown", rec.state.as_str()),
            };
        }
        match outcome {
            DeliveryOutcome::Unknown { .. } => StoreReply::Conflict {
                reason: "resolve an unknown delivery as sent or failed".into(),
            },
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

    fn record_receipt(
        &mut self,
        key: DeliveryKey,
        status: crate::receipt::ReceiptStatus,
        provider_message_id: Option<String>,
        reason: Option<String>,
    ) -> StoreReply {
        let Some(rec) = self.ledger.get_mut(&key) else {
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

    fn view(&self, row: &RunRow, with_deliveries: bool) -> RunView {
        let deliveries = if with_deliveries {
            (0..row.steps.len() as u32)
                .map(|step| self.ledger.get(&DeliveryKey { run: row.id, step }).cloned())
                .collect()
        } else {
            Vec::new()
        };
        RunView {
            id: row.id,
            tenant: row.tenant.clone(),
            flow: row.flow.clone(),
            to: row.to.clone(),
            status: row.status,
            cursor: row.cursor,
            steps: row.steps.clone(),
            attempts: row.attempts,
            epoch: row.epoch,
            run_at_ms: row.run_at_ms,
            lease: row.lease.clone(),
            reason: row.reason.clone(),
            created_at_ms: row.created_at_ms,
            deliveries,
        }
    }

    fn stats(&self, now_ms: u64) -> QueueStats {
        let mut s = QueueStats::default();
        for row in self.runs.values() {
            match row.status {
                RunStatus::Pending => {
                    s.pending += 1;
                    if row.run_at_ms <= now_ms {
                        s.due += 1;
                        s.oldest_due_age_ms = s.oldest_due_age_ms.max(now_ms - row.run_at_ms);
                    }
                }
                RunStatus::Leased => s.leased += 1,
                _ => {}
            }
        }
        s.unknown_deliveries = self
            .ledger
            .values()
            .filter(|r| r.state == DeliveryState::Unknown)
            .count() as u64;
        s
    }

    fn prune(&mut self, retention_ms: u64, max: u32, now_ms: u64) -> StoreReply {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut old: Vec<(u64, RunId)> = self
            .runs
            .values()
            .filter(|r| r.finished_at_ms.is_some_and(|t| t < cutoff))
            .map(|r| (r.seq, r.id))
            .collect();
        old.sort_unstable();
        old.truncate(max as usize);
        for (_, id) in &old {
            let row = self.runs.remove(id).expect("listed above");
            if let Some(key) = row.trigger_key {
                self.trigger_keys.remove(&(row.tenant, key));
            }
            for step in 0..row.steps.len() as u32 {
                self.ledger.remove(&DeliveryKey { run: *id, step });
            }
        }
        StoreReply::Pruned {
            runs: old.len() as u32,
        }
    }
}

/// Why a holder's write was refused.
enum Refused {
    NotFound,
    Fenced,
}

impl From<Refused> for StoreReply {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotFound => StoreReply::NotFound,
            Refused::Fenced => StoreReply::Fenced,
        }
    }
}

fn outcome_state(outcome: &DeliveryOutcome) -> DeliveryState {
    match outcome {
        DeliveryOutcome::Sent { .. } => DeliveryState::Sent,
        DeliveryOutcome::Failed { retryable, .. } => DeliveryState::Failed {
            retryable: *retryable,
        },
        DeliveryOutcome::Unknown { .. } => DeliveryState::Unknown,
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
        DeliveryOutcome::Failed { reason, .. } | DeliveryOutcome::Unknown { reason } => {
            rec.last_error = Some(clip_reason(&reason));
        }
    }
}
