//! Unknown is a wait, not an end: against the reference store, a run whose
//! step's outcome is unknown waits without a lease and keeps its
//! conversation's place; the provider's status (or an operator) settles
//! it; its wait runs out into a failure that says so; an operator retries
//! a failed run from its failed step; a step may wait for the previous
//! one to be delivered.

use oncesend_core::store::{After, RunWait};
use oncesend_core::{
    DeliveryKey, DeliveryOutcome, DeliveryState, FlowId, MemStore, NewRun, PlannedStep,
    ReceiptStatus, Recipient, RunId, RunStatus, RunView, StoreOp, StoreReply, TenantId, WorkerId,
};

const LEASE: u64 = 10_000;
const SEND_TIMEOUT: u64 = 1_000;
const WAIT: u64 = 60_000;

fn step(after: After) -> PlannedStep {
    PlannedStep {
        message: oncesend_core::Message::text("hi"),
        delay_ms: 0,
        after,
        after_timeout_ms: (!after.is_sent()).then_some(5_000),
    }
}

fn enqueue(store: &mut MemStore, n: u64, to: &str, steps: Vec<PlannedStep>, now: u64) -> RunId {
    let id = RunId::new(n, n);
    let reply = store.apply(StoreOp::Enqueue {
        run: NewRun {
            id,
            tenant: TenantId::default_tenant(),
            flow: FlowId::new("f").unwrap(),
            to: Recipient::parse(to).unwrap(),
            steps,
            trigger_key: None,
        },
        now_ms: now,
    });
    assert_eq!(
        reply,
        StoreReply::Enqueued {
            run: id,
            created: true
        }
    );
    id
}

fn claim(store: &mut MemStore, now: u64) -> Vec<oncesend_core::ClaimedRun> {
    let StoreReply::Claimed(c) = store.apply(StoreOp::Claim {
        owner: WorkerId::new("w").unwrap(),
        max: 10,
        lease_ms: LEASE,
        now_ms: now,
    }) else {
        panic!("claim answers Claimed")
    };
    c
}

fn view(store: &mut MemStore, run: RunId) -> RunView {
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run }) else {
        panic!("no run {run}")
    };
    v
}

/// Claims `run` and sends its cursor's step with the given outcome, as
/// the engine would; answers the key and the claim's epoch.
fn send(
    store: &mut MemStore,
    run: RunId,
    outcome: DeliveryOutcome,
    now: u64,
) -> (DeliveryKey, u64) {
    let claimed = claim(store, now);
    let c = claimed.iter().find(|c| c.id == run).expect("claimed");
    let key = DeliveryKey {
        run,
        step: c.cursor,
    };
    let begun = store.apply(StoreOp::BeginDelivery {
        key,
        epoch: c.epoch,
        send_timeout_ms: SEND_TIMEOUT,
        now_ms: now,
    });
    assert!(matches!(begun, StoreReply::Begun { .. }), "{begun:?}");
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome,
        now_ms: now + 1,
    });
    (key, c.epoch)
}

fn lost() -> DeliveryOutcome {
    DeliveryOutcome::Unknown {
        reason: "timed out after the request left".into(),
    }
}

fn sent() -> DeliveryOutcome {
    DeliveryOutcome::Sent {
        provider_message_id: "wamid.1".into(),
    }
}

fn await_outcome(store: &mut MemStore, key: DeliveryKey, epoch: u64, wait: Option<u64>, now: u64) {
    let reply = store.apply(StoreOp::AwaitOutcome {
        run: key.run,
        epoch,
        step: key.step,
        wait_ms: wait,
        reason: "timed out".into(),
        now_ms: now,
    });
    assert!(matches!(reply, StoreReply::RunIs { .. }), "{reply:?}");
}

fn receipt(store: &mut MemStore, key: DeliveryKey, status: ReceiptStatus, resend: bool, now: u64) {
    let reply = store.apply(StoreOp::RecordReceipt {
        key,
        status,
        provider_message_id: Some("wamid.1".into()),
        reason: (status == ReceiptStatus::Failed).then(|| "(#131000) Something went wrong".into()),
        resend,
        now_ms: now,
    });
    assert!(
        matches!(reply, StoreReply::ReceiptRecorded { .. }),
        "{reply:?}"
    );
}

