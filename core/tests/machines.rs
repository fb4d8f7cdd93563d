//! The worker and engine machines, driven by hand against the reference
//! store: the contract examples of DESIGN.md, one by one.

use oncesend_core::check::{check, Accepted, FinalRun, History, ProviderCall};
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{
    DeliveryKey, DeliveryOutcome, DeliveryState, Engine, EngineConfig, EngineEffect, EngineEvent,
    FlowId, MemStore, NewRun, PlannedStep, Recipient, RunId, RunStatus, SendRequest, SendResponse,
    StoreOp, StoreReply, TenantId, Worker, WorkerConfig, WorkerEffect, WorkerEvent, WorkerId,
};

fn new_run(i: u64, to: &str, delays: &[u64]) -> NewRun {
    NewRun {
        id: RunId::new(1_000 + i, i),
        tenant: TenantId::default_tenant(),
        flow: FlowId::new("welcome").unwrap(),
        to: Recipient::parse(to).unwrap(),
        steps: delays
            .iter()
            .enumerate()
            .map(|(s, d)| PlannedStep {
                message: oncesend_core::Message::text(format!("message {s}")),
                delay_ms: *d,
                after: Default::default(),
                after_timeout_ms: None,
            })
            .collect(),
        trigger_key: None,
    }
}

fn worker_config(name: &str) -> WorkerConfig {
    WorkerConfig {
        lease_ms: 3_000,
        send_timeout_ms: 1_000,
        poll_ms: 50,
        ..WorkerConfig::new(WorkerId::new(name).unwrap())
    }
}

fn claim(store: &mut MemStore, who: &str, now_ms: u64) -> Vec<oncesend_core::ClaimedRun> {
    match store.apply(StoreOp::Claim {
        owner: WorkerId::new(who).unwrap(),
        max: 10,
        lease_ms: 3_000,
        now_ms,
    }) {
        StoreReply::Claimed(c) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_completion_with_a_stale_epoch_is_fenced() {
    let mut store = MemStore::new();
    let run = new_run(1, "+5511913390707", &[0]);
    let id = run.id;
    store.apply(StoreOp::Enqueue { run, now_ms: 0 });
    let first = claim(&mut store, "a", 0);
    assert_eq!(first[0].epoch, 1);
    assert!(!first[0].rescued, "a first claim rescues nothing");
    // The first lease lapses; another worker claims the run.
    let second = claim(&mut store, "b", 3_000);
    assert_eq!(second[0].epoch, 2);
    assert!(second[0].rescued, "claiming a lapsed lease is a rescue");
    let stale = StoreOp::Complete {
        run: id,
        epoch: 1,
        step: 0,
        now_ms: 3_001,
    };
    assert_eq!(store.apply(stale), StoreReply::Fenced);
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run: id }) else {
        panic!()
    };
    assert_eq!(
        v.status,
        RunStatus::Leased,
        "the stale write changed nothing"
    );
    assert_eq!(v.lease.unwrap().owner.as_str(), "b");
    let fresh = StoreOp::Complete {
        run: id,
        epoch: 2,
        step: 0,
        now_ms: 3_002,
    };
    assert_eq!(store.apply(fresh), StoreReply::Completed);
}

/// Runs one engine request to its answer, applying store ops to `store`
/// and answering provider calls with `provider`. Returns the answer and the
/// number of provider calls made.
fn engine_send(
    engine: &mut Engine,
    store: &mut MemStore,
    request: SendRequest,
    now_ms: u64,
    provider: &mut dyn FnMut() -> Option<DeliveryOutcome>,
) -> (Option<SendResponse>, u32) {
    let mut calls = 0;
    // A fresh request number each time, as a driver would give.
    let req_id = now_ms;
    engine.handle(
        EngineEvent::Request {
            req: req_id,
            request,
        },
        now_ms,
    );
    let mut answer = None;
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
            EngineEffect::Provide { req, .. } => {
                calls += 1;
                if let Some(outcome) = provider() {
                    engine.handle(EngineEvent::ProviderReplied { req, outcome }, now_ms);
                }
            }
            EngineEffect::Respond { response, .. } => answer = Some(response),
        }
    }
    (answer, calls)
}

