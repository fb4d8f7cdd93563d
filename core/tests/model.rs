//! Property tests of the reference store: random op sequences, with the
//! invariants of DESIGN.md checked after every op by bookkeeping that is
//! independent of the store's own.

use oncesend_core::MemStore;
use oncesend_core::{
    FlowId, NewRun, PlannedStep, Recipient, RunId, RunStatus, RunView, StoreOp, StoreReply,
    TenantId, WorkerId,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        conv: u8,
        steps: u8,
        delay_ms: u64,
        key: Option<u8>,
    },
    Claim {
        worker: u8,
        max: u32,
        lease_ms: u64,
    },
    Heartbeat {
        run: u8,
        stale: bool,
        lease_ms: u64,
    },
    Advance {
        run: u8,
        stale: bool,
        skew: i8,
        delay_ms: Option<u64>,
    },
    Complete {
        run: u8,
        stale: bool,
    },
    Fail {
        run: u8,
        stale: bool,
        retry_ms: Option<u64>,
    },
    Release {
        run: u8,
        stale: bool,
        after_ms: u64,
    },
    Cancel {
        run: u8,
    },
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 1u8..4, prop_oneof![Just(0u64), 1u64..30], proptest::option::of(0u8..3))
            .prop_map(|(conv, steps, delay_ms, key)| Op::Enqueue { conv, steps, delay_ms, key }),
        4 => (0u8..3, 1u32..4, 5u64..60).prop_map(|(worker, max, lease_ms)| Op::Claim { worker, max, lease_ms }),
        2 => (any::<u8>(), any::<bool>(), 5u64..60).prop_map(|(run, stale, lease_ms)| Op::Heartbeat { run, stale, lease_ms }),
        4 => (any::<u8>(), prop::bool::weighted(0.2), prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)], proptest::option::of(0u64..30))
            .prop_map(|(run, stale, skew, delay_ms)| Op::Advance { run, stale, skew, delay_ms }),
        3 => (any::<u8>(), prop::bool::weighted(0.2)).prop_map(|(run, stale)| Op::Complete { run, stale }),
        2 => (any::<u8>(), prop::bool::weighted(0.2), proptest::option::of(0u64..30)).prop_map(|(run, stale, retry_ms)| Op::Fail { run, stale, retry_ms }),
        1 => (any::<u8>(), prop::bool::weighted(0.2), 0u64..20).prop_map(|(run, stale, after_ms)| Op::Release { run, stale, after_ms }),
        1 => any::<u8>().prop_map(|run| Op::Cancel { run }),
        4 => (0u64..40).prop_map(|ms| Op::Wait { ms }),
    ]
}

fn conv_number(conv: u8) -> Recipient {
    Recipient::parse(&format!("+55119133900{conv:02}")).unwrap()
}

/// The test's own record of the world, built only from replies.
#[derive(Default)]
struct Book {
    runs: Vec<RunId>,
    seq: BTreeMap<RunId, usize>,
    conv: BTreeMap<RunId, u8>,
    /// Highest epoch granted per run.
    epoch: BTreeMap<RunId, u64>,
    /// The lease the test believes is live: (epoch, until).
    live: BTreeMap<RunId, (u64, u64)>,
    /// Last cursor seen per run.
    cursor: BTreeMap<RunId, u32>,
    terminal: BTreeMap<RunId, bool>,
}

fn view(store: &mut MemStore, run: RunId) -> RunView {
    match store.apply(StoreOp::GetRun { run }) {
        StoreReply::Run(v) => v,
        other => panic!("GetRun answered {other:?}"),
    }
}

