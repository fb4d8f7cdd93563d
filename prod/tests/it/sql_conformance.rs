//! Differential conformance: random op sequences with explicit times go to
//! the model (`MemStore`) and to a SQL store; every reply, and the final
//! state, must be equal. Ops are sent to the SQL store in random batches
//! (one transaction each), so batching is held to the model too.

use crate::support;

use oncesend::store::sql::{SqlClock, SqlStore};
use oncesend::store::Store;
use oncesend_core::flow::{FlowStep, RawFlowStep, Trigger};
use oncesend_core::store::{After, RunFilter};
use oncesend_core::{
    DeliveryKey, DeliveryOutcome, Flow, FlowId, MemStore, NewRun, PlannedStep, ProviderSettings,
    ReceiptStatus, Recipient, RunId, RunStatus, StoreOp, StoreReply, Template, Tenant, TenantId,
    WorkerId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Debug, Clone, Copy)]
enum Epoch {
    Current,
    Stale,
    Zero,
}

#[derive(Debug, Clone)]
enum Op {
    PutFlow {
        flow: u8,
        steps: u8,
    },
    GetFlow {
        flow: u8,
    },
    ListFlows {
        after: Option<u8>,
        limit: u32,
    },
    PutTenant {
        tenant: u8,
    },
    GetTenant {
        tenant: u8,
    },
    Enqueue {
        tenant: u8,
        conv: u8,
        steps: u8,
        delay_ms: u64,
        key: Option<u8>,
        reuse_id: bool,
    },
    Trigger {
        tenant: u8,
        flow: u8,
        conv: u8,
        key: Option<u8>,
        with_vars: bool,
    },
    Claim {
        worker: u8,
        max: u32,
        lease_ms: u64,
    },
    Heartbeat {
        run: u8,
        epoch: Epoch,
        lease_ms: u64,
    },
    Advance {
        run: u8,
        epoch: Epoch,
        skew: i8,
        delay_ms: Option<u64>,
    },
    Complete {
        run: u8,
        epoch: Epoch,
        skew: i8,
    },
    Fail {
        run: u8,
        epoch: Epoch,
        retry_ms: Option<u64>,
    },
    Release {
        run: u8,
        epoch: Epoch,
        after_ms: u64,
    },
    Cancel {
        run: u8,
    },
    Begin {
        run: u8,
        epoch: Epoch,
        skew: i8,
        timeout_ms: u64,
    },
    Finish {
        run: u8,
        skew: i8,
        outcome: u8,
    },
    Resolve {
        run: u8,
        skew: i8,
        sent: bool,
    },
    Receipt {
        run: u8,
        skew: i8,
        status: u8,
        resend: bool,
    },
    Await {
        run: u8,
        epoch: Epoch,
        skew: i8,
        wait_ms: Option<u64>,
    },
    Retry {
        run: u8,
    },
    /// A status or an operator's resolution for what a waiting (or
    /// failed) run waits on.
    Settle {
        run: u8,
        status: u8,
        resend: bool,
        resolve: bool,
    },
    GetRun {
        run: u8,
    },
    ListRuns {
        status: Option<u8>,
        filter: u8,
        limit: u32,
    },
    Stats,
    PauseSender {
        tenant: u8,
        code: u8,
        settings: bool,
    },
    ResumeSender {
        tenant: u8,
    },
    GetSender {
        tenant: u8,
    },
    ListPausedSenders,
    Prune {
        retention_ms: u64,
        max: u32,
    },
    Wait {
        ms: u64,
    },
    Suppress {
        tenant: u8,
        conv: u8,
    },
    Unsuppress {
        tenant: u8,
        conv: u8,
    },
    GetRecipient {
        tenant: u8,
        conv: u8,
    },
    ListSuppressed {
        tenant: u8,
        after: Option<u8>,
        limit: u32,
    },
    Inbound {
        tenant: u8,
        conv: u8,
    },
    ListTenants,
}

fn epoch() -> impl Strategy<Value = Epoch> {
    prop_oneof![8 => Just(Epoch::Current), 1 => Just(Epoch::Stale), 1 => Just(Epoch::Zero)]
}

