//! The row rules at their edges, against the reference store: a holder
//! that repeats a write whose reply it lost, fencing switched off, retry
//! counting, opt-outs, and the loading plan SQL backends follow.

mod common;

use oncesend_core::store::rules::{is_row_op, needs_ledger, needs_pause, RunRecord};
use oncesend_core::store::After;
use oncesend_core::{
    DeliveryKey, Guards, MemStore, NewRun, PlannedStep, Recipient, RunId, RunStatus, StoreOp,
    StoreReply, TenantId, WorkerId,
};

use common::{claim, view};

/// A step due at once, waiting a second for `after` when that is more than
/// merely sent.
fn step(after: After) -> PlannedStep {
    PlannedStep {
        after_timeout_ms: (!after.is_sent()).then_some(1_000),
        ..common::step(after, 0)
    }
}

fn new_run(n: u64, to: &str, steps: Vec<PlannedStep>) -> NewRun {
    NewRun {
        id: RunId::new(n, n),
        ..common::run_to(n, Recipient::parse(to).unwrap(), steps)
    }
}

/// Begins `key` and records `outcome` for it.
fn send(
    store: &mut MemStore,
    key: DeliveryKey,
    epoch: u64,
    outcome: oncesend_core::DeliveryOutcome,
) {
    store.apply(StoreOp::BeginDelivery {
        key,
        epoch,
        send_timeout_ms: 1_000,
        now_ms: 1,
    });
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome,
        now_ms: 2,
    });
}

/// Begins `key` and records it sent as `provider_message_id`.
fn sent(store: &mut MemStore, key: DeliveryKey, epoch: u64, provider_message_id: &str) {
    let outcome = oncesend_core::DeliveryOutcome::Sent {
        provider_message_id: provider_message_id.into(),
    };
    send(store, key, epoch, outcome);
}

/// `to` opts out of the default tenant at 2 ms; how many unfinished runs
/// that cancelled.
fn stop(store: &mut MemStore, to: &str) -> u32 {
    match store.apply(StoreOp::Suppress {
        tenant: TenantId::default_tenant(),
        to: Recipient::parse(to).unwrap(),
        reason: "STOP".into(),
        now_ms: 2,
    }) {
        StoreReply::Suppressed {
            newly: true,
            cancelled,
        } => cancelled,
        other => panic!("{other:?}"),
    }
}

/// Enqueues run `n` to recipient `n` and claims it; its id and epoch.
fn claimed(store: &mut MemStore, n: u64, steps: Vec<PlannedStep>) -> (RunId, u64) {
    enqueue_and_claim(store, new_run(n, common::to(n).as_str(), steps))
}

/// Enqueues `run` at 0 and claims it; its id and epoch.
fn enqueue_and_claim(store: &mut MemStore, run: NewRun) -> (RunId, u64) {
    let (id, _) = common::enqueue(store, run, 0);
    let c = claim(store, 1, 0);
    assert_eq!(c[0].id, id);
    (id, c[0].epoch)
}

#[test]
fn a_holder_that_lost_its_reply_may_repeat_the_write_and_hears_the_same() {
    let mut store = MemStore::new();
    let (run, epoch) = claimed(&mut store, 1, vec![step(After::Sent)]);
    let complete = StoreOp::Complete {
        run,
        epoch,
        step: 0,
        now_ms: 5,
    };
    assert_eq!(store.apply(complete.clone()), StoreReply::Completed);
    assert_eq!(store.apply(complete), StoreReply::Completed, "a repeat");
    // Epoch 0 was never granted: it never matches, even a finished run's.
    assert_eq!(
        store.apply(StoreOp::Complete {
            run,
            epoch: 0,
            step: 0,
            now_ms: 6,
        }),
        StoreReply::Fenced
    );

    // An advance that keeps the lease, and one that releases the run.
    for (n, delay_ms) in [(2, None), (3, Some(50))] {
        let (run, epoch) = claimed(&mut store, n, vec![step(After::Sent), step(After::Sent)]);
        let advance = StoreOp::Advance {
            run,
            epoch,
            step: 0,
            delay_ms,
            now_ms: 5,
        };
        let first = store.apply(advance.clone());
        assert!(
            matches!(first, StoreReply::Advanced { cursor: 1, .. }),
            "{first:?}"
        );
        assert_eq!(store.apply(advance), first, "a repeat of {delay_ms:?}");
        assert_eq!(
            store.apply(StoreOp::Advance {
                run,
                epoch: 0,
                step: 0,
                delay_ms,
                now_ms: 6,
            }),
            StoreReply::Fenced,
            "epoch 0"
        );
    }
}