fn leased_request(store: &mut MemStore) -> SendRequest {
    let run = new_run(2, "+5511913390707", &[0, 0]);
    store.apply(StoreOp::Enqueue { run, now_ms: 0 });
    let c = claim(store, "a", 0).remove(0);
    SendRequest {
        key: DeliveryKey { run: c.id, step: 0 },
        epoch: c.epoch,
        tenant: c.tenant,
        to: c.to,
        message: c.steps[0].message.clone(),
    }
}

#[test]
fn a_replayed_send_for_a_sent_key_returns_the_stored_result_and_sends_nothing() {
    let mut store = MemStore::new();
    let mut engine = Engine::new(EngineConfig {
        send_timeout_ms: 1_000,
        ..EngineConfig::default()
    });
    let request = leased_request(&mut store);
    let mut sent = || {
        Some(DeliveryOutcome::Sent {
            provider_message_id: "wamid.1".into(),
        })
    };
    let (first, calls) = engine_send(&mut engine, &mut store, request.clone(), 10, &mut sent);
    assert_eq!(calls, 1);
    assert_eq!(
        first,
        Some(SendResponse::Sent {
            provider_message_id: "wamid.1".into(),
            replayed: false
        })
    );
    let (again, calls) = engine_send(&mut engine, &mut store, request, 20, &mut sent);
    assert_eq!(calls, 0, "a sent key must never reach the provider again");
    assert_eq!(
        again,
        Some(SendResponse::Sent {
            provider_message_id: "wamid.1".into(),
            replayed: true
        })
    );
    assert_eq!(engine.stats().replayed, 1);
}

#[test]
fn a_send_for_a_key_still_sending_is_answered_in_progress_then_unknown_after_its_deadline() {
    let mut store = MemStore::new();
    let mut engine = Engine::new(EngineConfig {
        send_timeout_ms: 1_000,
        ..EngineConfig::default()
    });
    let request = leased_request(&mut store);
    // The first call never comes back (the provider hangs).
    let (first, calls) = engine_send(&mut engine, &mut store, request.clone(), 10, &mut || None);
    assert_eq!((first, calls), (None, 1));
    let mut never = || -> Option<DeliveryOutcome> { panic!("must not call the provider") };
    let (second, calls) = engine_send(&mut engine, &mut store, request.clone(), 500, &mut never);
    assert_eq!((second, calls), (Some(SendResponse::InProgress), 0));
    // Past the send deadline nobody can say whether it went out: unknown,
    // and still not resent.
    let (third, calls) = engine_send(&mut engine, &mut store, request.clone(), 1_010, &mut never);
    assert!(
        matches!(third, Some(SendResponse::Unknown { .. })),
        "{third:?}"
    );
    assert_eq!(calls, 0);
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun {
        run: request.key.run,
    }) else {
        panic!()
    };
    assert_eq!(
        v.deliveries[0].as_ref().unwrap().state,
        DeliveryState::Unknown
    );
}

#[test]
fn a_send_with_a_stale_epoch_is_fenced_by_the_engine() {
    let mut store = MemStore::new();
    let mut engine = Engine::new(EngineConfig {
        send_timeout_ms: 1_000,
        ..EngineConfig::default()
    });
    let mut request = leased_request(&mut store);
    request.epoch += 1;
    let mut never = || -> Option<DeliveryOutcome> { panic!("must not call the provider") };
    let (answer, calls) = engine_send(&mut engine, &mut store, request, 10, &mut never);
    assert_eq!((answer, calls), (Some(SendResponse::Fenced), 0));
}

