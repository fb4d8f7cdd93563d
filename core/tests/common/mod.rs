//! Fixtures the core's integration tests share: runs, claims and reads
//! against the reference store. Each test binary uses some of them.
#![allow(dead_code)]

use oncesend_core::store::After;
use oncesend_core::{
    ClaimedRun, FlowId, MemStore, Message, NewRun, PlannedStep, Recipient, RunId, RunView, StoreOp,
    StoreReply, TenantId, WorkerId,
};

/// The `n`th test recipient.
pub fn to(n: u64) -> Recipient {
    Recipient::parse(&format!("+55119133907{n:02}")).unwrap()
}

/// A text step due `delay_ms` after the one before, sent once the one
/// before reached `after` (with a minute's patience when that is not
/// merely sent).
pub fn step(after: After, delay_ms: u64) -> PlannedStep {
    PlannedStep {
        message: Message::text("hi"),
        delay_ms,
        after_timeout_ms: (!after.is_sent()).then_some(60_000),
        after,
    }
}

/// Run `n` of the default tenant's flow `f` to `to`.
pub fn run_to(n: u64, to: Recipient, steps: Vec<PlannedStep>) -> NewRun {
    NewRun {
        id: RunId::new(100 + n, n),
        tenant: TenantId::default_tenant(),
        flow: FlowId::new("f").unwrap(),
        to,
        steps,
        trigger_key: None,
    }
}

/// Run `n` to recipient `n`, of one plain step.
pub fn one_step_run(n: u64) -> NewRun {
    run_to(n, to(n), vec![step(After::Sent, 0)])
}

/// Enqueues `run` at `now_ms`; its id, and whether it was made afresh.
pub fn enqueue(store: &mut MemStore, run: NewRun, now_ms: u64) -> (RunId, bool) {
    match store.apply(StoreOp::Enqueue { run, now_ms }) {
        StoreReply::Enqueued { run, created } => (run, created),
        other => panic!("{other:?}"),
    }
}

/// `owner` claims up to `max` runs at `now_ms`, for `lease_ms`.
pub fn claim_as(
    store: &mut MemStore,
    owner: &str,
    max: u32,
    lease_ms: u64,
    now_ms: u64,
) -> Vec<ClaimedRun> {
    match store.apply(StoreOp::Claim {
        owner: WorkerId::new(owner).unwrap(),
        max,
        lease_ms,
        now_ms,
    }) {
        StoreReply::Claimed(c) => c,
        other => panic!("{other:?}"),
    }
}

/// Worker `w` claims up to `max` runs at `now_ms`, for ten seconds.
pub fn claim(store: &mut MemStore, max: u32, now_ms: u64) -> Vec<ClaimedRun> {
    claim_as(store, "w", max, 10_000, now_ms)
}

/// The run as the API shows it.
pub fn view(store: &mut MemStore, run: RunId) -> RunView {
    match store.apply(StoreOp::GetRun { run }) {
        StoreReply::Run(v) => v,
        other => panic!("{other:?}"),
    }
}

/// Step `key` is begun under `epoch` at `begin_ms` and its send ends with
/// no word from the provider at `finish_ms`: the ledger row is unknown.
pub fn begin_unknown(
    store: &mut MemStore,
    key: oncesend_core::DeliveryKey,
    epoch: u64,
    begin_ms: u64,
    finish_ms: u64,
) {
    store.apply(StoreOp::BeginDelivery {
        key,
        epoch,
        send_timeout_ms: 1_000,
        now_ms: begin_ms,
    });
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: oncesend_core::DeliveryOutcome::Unknown {
            reason: "timed out".into(),
        },
        now_ms: finish_ms,
    });
}