fn skew() -> impl Strategy<Value = i8> {
    prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..3, 1u8..4).prop_map(|(flow, steps)| Op::PutFlow { flow, steps }),
        1 => (0u8..3).prop_map(|flow| Op::GetFlow { flow }),
        1 => (proptest::option::of(0u8..3), 0u32..4).prop_map(|(after, limit)| Op::ListFlows { after, limit }),
        1 => (0u8..2).prop_map(|tenant| Op::PutTenant { tenant }),
        1 => (0u8..3).prop_map(|tenant| Op::GetTenant { tenant }),
        5 => (0u8..2, 0u8..4, 1u8..4, prop_oneof![Just(0u64), 1u64..30], proptest::option::of(0u8..3), prop::bool::weighted(0.05))
            .prop_map(|(tenant, conv, steps, delay_ms, key, reuse_id)| Op::Enqueue { tenant, conv, steps, delay_ms, key, reuse_id }),
        2 => (prop_oneof![6 => Just(0u8), 1 => 1u8..3], prop_oneof![6 => prop_oneof![Just(0u8), Just(2u8)], 1 => Just(1u8), 1 => Just(3u8)], 0u8..4, proptest::option::of(0u8..3), prop::bool::weighted(0.9))
            .prop_map(|(tenant, flow, conv, key, with_vars)| Op::Trigger { tenant, flow, conv, key, with_vars }),
        5 => (0u8..3, 0u32..4, 5u64..60).prop_map(|(worker, max, lease_ms)| Op::Claim { worker, max, lease_ms }),
        2 => (any::<u8>(), epoch(), 5u64..60).prop_map(|(run, epoch, lease_ms)| Op::Heartbeat { run, epoch, lease_ms }),
        4 => (any::<u8>(), epoch(), skew(), proptest::option::of(0u64..30)).prop_map(|(run, epoch, skew, delay_ms)| Op::Advance { run, epoch, skew, delay_ms }),
        3 => (any::<u8>(), epoch(), skew()).prop_map(|(run, epoch, skew)| Op::Complete { run, epoch, skew }),
        2 => (any::<u8>(), epoch(), proptest::option::of(0u64..30)).prop_map(|(run, epoch, retry_ms)| Op::Fail { run, epoch, retry_ms }),
        1 => (any::<u8>(), epoch(), 0u64..20).prop_map(|(run, epoch, after_ms)| Op::Release { run, epoch, after_ms }),
        1 => any::<u8>().prop_map(|run| Op::Cancel { run }),
        4 => (any::<u8>(), epoch(), skew(), 1u64..40).prop_map(|(run, epoch, skew, timeout_ms)| Op::Begin { run, epoch, skew, timeout_ms }),
        3 => (any::<u8>(), skew(), 0u8..4).prop_map(|(run, skew, outcome)| Op::Finish { run, skew, outcome }),
        2 => (any::<u8>(), skew(), any::<bool>()).prop_map(|(run, skew, sent)| Op::Resolve { run, skew, sent }),
        4 => (any::<u8>(), skew(), 0u8..4, any::<bool>()).prop_map(|(run, skew, status, resend)| Op::Receipt { run, skew, status, resend }),
        6 => (any::<u8>(), prop_oneof![9 => Just(Epoch::Current), 1 => Just(Epoch::Stale)], skew(), proptest::option::of(0u64..40)).prop_map(|(run, epoch, skew, wait_ms)| Op::Await { run, epoch, skew, wait_ms }),
        1 => any::<u8>().prop_map(|run| Op::Retry { run }),
        6 => (any::<u8>(), 0u8..4, any::<bool>(), prop::bool::weighted(0.6)).prop_map(|(run, status, resend, resolve)| Op::Settle { run, status, resend, resolve }),
        1 => any::<u8>().prop_map(|run| Op::GetRun { run }),
        2 => (proptest::option::of(0u8..6), 0u8..8, 0u32..6).prop_map(|(status, filter, limit)| Op::ListRuns { status, filter, limit }),
        1 => Just(Op::Stats),
        2 => (0u8..3, 0u8..4, any::<bool>()).prop_map(|(tenant, code, settings)| Op::PauseSender { tenant, code, settings }),
        1 => (0u8..3).prop_map(|tenant| Op::ResumeSender { tenant }),
        1 => (0u8..3).prop_map(|tenant| Op::GetSender { tenant }),
        1 => Just(Op::ListPausedSenders),
        1 => (0u64..50, 0u32..3).prop_map(|(retention_ms, max)| Op::Prune { retention_ms, max }),
        2 => (0u8..2, 0u8..4).prop_map(|(tenant, conv)| Op::Suppress { tenant, conv }),
        1 => (0u8..2, 0u8..4).prop_map(|(tenant, conv)| Op::Unsuppress { tenant, conv }),
        1 => (0u8..2, 0u8..4).prop_map(|(tenant, conv)| Op::GetRecipient { tenant, conv }),
        1 => (0u8..2, proptest::option::of(0u8..4), 0u32..4).prop_map(|(tenant, after, limit)| Op::ListSuppressed { tenant, after, limit }),
        1 => (0u8..2, 0u8..4).prop_map(|(tenant, conv)| Op::Inbound { tenant, conv }),
        1 => Just(Op::ListTenants),
        // Now and then a jump past a temporary pause's first probe wait.
        4 => prop_oneof![12 => 0u64..40, 1 => Just(oncesend_core::tenant::FIRST_PROBE_WAIT_MS)].prop_map(|ms| Op::Wait { ms }),
    ]
}

