//! Costs of the core: one engine send cycle, one worker step cycle, a
//! claim and completion on the reference store, and one simulation seed.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use oncesend_core::{
    DeliveryKey, DeliveryOutcome, Engine, EngineConfig, EngineEffect, EngineEvent, FlowId,
    MemStore, NewRun, PlannedStep, Recipient, RunId, SendRequest, SendResponse, StoreOp,
    StoreReply, TenantId, Worker, WorkerConfig, WorkerEffect, WorkerEvent, WorkerId,
};
use std::hint::black_box;

fn run(i: u64, conversations: u64, steps: usize) -> NewRun {
    NewRun {
        id: RunId::new(1_000 + i, i),
        tenant: TenantId::default_tenant(),
        flow: FlowId::new("bench").unwrap(),
        to: Recipient::parse(&format!("+55119{:08}", i % conversations)).unwrap(),
        steps: (0..steps)
            .map(|s| PlannedStep {
                message: oncesend_core::Message::text(format!("message {s}")),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            })
            .collect(),
        trigger_key: None,
    }
}

fn store_with(runs: u64, conversations: u64) -> MemStore {
    let mut store = MemStore::new();
    for i in 0..runs {
        store.apply(StoreOp::Enqueue {
            run: run(i, conversations, 1),
            now_ms: 0,
        });
    }
    store
}

/// One send through the engine machine: begin, provider, finish, respond,
/// with the store's replies fed straight back.
fn engine_send_cycle(c: &mut Criterion) {
    c.bench_function("engine machine: one send cycle", |b| {
        b.iter_batched(
            || {
                let mut store = store_with(1, 1);
                let StoreReply::Claimed(mut claimed) = store.apply(StoreOp::Claim {
                    owner: WorkerId::new("w").unwrap(),
                    max: 1,
                    lease_ms: 30_000,
                    now_ms: 1,
                }) else {
                    unreachable!()
                };
                let c = claimed.remove(0);
                let request = SendRequest {
                    key: DeliveryKey { run: c.id, step: 0 },
                    epoch: c.epoch,
                    tenant: c.tenant,
                    to: c.to,
                    message: c.steps[0].message.clone(),
                };
                (store, Engine::new(EngineConfig::default()), request)
            },
            |(mut store, mut engine, request)| {
                engine.handle(EngineEvent::Request { req: 1, request }, 2);
                let mut answer = None;
                while let Some(effect) = engine.poll_effect() {
                    match effect {
                        EngineEffect::Store { req, op } => {
                            let reply = Ok(store.apply(op));
                            engine.handle(EngineEvent::StoreReplied { req, reply }, 2);
                        }
                        EngineEffect::Provide { req, .. } => {
                            let outcome = DeliveryOutcome::Sent {
                                provider_message_id: "wamid".into(),
                            };
                            engine.handle(EngineEvent::ProviderReplied { req, outcome }, 2);
                        }
                        EngineEffect::Respond { response, .. } => answer = Some(response),
                    }
                }
                assert!(matches!(answer, Some(SendResponse::Sent { .. })));
                black_box(answer)
            },
            BatchSize::SmallInput,
        )
    });
}

/// A worker claiming one run of three steps and seeing it through, with
/// the store and the engine answering at once.
fn worker_run_cycle(c: &mut Criterion) {
    c.bench_function("worker machine: claim and send a 3-step run", |b| {
        b.iter_batched(
            || {
                let mut store = MemStore::new();
                store.apply(StoreOp::Enqueue {
                    run: run(1, 1, 3),
                    now_ms: 0,
                });
                let config = WorkerConfig::new(WorkerId::new("w").unwrap());
                (store, Worker::new(config, 1).unwrap())
            },
            |(mut store, mut worker)| {
                worker.handle(WorkerEvent::Tick, 1);
                let mut sends = 0;
                while let Some(effect) = worker.poll_effect() {
                    match effect {
                        WorkerEffect::Store { op, request } => {
                            let reply = Ok(store.apply(request));
                            worker.handle(WorkerEvent::StoreReplied { op, reply }, 1);
                        }
                        WorkerEffect::Send { op, .. } => {
                            sends += 1;
                            let reply = Ok(SendResponse::Sent {
                                provider_message_id: "wamid".into(),
                                replayed: false,
                            });
                            worker.handle(WorkerEvent::SendReplied { op, reply }, 1);
                        }
                    }
                }
                assert_eq!(sends, 3);
                black_box(worker.stats())
            },
            BatchSize::SmallInput,
        )
    });
}

/// Claim a batch on a store of 10,000 pending runs over 500
/// conversations, then complete every run claimed.
fn memstore_claim(c: &mut Criterion) {
    let mut group = c.benchmark_group("memstore: claim + complete");
    for batch in [1u32, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_batched(
                || store_with(10_000, 500),
                |mut store| {
                    let StoreReply::Claimed(claimed) = store.apply(StoreOp::Claim {
                        owner: WorkerId::new("w").unwrap(),
                        max: batch,
                        lease_ms: 30_000,
                        now_ms: 1,
                    }) else {
                        unreachable!()
                    };
                    assert_eq!(claimed.len(), batch as usize);
                    for r in claimed {
                        let done = store.apply(StoreOp::Complete {
                            run: r.id,
                            epoch: r.epoch,
                            step: 0,
                            now_ms: 2,
                        });
                        assert_eq!(done, StoreReply::Completed);
                    }
                    store
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// One seed of the standard scenario: 20 runs of 3 steps, three
/// processors, faults from the seed.
fn sim_seed(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulation");
    group.sample_size(20);
    let config = oncesend_sim::SimConfig::fixed();
    let mut seed = 0;
    group.bench_function("one seed (20 runs, 3 processors, faults)", |b| {
        b.iter(|| {
            seed += 1;
            let r = oncesend_sim::run_seed(seed, &config);
            assert!(r.ok());
            black_box(r.trace_hash)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    engine_send_cycle,
    worker_run_cycle,
    memstore_claim,
    sim_seed
);
criterion_main!(benches);
