//! The trigger path against the reference store: the core decides the
//! tenant, the flow, the plan, the opt-out, the key and the head, and the
//! store only reads and writes.

use oncesend_core::flow::{FlowStep, Trigger};
use oncesend_core::store::rules::{decide_enqueue, EnqueueDecision, EnqueueFacts};
use oncesend_core::store::{Suppression, TriggerRefusal};
use oncesend_core::{
    Flow, FlowId, MemStore, ProviderSettings, Recipient, RunId, StoreOp, StoreReply, Template,
    Tenant, TenantId, WorkerId,
};

fn flow(name: &str) -> Flow {
    Flow::new(
        FlowId::new(name).unwrap(),
        vec![
            FlowStep::text(Template::parse("Hi {{name}}").unwrap(), 0),
            FlowStep::text(Template::parse("Bye {{name}}").unwrap(), 10),
        ],
    )
    .unwrap()
}

fn trigger(tenant: &TenantId, to: &str, key: Option<&str>) -> Trigger {
    Trigger {
        tenant: tenant.clone(),
        to: Recipient::parse(to).unwrap(),
        vars: [("name".to_string(), "Ana".to_string())].into(),
        trigger_key: key.map(str::to_string),
    }
}

fn op(flow: &str, trigger: Trigger, n: u64) -> StoreOp {
    StoreOp::Trigger {
        flow: FlowId::new(flow).unwrap(),
        trigger,
        run: RunId::new(n, n),
        now_ms: n,
    }
}

/// A store whose default tenant has the flow `welcome`.
fn with_welcome() -> (MemStore, TenantId) {
    let mut store = MemStore::new();
    let default = TenantId::default_tenant();
    store.apply(StoreOp::PutFlow {
        tenant: default.clone(),
        flow: flow("welcome"),
    });
    (store, default)
}

fn created(reply: StoreReply) -> RunId {
    match reply {
        StoreReply::Enqueued { run, created: true } => run,
        other => panic!("expected a new run, got {other:?}"),
    }
}

#[test]
fn a_trigger_plans_the_stored_flow_and_enqueues_it_once_per_key() {
    let (mut store, default) = with_welcome();
    let to = "+5511913390707";
    let first = created(store.apply(op("welcome", trigger(&default, to, Some("k1")), 1)));
    // The same key again: the run it created, nothing new.
    assert_eq!(
        store.apply(op("welcome", trigger(&default, to, Some("k1")), 2)),
        StoreReply::Enqueued {
            run: first,
            created: false
        }
    );
    // The run holds the rendered steps.
    let StoreReply::Run(view) = store.apply(StoreOp::GetRun { run: first }) else {
        panic!("the run is stored")
    };
    assert_eq!(view.steps.len(), 2);
    assert!(format!("{:?}", view.steps[0]).contains("Hi Ana"));
    // A second run of the conversation waits behind the first: one claim
    // takes only the head.
    let second = created(store.apply(op("welcome", trigger(&default, to, None), 3)));
    let StoreReply::Claimed(claimed) = store.apply(StoreOp::Claim {
        owner: WorkerId::new("w").unwrap(),
        max: 10,
        lease_ms: 1_000,
        now_ms: 100,
    }) else {
        panic!("claim answers Claimed")
    };
    let ids: Vec<RunId> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![first], "{second} is not its conversation's head");
}