/// Ops, each with whether the SQL batch ends after it.
fn case() -> impl Strategy<Value = Vec<(Op, bool)>> {
    prop::collection::vec((op(), prop::bool::weighted(0.4)), 1..60)
}

/// Step `i` of a test flow: texts, templates, media and buttons in turn,
/// so the stores keep every kind of message exactly.
fn step_of_kind(i: u8, delay_ms: u64) -> FlowStep {
    let message = match i % 4 {
        0 => {
            return FlowStep::text(
                Template::parse(&format!("step {i} for {{{{name}}}}")).unwrap(),
                delay_ms,
            )
        }
        1 => {
            serde_json::json!({"type": "template", "template": {"name": "order_ready", "language": {"code": "pt_BR"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{name}} ✓"}]}]}})
        }
        2 => {
            serde_json::json!({"type": "image", "image": {"link": format!("https://example.com/{i}.png"), "caption": "para {{name}}"}})
        }
        _ => {
            serde_json::json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "Ok, {{name}}?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Sim"}}, {"type": "reply", "reply": {"id": "no", "title": "Não"}}]}}})
        }
    };
    FlowStep::from_raw(RawFlowStep {
        text: None,
        message: Some(message),
        delay_ms,
        after: Default::default(),
        after_timeout_ms: None,
    })
    .unwrap()
}

fn tenant(n: u8) -> TenantId {
    match n {
        0 => TenantId::default_tenant(),
        n => TenantId::new(format!("tenant{n}")).unwrap(),
    }
}

fn recipient(conv: u8) -> Recipient {
    Recipient::parse(&format!("+5511913390{conv:03}")).unwrap()
}

struct World {
    model: MemStore,
    runs: Vec<RunId>,
    now: u64,
    next_id: u64,
}

impl World {
    fn view(&mut self, run: RunId) -> Option<oncesend_core::RunView> {
        match self.model.apply(StoreOp::GetRun { run }) {
            StoreReply::Run(v) => Some(v),
            _ => None,
        }
    }

    fn pick(&self, r: u8) -> RunId {
        if self.runs.is_empty() {
            RunId::new(1, 1)
        } else {
            self.runs[r as usize % self.runs.len()]
        }
    }

    fn epoch(&mut self, run: RunId, pick: Epoch) -> u64 {
        let current = self.view(run).map_or(0, |v| v.epoch);
        match pick {
            Epoch::Current => current,
            Epoch::Stale => current.saturating_sub(1),
            Epoch::Zero => 0,
        }
    }

    fn step(&mut self, run: RunId, skew: i8) -> u32 {
        let cursor = self.view(run).map_or(0, |v| v.cursor) as i64;
        (cursor + skew as i64).max(0) as u32
    }

    fn key(&mut self, r: u8, skew: i8) -> DeliveryKey {
        let run = self.pick(r);
        DeliveryKey {
            run,
            step: self.step(run, skew),
        }
    }

