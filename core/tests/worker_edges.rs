//! The worker machine at its edges: the bounds its settings must keep, when
//! it next wants time (a claim, a heartbeat, a lease's end), how many runs
//! it holds, and when a shutdown is finished.

mod common;

use oncesend_core::store::After;
use oncesend_core::worker::ConfigError;
use oncesend_core::{
    DeliveryKey, MemStore, RunId, SendResponse, StoreOp, StoreReply, Worker, WorkerConfig,
    WorkerEffect, WorkerEvent, WorkerId,
};

fn config() -> WorkerConfig {
    WorkerConfig {
        lease_ms: 3_000,
        send_timeout_ms: 1_000,
        poll_ms: 50,
        concurrency: 1,
        ..WorkerConfig::new(WorkerId::new("w").unwrap())
    }
}

#[test]
fn a_worker_s_settings_keep_the_bounds_its_machine_relies_on() {
    assert_eq!(config().validate(), Ok(()));
    let lease_at_bound = WorkerConfig {
        lease_ms: 3_000,
        send_timeout_ms: 1_000,
        ..config()
    };
    assert_eq!(lease_at_bound.validate(), Ok(()), "three send timeouts fit");
    let short = WorkerConfig {
        lease_ms: 2_999,
        ..config()
    };
    assert!(matches!(
        short.validate(),
        Err(ConfigError::LeaseTooShort {
            lease_ms: 2_999,
            send_timeout_ms: 1_000
        })
    ));
    let max = oncesend_core::limits::MAX_CLAIM_BATCH;
    for (batch, concurrency, ok) in [
        (1, 1, true),
        (max, 1, true),
        (0, 1, false),
        (max + 1, 1, false),
        (1, 0, false),
    ] {
        let c = WorkerConfig {
            batch,
            concurrency,
            ..config()
        };
        assert_eq!(
            c.validate().is_ok(),
            ok,
            "batch {batch}, concurrency {concurrency}"
        );
    }
}

/// One plain one-step run, enqueued at 0.
fn one_run(store: &mut MemStore) -> RunId {
    common::enqueue(store, common::one_step_run(1), 0).0
}

/// The store op the worker asks for next.
fn next_store(w: &mut Worker) -> (u64, StoreOp) {
    match w.poll_effect() {
        Some(WorkerEffect::Store { op, request }) => (op, request),
        other => panic!("a store op, not {other:?}"),
    }
}

/// Answers store op `op`: the store did not answer.
fn store_down(w: &mut Worker, op: u64, now_ms: u64) {
    w.handle(
        WorkerEvent::StoreReplied {
            op,
            reply: Err(oncesend_core::store::StoreUnavailable("db down".into())),
        },
        now_ms,
    );
}

/// Answers send `op`: sent.
fn sent(w: &mut Worker, op: u64, now_ms: u64) {
    w.handle(
        WorkerEvent::SendReplied {
            op,
            reply: Ok(SendResponse::Sent {
                provider_message_id: "wamid.1".into(),
                replayed: false,
            }),
        },
        now_ms,
    );
}

/// A worker with run 1 of `steps` claimed at 0 and its first step out:
/// the store, the run, the worker and the sends it asked for.
fn sending(steps: &[(u64, bool)]) -> (MemStore, RunId, Worker, Vec<(u64, DeliveryKey)>) {
    let mut store = MemStore::new();
    let run = enqueue(&mut store, 1, steps);
    let mut w = Worker::new(config(), 1).unwrap();
    w.handle(WorkerEvent::Tick, 0);
    let sends = settle(&mut w, &mut store, 0);
    (store, run, w, sends)
}

/// Applies the worker's store ops now; returns the sends it asked for.
fn settle(w: &mut Worker, store: &mut MemStore, now_ms: u64) -> Vec<(u64, DeliveryKey)> {
    let mut sends = Vec::new();
    while let Some(effect) = w.poll_effect() {
        match effect {
            WorkerEffect::Store { op, request } => {
                let reply = Ok(store.apply(request));
                w.handle(WorkerEvent::StoreReplied { op, reply }, now_ms);
            }
            WorkerEffect::Send { op, request } => sends.push((op, request.key)),
        }
    }
    sends
}