#[test]
fn without_fencing_only_finished_runs_refuse_a_write() {
    let mut store = MemStore::with_guards(Guards {
        fencing: false,
        ledger: true,
    });
    let (run, epoch) = claimed(&mut store, 1, vec![step(After::Sent), step(After::Sent)]);
    // A stale epoch passes: that is what fencing would have stopped.
    let reply = store.apply(StoreOp::Advance {
        run,
        epoch: epoch + 7,
        step: 0,
        delay_ms: None,
        now_ms: 5,
    });
    assert!(matches!(reply, StoreReply::Advanced { .. }), "{reply:?}");
    store.apply(StoreOp::Cancel { run, now_ms: 6 });
    assert_eq!(
        store.apply(StoreOp::Complete {
            run,
            epoch,
            step: 1,
            now_ms: 7,
        }),
        StoreReply::Fenced
    );
}

#[test]
fn each_retryable_failure_counts_one_attempt() {
    let mut store = MemStore::new();
    let (run, mut epoch) = claimed(&mut store, 1, vec![step(After::Sent)]);
    for attempt in 1..=3u32 {
        let reply = store.apply(StoreOp::Fail {
            run,
            epoch,
            reason: "131000 something went wrong".into(),
            retry_after_ms: Some(0),
            now_ms: attempt as u64,
        });
        assert_eq!(reply, StoreReply::Failed { dead: false });
        assert_eq!(view(&mut store, run).attempts, attempt);
        let c = claim(&mut store, 1, 10 * attempt as u64);
        epoch = c[0].epoch;
    }
}

#[test]
fn an_opt_out_cancels_unfinished_runs_only_and_counts_them() {
    let mut store = MemStore::new();
    let to = "+5511913390701";
    let first = new_run(1, to, vec![step(After::Sent)]);
    let second = new_run(2, to, vec![step(After::Sent)]);
    let (a, b) = (first.id, second.id);
    store.apply(StoreOp::Enqueue {
        run: first,
        now_ms: 0,
    });
    store.apply(StoreOp::Enqueue {
        run: second,
        now_ms: 0,
    });
    store.apply(StoreOp::Cancel { run: a, now_ms: 1 });
    assert_eq!(stop(&mut store, to), 1);
    assert_eq!(view(&mut store, b).status, RunStatus::Cancelled);
    let mut row = RunRecord::new(new_run(3, to, vec![step(After::Sent)]), 1, 0);
    assert!(oncesend_core::store::rules::opt_out(&mut row, 3));
    assert!(!oncesend_core::store::rules::opt_out(&mut row, 4), "once");
}