#[test]
fn an_unknown_step_waits_without_a_lease_and_holds_its_conversation() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let b = enqueue(&mut store, 2, "+5511913390001", vec![step(After::Sent)], 0);
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    let v = view(&mut store, a);
    assert_eq!(v.status, RunStatus::Waiting);
    assert_eq!(v.wait, Some(RunWait::Outcome));
    assert!(v.lease.is_none());
    assert!(v.reason.as_deref().unwrap().contains("delivery unknown"));
    // The next run of the recipient does not overtake it, nor is it
    // claimed itself before its wait runs out.
    assert!(claim(&mut store, 30).is_empty());
    assert_eq!(view(&mut store, b).status, RunStatus::Pending);
    let StoreReply::Stats(stats) = store.apply(StoreOp::Stats { now_ms: 30 }) else {
        panic!()
    };
    assert_eq!(stats.waiting, 1);
}

#[test]
fn a_delivered_status_settles_the_step_and_the_run_goes_on() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    receipt(&mut store, key, ReceiptStatus::Delivered, false, 500);
    let v = view(&mut store, a);
    assert_eq!((v.status, v.cursor), (RunStatus::Pending, 1));
    assert_eq!(
        v.run_at_ms, 500,
        "the next step's delay counts from the status"
    );
    assert!(v.reason.is_none());
    assert_eq!(
        v.deliveries[0].as_ref().unwrap().state,
        DeliveryState::Delivered
    );
    // Repeated and reordered statuses change nothing more.
    receipt(&mut store, key, ReceiptStatus::Sent, false, 600);
    receipt(&mut store, key, ReceiptStatus::Delivered, false, 600);
    assert_eq!(view(&mut store, a).cursor, 1);
    // The last step's status completes the run.
    let (key1, epoch1) = send(&mut store, a, lost(), 700);
    await_outcome(&mut store, key1, epoch1, Some(WAIT), 710);
    receipt(&mut store, key1, ReceiptStatus::Read, false, 800);
    assert_eq!(view(&mut store, a).status, RunStatus::Completed);
}

#[test]
fn a_status_that_beats_the_reply_is_found_when_the_worker_reports_unknown() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let claimed = claim(&mut store, 10);
    let key = DeliveryKey { run: a, step: 0 };
    store.apply(StoreOp::BeginDelivery {
        key,
        epoch: claimed[0].epoch,
        send_timeout_ms: SEND_TIMEOUT,
        now_ms: 10,
    });
    // The status arrives while the row is still `sending`.
    receipt(&mut store, key, ReceiptStatus::Sent, false, 15);
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: lost(),
        now_ms: 20,
    });
    await_outcome(&mut store, key, claimed[0].epoch, Some(WAIT), 25);
    let v = view(&mut store, a);
    assert_eq!((v.status, v.cursor), (RunStatus::Pending, 1));
}

#[test]
fn a_failed_status_sends_the_step_again_and_a_late_one_resends_nothing() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    receipt(&mut store, key, ReceiptStatus::Failed, true, 30);
    let v = view(&mut store, a);
    assert_eq!((v.status, v.cursor, v.attempts), (RunStatus::Pending, 0, 1));
    assert!(v.reason.as_deref().unwrap().contains("131000"));
    // Sent again: the ledger lets the key begin once more.
    let (key_again, _) = send(&mut store, a, sent(), 40);
    assert_eq!(key_again, key);
    assert_eq!(
        view(&mut store, a).deliveries[0].as_ref().unwrap().attempts,
        2
    );
    // A failure reported for a step already sent is kept on it, and
    // nothing is sent again.
    receipt(&mut store, key, ReceiptStatus::Failed, true, 50);
    let d = view(&mut store, a).deliveries[0].clone().unwrap();
    assert_eq!(d.state, DeliveryState::Failed { retryable: false });
    assert!(d.last_error.unwrap().contains("131000"));
}

/// A status naming the provider's message `id`; answers whether it
/// changed the ledger.
fn receipt_about(
    store: &mut MemStore,
    key: DeliveryKey,
    id: &str,
    status: ReceiptStatus,
    now: u64,
) -> bool {
    let reply = store.apply(StoreOp::RecordReceipt {
        key,
        status,
        provider_message_id: Some(id.into()),
        reason: (status == ReceiptStatus::Failed).then(|| "(#131026) Message undeliverable".into()),
        resend: true,
        now_ms: now,
    });
    let StoreReply::ReceiptRecorded { changed, .. } = reply else {
        panic!("{reply:?}")
    };
    changed
}