#[test]
fn a_lease_that_cannot_be_heartbeaten_in_time_stops_the_worker_sending() {
    let mut store = MemStore::new();
    store.apply(StoreOp::Enqueue {
        run: new_run(3, "+5511913390707", &[0, 0, 0]),
        now_ms: 0,
    });
    // lease 3000 ms, send timeout 1000 ms: a send may start only while at
    // least 2000 ms of the lease are left.
    let mut worker = Worker::new(worker_config("w1"), 1).unwrap();
    let mut now = 0;
    let mut send_times = Vec::new();
    while now <= 10_000 {
        worker.handle(WorkerEvent::Tick, now);
        while let Some(effect) = worker.poll_effect() {
            match effect {
                WorkerEffect::Store { op, request } => {
                    // The store answers the claim, then goes away: no
                    // heartbeat ever gets through.
                    let reply = if matches!(request, StoreOp::Claim { .. }) && now == 0 {
                        Ok(store.apply(request))
                    } else {
                        Err(StoreUnavailable("connection refused".into()))
                    };
                    worker.handle(WorkerEvent::StoreReplied { op, reply }, now);
                }
                WorkerEffect::Send { op, .. } => {
                    send_times.push(now);
                    // The engine keeps asking the worker to come back later,
                    // so the worker keeps wanting to send.
                    let reply = Ok(SendResponse::Busy {
                        retry_after_ms: 100,
                    });
                    worker.handle(WorkerEvent::SendReplied { op, reply }, now);
                }
            }
        }
        now = worker.poll_timeout().unwrap_or(now + 100).max(now + 1);
    }
    assert!(
        send_times.len() > 5,
        "the worker sent while the lease held: {send_times:?}"
    );
    assert!(
        send_times.iter().all(|t| *t <= 1_000),
        "a send started with too little lease left: {send_times:?}"
    );
    assert_eq!(worker.stats().lease_lost, 1, "the lapsed lease was noticed");
    assert_eq!(worker.held(), 0, "the run was let go");
}

/// A tiny synchronous world: one store, one engine, N workers and a
/// provider that records every call. Used to show the machines together
/// deliver every step exactly once, in order.
struct World {
    store: MemStore,
    engine: Engine,
    workers: Vec<Worker>,
    now: u64,
    calls: Vec<ProviderCall>,
    inbox: Vec<(usize, u64, SendRequest)>,
    /// The provider's answer at a time: `None` delivers; `Some` refuses
    /// (and the refusal is kept in `refused`).
    provider: fn(&TenantId, u64) -> Option<DeliveryOutcome>,
    refused: Vec<ProviderCall>,
}

fn delivers(_tenant: &TenantId, _now_ms: u64) -> Option<DeliveryOutcome> {
    None
}

impl World {
    fn step(&mut self) {
        // Rotate who goes first, as real timing would.
        let n = self.workers.len();
        for w in (0..n).map(|i| (i + self.now as usize) % n) {
            self.workers[w].handle(WorkerEvent::Tick, self.now);
            while let Some(effect) = self.workers[w].poll_effect() {
                match effect {
                    WorkerEffect::Store { op, request } => {
                        let reply = Ok(self.store.apply(request));
                        self.workers[w].handle(WorkerEvent::StoreReplied { op, reply }, self.now);
                    }
                    WorkerEffect::Send { op, request } => self.inbox.push((w, op, request)),
                }
            }
        }
        for (w, op, request) in std::mem::take(&mut self.inbox) {
            let key = request.key;
            self.engine
                .handle(EngineEvent::Request { req: op, request }, self.now);
            while let Some(effect) = self.engine.poll_effect() {
                match effect {
                    EngineEffect::Store { req, op } => {
                        let reply = Ok(self.store.apply(op));
                        self.engine
                            .handle(EngineEvent::StoreReplied { req, reply }, self.now);
                    }
                    EngineEffect::Provide { req, message, .. } => {
                        assert_eq!(message.key, key);
                        let call = ProviderCall {
                            key,
                            at_ms: self.now,
                        };
                        let outcome = match (self.provider)(&message.tenant, self.now) {
                            Some(refusal) => {
                                self.refused.push(call);
                                refusal
                            }
                            None => {
                                self.calls.push(call);
                                DeliveryOutcome::Sent {
                                    provider_message_id: format!("wamid.{}", self.calls.len()),
                                }
                            }
                        };
                        self.engine
                            .handle(EngineEvent::ProviderReplied { req, outcome }, self.now);
                    }
                    EngineEffect::Respond { req, response } => {
                        self.workers[w].handle(
                            WorkerEvent::SendReplied {
                                op: req,
                                reply: Ok(response),
                            },
                            self.now,
                        );
                    }
                }
            }
        }
        let next = self.workers.iter().filter_map(|w| w.poll_timeout()).min();
        self.now = next.unwrap_or(self.now + 10).max(self.now + 1);
    }
}