    /// The op to send, or `None` for a pause.
    fn concrete(&mut self, op: &Op) -> Option<StoreOp> {
        let now_ms = self.now;
        Some(match *op {
            Op::Wait { ms } => {
                self.now += ms;
                return None;
            }
            Op::Suppress { tenant: t, conv } => StoreOp::Suppress {
                tenant: tenant(t),
                to: recipient(conv),
                reason: "STOP".into(),
                now_ms,
            },
            Op::Unsuppress { tenant: t, conv } => StoreOp::Unsuppress {
                tenant: tenant(t),
                to: recipient(conv),
            },
            Op::GetRecipient { tenant: t, conv } => StoreOp::GetRecipient {
                tenant: tenant(t),
                to: recipient(conv),
            },
            Op::ListSuppressed {
                tenant: t,
                after,
                limit,
            } => StoreOp::ListSuppressed {
                tenant: tenant(t),
                after: after.map(recipient),
                limit,
            },
            Op::Inbound { tenant: t, conv } => StoreOp::RecordInbound {
                tenant: tenant(t),
                to: recipient(conv),
                now_ms,
            },
            Op::ListTenants => StoreOp::ListTenants,
            Op::PutFlow { flow, steps } => StoreOp::PutFlow {
                tenant: tenant(flow % 2),
                flow: Flow::new(
                    FlowId::new(format!("flow{flow}")).unwrap(),
                    (0..steps).map(|i| step_of_kind(i, i as u64 * 10)).collect(),
                )
                .unwrap(),
            },
            Op::ListFlows { after, limit } => StoreOp::ListFlows {
                after: after.map(|f| (tenant(f % 2), FlowId::new(format!("flow{f}")).unwrap())),
                limit,
            },
            Op::GetFlow { flow } => StoreOp::GetFlow {
                tenant: tenant(flow % 2),
                flow: FlowId::new(format!("flow{flow}")).unwrap(),
            },
            Op::PutTenant { tenant: t } => StoreOp::PutTenant {
                tenant: Tenant::new(tenant(t + 1), ProviderSettings::Log {}).unwrap(),
            },
            Op::GetTenant { tenant: t } => StoreOp::GetTenant { tenant: tenant(t) },
            Op::Enqueue {
                tenant: t,
                conv,
                steps,
                delay_ms,
                key,
                reuse_id,
            } => {
                let id = if reuse_id && !self.runs.is_empty() {
                    self.runs[0]
                } else {
                    self.next_id += 1;
                    RunId::new(1_000 + self.next_id, self.next_id)
                };
                StoreOp::Enqueue {
                    run: NewRun {
                        id,
                        tenant: tenant(t),
                        flow: FlowId::new("flow0").unwrap(),
                        to: recipient(conv),
                        steps: (0..steps)
                            .map(|i| {
                                let delay_ms = if i == 0 { delay_ms } else { delay_ms / 2 };
                                let step = step_of_kind(i, delay_ms);
                                let vars = [("name".to_string(), format!("r{i}"))].into();
                                // Some later steps wait for the one before
                                // to be delivered or read, a short while.
                                let after = match (i, (conv + i) % 3) {
                                    (0, _) | (_, 0) => After::Sent,
                                    (_, 1) => After::Delivered,
                                    _ => After::Read,
                                };
                                PlannedStep {
                                    message: step.render(&vars).unwrap(),
                                    delay_ms,
                                    after_timeout_ms: (!after.is_sent()).then_some(15 + delay_ms),
                                    after,
                                }
                            })
                            .collect(),
                        trigger_key: key.map(|k| format!("key-{k}")),
                    },
                    now_ms,
                }
            }
            Op::Trigger {
                tenant: t,
                flow,
                conv,
                key,
                with_vars,
            } => {
                // Unknown tenants, missing flows and missing variables too:
                // the refusals must agree as well as the runs.
                self.next_id += 1;
                StoreOp::Trigger {
                    flow: FlowId::new(format!("flow{flow}")).unwrap(),
                    trigger: Trigger {
                        tenant: tenant(t),
                        to: recipient(conv),
                        vars: if with_vars {
                            [("name".to_string(), format!("guest{conv}"))].into()
                        } else {
                            Default::default()
                        },
                        trigger_key: key.map(|k| format!("key-{k}")),
                    },
                    run: RunId::new(1_000 + self.next_id, self.next_id),
                    now_ms,
                }
            }
            Op::Claim {
                worker,
                max,
                lease_ms,
            } => StoreOp::Claim {
                owner: WorkerId::new(format!("worker-{worker}")).unwrap(),
                max,
                lease_ms,
                now_ms,
            },
            Op::Heartbeat {
                run,
                epoch,
                lease_ms,
            } => {
                let run = self.pick(run);
                StoreOp::Heartbeat {
                    run,
                    epoch: self.epoch(run, epoch),
                    lease_ms,
                    now_ms,
                }
            }
            Op::Advance {
                run,
                epoch,
                skew,
                delay_ms,
            } => {
                let run = self.pick(run);
                StoreOp::Advance {
                    run,
                    epoch: self.epoch(run, epoch),
                    step: self.step(run, skew),
                    delay_ms,
                    now_ms,
                }
            }
            Op::Complete { run, epoch, skew } => {
                let run = self.pick(run);
                StoreOp::Complete {
                    run,
                    epoch: self.epoch(run, epoch),
                    step: self.step(run, skew),
                    now_ms,
                }
            }
            Op::Fail {
                run,
                epoch,
                retry_ms,
            } => {
                let run = self.pick(run);
                StoreOp::Fail {
                    run,
                    epoch: self.epoch(run, epoch),
                    reason: "provider said no".into(),
                    retry_after_ms: retry_ms,
                    now_ms,
                }
            }
            Op::Release {
                run,
                epoch,
                after_ms,
            } => {
                let run = self.pick(run);
                StoreOp::Release {
                    run,
                    epoch: self.epoch(run, epoch),
                    after_ms,
                    now_ms,
                }
            }
            Op::Cancel { run } => StoreOp::Cancel {
                run: self.pick(run),
                now_ms,
            },
            Op::Begin {
                run,
                epoch,
                skew,
                timeout_ms,
            } => {
                let key = self.key(run, skew);
                StoreOp::BeginDelivery {
                    key,
                    epoch: self.epoch(key.run, epoch),
                    send_timeout_ms: timeout_ms,
                    now_ms,
                }
            }
            Op::Finish { run, skew, outcome } => StoreOp::FinishDelivery {
                key: self.key(run, skew),
                outcome: outcome_of(outcome, now_ms),
                now_ms,
            },
            Op::Resolve { run, skew, sent } => StoreOp::ResolveUnknown {
                key: self.key(run, skew),
                sent,
                by: "ops@example".into(),
                now_ms,
            },
            Op::Await {
                run,
                epoch,
                skew,
                wait_ms,
            } => {
                // Mostly a run whose step was begun, as the worker would.
                let begun: Vec<RunId> = self
                    .runs
                    .clone()
                    .into_iter()
                    .filter(|r| {
                        self.view(*r).is_some_and(|v| {
                            v.status == RunStatus::Leased
                                && v.deliveries
                                    .get(v.cursor as usize)
                                    .is_some_and(|d| d.is_some())
                        })
                    })
                    .collect();
                let key = match begun.get(run as usize % begun.len().max(1)) {
                    Some(r) if skew == 0 => DeliveryKey {
                        run: *r,
                        step: self.view(*r).map_or(0, |v| v.cursor),
                    },
                    _ => self.key(run, skew),
                };
                StoreOp::AwaitOutcome {
                    run: key.run,
                    epoch: self.epoch(key.run, epoch),
                    step: key.step,
                    wait_ms,
                    reason: "the reply was lost".into(),
                    now_ms,
                }
            }
            Op::Settle {
                run,
                status,
                resend,
                resolve,
            } => {
                let waiting: Vec<oncesend_core::RunView> = self
                    .runs
                    .clone()
                    .into_iter()
                    .filter_map(|r| self.view(r))
                    .filter(|v| matches!(v.status, RunStatus::Waiting | RunStatus::Failed))
                    // An operator resolves steps whose outcome is unknown.
                    .filter(|v| {
                        !resolve
                            || v.deliveries
                                .get(v.cursor as usize)
                                .cloned()
                                .flatten()
                                .is_some_and(|d| {
                                    matches!(
                                        d.state,
                                        oncesend_core::DeliveryState::Unknown
                                            | oncesend_core::DeliveryState::Sending { .. }
                                    )
                                })
                    })
                    .collect();
                let v = (!waiting.is_empty()).then(|| &waiting[run as usize % waiting.len()])?;
                let step = match v.wait {
                    Some(oncesend_core::store::RunWait::After(_)) => v.cursor.saturating_sub(1),
                    _ => v.cursor,
                };
                let key = DeliveryKey { run: v.id, step };
                let sending = v
                    .deliveries
                    .get(step as usize)
                    .cloned()
                    .flatten()
                    .is_some_and(|d| {
                        matches!(d.state, oncesend_core::DeliveryState::Sending { .. })
                    });
                if resolve && sending {
                    // What the engine records when its call times out.
                    StoreOp::FinishDelivery {
                        key,
                        outcome: outcome_of(3, now_ms),
                        now_ms,
                    }
                } else if resolve {
                    StoreOp::ResolveUnknown {
                        key,
                        sent: status < 3,
                        by: "ops@example".into(),
                        now_ms,
                    }
                } else {
                    StoreOp::RecordReceipt {
                        key,
                        status: [
                            ReceiptStatus::Sent,
                            ReceiptStatus::Delivered,
                            ReceiptStatus::Read,
                            ReceiptStatus::Failed,
                        ][status as usize],
                        provider_message_id: Some(format!("wamid.s{status}")),
                        reason: (status == 3).then(|| "131000: something went wrong".to_string()),
                        resend,
                        now_ms,
                    }
                }
            }
            Op::Retry { run } => StoreOp::RetryRun {
                run: self.pick(run),
                by: "operator".into(),
                now_ms,
            },
            Op::Receipt {
                run,
                skew,
                status,
                resend,
            } => StoreOp::RecordReceipt {
                key: self.key(run, skew),
                status: match status {
                    0 => ReceiptStatus::Sent,
                    1 => ReceiptStatus::Delivered,
                    2 => ReceiptStatus::Read,
                    _ => ReceiptStatus::Failed,
                },
                provider_message_id: Some(format!("wamid.r{status}")),
                reason: (status == 3).then(|| "undeliverable".to_string()),
                resend,
                now_ms,
            },
            Op::GetRun { run } => StoreOp::GetRun {
                run: self.pick(run),
            },
            Op::ListRuns {
                status,
                filter,
                limit,
            } => StoreOp::ListRuns {
                status: status.map(|s| {
                    [
                        RunStatus::Pending,
                        RunStatus::Leased,
                        RunStatus::Waiting,
                        RunStatus::Completed,
                        RunStatus::Failed,
                        RunStatus::Cancelled,
                    ][s as usize]
                }),
                filter: match filter {
                    0 => RunFilter {
                        flow: Some(FlowId::new("flow0").unwrap()),
                        ..RunFilter::default()
                    },
                    1 => RunFilter {
                        tenant: Some(tenant(1)),
                        ..RunFilter::default()
                    },
                    2 => RunFilter {
                        reason_contains: Some("step 1".into()),
                        ..RunFilter::default()
                    },
                    3 => RunFilter {
                        created_before_ms: Some(now_ms.saturating_sub(20)),
                        created_after_ms: Some(now_ms.saturating_sub(200)),
                        ..RunFilter::default()
                    },
                    4 => RunFilter {
                        to: Some(recipient(1)),
                        ..RunFilter::default()
                    },
                    5 => RunFilter {
                        before_seq: Some(4),
                        tenant: Some(tenant(0)),
                        ..RunFilter::default()
                    },
                    _ => RunFilter::default(),
                },
                limit,
            },
            Op::Stats => StoreOp::Stats { now_ms },
            // Token (190), temporary (368, 131048) and operator pauses, so
            // probes are taken, pushed back and ended.
            Op::PauseSender {
                tenant: t,
                code,
                settings,
            } => {
                let (code, temporary) = match code {
                    0 => (Some(190), false),
                    1 => (Some(368), true),
                    2 => (Some(131048), true),
                    _ => (None, false),
                };
                StoreOp::PauseSender {
                    tenant: tenant(t),
                    reason: format!("paused for {code:?}"),
                    code,
                    temporary,
                    settings: settings.then(|| format!("fp{t}")),
                    now_ms,
                }
            }
            Op::ResumeSender { tenant: t } => StoreOp::ResumeSender { tenant: tenant(t) },
            Op::GetSender { tenant: t } => StoreOp::GetSender { tenant: tenant(t) },
            Op::ListPausedSenders => StoreOp::ListPausedSenders,
            Op::Prune { retention_ms, max } => StoreOp::Prune {
                retention_ms,
                max,
                now_ms,
            },
        })
    }
}