fn run_ops(mut store: MemStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut book = Book::default();
    let mut now: u64 = 1_000;
    let tenant = TenantId::default_tenant();
    for (i, op) in ops.into_iter().enumerate() {
        let pick = |book: &Book, r: u8| -> Option<RunId> {
            (!book.runs.is_empty()).then(|| book.runs[r as usize % book.runs.len()])
        };
        let epoch_for = |book: &Book, id: RunId, stale: bool| -> u64 {
            let e = book.epoch.get(&id).copied().unwrap_or(0);
            if stale {
                e.saturating_sub(1)
            } else {
                e
            }
        };
        match op {
            Op::Wait { ms } => now += ms,
            Op::Enqueue {
                conv,
                steps,
                delay_ms,
                key,
            } => {
                let id = RunId::new(now, i as u64);
                let run = NewRun {
                    id,
                    tenant: tenant.clone(),
                    flow: FlowId::new("f").unwrap(),
                    to: conv_number(conv),
                    steps: (0..steps)
                        .map(|s| PlannedStep {
                            message: oncesend_core::Message::text(format!("m{s}")),
                            delay_ms: if s == 0 { delay_ms } else { delay_ms / 2 },
                            after: Default::default(),
                            after_timeout_ms: None,
                        })
                        .collect(),
                    trigger_key: key.map(|k| format!("k{k}")),
                };
                match store.apply(StoreOp::Enqueue { run, now_ms: now }) {
                    StoreReply::Enqueued { run, created: true } => {
                        prop_assert_eq!(run, id);
                        book.seq.insert(id, book.runs.len());
                        book.runs.push(id);
                        book.conv.insert(id, conv);
                    }
                    StoreReply::Enqueued {
                        run,
                        created: false,
                    } => {
                        prop_assert!(key.is_some(), "only a repeated trigger key dedupes");
                        prop_assert!(book.runs.contains(&run));
                    }
                    other => prop_assert!(false, "enqueue answered {:?}", other),
                }
            }
            Op::Claim {
                worker,
                max,
                lease_ms,
            } => {
                let owner = WorkerId::new(format!("w{worker}")).unwrap();
                let StoreReply::Claimed(claimed) = store.apply(StoreOp::Claim {
                    owner,
                    max,
                    lease_ms,
                    now_ms: now,
                }) else {
                    return Err(TestCaseError::fail("claim did not answer Claimed"));
                };
                prop_assert!(claimed.len() as u32 <= max);
                let mut convs_in_batch = Vec::new();
                for c in &claimed {
                    // Epochs only grow.
                    let before = book.epoch.get(&c.id).copied().unwrap_or(0);
                    prop_assert!(c.epoch > before, "epoch {} after {}", c.epoch, before);
                    // At most one live lease: the previous one has lapsed.
                    if let Some((_, until)) = book.live.get(&c.id) {
                        prop_assert!(
                            *until <= now,
                            "run {} claimed while leased until {} (now {})",
                            c.id,
                            until,
                            now
                        );
                    }
                    // The cursor never moves back.
                    prop_assert!(c.cursor >= book.cursor.get(&c.id).copied().unwrap_or(0));
                    // Conversation order: it is the oldest unfinished run of
                    // its conversation, and no other run there is leased.
                    let conv = book.conv[&c.id];
                    prop_assert!(
                        !convs_in_batch.contains(&conv),
                        "two runs of one conversation in one claim"
                    );
                    convs_in_batch.push(conv);
                    for other in &book.runs {
                        if *other == c.id || book.conv[other] != conv {
                            continue;
                        }
                        if book.seq[other] < book.seq[&c.id] {
                            prop_assert!(
                                book.terminal.get(other).copied().unwrap_or(false),
                                "run {} claimed before earlier run {} of its conversation finished",
                                c.id,
                                other
                            );
                        }
                        if let Some((_, until)) = book.live.get(other) {
                            prop_assert!(*until <= now, "two live leases in one conversation");
                        }
                    }
                    book.epoch.insert(c.id, c.epoch);
                    book.live.insert(c.id, (c.epoch, c.lease_until_ms));
                }
            }
            Op::Heartbeat {
                run,
                stale,
                lease_ms,
            } => {
                let Some(id) = pick(&book, run) else { continue };
                let epoch = epoch_for(&book, id, stale);
                match store.apply(StoreOp::Heartbeat {
                    run: id,
                    epoch,
                    lease_ms,
                    now_ms: now,
                }) {
                    StoreReply::Heartbeated { until_ms } => {
                        prop_assert_eq!(
                            Some(epoch),
                            book.epoch.get(&id).copied(),
                            "a stale heartbeat was accepted"
                        );
                        prop_assert!(until_ms >= now + lease_ms);
                        book.live.insert(id, (epoch, until_ms));
                    }
                    StoreReply::Fenced => {}
                    other => prop_assert!(false, "heartbeat answered {:?}", other),
                }
            }
            Op::Advance {
                run,
                stale,
                skew,
                delay_ms,
            } => {
                let Some(id) = pick(&book, run) else { continue };
                let epoch = epoch_for(&book, id, stale);
                let cur = view(&mut store, id).cursor;
                let step = (cur as i64 + skew as i64).max(0) as u32;
                match store.apply(StoreOp::Advance {
                    run: id,
                    epoch,
                    step,
                    delay_ms,
                    now_ms: now,
                }) {
                    StoreReply::Advanced { cursor, released } => {
                        prop_assert_eq!(
                            Some(epoch),
                            book.epoch.get(&id).copied(),
                            "a stale advance was accepted"
                        );
                        prop_assert_eq!(cursor, step + 1);
                        prop_assert_eq!(released, delay_ms.is_some());
                        if released {
                            book.live.remove(&id);
                        }
                    }
                    StoreReply::Fenced | StoreReply::Conflict { .. } => {}
                    other => prop_assert!(false, "advance answered {:?}", other),
                }
            }
            Op::Complete { run, stale } => {
                let Some(id) = pick(&book, run) else { continue };
                let epoch = epoch_for(&book, id, stale);
                let v = view(&mut store, id);
                let step = v.steps.len() as u32 - 1;
                match store.apply(StoreOp::Complete {
                    run: id,
                    epoch,
                    step,
                    now_ms: now,
                }) {
                    StoreReply::Completed => {
                        prop_assert_eq!(
                            Some(epoch),
                            book.epoch.get(&id).copied(),
                            "a stale completion was accepted"
                        );
                        prop_assert!(v.cursor == step || v.status == RunStatus::Completed);
                        book.live.remove(&id);
                    }
                    StoreReply::Fenced | StoreReply::Conflict { .. } => {}
                    other => prop_assert!(false, "complete answered {:?}", other),
                }
            }
            Op::Fail {
                run,
                stale,
                retry_ms,
            } => {
                let Some(id) = pick(&book, run) else { continue };
                let epoch = epoch_for(&book, id, stale);
                match store.apply(StoreOp::Fail {
                    run: id,
                    epoch,
                    reason: "boom".into(),
                    retry_after_ms: retry_ms,
                    now_ms: now,
                }) {
                    StoreReply::Failed { dead } => {
                        prop_assert_eq!(
                            Some(epoch),
                            book.epoch.get(&id).copied(),
                            "a stale failure was accepted"
                        );
                        prop_assert_eq!(dead, retry_ms.is_none());
                        book.live.remove(&id);
                    }
                    StoreReply::Fenced => {}
                    other => prop_assert!(false, "fail answered {:?}", other),
                }
            }
            Op::Release {
                run,
                stale,
                after_ms,
            } => {
                let Some(id) = pick(&book, run) else { continue };
                let epoch = epoch_for(&book, id, stale);
                match store.apply(StoreOp::Release {
                    run: id,
                    epoch,
                    after_ms,
                    now_ms: now,
                }) {
                    StoreReply::Released => {
                        prop_assert_eq!(
                            Some(epoch),
                            book.epoch.get(&id).copied(),
                            "a stale release was accepted"
                        );
                        book.live.remove(&id);
                    }
                    StoreReply::Fenced => {}
                    other => prop_assert!(false, "release answered {:?}", other),
                }
            }
            Op::Cancel { run } => {
                let Some(id) = pick(&book, run) else { continue };
                match store.apply(StoreOp::Cancel {
                    run: id,
                    now_ms: now,
                }) {
                    StoreReply::Cancelled => {
                        book.live.remove(&id);
                    }
                    StoreReply::Conflict { .. } => prop_assert!(book.terminal[&id]),
                    other => prop_assert!(false, "cancel answered {:?}", other),
                }
            }
        }
        // After every op, read every run back through the public API.
        let mut leased_in_conv: BTreeMap<u8, u32> = BTreeMap::new();
        for id in book.runs.clone() {
            let v = view(&mut store, id);
            let last = book.cursor.get(&id).copied().unwrap_or(0);
            prop_assert!(
                v.cursor >= last,
                "cursor of {} moved back from {} to {}",
                id,
                last,
                v.cursor
            );
            prop_assert!(v.cursor as usize <= v.steps.len());
            prop_assert_eq!(
                v.epoch,
                book.epoch.get(&id).copied().unwrap_or(0),
                "epoch changed without a claim"
            );
            let was_terminal = book.terminal.get(&id).copied().unwrap_or(false);
            prop_assert!(
                !was_terminal || v.status.is_terminal(),
                "a finished run came back"
            );
            match v.status {
                RunStatus::Leased => {
                    let lease = v.lease.clone().expect("a leased run has a lease");
                    prop_assert_eq!(lease.epoch, v.epoch);
                    if lease.until_ms > now {
                        *leased_in_conv.entry(book.conv[&id]).or_default() += 1;
                    }
                }
                RunStatus::Completed => prop_assert_eq!(v.cursor as usize, v.steps.len()),
                RunStatus::Failed => prop_assert!(v.reason.is_some()),
                _ => prop_assert!(v.lease.is_none()),
            }
            book.cursor.insert(id, v.cursor);
            book.terminal.insert(id, v.status.is_terminal());
        }
        prop_assert!(
            leased_in_conv.values().all(|n| *n <= 1),
            "two live leases in one conversation"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Invariants 2 to 5 of DESIGN.md hold after every op of any sequence.
    #[test]
    fn memstore_holds_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        run_ops(MemStore::new(), ops)?;
    }
}

/// The properties above can fail: the same generator finds a broken
/// invariant in a store whose fencing is switched off.
#[test]
fn the_properties_catch_a_store_without_fencing() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        run_ops(
            MemStore::with_guards(oncesend_core::Guards {
                fencing: false,
                ledger: true,
            }),
            ops,
        )
    });
    assert!(
        result.is_err(),
        "512 random sequences never caught an unfenced store"
    );
}

