//! The engine machine keeps the provider call's time limit itself: a call
//! past its deadline answers `unknown`, a late answer still settles the
//! ledger, and one past the listening window is dropped. Also its in-flight
//! bound and counters.

mod common;

use oncesend_core::engine::LATE_REPLY_TIMEOUTS;
use oncesend_core::{
    DeliveryKey, DeliveryOutcome, DeliveryState, Engine, EngineConfig, EngineEffect, EngineEvent,
    MemStore, SendRequest, SendResponse, StoreOp, StoreReply,
};

const TIMEOUT_MS: u64 = 1_000;

fn config() -> EngineConfig {
    EngineConfig {
        send_timeout_ms: TIMEOUT_MS,
        ..EngineConfig::default()
    }
}

/// Enqueues and claims `n` one-step runs; a send request for each.
fn requests(store: &mut MemStore, n: u64) -> Vec<SendRequest> {
    for i in 0..n {
        common::enqueue(store, common::one_step_run(i), 0);
    }
    let claimed = common::claim_as(store, "w", n as u32, 30_000, 0);
    claimed
        .into_iter()
        .map(|c| SendRequest {
            key: DeliveryKey { run: c.id, step: 0 },
            epoch: c.epoch,
            tenant: c.tenant,
            to: c.to,
            message: c.steps[0].message.clone(),
        })
        .collect()
}

/// Provider calls asked for, as (req, abandon_at_ms).
type Calls = Vec<(u64, u64)>;
/// Answers given, as (req, response).
type Answers = Vec<(u64, SendResponse)>;

/// Applies every store effect at `now_ms`; returns the provider calls asked
/// for and the answers given.
fn settle(engine: &mut Engine, store: &mut MemStore, now_ms: u64) -> (Calls, Answers) {
    let (mut calls, mut answers) = (Vec::new(), Vec::new());
    while let Some(effect) = engine.poll_effect() {
        match effect {
            EngineEffect::Store { req, op } => {
                let reply = store.apply(op);
                engine.handle(
                    EngineEvent::StoreReplied {
                        req,
                        reply: Ok(reply),
                    },
                    now_ms,
                );
            }
            EngineEffect::Provide {
                req, abandon_at_ms, ..
            } => calls.push((req, abandon_at_ms)),
            EngineEffect::Respond { req, response } => answers.push((req, response)),
        }
    }
    (calls, answers)
}

fn state(store: &mut MemStore, key: DeliveryKey) -> DeliveryState {
    match store.apply(StoreOp::GetRun { run: key.run }) {
        StoreReply::Run(v) => v.deliveries[key.step as usize].clone().unwrap().state,
        other => panic!("{other:?}"),
    }
}

fn sent(id: &str) -> DeliveryOutcome {
    DeliveryOutcome::Sent {
        provider_message_id: id.into(),
    }
}

#[test]
fn a_call_past_its_deadline_is_unknown_and_a_late_sent_answer_settles_the_row() {
    let mut store = MemStore::new();
    let request = requests(&mut store, 1).remove(0);
    let key = request.key;
    let mut engine = Engine::new(config());
    assert_eq!(engine.poll_timeout(), None, "an idle engine keeps no timer");
    engine.handle(EngineEvent::Request { req: 1, request }, 100);
    let (calls, answers) = settle(&mut engine, &mut store, 100);
    assert!(answers.is_empty());
    let abandon = 100 + TIMEOUT_MS + TIMEOUT_MS * LATE_REPLY_TIMEOUTS;
    assert_eq!(calls, vec![(1, abandon)]);
    assert_eq!(engine.poll_timeout(), Some(100 + TIMEOUT_MS));

    // Early: nothing happens.
    engine.handle(EngineEvent::Timeout, 100 + TIMEOUT_MS - 1);
    let (_, answers) = settle(&mut engine, &mut store, 100 + TIMEOUT_MS - 1);
    assert!(answers.is_empty(), "{answers:?}");

    // The deadline: the worker hears unknown, the row is unknown.
    let at = 100 + TIMEOUT_MS;
    engine.handle(EngineEvent::Timeout, at);
    let (_, answers) = settle(&mut engine, &mut store, at);
    assert!(
        matches!(&answers[..], [(1, SendResponse::Unknown { reason })] if reason.contains("1000 ms")),
        "{answers:?}"
    );
    assert_eq!(state(&mut store, key), DeliveryState::Unknown);
    assert_eq!(engine.inflight(), 0);
    assert_eq!(
        engine.poll_timeout(),
        Some(at + TIMEOUT_MS * LATE_REPLY_TIMEOUTS),
        "still listening for the late answer"
    );
    let s = engine.stats();
    assert_eq!((s.unknown, s.timed_out, s.late_replies), (1, 1, 0));

    // The answer comes late, inside the window: the row learns it was sent,
    // and no second answer goes to the worker.
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 1,
            outcome: sent("wamid.late"),
        },
        at + 500,
    );
    let (calls, answers) = settle(&mut engine, &mut store, at + 500);
    assert!(calls.is_empty() && answers.is_empty(), "{answers:?}");
    assert_eq!(state(&mut store, key), DeliveryState::Sent);
    assert_eq!(engine.stats().late_replies, 1);
    assert_eq!(engine.poll_timeout(), None);
}