#[test]
fn a_repeated_failed_status_about_an_earlier_call_does_not_settle_the_next_one() {
    // Each call the provider takes has its own message id. The first call
    // for the key fails (its status names wamid.A); the step is sent again
    // and that call's reply is lost. Meta repeats the old `failed` while
    // the second call is under way: it is about the first call, and must
    // not make the second one look failed, or the step would go out a
    // third time after the second had reached the recipient.
    let mut store = MemStore::new();
    let a = enqueue(&mut store, 1, "+5511913390001", vec![step(After::Sent)], 0);
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    assert!(receipt_about(
        &mut store,
        key,
        "wamid.A",
        ReceiptStatus::Failed,
        30
    ));
    assert_eq!(view(&mut store, a).status, RunStatus::Pending);

    // The second call begins; the repeated `failed` comes while it is
    // `sending`, and again once its reply was lost.
    let claimed = claim(&mut store, 40);
    let epoch = claimed[0].epoch;
    let begun = store.apply(StoreOp::BeginDelivery {
        key,
        epoch,
        send_timeout_ms: SEND_TIMEOUT,
        now_ms: 40,
    });
    assert!(
        matches!(begun, StoreReply::Begun { attempt: 2, .. }),
        "{begun:?}"
    );
    assert!(!receipt_about(
        &mut store,
        key,
        "wamid.A",
        ReceiptStatus::Failed,
        45
    ));
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: lost(),
        now_ms: 41 + SEND_TIMEOUT,
    });
    assert!(!receipt_about(
        &mut store,
        key,
        "wamid.A",
        ReceiptStatus::Failed,
        50 + SEND_TIMEOUT
    ));
    await_outcome(&mut store, key, epoch, Some(WAIT), 60 + SEND_TIMEOUT);
    let v = view(&mut store, a);
    assert_eq!(
        v.status,
        RunStatus::Waiting,
        "the second call is still unknown"
    );
    assert_eq!(
        v.deliveries[0].as_ref().unwrap().state,
        DeliveryState::Unknown
    );

    // The second call's own status settles it, under its own id.
    assert!(receipt_about(
        &mut store,
        key,
        "wamid.B",
        ReceiptStatus::Delivered,
        70 + SEND_TIMEOUT
    ));
    let v = view(&mut store, a);
    assert_eq!(v.status, RunStatus::Completed);
    let d = v.deliveries[0].clone().unwrap();
    assert_eq!(d.provider_message_id.as_deref(), Some("wamid.B"));
    // And once settled, a status about the first call changes nothing,
    // while the second call's own statuses still move it on.
    assert!(!receipt_about(
        &mut store,
        key,
        "wamid.A",
        ReceiptStatus::Failed,
        80 + SEND_TIMEOUT
    ));
    assert!(receipt_about(
        &mut store,
        key,
        "wamid.B",
        ReceiptStatus::Read,
        90 + SEND_TIMEOUT
    ));
    assert_eq!(
        view(&mut store, a).deliveries[0].as_ref().unwrap().state,
        DeliveryState::Read
    );
}

#[test]
fn a_permanent_failure_status_fails_the_run_with_the_providers_reason() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    receipt(&mut store, key, ReceiptStatus::Failed, false, 30);
    let v = view(&mut store, a);
    assert_eq!(v.status, RunStatus::Failed);
    assert!(v
        .reason
        .unwrap()
        .contains("the provider reported it failed"));
}

#[test]
fn with_no_status_the_wait_runs_out_into_a_failure_that_says_what_to_do() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 2],
        0,
    );
    let b = enqueue(&mut store, 2, "+5511913390001", vec![step(After::Sent)], 0);
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    // The wait is the run's `run_at`: a claim takes it when it runs out,
    // telling the worker so.
    let claimed = claim(&mut store, 20 + WAIT);
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].waited, Some(RunWait::Outcome));
    await_outcome(&mut store, key, claimed[0].epoch, None, 20 + WAIT);
    let v = view(&mut store, a);
    assert_eq!(v.status, RunStatus::Failed);
    let reason = v.reason.unwrap();
    assert!(reason.contains("unknown timeout"), "{reason}");
    assert!(reason.contains("/resolve"), "{reason}");
    // Its conversation moves on.
    let next = claim(&mut store, 30 + WAIT);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, b);
}