#[test]
fn a_worker_says_when_it_next_wants_time_and_is_idle_only_once_drained() {
    let mut store = MemStore::new();
    let run = one_run(&mut store);
    let mut w = Worker::new(config(), 1).unwrap();
    assert_eq!(w.poll_timeout(), Some(0), "a new worker claims at once");
    assert_eq!(w.held(), 0);

    // The claim goes out; while it is unanswered nothing else is due.
    w.handle(WorkerEvent::Tick, 0);
    let (op, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Claim { .. }));
    assert_eq!(w.poll_timeout(), None);
    assert!(!w.is_idle());
    let reply = Ok(store.apply(request));
    w.handle(WorkerEvent::StoreReplied { op, reply }, 0);
    let sends = settle(&mut w, &mut store, 0);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1, DeliveryKey { run, step: 0 });
    assert_eq!(w.held(), 1);
    // Holding all it may: no claim is due, only the heartbeat at a third
    // of the lease.
    assert_eq!(w.poll_timeout(), Some(1_000));

    // The heartbeat goes out; while it is unanswered, only the lease's end.
    w.handle(WorkerEvent::Tick, 1_000);
    let (hb, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Heartbeat { .. }));
    assert_eq!(w.poll_timeout(), Some(3_000));
    let reply = Ok(store.apply(request));
    w.handle(WorkerEvent::StoreReplied { op: hb, reply }, 1_010);
    assert_eq!(
        w.poll_timeout(),
        Some(2_000),
        "renewed from when it was sent"
    );

    // The send is answered; the run completes and nothing is held.
    sent(&mut w, sends[0].0, 1_100);
    settle(&mut w, &mut store, 1_100);
    assert_eq!(w.held(), 0);
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run }) else {
        panic!()
    };
    assert_eq!(v.status, oncesend_core::RunStatus::Completed);
    assert!(!w.is_idle(), "not shut down");

    w.handle(WorkerEvent::Shutdown, 1_200);
    assert!(w.is_idle(), "shut down with nothing held");
    assert_eq!(w.poll_timeout(), None, "a drained worker claims no more");
}

#[test]
fn a_shutdown_waits_for_its_claim_and_gives_back_what_it_brings() {
    let mut store = MemStore::new();
    let run = one_run(&mut store);
    let mut w = Worker::new(config(), 1).unwrap();
    w.handle(WorkerEvent::Tick, 0);
    let (op, request) = next_store(&mut w);
    w.handle(WorkerEvent::Shutdown, 0);
    assert!(!w.is_idle(), "its claim is unanswered");
    let reply = Ok(store.apply(request));
    w.handle(WorkerEvent::StoreReplied { op, reply }, 0);
    let sends = settle(&mut w, &mut store, 0);
    // A run claimed while shutting down is given back at once, unsent.
    assert!(sends.is_empty());
    assert_eq!(w.held(), 0);
    assert!(w.is_idle());
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run }) else {
        panic!()
    };
    assert_eq!(v.status, oncesend_core::RunStatus::Pending);
    assert!(v.lease.is_none());
}

/// A claim that does not reach the store is tried again after a wait drawn
/// from the worker's own seeded stream: full jitter under the retry
/// policy's ceiling, never shorter than the poll interval.
#[test]
fn a_failed_claim_waits_a_jittered_backoff_drawn_from_the_worker_s_seed() {
    let policy = config().retry;
    let expected = |seed: u64| {
        let r = oncesend_core::rng::SplitMix64::new(seed).next_u64();
        policy.backoff_ms(1, r).max(1).max(config().poll_ms)
    };
    // A seed whose draw is above the poll interval, so the draw shows.
    let seed = (1..100)
        .find(|&s| expected(s) > 2 * config().poll_ms)
        .unwrap();
    let mut w = Worker::new(config(), seed).unwrap();
    w.handle(WorkerEvent::Tick, 0);
    let (op, _) = next_store(&mut w);
    store_down(&mut w, op, 10);
    assert_eq!(w.poll_timeout(), Some(10 + expected(seed)));
}