// How often the cases took a run into and out of a wait, and sent a
// finished run on again: the new states must be reached, not only
// compiled.
thread_local! {
    static COVERAGE: std::cell::RefCell<std::collections::BTreeMap<String, u64>> =
        Default::default();
}

type Seen = Option<(RunStatus, Option<oncesend_core::store::RunWait>)>;

fn tally(op: &str, before: Seen, after: Seen) {
    let (Some((b, bw)), Some((a, aw))) = (before, after) else {
        return;
    };
    let mut what = Vec::new();
    if b != RunStatus::Waiting && a == RunStatus::Waiting {
        what.push(format!("wait {:?} began", aw.map(|w| w.as_str())));
    }
    if b == RunStatus::Waiting && a != RunStatus::Waiting {
        what.push(format!("wait {:?} ended by {op}", bw.map(|w| w.as_str())));
    }
    if b.is_terminal() && !a.is_terminal() {
        what.push(format!("finished run sent on by {op}"));
    }
    COVERAGE.with_borrow_mut(|c| {
        for w in what {
            *c.entry(w).or_default() += 1;
        }
    });
}

/// Every one of these happened at least once.
fn assert_covered() {
    let c = COVERAGE.with_borrow(|c| c.clone());
    eprintln!("coverage: {c:?}");
    let seen = |want: &str| c.iter().any(|(k, n)| k.contains(want) && *n > 0);
    for want in [
        "wait Some(\"outcome\") began",
        "wait Some(\"delivered\") began",
        "wait Some(\"read\") began",
        "wait Some(\"outcome\") ended by record_receipt",
        "wait Some(\"outcome\") ended by claim",
        "by resolve_unknown",
        "wait Some(\"delivered\") ended by",
        "finished run sent on by retry_run",
        "suppress cancelled runs",
        "enqueue refused an opted-out recipient",
        "trigger refused NoTenant",
        "trigger refused NoFlow",
        "trigger refused Plan",
        "trigger enqueued created=true",
        "trigger enqueued created=false",
        "event rescued",
        "event fenced",
        "event replayed",
    ] {
        assert!(seen(want), "never seen: {want}; seen: {c:?}");
    }
}