#[test]
fn an_operator_resolves_an_unknown_step_and_a_failed_run_goes_on() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 3],
        0,
    );
    let (key, epoch) = send(&mut store, a, lost(), 10);
    await_outcome(&mut store, key, epoch, Some(WAIT), 20);
    let c = claim(&mut store, 20 + WAIT);
    await_outcome(&mut store, key, c[0].epoch, None, 20 + WAIT);
    assert_eq!(view(&mut store, a).status, RunStatus::Failed);
    // Retrying is refused while the step's outcome is unknown.
    let refused = store.apply(StoreOp::RetryRun {
        run: a,
        by: "ana".into(),
        now_ms: 100_000,
    });
    assert!(
        matches!(&refused, StoreReply::Conflict { reason } if reason.contains("resolve")),
        "{refused:?}"
    );
    let reply = store.apply(StoreOp::ResolveUnknown {
        key,
        sent: true,
        by: "ana".into(),
        now_ms: 100_000,
    });
    assert_eq!(
        reply,
        StoreReply::RunIs {
            status: RunStatus::Pending
        }
    );
    let v = view(&mut store, a);
    assert_eq!(
        v.cursor, 1,
        "resolved as sent: the run goes on from the next step"
    );
    let d = v.deliveries[0].clone().unwrap();
    assert_eq!(d.state, DeliveryState::Sent);
    assert_eq!(
        (d.resolved_by.as_deref(), d.resolved_at_ms),
        (Some("ana"), Some(100_000))
    );
    // Resolving twice is refused: the step is no longer unknown.
    let again = store.apply(StoreOp::ResolveUnknown {
        key,
        sent: false,
        by: "ana".into(),
        now_ms: 100_001,
    });
    assert!(matches!(again, StoreReply::Conflict { .. }), "{again:?}");
    // Step 1 is lost too; resolved as failed while the run waits, it is
    // sent again.
    let (key1, epoch1) = send(&mut store, a, lost(), 100_010);
    await_outcome(&mut store, key1, epoch1, Some(WAIT), 100_020);
    store.apply(StoreOp::ResolveUnknown {
        key: key1,
        sent: false,
        by: "operator".into(),
        now_ms: 100_030,
    });
    let v = view(&mut store, a);
    assert_eq!((v.status, v.cursor), (RunStatus::Pending, 1));
    let (again, _) = send(&mut store, a, sent(), 100_040);
    assert_eq!(again, key1);
}

#[test]
fn a_retried_run_goes_on_from_its_failed_step_but_never_past_another_run() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![step(After::Sent); 3],
        0,
    );
    send(&mut store, a, sent(), 10);
    let c = claim(&mut store, 11);
    let (_, _) = (c.len(), 0);
    // Step 0 went; the run is advanced and its step 1 refused for good.
    store.apply(StoreOp::Advance {
        run: a,
        epoch: c.first().map_or(1, |c| c.epoch),
        step: 0,
        delay_ms: Some(0),
        now_ms: 11,
    });
    let refusal = DeliveryOutcome::Failed {
        retryable: false,
        reason: "(#131026) Message undeliverable".into(),
        retry_after_ms: None,
    };
    let (key1, epoch1) = send(&mut store, a, refusal, 20);
    store.apply(StoreOp::Fail {
        run: a,
        epoch: epoch1,
        reason: "step 1: (#131026) Message undeliverable".into(),
        retry_after_ms: None,
        now_ms: 21,
    });
    assert_eq!(view(&mut store, a).status, RunStatus::Failed);
    // Another run of the same recipient is under way: retrying now would
    // interleave them.
    let b = enqueue(&mut store, 2, "+5511913390001", vec![step(After::Sent)], 30);
    let refused = store.apply(StoreOp::RetryRun {
        run: a,
        by: "operator".into(),
        now_ms: 31,
    });
    assert!(
        matches!(&refused, StoreReply::Conflict { reason } if reason.contains("interleave")),
        "{refused:?}"
    );
    store.apply(StoreOp::Cancel { run: b, now_ms: 32 });
    let reply = store.apply(StoreOp::RetryRun {
        run: a,
        by: "operator".into(),
        now_ms: 33,
    });
    assert_eq!(
        reply,
        StoreReply::RunIs {
            status: RunStatus::Pending
        }
    );
    let v = view(&mut store, a);
    assert_eq!((v.cursor, v.attempts, v.reason.as_deref()), (1, 0, None));
    // The step refused for good may go once more, since an operator asked.
    let (again, _) = send(&mut store, a, sent(), 40);
    assert_eq!(again, key1);
    // Only a failed run can be retried.
    let not_failed = store.apply(StoreOp::RetryRun {
        run: a,
        by: "operator".into(),
        now_ms: 41,
    });
    assert!(matches!(not_failed, StoreReply::Conflict { .. }));
}