#[test]
fn two_workers_deliver_every_step_once_in_order() {
    let mut store = MemStore::new();
    let mut accepted = Vec::new();
    for i in 0..12 {
        let to = ["+5511913390707", "+4915112345678", "+14155550123"][i as usize % 3];
        let run = new_run(i, to, &[0, 200, 0]);
        accepted.push(Accepted {
            run: run.id,
            tenant: run.tenant.clone(),
            to: run.to.clone(),
            steps: 3,
        });
        store.apply(StoreOp::Enqueue { run, now_ms: 0 });
    }
    let mut world = World {
        store,
        engine: Engine::new(EngineConfig {
            send_timeout_ms: 1_000,
            ..EngineConfig::default()
        }),
        workers: ["w1", "w2"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let config = WorkerConfig {
                    batch: 1,
                    concurrency: 2,
                    ..worker_config(name)
                };
                Worker::new(config, i as u64).unwrap()
            })
            .collect(),
        now: 0,
        calls: Vec::new(),
        inbox: Vec::new(),
        provider: delivers,
        refused: Vec::new(),
    };
    while world.now < 20_000 {
        world.step();
    }
    assert_all_completed(&mut world, &accepted, 3);
    let claimed: u64 = world.workers.iter().map(|w| w.stats().claimed).sum();
    assert!(
        world.workers.iter().all(|w| w.stats().claimed > 0),
        "both workers took part ({claimed} claims)"
    );
}

#[test]
fn a_recipient_gap_spaces_steps_out_without_holding_leases() {
    let mut store = MemStore::new();
    let mut accepted = Vec::new();
    for i in 0..4 {
        let to = ["+5511913390707", "+4915112345678"][i as usize % 2];
        let run = new_run(i, to, &[0, 0, 0]);
        accepted.push(Accepted {
            run: run.id,
            tenant: run.tenant.clone(),
            to: run.to.clone(),
            steps: 3,
        });
        store.apply(StoreOp::Enqueue { run, now_ms: 0 });
    }
    let gap_ms = 2_500;
    let mut world = World {
        store,
        engine: Engine::new(EngineConfig {
            send_timeout_ms: 1_000,
            pacing: Some(oncesend_core::PacingConfig {
                rate_per_s: 1_000,
                burst: 1_000,
                recipient_gap_ms: gap_ms,
            }),
            ..EngineConfig::default()
        }),
        workers: vec![Worker::new(worker_config("w1"), 7).unwrap()],
        now: 0,
        calls: Vec::new(),
        inbox: Vec::new(),
        provider: delivers,
        refused: Vec::new(),
    };
    while world.now < 60_000 {
        world.step();
    }
    assert_all_completed(&mut world, &accepted, 3);
    let mut to_of = std::collections::BTreeMap::new();
    for a in &accepted {
        to_of.insert(a.run, a.to.clone());
        let StoreReply::Run(v) = world.store.apply(StoreOp::GetRun { run: a.run }) else {
            panic!()
        };
        // Each wait for the gap gave the lease up, so the run was claimed
        // again for later steps.
        assert!(v.epoch > 1, "run {} was claimed once: {v:?}", a.run);
    }
    let mut last: std::collections::BTreeMap<Recipient, u64> = Default::default();
    for call in &world.calls {
        let to = &to_of[&call.key.run];
        if let Some(prev) = last.insert(to.clone(), call.at_ms) {
            assert!(
                call.at_ms >= prev + gap_ms,
                "{to} got messages {prev} and {} ms apart",
                call.at_ms
            );
        }
    }
    assert!(world.engine.stats().paced > 0);
}

