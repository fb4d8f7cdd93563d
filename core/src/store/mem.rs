//! `MemStore`: the reference model of the storage contract.
//!
//! This is the oracle the SQL stores and the simulation are held to, so it
//! favours being obviously right over being fast: plain `BTreeMap`s, and
//! what an op does to one row decided by the shared [`rules`].

use super::rules::{self, RunRecord};
use super::{
    DeliveryRecord, DeliveryState, Guards, NewRun, QueueStats, RunEvent, RunStatus, RunView,
    StoreOp, StoreReply,
};
use crate::flow::{Flow, Trigger};
use crate::ids::{DeliveryKey, FlowId, RunId, TenantId, WorkerId};
use crate::limits::MAX_CLAIM_BATCH;
use crate::recipient::Recipient;
use crate::tenant::SenderPause;
use std::collections::BTreeMap;

/// A conversation: runs to one recipient of one tenant go out one run at a
/// time, in trigger order.
type Conversation = (TenantId, Recipient);

fn conversation(row: &RunRecord) -> Conversation {
    (row.tenant.clone(), row.to.clone())
}

/// The in-memory reference store. Deterministic: the same ops give the same
/// replies, byte for byte.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    guards: Guards,
    flows: BTreeMap<(TenantId, FlowId), Flow>,
    tenants: BTreeMap<TenantId, crate::tenant::Tenant>,
    runs: BTreeMap<RunId, RunRecord>,
    next_seq: u64,
    /// Unfinished runs of each conversation, by trigger order. The first
    /// entry is the conversation's head: the only one that may be claimed.
    open: BTreeMap<Conversation, BTreeMap<u64, RunId>>,
    trigger_keys: BTreeMap<(TenantId, String), RunId>,
    ledger: BTreeMap<DeliveryKey, DeliveryRecord>,
    pauses: BTreeMap<TenantId, SenderPause>,
    recipients: BTreeMap<Conversation, super::RecipientInfo>,
    /// Each run's events, oldest first.
    events: BTreeMap<RunId, Vec<RunEvent>>,
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
                let created = self
                    .flows
                    .insert((tenant, flow.id().clone()), flow)
                    .is_none();
                StoreReply::FlowPut { created }
            }
            StoreOp::PutTenant { tenant } => {
                assert!(
                    *tenant.id() != TenantId::default_tenant(),
                    "the default tenant is never stored"
                );
                // New settings (a new token, say) end a pause.
                self.pauses.remove(tenant.id());
                let created = self.tenants.insert(tenant.id().clone(), tenant).is_none();
                StoreReply::TenantPut { created }
            }
            StoreOp::GetTenant { tenant } => match self.tenants.get(&tenant) {
                Some(t) => StoreReply::Tenant(t.clone()),
                None => StoreReply::NotFound,
            },
            StoreOp::ListFlows { after, limit } => StoreReply::Flows(
                self.flows
                    .iter()
                    .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                    .take(limit as usize)
                    .map(|((t, _), f)| (t.clone(), f.clone()))
                    .collect(),
            ),
            StoreOp::GetFlow { tenant, flow } => match self.flows.get(&(tenant, flow)) {
                Some(f) => StoreReply::Flow(f.clone()),
                None => StoreReply::NotFound,
            },
            StoreOp::Enqueue { run, now_ms } => self.enqueue(run, now_ms),
            StoreOp::Trigger {
                flow,
                trigger,
                run,
                now_ms,
            } => self.trigger(flow, trigger, run, now_ms),
            StoreOp::Claim {
                owner,
                max,
                lease_ms,
                now_ms,
            } => self.claim(owner, max, lease_ms, now_ms),
            op @ (StoreOp::Heartbeat { .. }
            | StoreOp::Advance { .. }
            | StoreOp::Complete { .. }
            | StoreOp::Fail { .. }
            | StoreOp::Release { .. }
            | StoreOp::Cancel { .. }
            | StoreOp::AwaitOutcome { .. }
            | StoreOp::RetryRun { .. }
            | StoreOp::BeginDelivery { .. }
            | StoreOp::FinishDelivery { .. }
            | StoreOp::ResolveUnknown { .. }
            | StoreOp::RecordReceipt { .. }) => self.on_row(op),
            StoreOp::PauseSender {
                tenant,
                reason,
                code,
                temporary,
                settings,
                now_ms,
            } => {
                let mut pause = self.pauses.get(&tenant).cloned();
                let reply = rules::pause_sender(
                    &mut pause,
                    &reason,
                    code,
                    temporary,
                    settings.as_deref(),
                    now_ms,
                );
                self.pauses
                    .insert(tenant, pause.expect("pause_sender leaves a pause"));
                reply
            }
            StoreOp::ListTenants => StoreReply::Tenants(self.tenants.values().cloned().collect()),
            StoreOp::Suppress {
                tenant,
                to,
                reason,
                now_ms,
            } => {
                let conversation = (tenant, to);
                let info = self.recipients.entry(conversation.clone()).or_default();
                let newly = info.suppressed.is_none();
                if newly {
                    info.suppressed = Some(super::Suppression {
                        since_ms: now_ms,
                        reason: crate::limits::clip_reason(&reason),
                    });
                }
                let mut cancelled = 0;
                for (_, id) in self.open.remove(&conversation).unwrap_or_default() {
                    let row = self.runs.get_mut(&id).expect("open runs exist");
                    cancelled += u32::from(rules::opt_out(row, now_ms));
                }
                StoreReply::Suppressed { newly, cancelled }
            }
            StoreOp::Unsuppress { tenant, to } => {
                let was_suppressed = self
                    .recipients
                    .get_mut(&(tenant, to))
                    .and_then(|i| i.suppressed.take())
                    .is_some();
                StoreReply::Unsuppressed { was_suppressed }
            }
            StoreOp::GetRecipient { tenant, to } => StoreReply::RecipientIs(
                self.recipients
                    .get(&(tenant, to))
                    .cloned()
                    .unwrap_or_default(),
            ),
            StoreOp::ListSuppressed {
                tenant,
                after,
                limit,
            } => StoreReply::Suppressions(
                self.recipients
                    .iter()
                    .filter(|((t, to), _)| *t == tenant && after.as_ref().is_none_or(|a| to > a))
                    .filter_map(|((_, to), i)| Some((to.clone(), i.suppressed.clone()?)))
                    .take(limit as usize)
                    .collect(),
            ),
            StoreOp::RecordInbound { tenant, to, now_ms } => {
                let info = self.recipients.entry((tenant, to)).or_default();
                info.last_inbound_ms = Some(info.last_inbound_ms.unwrap_or(0).max(now_ms));
                StoreReply::InboundRecorded
            }
            StoreOp::ResumeSender { tenant } => StoreReply::Resumed {
                was_paused: self.pauses.remove(&tenant).is_some(),
            },
            StoreOp::GetSender { tenant } => StoreReply::Sender(self.pauses.get(&tenant).cloned()),
            StoreOp::ListPausedSenders => StoreReply::PausedSenders(
                self.pauses
                    .iter()
                    .map(|(t, p)| (t.clone(), p.clone()))
                    .collect(),
            ),
            StoreOp::GetRun { run } => match self.runs.get(&run) {
                Some(row) => StoreReply::Run(self.view(row, true)),
                None => StoreReply::NotFound,
            },
            StoreOp::ListRuns {
                status,
                filter,
                limit,
            } => {
                // Newest first: by trigger order, descending.
                let mut rows: Vec<&RunRecord> = self
                    .runs
                    .values()
                    .filter(|r| status.is_none_or(|s| r.status == s))
                    .filter(|r| {
                        filter.matches(&r.flow, &r.tenant, r.reason.as_deref(), r.created_at_ms)
                            && filter.admits(&r.to, r.seq)
                    })
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
            StoreOp::CountFinished { limit } => {
                let mut done: Vec<(u64, u64, RunStatus)> = self
                    .runs
                    .values()
                    .filter_map(|r| Some((r.finished_at_ms?, r.seq, r.status)))
                    .collect();
                done.sort_unstable_by_key(|d| std::cmp::Reverse((d.0, d.1)));
                let mut c = super::FinishedCounts {
                    limit,
                    ..Default::default()
                };
                for (_, _, status) in done.into_iter().take(limit as usize) {
                    match status {
                        RunStatus::Completed => c.completed += 1,
                        RunStatus::Failed => c.failed += 1,
                        _ => c.cancelled += 1,
                    }
                }
                StoreReply::FinishedCounts(c)
            }
            StoreOp::Prune {
                retention_ms,
                max,
                now_ms,
            } => self.prune(retention_ms, max, now_ms),
        }
    }

    fn trigger(&mut self, flow: FlowId, trigger: Trigger, id: RunId, now_ms: u64) -> StoreReply {
        let tenant_stored = self.tenants.contains_key(&trigger.tenant);
        let flow = self.flows.get(&(trigger.tenant.clone(), flow));
        match rules::plan_trigger(tenant_stored, flow, trigger, id) {
            Ok(run) => self.enqueue(run, now_ms),
            Err(why) => StoreReply::TriggerRefused(why),
        }
    }

    fn enqueue(&mut self, run: NewRun, now_ms: u64) -> StoreReply {
        let conv = (run.tenant.clone(), run.to.clone());
        let facts = rules::EnqueueFacts {
            existing: run
                .trigger_key
                .as_ref()
                .and_then(|key| self.trigger_keys.get(&(run.tenant.clone(), key.clone())))
                .copied(),
            suppressed: self
                .recipients
                .get(&conv)
                .and_then(|i| i.suppressed.as_ref()),
            id_taken: self.runs.contains_key(&run.id),
            conversation_open: self.open.get(&conv).is_some_and(|runs| !runs.is_empty()),
        };
        let is_head = match rules::decide_enqueue(&run, facts) {
            rules::EnqueueDecision::Insert { is_head } => is_head,
            other => return other.answer(run.id),
        };
        self.next_seq += 1;
        let row = RunRecord::new(run, self.next_seq, now_ms);
        if let Some(key) = &row.trigger_key {
            self.trigger_keys
                .insert((row.tenant.clone(), key.clone()), row.id);
        }
        let runs = self.open.entry(conversation(&row)).or_default();
        runs.insert(row.seq, row.id);
        // The model keeps heads implicitly (the lowest seq of a
        // conversation); the rule must agree with it.
        assert_eq!(
            is_head,
            runs.len() == 1,
            "the head rule and the model disagree"
        );
        let id = row.id;
        self.runs.insert(id, row);
        StoreReply::Enqueued {
            run: id,
            created: true,
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
            .filter(|row| row.claimable(self.guards, now_ms))
            .filter(|row| {
                self.pauses
                    .get(&row.tenant)
                    .is_none_or(|p| p.probe_due(now_ms))
            })
            .map(|row| (row.run_at_ms, row.seq, row.id))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        let mut events = Vec::new();
        let claimed = due
            .into_iter()
            .map(|(_, _, id)| {
                let row = self.runs.get_mut(&id).expect("open runs exist");
                row.claim(&owner, lease_ms, now_ms, &mut events)
            })
            .collect();
        self.keep_events(events);
        StoreReply::Claimed(claimed)
    }

    /// A row op: the shared rules decide. A run that became terminal
    /// leaves its conversation's queue, which lets the conversation's next
    /// run become the head; one an operator sent on again rejoins it.
    fn on_row(&mut self, op: StoreOp) -> StoreReply {
        let id = rules::row_op_run(&op).expect("a row op");
        let was_open = self.runs.get(&id).map(|r| !r.status.is_terminal());
        let MemStore {
            guards,
            runs,
            ledger,
            pauses,
            open,
            recipients,
            ..
        } = self;
        let suppressed = |t: &TenantId, to: &Recipient| {
            recipients
                .get(&(t.clone(), to.clone()))
                .is_some_and(|i| i.suppressed.is_some())
        };
        let other_open = |row: &RunRecord| {
            open.get(&conversation(row))
                .is_some_and(|q| q.values().any(|other| *other != row.id))
        };
        let mut events = Vec::new();
        let mut rows = rules::Rows {
            runs,
            ledger,
            pauses,
            suppressed: &suppressed,
            events: &mut events,
        };
        let reply = rules::apply_row_op(&mut rows, *guards, op, &other_open);
        self.keep_events(events);
        let (Some(was_open), Some(row)) = (was_open, self.runs.get(&id)) else {
            return reply;
        };
        let conversation = conversation(row);
        let seq = row.seq;
        match (was_open, row.status.is_terminal()) {
            (true, true) => {
                if let Some(queue) = self.open.get_mut(&conversation) {
                    queue.remove(&seq);
                    if queue.is_empty() {
                        self.open.remove(&conversation);
                    }
                }
            }
            (false, false) => {
                self.open.entry(conversation).or_default().insert(seq, id);
            }
            _ => {}
        }
        reply
    }

    fn keep_events(&mut self, events: Vec<(RunId, RunEvent)>) {
        for (run, event) in events {
            self.events.entry(run).or_default().push(event);
        }
    }

    fn view(&self, row: &RunRecord, with_deliveries: bool) -> RunView {
        if !with_deliveries {
            return row.view(Vec::new(), Vec::new());
        }
        let deliveries = (0..row.steps.len() as u32)
            .map(|step| self.ledger.get(&DeliveryKey { run: row.id, step }).cloned())
            .collect();
        row.view(
            deliveries,
            self.events.get(&row.id).cloned().unwrap_or_default(),
        )
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
                RunStatus::Waiting => s.waiting += 1,
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
            self.events.remove(id);
            if let Some(key) = &row.trigger_key {
                self.trigger_keys.remove(&(row.tenant.clone(), key.clone()));
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