/// Whole runs go through to completion when every op is well-formed: the
/// model is not merely safe by refusing everything.
#[test]
fn a_well_behaved_sequence_completes_every_run() {
    let mut store = MemStore::new();
    let owner = WorkerId::new("w").unwrap();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let id = RunId::new(i, i);
        ids.push(id);
        let run = NewRun {
            id,
            tenant: TenantId::default_tenant(),
            flow: FlowId::new("f").unwrap(),
            to: conv_number((i % 2) as u8),
            steps: vec![
                PlannedStep {
                    message: oncesend_core::Message::text("a"),
                    delay_ms: 0,
                    after: Default::default(),
                    after_timeout_ms: None,
                },
                PlannedStep {
                    message: oncesend_core::Message::text("b"),
                    delay_ms: 5,
                    after: Default::default(),
                    after_timeout_ms: None,
                },
            ],
            trigger_key: None,
        };
        assert!(matches!(
            store.apply(StoreOp::Enqueue { run, now_ms: 0 }),
            StoreReply::Enqueued { created: true, .. }
        ));
    }
    let mut now = 0;
    let mut order = Vec::new();
    for _ in 0..100 {
        now += 5;
        let StoreReply::Claimed(batch) = store.apply(StoreOp::Claim {
            owner: owner.clone(),
            max: 10,
            lease_ms: 100,
            now_ms: now,
        }) else {
            panic!()
        };
        for c in batch {
            order.push((c.id, c.cursor));
            let reply = if c.cursor == 0 {
                store.apply(StoreOp::Advance {
                    run: c.id,
                    epoch: c.epoch,
                    step: 0,
                    delay_ms: Some(5),
                    now_ms: now,
                })
            } else {
                store.apply(StoreOp::Complete {
                    run: c.id,
                    epoch: c.epoch,
                    step: 1,
                    now_ms: now,
                })
            };
            assert!(
                matches!(reply, StoreReply::Advanced { .. } | StoreReply::Completed),
                "{reply:?}"
            );
        }
    }
    for id in &ids {
        assert_eq!(view(&mut store, *id).status, RunStatus::Completed);
    }
    // Per conversation, runs went strictly one after another.
    for conv in 0..2 {
        let seen: Vec<(RunId, u32)> = order
            .iter()
            .copied()
            .filter(|(id, _)| ids.iter().position(|x| x == id).unwrap() % 2 == conv)
            .collect();
        let expected: Vec<(RunId, u32)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == conv)
            .flat_map(|(_, id)| [(*id, 0), (*id, 1)])
            .collect();
        assert_eq!(seen, expected);
    }
}