fn outcome_of(n: u8, now: u64) -> DeliveryOutcome {
    match n {
        0 | 1 => DeliveryOutcome::Sent {
            provider_message_id: format!("wamid.{now}"),
        },
        2 => DeliveryOutcome::Failed {
            retryable: now.is_multiple_of(2),
            reason: "131056 pair rate limit".into(),
            retry_after_ms: Some(5),
        },
        _ => DeliveryOutcome::Unknown {
            reason: "connection lost after the request".into(),
        },
    }
}

async fn check_case(store: &SqlStore, ops: Vec<(Op, bool)>) -> Result<(), TestCaseError> {
    support::reset(store).await;
    let mut world = World {
        model: MemStore::new(),
        runs: Vec::new(),
        now: 1_000,
        next_id: 0,
    };
    let mut batch: Vec<StoreOp> = Vec::new();
    let mut expected: Vec<StoreReply> = Vec::new();
    // A flow to trigger from the start, so triggers mostly plan and
    // enqueue, and the refusals come from the other flows and tenants.
    let ops: Vec<(Op, bool)> = std::iter::once((Op::PutFlow { flow: 0, steps: 2 }, false))
        .chain(ops)
        .collect();
    let total = ops.len();
    for (i, (op, cut)) in ops.into_iter().enumerate() {
        if let Some(concrete) = world.concrete(&op) {
            let run = oncesend_core::store::rules::row_op_run(&concrete);
            let before = run.and_then(|r| world.view(r)).map(|v| (v.status, v.wait));
            let reply = world.model.apply(concrete.clone());
            let after = run.and_then(|r| world.view(r)).map(|v| (v.status, v.wait));
            tally(concrete.name(), before, after);
            let mark = |what: &str| {
                COVERAGE.with_borrow_mut(|c| *c.entry(what.to_string()).or_default() += 1)
            };
            match &reply {
                StoreReply::Suppressed { cancelled, .. } if *cancelled > 0 => {
                    mark("suppress cancelled runs")
                }
                StoreReply::RecipientSuppressed(_) => {
                    mark("enqueue refused an opted-out recipient")
                }
                StoreReply::TriggerRefused(why) => mark(&format!("trigger refused {why:?}")),
                StoreReply::Enqueued { created, .. }
                    if matches!(concrete, StoreOp::Trigger { .. }) =>
                {
                    mark(&format!("trigger enqueued created={created}"))
                }
                _ => {}
            }
            if let StoreReply::Claimed(claimed) = &reply {
                for c in claimed.iter().filter(|c| c.waited.is_some()) {
                    tally(
                        "claim",
                        Some((RunStatus::Waiting, c.waited)),
                        Some((RunStatus::Leased, None)),
                    );
                }
            }
            if let StoreReply::Enqueued { run, created: true } = reply {
                world.runs.push(run);
            }
            batch.push(concrete);
            expected.push(reply);
        }
        if (cut || i + 1 == total) && !batch.is_empty() {
            let ops = std::mem::take(&mut batch);
            let got = store
                .apply_batch(ops.clone())
                .await
                .map_err(|e| TestCaseError::fail(format!("store unavailable: {e}")))?;
            for ((op, want), got) in ops.iter().zip(expected.drain(..)).zip(got) {
                prop_assert_eq!(&got, &want, "after {:?}", op);
            }
        }
    }
    // The final state, every run and the queue's figures.
    let mut finals = vec![
        StoreOp::ListRuns {
            status: None,
            filter: Default::default(),
            limit: 1_000,
        },
        StoreOp::Stats { now_ms: world.now },
        StoreOp::ListPausedSenders,
        StoreOp::CountFinished { limit: 1_000 },
        StoreOp::CountFinished { limit: 3 },
    ];
    finals.extend(world.runs.iter().map(|&run| StoreOp::GetRun { run }));
    for op in finals {
        let want = world.model.apply(op.clone());
        if let StoreReply::Run(view) = &want {
            for e in &view.events {
                COVERAGE.with_borrow_mut(|c| {
                    *c.entry(format!("event {}", e.kind.as_str())).or_default() += 1
                });
            }
        }
        let got = store
            .apply(op.clone())
            .await
            .map_err(|e| TestCaseError::fail(format!("store unavailable: {e}")))?;
        prop_assert_eq!(&got, &want, "final {:?}", op);
    }
    // PostgreSQL's side lists agree with what they list.
    for (list, check) in SIDE_LISTS {
        if !store.tables().contains(&list) {
            continue;
        }
        let (listed, missing, stray): (i64, i64, i64) = sqlx::query_as(check)
            .fetch_one(store.pool())
            .await
            .map_err(|e| TestCaseError::fail(format!("{list}: {e}")))?;
        prop_assert_eq!(
            (missing, stray),
            (0, 0),
            "rows missing from / stray in {} ({} listed)",
            list,
            listed
        );
    }
    Ok(())
}