/// What a SQL backend loads for each row op: the ledger only where the op
/// reads it, the pause and opt-out only for a send. Their effect is proven
/// by the SQL stores' differential test; here the plan itself is pinned.
#[test]
fn the_loading_plan_backends_follow() {
    let run = RunId::new(1, 1);
    let key = DeliveryKey { run, step: 0 };
    let waits = RunRecord::new(
        new_run(
            1,
            "+5511913390701",
            vec![step(After::Sent), step(After::Read)],
        ),
        1,
        0,
    );
    let plain = RunRecord::new(
        new_run(
            1,
            "+5511913390701",
            vec![step(After::Sent), step(After::Sent)],
        ),
        1,
        0,
    );
    let advance = StoreOp::Advance {
        run,
        epoch: 1,
        step: 0,
        delay_ms: None,
        now_ms: 0,
    };
    assert!(needs_ledger(&advance, Some(&waits)), "the next step waits");
    assert!(!needs_ledger(&advance, Some(&plain)));
    assert!(!needs_ledger(&advance, None));
    let begin = StoreOp::BeginDelivery {
        key,
        epoch: 1,
        send_timeout_ms: 1,
        now_ms: 0,
    };
    let heartbeat = StoreOp::Heartbeat {
        run,
        epoch: 1,
        lease_ms: 1,
        now_ms: 0,
    };
    let complete = StoreOp::Complete {
        run,
        epoch: 1,
        step: 0,
        now_ms: 0,
    };
    assert!(needs_ledger(&begin, None));
    for op in [&heartbeat, &complete, &StoreOp::Cancel { run, now_ms: 0 }] {
        assert!(!needs_ledger(op, Some(&waits)), "{}", op.name());
    }
    assert!(needs_pause(&begin));
    assert!(!needs_pause(&heartbeat) && !needs_pause(&advance));
    assert!(is_row_op(&begin) && is_row_op(&heartbeat) && is_row_op(&advance));
    let claim = StoreOp::Claim {
        owner: WorkerId::new("w").unwrap(),
        max: 1,
        lease_ms: 1,
        now_ms: 0,
    };
    assert!(!is_row_op(&claim) && !is_row_op(&StoreOp::GetRun { run }));
}

/// A released advance repeated after the run was cancelled is not a
/// repeat: the run is finished, and says so.
#[test]
fn a_repeated_advance_after_a_cancel_is_refused() {
    let mut store = MemStore::new();
    let (run, epoch) = claimed(&mut store, 1, vec![step(After::Sent), step(After::Sent)]);
    let advance = StoreOp::Advance {
        run,
        epoch,
        step: 0,
        delay_ms: Some(50),
        now_ms: 5,
    };
    assert!(matches!(
        store.apply(advance.clone()),
        StoreReply::Advanced { released: true, .. }
    ));
    store.apply(StoreOp::Cancel { run, now_ms: 6 });
    let again = store.apply(advance);
    assert!(
        !matches!(again, StoreReply::Advanced { .. }),
        "a cancelled run advanced: {again:?}"
    );
}

/// An operator settles an unknown step of a run that waits for its
/// outcome while a later run of the same conversation is queued: the
/// waiting run is still its conversation's head, so nothing overtakes.
#[test]
fn an_unknown_step_of_a_waiting_head_is_resolved_with_runs_queued_behind() {
    let mut store = MemStore::new();
    let to = "+5511913390701";
    let (a, b) = (
        new_run(1, to, vec![step(After::Sent)]),
        new_run(2, to, vec![step(After::Sent)]),
    );
    let run = a.id;
    store.apply(StoreOp::Enqueue { run: a, now_ms: 0 });
    store.apply(StoreOp::Enqueue { run: b, now_ms: 0 });
    let c = claim(&mut store, 10, 0);
    assert_eq!(c.len(), 1, "only the head");
    let (key, epoch) = (DeliveryKey { run, step: 0 }, c[0].epoch);
    send(
        &mut store,
        key,
        epoch,
        oncesend_core::DeliveryOutcome::Unknown {
            reason: "no answer".into(),
        },
    );
    store.apply(StoreOp::AwaitOutcome {
        run,
        epoch,
        step: 0,
        wait_ms: Some(60_000),
        reason: "delivery unknown".into(),
        now_ms: 3,
    });
    assert_eq!(view(&mut store, run).status, RunStatus::Waiting);
    let reply = store.apply(StoreOp::ResolveUnknown {
        key,
        sent: true,
        by: "operator".into(),
        now_ms: 4,
    });
    assert!(
        !matches!(reply, StoreReply::Conflict { .. }),
        "refused: {reply:?}"
    );
    assert_eq!(view(&mut store, run).status, RunStatus::Completed);
}