/// Enqueues run `n` of `steps` (delay, waits for delivery) at 0, for a
/// recipient of its own.
fn enqueue(store: &mut MemStore, n: u64, steps: &[(u64, bool)]) -> RunId {
    let steps = steps
        .iter()
        .map(|&(delay_ms, waits)| {
            let after = if waits { After::Delivered } else { After::Sent };
            common::step(after, delay_ms)
        })
        .collect();
    common::enqueue(store, common::run_to(n, common::to(n), steps), 0).0
}

/// One worker against the model; the test answers every send from `answer`
/// (by run), until nothing is held.
fn drive(
    w: &mut Worker,
    store: &mut MemStore,
    now_ms: u64,
    answer: &dyn Fn(RunId, u32) -> SendResponse,
) {
    w.handle(WorkerEvent::Tick, now_ms);
    loop {
        let sends = settle(w, store, now_ms);
        if sends.is_empty() {
            break;
        }
        for (op, key) in sends {
            w.handle(
                WorkerEvent::SendReplied {
                    op,
                    reply: Ok(answer(key.run, key.step)),
                },
                now_ms,
            );
        }
    }
}

#[test]
fn each_answer_to_a_send_moves_the_run_as_the_contract_says_and_is_counted_once() {
    let mut store = MemStore::new();
    let done = enqueue(&mut store, 1, &[(0, false), (0, false)]);
    let delayed = enqueue(&mut store, 2, &[(0, false), (5_000, false)]);
    let waits = enqueue(&mut store, 3, &[(0, false), (0, true)]);
    let refused = enqueue(&mut store, 4, &[(0, false)]);
    let retried = enqueue(&mut store, 5, &[(0, false)]);
    let unknown = enqueue(&mut store, 6, &[(0, false)]);
    let mut w = Worker::new(
        WorkerConfig {
            concurrency: 10,
            retry: oncesend_core::RetryPolicy {
                max_attempts: 2,
                ..config().retry
            },
            ..config()
        },
        1,
    )
    .unwrap();
    let failed = |retryable: bool| SendResponse::Failed {
        retryable,
        reason: "Cloud API error 131000".into(),
        retry_after_ms: Some(9_000),
    };
    let answer = |run: RunId, _step: u32| {
        if run == refused {
            failed(false)
        } else if run == retried {
            failed(true)
        } else if run == unknown {
            SendResponse::Unknown {
                reason: "timed out".into(),
            }
        } else {
            SendResponse::Sent {
                provider_message_id: format!("wamid.{run}"),
                replayed: false,
            }
        }
    };
    drive(&mut w, &mut store, 0, &answer);
    assert_eq!(w.held(), 0, "every run was let go or finished");

    // Two steps without a delay go out under one lease.
    assert_eq!(
        common::view(&mut store, done).status,
        oncesend_core::RunStatus::Completed
    );
    // A delay gives the lease up: the next step is due after it.
    let v = common::view(&mut store, delayed);
    assert_eq!(
        (v.status, v.cursor, v.run_at_ms),
        (oncesend_core::RunStatus::Pending, 1, 5_000)
    );
    // A step that waits for the previous one's delivery gives it up too.
    let v = common::view(&mut store, waits);
    assert_eq!((v.status, v.cursor), (oncesend_core::RunStatus::Waiting, 1));
    let v = common::view(&mut store, refused);
    assert_eq!(v.status, oncesend_core::RunStatus::Failed);
    assert_eq!(v.reason.as_deref(), Some("step 0: Cloud API error 131000"));
    // A retryable refusal with attempts left waits at least what was asked.
    let v = common::view(&mut store, retried);
    assert_eq!(v.status, oncesend_core::RunStatus::Pending);
    assert!(v.run_at_ms >= 9_000, "{}", v.run_at_ms);
    let v = common::view(&mut store, unknown);
    assert_eq!(v.status, oncesend_core::RunStatus::Waiting);

    let s = w.stats();
    assert_eq!(
        (
            s.claimed,
            s.sent,
            s.completed,
            s.failed,
            s.awaiting,
            s.fenced
        ),
        (6, 4, 1, 1, 1, 0)
    );

    // The retried run's second refusal is its last attempt: it fails.
    drive(&mut w, &mut store, 9_000, &answer);
    let v = common::view(&mut store, retried);
    assert_eq!(v.status, oncesend_core::RunStatus::Failed);
    assert_eq!(
        v.reason.as_deref(),
        Some("step 0: gave up after 2 attempts: Cloud API error 131000")
    );
    let s = w.stats();
    assert_eq!(
        (s.claimed, s.sent, s.failed, s.completed),
        (8, 5, 2, 2),
        "the delayed run's step 1 was claimed and sent too"
    );
    assert_eq!(
        common::view(&mut store, delayed).status,
        oncesend_core::RunStatus::Completed
    );
}