/// PostgreSQL's side lists, each with a query answering how many rows it
/// lists, how many it should list and does not, and how many it lists
/// that it should not: the finished runs with their finish times, and the
/// ledger rows whose outcome is unknown.
const SIDE_LISTS: [(&str, &str); 2] = [
    (
        "finished_runs",
        "SELECT (SELECT count(*) FROM finished_runs), \
                (SELECT count(*) FROM runs r WHERE r.finished_at_ms IS NOT NULL \
                   AND NOT EXISTS (SELECT 1 FROM finished_runs f \
                     WHERE f.seq = r.seq AND f.finished_at_ms = r.finished_at_ms)), \
                (SELECT count(*) FROM finished_runs f WHERE NOT EXISTS \
                   (SELECT 1 FROM runs r WHERE r.seq = f.seq \
                      AND r.finished_at_ms = f.finished_at_ms))",
    ),
    (
        "unknown_deliveries",
        "SELECT (SELECT count(*) FROM unknown_deliveries), \
                (SELECT count(*) FROM deliveries d WHERE d.state = 'unknown' \
                   AND NOT EXISTS (SELECT 1 FROM unknown_deliveries u \
                     WHERE u.run_id = d.run_id AND u.step = d.step)), \
                (SELECT count(*) FROM unknown_deliveries u WHERE NOT EXISTS \
                   (SELECT 1 FROM deliveries d WHERE d.run_id = u.run_id \
                      AND d.step = u.step AND d.state = 'unknown'))",
    ),
];

/// The cases come from a fixed seed, so every run covers the same ground
/// (the coverage check above relies on it); `CONFORMANCE_SEED=n` explores
/// others.
fn conform(store: SqlStore, rt: &tokio::runtime::Runtime, cases: u32) {
    let seed: u64 = std::env::var("CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_203);
    eprintln!("CONFORMANCE_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = proptest::test_runner::TestRng::from_seed(
        proptest::test_runner::RngAlgorithm::ChaCha,
        &bytes,
    );
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        rng,
    );
    let result = runner.run(&case(), |ops| rt.block_on(check_case(&store, ops)));
    if let Err(e) = result {
        panic!("{e}");
    }
    // Other seeds explore; the fixed one is held to reach every state.
    if std::env::var_os("CONFORMANCE_SEED").is_none() {
        assert_covered();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sqlite_matches_the_model() {
    let rt = runtime();
    let store = rt.block_on(support::sqlite_store("conformance", SqlClock::Caller));
    conform(store, &rt, 1024);
}

#[test]
fn postgres_matches_the_model() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(support::pg_store(&url, "conformance", SqlClock::Caller, 2));
    conform(store, &rt, 1024);
}