#[test]
fn a_trigger_is_refused_for_an_unknown_tenant_a_missing_flow_or_a_missing_variable() {
    let mut store = MemStore::new();
    let default = TenantId::default_tenant();
    let acme = TenantId::new("acme").unwrap();
    let to = "+5511913390707";
    assert_eq!(
        store.apply(op("welcome", trigger(&acme, to, None), 1)),
        StoreReply::TriggerRefused(TriggerRefusal::NoTenant)
    );
    // `default` exists without being stored; its flow does not yet.
    assert_eq!(
        store.apply(op("welcome", trigger(&default, to, None), 2)),
        StoreReply::TriggerRefused(TriggerRefusal::NoFlow)
    );
    store.apply(StoreOp::PutTenant {
        tenant: Tenant::new(acme.clone(), ProviderSettings::Log {}).unwrap(),
    });
    store.apply(StoreOp::PutFlow {
        tenant: acme.clone(),
        flow: flow("welcome"),
    });
    let mut t = trigger(&acme, to, None);
    t.vars.clear();
    match store.apply(op("welcome", t, 3)) {
        StoreReply::TriggerRefused(TriggerRefusal::Plan { problem, path }) => {
            assert!(problem.contains("name"), "{problem}");
            assert_eq!(path.as_deref(), Some("steps[0].text"));
        }
        other => panic!("expected a plan refusal, got {other:?}"),
    }
    // A flow of one tenant is not another's.
    assert_eq!(
        store.apply(op("welcome", trigger(&default, to, None), 4)),
        StoreReply::TriggerRefused(TriggerRefusal::NoFlow)
    );
    created(store.apply(op("welcome", trigger(&acme, to, None), 5)));
}

#[test]
fn an_opted_out_recipient_gets_no_run_but_a_key_seen_before_still_answers_its_run() {
    let (mut store, default) = with_welcome();
    let to = "+5511913390707";
    let first = created(store.apply(op("welcome", trigger(&default, to, Some("k")), 1)));
    store.apply(StoreOp::Suppress {
        tenant: default.clone(),
        to: Recipient::parse(to).unwrap(),
        reason: "STOP".into(),
        now_ms: 2,
    });
    // The caller retrying the trigger it made before the opt-out learns
    // the run it made (which the opt-out cancelled), not an error.
    assert_eq!(
        store.apply(op("welcome", trigger(&default, to, Some("k")), 3)),
        StoreReply::Enqueued {
            run: first,
            created: false
        }
    );
    assert_eq!(
        store.apply(op("welcome", trigger(&default, to, Some("new")), 4)),
        StoreReply::RecipientSuppressed(Suppression {
            since_ms: 2,
            reason: "STOP".into()
        })
    );
}

#[test]
fn the_enqueue_rule_in_each_case() {
    let default = TenantId::default_tenant();
    let run = oncesend_core::store::rules::plan_trigger(
        false,
        Some(&flow("welcome")),
        trigger(&default, "+5511913390707", Some("k")),
        RunId::new(9, 9),
    )
    .expect("the default tenant plans");
    let other = RunId::new(1, 1);
    let stop = Suppression {
        since_ms: 5,
        reason: "STOP".into(),
    };
    let cases = [
        (
            EnqueueFacts::default(),
            EnqueueDecision::Insert { is_head: true },
        ),
        (
            EnqueueFacts {
                conversation_open: true,
                ..Default::default()
            },
            EnqueueDecision::Insert { is_head: false },
        ),
        (
            // The key wins over everything else.
            EnqueueFacts {
                existing: Some(other),
                suppressed: Some(&stop),
                id_taken: true,
                conversation_open: true,
            },
            EnqueueDecision::Existing(other),
        ),
        (
            EnqueueFacts {
                suppressed: Some(&stop),
                id_taken: true,
                ..Default::default()
            },
            EnqueueDecision::Suppressed(stop.clone()),
        ),
        (
            EnqueueFacts {
                id_taken: true,
                ..Default::default()
            },
            EnqueueDecision::IdTaken,
        ),
    ];
    for (facts, want) in cases {
        assert_eq!(decide_enqueue(&run, facts), want, "{facts:?}");
    }
    assert_eq!(
        EnqueueDecision::IdTaken.answer(run.id),
        StoreReply::Conflict {
            reason: format!("run {} already exists", run.id)
        }
    );
    assert_eq!(
        EnqueueDecision::Existing(other).answer(run.id),
        StoreReply::Enqueued {
            run: other,
            created: false
        }
    );
    // Without a key, a run the key table knows of is not an answer.
    let mut keyless = run.clone();
    keyless.trigger_key = None;
    assert_eq!(
        decide_enqueue(
            &keyless,
            EnqueueFacts {
                existing: Some(other),
                ..Default::default()
            }
        ),
        EnqueueDecision::Insert { is_head: true }
    );
}