#[test]
fn a_send_whose_lease_was_taken_is_fenced_and_counted() {
    let (mut store, run, mut w, sends) = sending(&[(0, false)]);
    w.handle(
        WorkerEvent::SendReplied {
            op: sends[0].0,
            reply: Ok(SendResponse::Fenced),
        },
        10,
    );
    assert_eq!(w.held(), 0);
    assert_eq!(w.stats().fenced, 1);
    assert_eq!(
        common::view(&mut store, run).status,
        oncesend_core::RunStatus::Leased
    );
}

/// A heartbeat that does not reach the store is tried again a tenth of a
/// lease after it was sent; one that is fenced lets the run go.
#[test]
fn a_lost_heartbeat_is_tried_again_soon_and_a_fenced_one_lets_the_run_go() {
    let (mut store, run, mut w, sends) = sending(&[(0, false)]);
    assert_eq!(sends.len(), 1);
    w.handle(WorkerEvent::Tick, 1_000);
    let (op, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Heartbeat { .. }));
    store_down(&mut w, op, 1_050);
    assert_eq!(
        w.poll_timeout(),
        Some(1_300),
        "3,000 ms lease / 10 after 1,000"
    );
    assert_eq!(w.held(), 1);

    // The lease lapses in the store and another worker takes the run.
    let c = common::claim_as(&mut store, "other", 1, 3_000, 3_000);
    assert_eq!(c[0].id, run);
    w.handle(WorkerEvent::Tick, 1_300);
    let (op, request) = next_store(&mut w);
    let reply = Ok(store.apply(request));
    w.handle(WorkerEvent::StoreReplied { op, reply }, 1_310);
    assert_eq!(w.held(), 0);
    assert_eq!(w.stats().fenced, 1);
}

/// A worker claims no more than it has room for: with one run held and
/// room for two, its next claim asks for one.
#[test]
fn a_claim_asks_only_for_the_room_left() {
    let mut store = MemStore::new();
    enqueue(&mut store, 1, &[(0, false)]);
    let mut w = Worker::new(
        WorkerConfig {
            concurrency: 2,
            batch: 10,
            ..config()
        },
        1,
    )
    .unwrap();
    w.handle(WorkerEvent::Tick, 0);
    assert_eq!(settle(&mut w, &mut store, 0).len(), 1);
    for n in 2..6 {
        enqueue(&mut store, n, &[(0, false)]);
    }
    w.handle(WorkerEvent::Tick, 50);
    let (op, request) = next_store(&mut w);
    assert!(
        matches!(request, StoreOp::Claim { max: 1, .. }),
        "{request:?}"
    );
    let reply = Ok(store.apply(request));
    w.handle(WorkerEvent::StoreReplied { op, reply }, 50);
    settle(&mut w, &mut store, 50);
    assert_eq!(w.held(), 2);
}

/// A short wait the engine asks for is waited out with the lease held: the
/// step goes again when it is up, not before.
#[test]
fn a_short_busy_waitsends_again_when_it_is_up_and_not_before() {
    let (mut store, _, mut w, sends) = sending(&[(0, false)]);
    w.handle(
        WorkerEvent::SendReplied {
            op: sends[0].0,
            reply: Ok(SendResponse::Busy {
                retry_after_ms: 200,
            }),
        },
        10,
    );
    assert_eq!(w.poll_timeout(), Some(210));
    w.handle(WorkerEvent::Tick, 209);
    assert!(settle(&mut w, &mut store, 209).is_empty(), "not yet");
    w.handle(WorkerEvent::Tick, 210);
    assert_eq!(settle(&mut w, &mut store, 210).len(), 1, "sent again");
}