#[test]
fn a_step_after_delivered_waits_for_the_previous_steps_status_or_its_timeout() {
    let mut store = MemStore::new();
    let a = enqueue(
        &mut store,
        1,
        "+5511913390001",
        vec![
            step(After::Sent),
            step(After::Delivered),
            step(After::Delivered),
        ],
        0,
    );
    let (key0, epoch) = send(&mut store, a, sent(), 10);
    // Advanced without a delay, the run still gives its lease up: step 1
    // waits for step 0 to be delivered.
    let reply = store.apply(StoreOp::Advance {
        run: a,
        epoch,
        step: 0,
        delay_ms: None,
        now_ms: 12,
    });
    assert_eq!(
        reply,
        StoreReply::Advanced {
            cursor: 1,
            released: true
        }
    );
    let v = view(&mut store, a);
    assert_eq!(v.status, RunStatus::Waiting);
    assert_eq!(v.wait, Some(RunWait::After(After::Delivered)));
    assert!(claim(&mut store, 100).is_empty());
    // `sent` is not enough; `delivered` is.
    receipt(&mut store, key0, ReceiptStatus::Sent, false, 200);
    assert_eq!(view(&mut store, a).status, RunStatus::Waiting);
    receipt(&mut store, key0, ReceiptStatus::Delivered, false, 300);
    let v = view(&mut store, a);
    assert_eq!((v.status, v.run_at_ms), (RunStatus::Pending, 300));
    assert!(v.note.is_none());
    // Step 1 goes; step 2 waits for it, but no status comes: after its
    // timeout it goes anyway, and the run says so.
    let (_, epoch1) = send(&mut store, a, sent(), 310);
    store.apply(StoreOp::Advance {
        run: a,
        epoch: epoch1,
        step: 1,
        delay_ms: None,
        now_ms: 320,
    });
    assert!(claim(&mut store, 320 + 4_999).is_empty());
    let c = claim(&mut store, 320 + 5_000);
    assert_eq!(c[0].waited, Some(RunWait::After(After::Delivered)));
    let note = view(&mut store, a).note.expect("the run says so");
    assert!(
        note.contains("step 2 went without step 1's `delivered` status"),
        "{note}"
    );
}

#[test]
fn the_first_step_cannot_wait_for_a_step_before_it() {
    let raw: Vec<oncesend_core::RawFlowStep> = serde_json::from_value(serde_json::json!([
        {"text": "Hi", "after": "delivered"}
    ]))
    .unwrap();
    let e = oncesend_core::Flow::from_raw(FlowId::new("f").unwrap(), raw).unwrap_err();
    assert_eq!(e.path().as_deref(), Some("steps[0].after"));
    let raw: Vec<oncesend_core::RawFlowStep> = serde_json::from_value(serde_json::json!([
        {"text": "Hi"}, {"text": "there", "after_timeout_ms": 5}
    ]))
    .unwrap();
    let e = oncesend_core::Flow::from_raw(FlowId::new("f").unwrap(), raw).unwrap_err();
    assert_eq!(e.path().as_deref(), Some("steps[1].after_timeout_ms"));
    let bad: Result<Vec<oncesend_core::RawFlowStep>, _> =
        serde_json::from_value(serde_json::json!([{"text": "Hi", "after": "seen"}]));
    assert!(bad.is_err());
}