/// A wake-up (PostgreSQL's NOTIFY on enqueue) claims at once instead of at
/// the next poll; while the store is failing, backoff wins over wake-ups.
#[test]
fn a_wake_up_claims_before_the_next_poll_but_not_during_backoff() {
    let config = WorkerConfig {
        poll_ms: 10_000,
        ..worker_config("waker")
    };
    let mut worker = Worker::new(config, 1).unwrap();
    let claim = |worker: &mut Worker| -> Option<oncesend_core::worker::OpId> {
        let mut found = None;
        while let Some(effect) = worker.poll_effect() {
            if let WorkerEffect::Store {
                op,
                request: StoreOp::Claim { .. },
            } = effect
            {
                found = Some(op);
            }
        }
        found
    };
    worker.handle(WorkerEvent::Tick, 0);
    let op = claim(&mut worker).expect("the first tick claims");
    worker.handle(
        WorkerEvent::StoreReplied {
            op,
            reply: Ok(StoreReply::Claimed(Vec::new())),
        },
        5,
    );
    // Nothing found: the next claim waits for the poll interval...
    worker.handle(WorkerEvent::Tick, 100);
    assert!(claim(&mut worker).is_none());
    // ...unless woken.
    worker.handle(WorkerEvent::Wake, 200);
    let op = claim(&mut worker).expect("a wake-up claims at once");
    worker.handle(
        WorkerEvent::StoreReplied {
            op,
            reply: Err(oncesend_core::StoreUnavailable("down".into())),
        },
        210,
    );
    worker.handle(WorkerEvent::Wake, 220);
    assert!(
        claim(&mut worker).is_none(),
        "a store that just failed is not hammered by wake-ups"
    );
}

/// A world of `runs` two-step runs of the default tenant, one worker, and
/// `provider` answering.
fn pause_world(
    runs: u64,
    provider: fn(&TenantId, u64) -> Option<DeliveryOutcome>,
) -> (World, Vec<Accepted>) {
    let mut store = MemStore::new();
    let mut accepted = Vec::new();
    for i in 0..runs {
        let to = ["+5511913390707", "+4915112345678", "+14155550123"][i as usize % 3];
        let run = new_run(i, to, &[0, 0]);
        accepted.push(Accepted {
            run: run.id,
            tenant: run.tenant.clone(),
            to: run.to.clone(),
            steps: 2,
        });
        store.apply(StoreOp::Enqueue { run, now_ms: 0 });
    }
    let world = World {
        store,
        engine: Engine::new(EngineConfig {
            send_timeout_ms: 1_000,
            default_settings: Some("settings-a".into()),
            ..EngineConfig::default()
        }),
        workers: vec![Worker::new(worker_config("w1"), 3).unwrap()],
        now: 0,
        calls: Vec::new(),
        inbox: Vec::new(),
        provider,
        refused: Vec::new(),
    };
    (world, accepted)
}