/// A run claimed back after its wait for the provider's word ran out is
/// not sent again: the worker gives the step up, and the run fails.
#[test]
fn a_run_whose_wait_for_the_provider_ran_out_is_given_up_not_resent() {
    let mut store = MemStore::new();
    let run = enqueue(&mut store, 1, &[(0, false)]);
    let c = common::claim_as(&mut store, "first", 1, 3_000, 0);
    let (key, epoch) = (DeliveryKey { run, step: 0 }, c[0].epoch);
    common::begin_unknown(&mut store, key, epoch, 0, 1_000);
    store.apply(StoreOp::AwaitOutcome {
        run,
        epoch,
        step: 0,
        wait_ms: Some(100),
        reason: "timed out".into(),
        now_ms: 1_000,
    });
    let mut w = Worker::new(config(), 1).unwrap();
    w.handle(WorkerEvent::Tick, 2_000);
    let sends = settle(&mut w, &mut store, 2_000);
    assert!(sends.is_empty(), "never resent blindly");
    let v = common::view(&mut store, run);
    assert_eq!(v.status, oncesend_core::RunStatus::Failed, "{v:?}");
    assert!(
        v.reason.as_deref().unwrap_or("").contains("no status"),
        "{:?}",
        v.reason
    );
}

/// A renewed lease runs a whole lease from when the heartbeat was sent;
/// while the next heartbeat is out, that is the worker's deadline.
#[test]
fn a_renewed_lease_runs_a_lease_from_when_its_heartbeat_was_sent() {
    let (mut store, _, mut w, sends) = sending(&[(0, false)]);
    assert_eq!(sends.len(), 1);
    w.handle(WorkerEvent::Tick, 1_000);
    assert!(settle(&mut w, &mut store, 1_010).is_empty());
    w.handle(WorkerEvent::Tick, 2_000);
    let (_, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Heartbeat { .. }));
    assert_eq!(w.poll_timeout(), Some(4_000), "1,000 + a 3,000 ms lease");
}

/// A worker shutting down finishes the step it is sending and gives the
/// run back for the next one, instead of sending on.
#[test]
fn a_shutdown_gives_a_run_back_after_the_step_in_flight() {
    let (mut store, run, mut w, sends) = sending(&[(0, false), (0, false)]);
    w.handle(WorkerEvent::Shutdown, 5);
    sent(&mut w, sends[0].0, 10);
    assert!(
        settle(&mut w, &mut store, 10).is_empty(),
        "step 1 is not sent"
    );
    assert!(w.is_idle());
    let v = common::view(&mut store, run);
    assert_eq!((v.status, v.cursor), (oncesend_core::RunStatus::Pending, 1));
}

/// `sending`, under `config` and `seed`.
fn sending_with(
    config: WorkerConfig,
    seed: u64,
    steps: &[(u64, bool)],
) -> (MemStore, RunId, Worker, Vec<(u64, DeliveryKey)>) {
    let mut store = MemStore::new();
    let run = enqueue(&mut store, 1, steps);
    let mut w = Worker::new(config, seed).unwrap();
    w.handle(WorkerEvent::Tick, 0);
    let sends = settle(&mut w, &mut store, 0);
    (store, run, w, sends)
}

/// Answers store op `op` with `reply`.
fn store_answers(w: &mut Worker, op: u64, reply: StoreReply, now_ms: u64) {
    w.handle(
        WorkerEvent::StoreReplied {
            op,
            reply: Ok(reply),
        },
        now_ms,
    );
}

/// Answers send `op` with `reply`.
fn send_answers(w: &mut Worker, op: u64, reply: SendResponse, now_ms: u64) {
    w.handle(
        WorkerEvent::SendReplied {
            op,
            reply: Ok(reply),
        },
        now_ms,
    );
}