/// An operator's retry of a failed run whose current step did go out goes
/// on to the next step, keeping that step's delay (only a wait for a
/// status is dropped).
#[test]
fn a_retried_run_past_a_sent_step_keeps_the_next_steps_delay() {
    let mut store = MemStore::new();
    let mut later = step(After::Sent);
    later.delay_ms = 5_000;
    let (run, epoch) = claimed(&mut store, 1, vec![step(After::Sent), later]);
    let key = DeliveryKey { run, step: 0 };
    sent(&mut store, key, epoch, "wamid.0");
    let failed = store.apply(StoreOp::Fail {
        run,
        epoch,
        reason: "the worker gave up".into(),
        retry_after_ms: None,
        now_ms: 3,
    });
    assert_eq!(failed, StoreReply::Failed { dead: true });
    store.apply(StoreOp::RetryRun {
        run,
        by: "operator".into(),
        now_ms: 100,
    });
    let v = view(&mut store, run);
    assert_eq!((v.status, v.cursor), (RunStatus::Pending, 1));
    assert_eq!(v.run_at_ms, 5_100, "due after step 1's own delay");
}

/// A run that had failed before its recipient opted out, retried by an
/// operator afterwards, gets as far as the send, and the send is refused:
/// nothing more goes to them.
#[test]
fn a_run_retried_after_an_opt_out_is_refused_at_the_send() {
    let mut store = MemStore::new();
    let to = "+5511913390701";
    let (run, epoch) = claimed_to(&mut store, 1, to);
    let epoch = failed_opted_out_retried(&mut store, run, epoch, to);
    let reply = begin(&mut store, DeliveryKey { run, step: 0 }, epoch);
    assert!(
        matches!(&reply, StoreReply::DeliveryFailed { reason } if reason.contains("opted out")),
        "{reply:?}"
    );
}

fn claimed_to(store: &mut MemStore, n: u64, to: &str) -> (RunId, u64) {
    enqueue_and_claim(store, new_run(n, to, vec![step(After::Sent)]))
}

/// The run fails for good at 1 ms, its recipient `to` opts out (which
/// cancels nothing, the run being finished), an operator retries it at
/// 3 ms and it is claimed again at 4 ms: the new epoch.
fn failed_opted_out_retried(store: &mut MemStore, run: RunId, epoch: u64, to: &str) -> u64 {
    store.apply(StoreOp::Fail {
        run,
        epoch,
        reason: "gave up".into(),
        retry_after_ms: None,
        now_ms: 1,
    });
    assert_eq!(stop(store, to), 0, "a failed run is not cancelled");
    store.apply(StoreOp::RetryRun {
        run,
        by: "operator".into(),
        now_ms: 3,
    });
    let c = claim(store, 1, 4);
    assert_eq!(c.len(), 1, "the retried run is claimed");
    c[0].epoch
}

/// Begins step `key` under `epoch` at 5 ms.
fn begin(store: &mut MemStore, key: DeliveryKey, epoch: u64) -> StoreReply {
    store.apply(StoreOp::BeginDelivery {
        key,
        epoch,
        send_timeout_ms: 1_000,
        now_ms: 5,
    })
}