fn sender(store: &mut MemStore) -> Option<oncesend_core::tenant::SenderPause> {
    match store.apply(StoreOp::GetSender {
        tenant: TenantId::default_tenant(),
    }) {
        StoreReply::Sender(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Every run completed, each of its `steps` exactly once and in order.
fn assert_all_completed(world: &mut World, accepted: &[Accepted], steps: u64) {
    let mut history = History {
        accepted: accepted.to_vec(),
        calls: world.calls.clone(),
        ..History::default()
    };
    for a in accepted {
        let StoreReply::Run(v) = world.store.apply(StoreOp::GetRun { run: a.run }) else {
            panic!()
        };
        assert_eq!(v.status, RunStatus::Completed, "{v:?}");
        history.finals.insert(
            a.run,
            FinalRun {
                status: v.status,
                cursor: v.cursor,
                reason: v.reason,
                unknown_steps: vec![],
            },
        );
    }
    let report = check(&history);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.deliveries, accepted.len() as u64 * steps);
}

/// The default tenant's token is expired until a person fixes it at 4 s
/// (and resumes); other tenants' accounts are fine.
fn token_expired_until_4s(tenant: &TenantId, now_ms: u64) -> Option<DeliveryOutcome> {
    (*tenant == TenantId::default_tenant() && (0..4_000).contains(&now_ms)).then(|| {
        oncesend_core::CloudApiError::parse(
            401,
            None,
            br#"{"error":{"message":"Error validating access token: Session has expired","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"AbC"}}"#,
        )
        .outcome()
    })
}

#[test]
fn a_token_error_pauses_the_sender_its_runs_wait_and_a_resume_sends_everything_once() {
    let (mut world, accepted) = pause_world(9, token_expired_until_4s);
    // Another tenant, with runs to the same recipients.
    let acme = TenantId::new("acme").unwrap();
    let others: Vec<Accepted> = (0..3)
        .map(|i| {
            let mut run = new_run(100 + i, "+5511913390707", &[0, 0]);
            run.tenant = acme.clone();
            let a = Accepted {
                run: run.id,
                tenant: acme.clone(),
                to: run.to.clone(),
                steps: 2,
            };
            world.store.apply(StoreOp::Enqueue { run, now_ms: 0 });
            a
        })
        .collect();
    while world.now < 4_500 {
        world.step();
    }
    // The other tenant kept sending: its runs are done.
    for a in &others {
        let StoreReply::Run(v) = world.store.apply(StoreOp::GetRun { run: a.run }) else {
            panic!()
        };
        assert_eq!(v.status, RunStatus::Completed, "{v:?}");
    }
    // One refused request paused the tenant; nothing else of it reached
    // the provider while it was paused, and no run failed or lost an
    // attempt.
    assert_eq!(world.refused.len(), 1, "{:?}", world.refused);
    let pause = sender(&mut world.store).expect("the tenant is paused");
    assert_eq!(pause.code, Some(190));
    assert!(pause.reason.contains("190"), "{}", pause.reason);
    assert_eq!(pause.probe_at_ms, None, "a token error waits for a person");
    assert_eq!(pause.settings.as_deref(), Some("settings-a"));
    let since = pause.since_ms;
    let ours: std::collections::BTreeSet<RunId> = accepted.iter().map(|a| a.run).collect();
    assert!(
        world
            .calls
            .iter()
            .all(|c| c.at_ms <= since || !ours.contains(&c.key.run)),
        "a send of the paused tenant reached the provider after the pause: {:?}",
        world.calls
    );
    for a in &accepted {
        let StoreReply::Run(v) = world.store.apply(StoreOp::GetRun { run: a.run }) else {
            panic!()
        };
        assert!(!v.status.is_terminal(), "{v:?}");
        assert_eq!(v.attempts, 0, "a pause costs no attempt: {v:?}");
    }
    // The two other conversations' sends, asked for with the first, were
    // held back without a provider call.
    assert!(
        world.engine.stats().held_for_pause >= 2,
        "{:?}",
        world.engine.stats()
    );
    assert_eq!(world.engine.stats().sender_blocked, 1);

    // The operator resumes: everything goes out, once, in order.
    let r = world.store.apply(StoreOp::ResumeSender {
        tenant: TenantId::default_tenant(),
    });
    assert_eq!(r, StoreReply::Resumed { was_paused: true });
    while world.now < 30_000 {
        world.step();
    }
    assert_eq!(sender(&mut world.store), None);
    let everyone: Vec<Accepted> = accepted.into_iter().chain(others).collect();
    assert_all_completed(&mut world, &everyone, 2);
    assert_eq!(world.refused.len(), 1);
}

/// Meta blocks the sender temporarily (368) for its first 100 s.
fn blocked_until_100s(_tenant: &TenantId, now_ms: u64) -> Option<DeliveryOutcome> {
    (0..100_000).contains(&now_ms).then(|| {
        oncesend_core::CloudApiError::parse(
            400,
            None,
            br#"{"error":{"message":"Temporarily blocked for policies violations","code":368}}"#,
        )
        .outcome()
    })
}

#[test]
fn a_temporary_block_is_probed_once_after_growing_waits_and_ends_by_itself() {
    let (mut world, accepted) = pause_world(6, blocked_until_100s);
    while world.now < 400_000 {
        world.step();
    }
    // The first refusal, then one probe at +60 s (refused), then one at
    // +120 s after it, which goes through and resumes the sender.
    let refused: Vec<u64> = world.refused.iter().map(|c| c.at_ms).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[1] >= refused[0] + oncesend_core::tenant::FIRST_PROBE_WAIT_MS);
    let resumed_at = world.calls.first().expect("sends resumed").at_ms;
    assert!(
        resumed_at >= refused[1] + 2 * oncesend_core::tenant::FIRST_PROBE_WAIT_MS,
        "the second probe waited twice as long: {refused:?}, resumed at {resumed_at}"
    );
    assert_eq!(sender(&mut world.store), None, "the probe resumed it");
    assert_all_completed(&mut world, &accepted, 2);
}

#[test]
fn a_pause_remembers_the_settings_it_was_refused_under() {
    let mut store = MemStore::new();
    let pause = |settings: Option<&str>, code| StoreOp::PauseSender {
        tenant: TenantId::default_tenant(),
        reason: "refused".into(),
        code,
        temporary: false,
        settings: settings.map(str::to_string),
        now_ms: 5,
    };
    assert_eq!(
        store.apply(pause(Some("a"), Some(190))),
        StoreReply::Paused { newly: true }
    );
    let p = sender(&mut store).unwrap();
    assert!(
        !p.outlived_by("a"),
        "a restart with the same settings keeps it"
    );
    assert!(p.outlived_by("b"), "new settings lift it");
    // Pausing again keeps the first reason and start.
    assert_eq!(
        store.apply(pause(Some("b"), Some(131042))),
        StoreReply::Paused { newly: false }
    );
    assert_eq!(sender(&mut store).unwrap().since_ms, 5);
    store.apply(StoreOp::ResumeSender {
        tenant: TenantId::default_tenant(),
    });
    // An operator's pause records no settings and outlives any restart.
    store.apply(pause(None, None));
    assert!(!sender(&mut store).unwrap().outlived_by("b"));
    assert_eq!(
        store.apply(StoreOp::ListPausedSenders),
        StoreReply::PausedSenders(vec![(
            TenantId::default_tenant(),
            sender(&mut store).unwrap()
        )])
    );
}

fn cloud_error(code: i64, retry_after_ms: Option<u64>) -> DeliveryOutcome {
    let body = format!(
        r#"{{"error":{{"message":"(#{code}) refused","code":{code},"fbtrace_id":"Ab1"}}}}"#
    );
    oncesend_core::CloudApiError::parse(400, retry_after_ms, body.as_bytes()).outcome()
}

#[test]
fn a_throughput_refusal_slows_the_sender_and_honours_its_retry_after() {
    let mut store = MemStore::new();
    let mut engine = Engine::new(EngineConfig {
        send_timeout_ms: 1_000,
        pacing: Some(oncesend_core::PacingConfig {
            rate_per_s: 80,
            burst: 80,
            recipient_gap_ms: 0,
        }),
        ..EngineConfig::default()
    });
    let first = leased_request(&mut store);
    let mut second = first.clone();
    let mut throttled = || Some(cloud_error(130429, Some(2_000)));
    let (answer, calls) = engine_send(&mut engine, &mut store, first, 10, &mut throttled);
    assert_eq!(calls, 1);
    match answer {
        Some(SendResponse::Failed {
            retryable: true,
            retry_after_ms: Some(2_000),
            reason,
        }) => assert!(reason.contains("130429"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.stats().throttled, 1);
    // Any other send of the sender now waits out the Retry-After, with no
    // provider call and nothing written.
    second.to = Recipient::parse("+4915112345678").unwrap();
    let mut never = || -> Option<DeliveryOutcome> { panic!("must not call the provider") };
    let (answer, calls) = engine_send(&mut engine, &mut store, second, 20, &mut never);
    assert_eq!(calls, 0);
    match answer {
        Some(SendResponse::Busy { retry_after_ms }) => {
            assert!(
                (1_990..=2_100).contains(&retry_after_ms),
                "{retry_after_ms}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_later_refusal_waits_an_hour_then_twice_as_long() {
    let mut store = MemStore::new();
    let mut engine = Engine::new(EngineConfig {
        send_timeout_ms: 1_000,
        ..EngineConfig::default()
    });
    let request = leased_request(&mut store);
    let mut later = || Some(cloud_error(131049, None));
    let hour = oncesend_core::provider_error::RETRY_LATER_MIN_MS;
    for (now_ms, want) in [(10, hour), (20, 2 * hour), (30, 4 * hour)] {
        let (answer, calls) =
            engine_send(&mut engine, &mut store, request.clone(), now_ms, &mut later);
        assert_eq!(calls, 1);
        match answer {
            Some(SendResponse::Failed {
                retryable: true,
                retry_after_ms,
                ..
            }) => assert_eq!(retry_after_ms, Some(want)),
            other => panic!("{other:?}"),
        }
    }
    // The run shows the code of the step's last failure.
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun {
        run: request.key.run,
    }) else {
        panic!()
    };
    let last_error = v.deliveries[0]
        .as_ref()
        .unwrap()
        .last_error
        .clone()
        .unwrap();
    assert_eq!(
        oncesend_core::provider_error::code_in_reason(&last_error),
        Some(131049)
    );
}