/// A claim that found nothing (or got an answer it cannot use) waits the
/// poll interval from when it was answered; a run it found gets its first
/// heartbeat a third of a lease after the claim was sent, not before.
#[test]
fn a_claim_sets_the_next_claim_and_the_first_heartbeat() {
    let mut store = MemStore::new();
    let mut w = Worker::new(config(), 1).unwrap();
    w.handle(WorkerEvent::Tick, 100);
    let (op, request) = next_store(&mut w);
    let reply = store.apply(request);
    store_answers(&mut w, op, reply, 120);
    assert_eq!(
        w.poll_timeout(),
        Some(170),
        "answered at 120, polls every 50"
    );

    // An answer a claim cannot use: the same wait.
    w.handle(WorkerEvent::Tick, 170);
    let (op, _) = next_store(&mut w);
    store_answers(&mut w, op, StoreReply::Released, 180);
    assert_eq!(w.poll_timeout(), Some(230));

    one_run(&mut store);
    w.handle(WorkerEvent::Tick, 230);
    let (op, request) = next_store(&mut w);
    let reply = store.apply(request);
    store_answers(&mut w, op, reply, 250);
    assert!(matches!(w.poll_effect(), Some(WorkerEffect::Send { .. })));
    // Sent at 230: the heartbeat is due at 230 + 3,000 / 3; the lease ends
    // at 3,230; no claim while the one slot is full.
    assert_eq!(w.poll_timeout(), Some(1_230));
    w.handle(WorkerEvent::Tick, 1_229);
    assert!(w.poll_effect().is_none(), "no heartbeat before it is due");
    w.handle(WorkerEvent::Tick, 1_230);
    let (_, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Heartbeat { .. }), "{request:?}");
}