/// The opt-out check at the send refuses only a send that could still go
/// out: a step whose earlier try failed and may be tried again is refused,
/// while a repeat of a step already sent hears that it was sent, and a run
/// the opt-out cancelled is fenced like any cancelled run.
#[test]
fn the_opt_out_check_at_the_send_refuses_only_what_could_still_go_out() {
    let opted_out = |r: &StoreReply| matches!(r, StoreReply::DeliveryFailed { reason } if reason.contains("opted out"));
    let failed_for_now = oncesend_core::DeliveryOutcome::Failed {
        retryable: true,
        reason: "131000 something went wrong".into(),
        retry_after_ms: None,
    };

    // A step that failed for now, then an opt-out, a failed run retried:
    // its ledger row is not sent, so the send is refused.
    let mut store = MemStore::new();
    let to = "+5511913390701";
    let (run, epoch) = claimed_to(&mut store, 1, to);
    let key = DeliveryKey { run, step: 0 };
    send(&mut store, key, epoch, failed_for_now.clone());
    let epoch = failed_opted_out_retried(&mut store, run, epoch, to);
    let reply = begin(&mut store, key, epoch);
    assert!(opted_out(&reply), "{reply:?}");

    // Step 0 sent, step 1 failed, an opt-out, the run retried: a repeat of
    // step 0's begin hears that it was sent, not that the recipient left.
    let mut store = MemStore::new();
    let to = "+5511913390702";
    let (run, epoch) = claimed(&mut store, 2, vec![step(After::Sent), step(After::Sent)]);
    let first = DeliveryKey { run, step: 0 };
    sent(&mut store, first, epoch, "wamid.0");
    let v = view(&mut store, run);
    assert_eq!(v.to.as_str(), to);
    store.apply(StoreOp::Advance {
        run,
        epoch,
        step: 0,
        delay_ms: None,
        now_ms: 3,
    });
    // Not released: the holder goes on to step 1 under the same lease.
    send(
        &mut store,
        DeliveryKey { run, step: 1 },
        epoch,
        failed_for_now,
    );
    let epoch = failed_opted_out_retried(&mut store, run, epoch, to);
    assert_eq!(view(&mut store, run).status, RunStatus::Leased);
    let reply = begin(&mut store, first, epoch);
    assert!(
        matches!(&reply, StoreReply::AlreadySent { provider_message_id } if provider_message_id == "wamid.0"),
        "{reply:?}"
    );

    // A run the opt-out cancelled while it was leased: its holder's begin
    // is fenced, as for any cancelled run.
    let mut store = MemStore::new();
    let to = "+5511913390703";
    let (run, epoch) = claimed_to(&mut store, 3, to);
    assert_eq!(stop(&mut store, to), 1);
    assert_eq!(view(&mut store, run).status, RunStatus::Cancelled);
    let reply = store.apply(StoreOp::BeginDelivery {
        key: DeliveryKey { run, step: 0 },
        epoch,
        send_timeout_ms: 1_000,
        now_ms: 3,
    });
    assert_eq!(reply, StoreReply::Fenced);
}

/// A backend reads a run back through `RunRecord::from_row`, which refuses
/// a row the rules could not have written, naming the run and the fault.
#[test]
fn a_run_row_read_back_is_checked_before_it_is_used() {
    use oncesend_core::store::rules::RunRow;
    let record = RunRecord::new(
        new_run(
            9,
            "+5511913390709",
            vec![step(After::Sent), step(After::Sent)],
        ),
        4,
        10,
    );
    let row: RunRow = (*record).clone();
    assert_eq!(RunRecord::from_row(row.clone()).unwrap(), record);
    let refused = |row: RunRow| RunRecord::from_row(row).unwrap_err().to_string();
    let e = refused(RunRow {
        status: RunStatus::Leased,
        epoch: 1,
        ..row.clone()
    });
    assert!(
        e.contains(&record.id.to_string()) && e.contains("leased without a lease"),
        "{e}"
    );
    let e = refused(RunRow {
        cursor: 3,
        ..row.clone()
    });
    assert!(e.contains("cursor 3 past its 2 steps"), "{e}");
    let e = refused(RunRow {
        cursor: 2,
        ..row.clone()
    });
    assert!(e.contains("pending with no step left"), "{e}");
    let e = refused(RunRow {
        status: RunStatus::Waiting,
        ..row.clone()
    });
    assert!(e.contains("waiting for nothing"), "{e}");
    let e = refused(RunRow {
        steps: Vec::new().into(),
        cursor: 0,
        ..row
    });
    assert!(e.contains("0 steps stored"), "{e}");
}