#[test]
fn an_answer_after_the_listening_window_is_dropped() {
    let mut store = MemStore::new();
    let request = requests(&mut store, 1).remove(0);
    let key = request.key;
    let mut engine = Engine::new(config());
    engine.handle(EngineEvent::Request { req: 7, request }, 0);
    settle(&mut engine, &mut store, 0);
    engine.handle(EngineEvent::Timeout, TIMEOUT_MS);
    settle(&mut engine, &mut store, TIMEOUT_MS);
    let end = TIMEOUT_MS + TIMEOUT_MS * LATE_REPLY_TIMEOUTS;
    engine.handle(EngineEvent::Timeout, end);
    assert_eq!(engine.poll_timeout(), None, "no longer listening");
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 7,
            outcome: sent("wamid.too-late"),
        },
        end + 1,
    );
    let (calls, answers) = settle(&mut engine, &mut store, end + 1);
    assert!(calls.is_empty() && answers.is_empty());
    assert_eq!(state(&mut store, key), DeliveryState::Unknown);
    assert_eq!(engine.stats().late_replies, 0);
}

#[test]
fn an_answer_in_time_needs_no_timer_and_a_late_failure_changes_nothing() {
    let mut store = MemStore::new();
    let mut reqs = requests(&mut store, 2);
    let (b, a) = (reqs.pop().unwrap(), reqs.pop().unwrap());
    let (ka, kb) = (a.key, b.key);
    let mut engine = Engine::new(config());
    engine.handle(EngineEvent::Request { req: 1, request: a }, 0);
    settle(&mut engine, &mut store, 0);
    engine.handle(EngineEvent::Request { req: 2, request: b }, 10);
    settle(&mut engine, &mut store, 10);
    assert_eq!(
        engine.poll_timeout(),
        Some(TIMEOUT_MS),
        "the earliest deadline"
    );
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 1,
            outcome: sent("wamid.a"),
        },
        500,
    );
    let (_, answers) = settle(&mut engine, &mut store, 500);
    assert!(matches!(&answers[..], [(1, SendResponse::Sent { .. })]));
    assert_eq!(engine.poll_timeout(), Some(10 + TIMEOUT_MS));
    // b times out; its late answer says failed: the row stays unknown (a
    // refusal is true of that call only; by the time it lands, another
    // attempt of the key may be under way), and nothing is written.
    engine.handle(EngineEvent::Timeout, 10 + TIMEOUT_MS);
    settle(&mut engine, &mut store, 10 + TIMEOUT_MS);
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 2,
            outcome: DeliveryOutcome::Failed {
                retryable: true,
                reason: "HTTP 500".into(),
                retry_after_ms: None,
            },
        },
        2_000,
    );
    let (calls, answers) = settle(&mut engine, &mut store, 2_000);
    assert!(calls.is_empty() && answers.is_empty());
    assert_eq!(state(&mut store, ka), DeliveryState::Sent);
    assert_eq!(state(&mut store, kb), DeliveryState::Unknown);
    let s = engine.stats();
    let counts = (
        s.sent,
        s.unknown,
        s.timed_out,
        s.late_replies,
        s.provider_calls,
    );
    assert_eq!(counts, (1, 1, 1, 0, 2));
    assert_eq!(engine.poll_timeout(), None, "nothing more to listen for");
}

#[test]
fn past_the_in_flight_bound_a_request_is_busy_and_nothing_is_written() {
    let mut store = MemStore::new();
    let mut reqs = requests(&mut store, 3);
    let mut engine = Engine::new(EngineConfig {
        max_inflight: 2,
        busy_retry_ms: 77,
        ..config()
    });
    let third = reqs.pop().unwrap();
    let third_key = third.key;
    for (i, r) in reqs.into_iter().enumerate() {
        engine.handle(
            EngineEvent::Request {
                req: i as u64,
                request: r,
            },
            0,
        );
    }
    let (calls, answers) = settle(&mut engine, &mut store, 0);
    assert_eq!((calls.len(), answers.len()), (2, 0));
    engine.handle(
        EngineEvent::Request {
            req: 9,
            request: third,
        },
        0,
    );
    let (calls, answers) = settle(&mut engine, &mut store, 0);
    assert!(calls.is_empty());
    assert_eq!(
        answers,
        vec![(9, SendResponse::Busy { retry_after_ms: 77 })]
    );
    assert_eq!(engine.stats().busy, 1);
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run: third_key.run }) else {
        panic!()
    };
    assert!(
        v.deliveries[0].is_none(),
        "a busy answer leaves no ledger row"
    );
}

#[test]
#[should_panic(expected = "already in use")]
fn a_request_number_in_use_is_a_driver_bug() {
    let mut store = MemStore::new();
    let mut reqs = requests(&mut store, 2);
    let mut engine = Engine::new(config());
    engine.handle(
        EngineEvent::Request {
            req: 1,
            request: reqs.pop().unwrap(),
        },
        0,
    );
    engine.handle(
        EngineEvent::Request {
            req: 1,
            request: reqs.pop().unwrap(),
        },
        0,
    );
}