/// A claim that came back full claims again at once, while there is room.
#[test]
fn a_full_claim_claims_again_at_once() {
    let mut store = MemStore::new();
    for n in 1..=3 {
        enqueue(&mut store, n, &[(0, false)]);
    }
    let mut w = Worker::new(
        WorkerConfig {
            batch: 2,
            concurrency: 3,
            ..config()
        },
        1,
    )
    .unwrap();
    w.handle(WorkerEvent::Tick, 0);
    let (op, request) = next_store(&mut w);
    let reply = store.apply(request);
    store_answers(&mut w, op, reply, 10);
    let claims_again = std::iter::from_fn(|| w.poll_effect())
        .filter(|e| {
            matches!(
                e,
                WorkerEffect::Store {
                    request: StoreOp::Claim { max: 1, .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(claims_again, 1, "two of two came back: claim the rest");
}

/// A claim counts the runs it rescued from a holder whose lease lapsed,
/// and only those.
#[test]
fn a_claim_counts_the_runs_it_rescued() {
    let mut store = MemStore::new();
    let taken = enqueue(&mut store, 1, &[(0, false)]);
    enqueue(&mut store, 2, &[(0, false)]);
    let c = common::claim_as(&mut store, "gone", 1, 3_000, 0);
    assert_eq!(c[0].id, taken);
    let mut w = Worker::new(
        WorkerConfig {
            concurrency: 2,
            ..config()
        },
        1,
    )
    .unwrap();
    w.handle(WorkerEvent::Tick, 5_000);
    assert_eq!(settle(&mut w, &mut store, 5_000).len(), 2);
    let s = w.stats();
    assert_eq!((s.claimed, s.rescued), (2, 1));
}

/// Each answer to a holder's write is counted where an operator looks for
/// it: a fenced write, and the status a run handed to the provider's word
/// turned out to have.
#[test]
fn each_answer_to_a_write_is_counted_once_under_its_own_name() {
    let run_is = |status| StoreReply::RunIs { status };
    let answers = [
        (StoreReply::Fenced, (1, 0, 0, 0)),
        (run_is(oncesend_core::RunStatus::Waiting), (0, 1, 0, 0)),
        (run_is(oncesend_core::RunStatus::Failed), (0, 0, 1, 0)),
        (run_is(oncesend_core::RunStatus::Completed), (0, 0, 0, 1)),
        (run_is(oncesend_core::RunStatus::Pending), (0, 0, 0, 0)),
        (StoreReply::Failed { dead: true }, (0, 0, 1, 0)),
        (StoreReply::Completed, (0, 0, 0, 1)),
    ];
    for (reply, counted) in answers {
        let (_, _, mut w, sends) = sending(&[(0, false)]);
        send_answers(
            &mut w,
            sends[0].0,
            SendResponse::Unknown {
                reason: "timed out".into(),
            },
            10,
        );
        let (op, request) = next_store(&mut w);
        assert!(
            matches!(request, StoreOp::AwaitOutcome { .. }),
            "{request:?}"
        );
        store_answers(&mut w, op, reply.clone(), 20);
        assert_eq!(w.held(), 0, "{reply:?} lets the run go");
        let s = w.stats();
        assert_eq!(
            (s.fenced, s.awaiting, s.failed, s.completed),
            counted,
            "{reply:?}"
        );
    }
}

/// The settings of the backoff tests: a short base, so each wait shows.
fn quick_retry() -> WorkerConfig {
    WorkerConfig {
        retry: oncesend_core::RetryPolicy {
            base_ms: 100,
            ..config().retry
        },
        ..config()
    }
}

/// The waits a worker seeded `seed` draws for its first failures in a row,
/// under `quick_retry`; `None` unless each differs from what the attempt
/// before it would have drawn (so a test of them shows the count).
fn drawn_waits(seed: u64, failures: u32) -> Option<Vec<u64>> {
    let policy = quick_retry().retry;
    let mut rng = oncesend_core::rng::SplitMix64::new(seed);
    (1..=failures)
        .map(|attempt| {
            let r = rng.next_u64();
            let wait = policy.backoff_ms(attempt, r).max(1);
            (wait != policy.backoff_ms(attempt - 1, r).max(1)).then_some(wait)
        })
        .collect()
}

/// A write that did not reach the store is repeated after a backoff that
/// grows with each failure in a row.
#[test]
fn a_write_that_keeps_failing_backs_off_further_each_time() {
    let seed = (1..1_000).find(|&s| drawn_waits(s, 2).is_some()).unwrap();
    let waits = drawn_waits(seed, 2).unwrap();
    let (mut store, run, mut w, sends) = sending_with(quick_retry(), seed, &[(0, false)]);
    sent(&mut w, sends[0].0, 10);
    let (op, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Complete { .. }));
    store_down(&mut w, op, 20);
    assert_eq!(w.poll_timeout(), Some(20 + waits[0]));
    w.handle(WorkerEvent::Tick, 20 + waits[0]);
    let (op, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Complete { .. }));
    store_down(&mut w, op, 30 + waits[0]);
    assert_eq!(w.poll_timeout(), Some(30 + waits[0] + waits[1]));
    w.handle(WorkerEvent::Tick, 30 + waits[0] + waits[1]);
    settle(&mut w, &mut store, 40 + waits[0] + waits[1]);
    assert_eq!(
        common::view(&mut store, run).status,
        oncesend_core::RunStatus::Completed
    );
}

/// A send the engine could not be reached for, or that is still in
/// progress there, goes again after a backoff that grows with each failure
/// in a row.
#[test]
fn a_send_that_keeps_failing_to_arrive_backs_off_further_each_time() {
    let seed = (1..1_000).find(|&s| drawn_waits(s, 2).is_some()).unwrap();
    let waits = drawn_waits(seed, 2).unwrap();
    let unreachable = || Err(oncesend_core::worker::EngineUnreachable("refused".into()));
    let in_progress = || Ok(SendResponse::InProgress);
    for reply in [unreachable, in_progress] {
        let (mut store, _, mut w, sends) = sending_with(quick_retry(), seed, &[(0, false)]);
        w.handle(
            WorkerEvent::SendReplied {
                op: sends[0].0,
                reply: reply(),
            },
            10,
        );
        assert_eq!(w.poll_timeout(), Some(10 + waits[0]), "{:?}", reply());
        w.handle(WorkerEvent::Tick, 10 + waits[0]);
        let sends = settle(&mut w, &mut store, 10 + waits[0]);
        assert_eq!(sends.len(), 1);
        w.handle(
            WorkerEvent::SendReplied {
                op: sends[0].0,
                reply: reply(),
            },
            20 + waits[0],
        );
        assert_eq!(
            w.poll_timeout(),
            Some(20 + waits[0] + waits[1]),
            "{:?}",
            reply()
        );
    }
}

/// The engine's wait is held with the lease up to `MAX_HELD_WAIT_MS`
/// exclusive; from there on the run is released until then.
#[test]
fn a_busy_wait_of_the_held_limit_or_more_releases_the_run() {
    let held = oncesend_core::worker::MAX_HELD_WAIT_MS - 1;
    let (_, _, mut w, sends) = sending(&[(0, false)]);
    send_answers(
        &mut w,
        sends[0].0,
        SendResponse::Busy {
            retry_after_ms: held,
        },
        10,
    );
    assert!(w.poll_effect().is_none(), "waited out with the lease held");
    assert_eq!(w.held(), 1);

    let released = oncesend_core::worker::MAX_HELD_WAIT_MS;
    let (_, _, mut w, sends) = sending(&[(0, false)]);
    send_answers(
        &mut w,
        sends[0].0,
        SendResponse::Busy {
            retry_after_ms: released,
        },
        10,
    );
    let (_, request) = next_store(&mut w);
    assert!(
        matches!(request, StoreOp::Release { after_ms, .. } if after_ms == released),
        "{request:?}"
    );
}

/// A run claimed with its last attempt used is failed without a send; one
/// attempt short of that, it is sent.
#[test]
fn a_run_claimed_with_its_attempts_used_up_fails_without_a_send() {
    let max = config().retry.max_attempts;
    for (attempts, sends) in [(max, false), (max - 1, true)] {
        let mut store = MemStore::new();
        one_run(&mut store);
        let mut run = common::claim_as(&mut store, "w", 1, 3_000, 0).remove(0);
        run.attempts = attempts;
        let mut w = Worker::new(config(), 1).unwrap();
        w.handle(WorkerEvent::Tick, 0);
        let (op, _) = next_store(&mut w);
        store_answers(&mut w, op, StoreReply::Claimed(vec![run]), 10);
        match w.poll_effect() {
            Some(WorkerEffect::Send { .. }) => assert!(sends, "{attempts} attempts"),
            Some(WorkerEffect::Store {
                request: StoreOp::Fail { reason, .. },
                ..
            }) => {
                assert!(!sends, "{attempts} attempts");
                assert!(
                    reason.contains(&format!("gave up after {max} attempts")),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A write waiting to be repeated is not repeated early when something
/// else wakes its run (its heartbeat falling due).
#[test]
fn a_write_waiting_to_be_repeated_waits_through_a_heartbeat() {
    let seed = (1..1_000)
        .find(|&s| drawn_waits(s, 1).is_some_and(|w| w[0] > 20))
        .unwrap();
    let wait = drawn_waits(seed, 1).unwrap()[0];
    let (_, _, mut w, sends) = sending_with(quick_retry(), seed, &[(0, false)]);
    sent(&mut w, sends[0].0, 980);
    let (op, _) = next_store(&mut w);
    store_down(&mut w, op, 990);
    w.handle(WorkerEvent::Tick, 1_000);
    let (_, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Heartbeat { .. }), "{request:?}");
    assert!(w.poll_effect().is_none(), "the write waits its turn");
    w.handle(WorkerEvent::Tick, 990 + wait);
    let (_, request) = next_store(&mut w);
    assert!(matches!(request, StoreOp::Complete { .. }), "{request:?}");
}

/// After a step is sent, the worker keeps the lease for the next one only
/// when it is due at once, follows mere sending, and no shutdown is under
/// way; a delay, a wait for a status, or a shutdown gives the lease up.
#[test]
fn an_advance_keeps_the_lease_only_for_a_next_step_due_at_once() {
    for (next, draining, kept) in [
        ((0, false), false, None),
        ((5_000, false), false, Some(5_000)),
        ((0, true), false, Some(0)),
        ((0, false), true, Some(0)),
    ] {
        let (_, _, mut w, sends) = sending(&[(0, false), next]);
        if draining {
            w.handle(WorkerEvent::Shutdown, 5);
        }
        sent(&mut w, sends[0].0, 10);
        let (_, request) = next_store(&mut w);
        match request {
            StoreOp::Advance { delay_ms, .. } => {
                assert_eq!(delay_ms, kept, "next {next:?}, draining {draining}")
            }
            other => panic!("{other:?}"),
        }
    }
}