/// A message over the size bound never gets past the ways in; one that
/// reaches the engine is a bug in the way it came, and stops it.
#[test]
#[should_panic(expected = "bytes reached the engine")]
fn a_message_over_the_size_bound_at_the_engine_is_a_bug_upstream() {
    let mut store = MemStore::new();
    let mut req = requests(&mut store, 1).pop().unwrap();
    let big = serde_json::json!({
        "type": "text",
        "text": {"body": "a".repeat(oncesend_core::limits::MAX_MESSAGE_BYTES)},
    });
    // The shape alone, as deserializing does; the size is for the edge.
    req.message = serde_json::from_value(big).unwrap();
    assert!(req.message.check_size().is_err());
    Engine::new(config()).handle(
        EngineEvent::Request {
            req: 1,
            request: req,
        },
        0,
    );
}

#[test]
fn the_engine_keeps_its_config_and_counts_what_is_in_flight() {
    let mut store = MemStore::new();
    let reqs = requests(&mut store, 2);
    let mut engine = Engine::new(EngineConfig {
        max_inflight: 7,
        ..config()
    });
    assert_eq!(engine.config().send_timeout_ms, TIMEOUT_MS);
    assert_eq!(engine.config().max_inflight, 7);
    assert_eq!(engine.inflight(), 0);
    for (i, request) in reqs.into_iter().enumerate() {
        engine.handle(
            EngineEvent::Request {
                req: i as u64,
                request,
            },
            0,
        );
    }
    let (calls, _) = settle(&mut engine, &mut store, 0);
    assert_eq!(calls.len(), 2);
    assert_eq!(engine.inflight(), 2);
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 0,
            outcome: sent("wamid.0"),
        },
        10,
    );
    settle(&mut engine, &mut store, 10);
    assert_eq!(engine.inflight(), 1);
}

/// A later call's deadline must not stop the engine listening for an
/// earlier call's late answer.
#[test]
fn a_late_answer_is_still_heard_after_another_call_times_out() {
    let mut store = MemStore::new();
    let mut reqs = requests(&mut store, 2);
    let (second, first) = (reqs.pop().unwrap(), reqs.pop().unwrap());
    let key = first.key;
    let mut engine = Engine::new(config());
    engine.handle(
        EngineEvent::Request {
            req: 1,
            request: first,
        },
        0,
    );
    settle(&mut engine, &mut store, 0);
    engine.handle(
        EngineEvent::Request {
            req: 2,
            request: second,
        },
        500,
    );
    settle(&mut engine, &mut store, 500);
    for at in [TIMEOUT_MS, 500 + TIMEOUT_MS] {
        engine.handle(EngineEvent::Timeout, at);
        let (_, answers) = settle(&mut engine, &mut store, at);
        assert_eq!(answers.len(), 1, "one call times out at {at}");
    }
    assert_eq!(state(&mut store, key), DeliveryState::Unknown);
    let at = 500 + TIMEOUT_MS + 100;
    engine.handle(
        EngineEvent::ProviderReplied {
            req: 1,
            outcome: sent("wamid.first"),
        },
        at,
    );
    settle(&mut engine, &mut store, at);
    assert_eq!(state(&mut store, key), DeliveryState::Sent);
    assert_eq!(engine.stats().late_replies, 1);
}

/// Every counter behind `/metrics` counts each event once.
#[test]
fn the_counters_count_each_outcome_once() {
    let mut store = MemStore::new();
    let mut reqs = requests(&mut store, 4);
    let mut engine = Engine::new(config());
    // A stale epoch: fenced, nothing sent.
    let mut stale = reqs.pop().unwrap();
    stale.epoch -= 1;
    engine.handle(
        EngineEvent::Request {
            req: 9,
            request: stale,
        },
        0,
    );
    let (calls, answers) = settle(&mut engine, &mut store, 0);
    assert!(calls.is_empty());
    assert_eq!(answers, vec![(9, SendResponse::Fenced)]);
    // Two refusals and one send, twice each counter's worth of events.
    for (i, request) in reqs.into_iter().enumerate() {
        engine.handle(
            EngineEvent::Request {
                req: i as u64,
                request,
            },
            0,
        );
    }
    settle(&mut engine, &mut store, 0);
    let refused = DeliveryOutcome::Failed {
        retryable: false,
        reason: "131026 message undeliverable".into(),
        retry_after_ms: None,
    };
    for (req, outcome) in [(0, refused.clone()), (1, refused), (2, sent("wamid.2"))] {
        engine.handle(EngineEvent::ProviderReplied { req, outcome }, 5);
        settle(&mut engine, &mut store, 5);
    }
    let s = engine.stats();
    assert_eq!(
        (s.provider_calls, s.sent, s.failed, s.fenced, s.unknown),
        (3, 1, 2, 1, 0),
        "{s:?}"
    );
}
