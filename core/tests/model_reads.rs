//! The reference store's reads and upkeep, which the SQL stores are held
//! equal to: suppression and flow paging, the status and recipient
//! filters, run pages by seq, the queue's figures and pruning of finished
//! runs.

mod common;

use oncesend_core::store::{After, QueueStats, RunFilter};
use oncesend_core::{
    DeliveryKey, Flow, FlowId, FlowStep, Guards, MemStore, NewRun, Recipient, RunId, RunStatus,
    StoreOp, StoreReply, TenantId,
};

use common::{claim, enqueue, to};
use oncesend_core::template::Template;

/// Run `n` of one step due `delay_ms` after enqueueing, with `trigger_key`.
fn new_run(n: u64, delay_ms: u64, trigger_key: Option<&str>) -> NewRun {
    NewRun {
        trigger_key: trigger_key.map(str::to_string),
        ..common::run_to(n, to(n), vec![common::step(After::Sent, delay_ms)])
    }
}

#[test]
fn the_model_keeps_the_guards_it_was_made_with() {
    let off = Guards {
        fencing: false,
        ledger: false,
    };
    assert_eq!(MemStore::with_guards(off).guards(), off);
    assert_eq!(MemStore::new().guards(), Guards::default());
}

#[test]
fn suppressions_are_listed_per_tenant_in_pages_after_a_recipient() {
    let mut store = MemStore::new();
    let acme = TenantId::new("acme").unwrap();
    for (tenant, n) in [
        (TenantId::default_tenant(), 3),
        (TenantId::default_tenant(), 1),
        (acme.clone(), 2),
        (TenantId::default_tenant(), 2),
    ] {
        store.apply(StoreOp::Suppress {
            tenant,
            to: to(n),
            reason: "STOP".into(),
            now_ms: 1,
        });
    }
    let page =
        |after: Option<Recipient>, limit| match store.clone().apply(StoreOp::ListSuppressed {
            tenant: TenantId::default_tenant(),
            after,
            limit,
        }) {
            StoreReply::Suppressions(s) => s.into_iter().map(|(r, _)| r).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
    assert_eq!(page(None, 10), vec![to(1), to(2), to(3)]);
    assert_eq!(page(None, 2), vec![to(1), to(2)]);
    assert_eq!(page(Some(to(1)), 10), vec![to(2), to(3)], "strictly after");
    assert_eq!(page(Some(to(3)), 10), vec![]);
}

#[test]
fn runs_are_listed_by_status_when_one_is_asked_for() {
    let mut store = MemStore::new();
    let (a, _) = enqueue(&mut store, new_run(1, 0, None), 0);
    let (b, _) = enqueue(&mut store, new_run(2, 0, None), 0);
    store.apply(StoreOp::Cancel { run: b, now_ms: 1 });
    let list = |status| match store.clone().apply(StoreOp::ListRuns {
        status,
        filter: Default::default(),
        limit: 10,
    }) {
        StoreReply::Runs(r) => r.into_iter().map(|v| v.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(list(Some(RunStatus::Pending)), vec![a]);
    assert_eq!(list(Some(RunStatus::Cancelled)), vec![b]);
    assert_eq!(list(None), vec![b, a], "newest first");
}

#[test]
fn runs_are_listed_by_recipient_and_paged_by_seq_newest_first() {
    let mut store = MemStore::new();
    let ids: Vec<RunId> = (1..=5)
        .map(|n| enqueue(&mut store, new_run(n, 0, None), 0).0)
        .collect();
    let list = |filter: RunFilter, limit| match store.clone().apply(StoreOp::ListRuns {
        status: None,
        filter,
        limit,
    }) {
        StoreReply::Runs(r) => r.into_iter().map(|v| (v.id, v.seq)).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let first = list(RunFilter::default(), 2);
    assert_eq!(
        first.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    // The next page starts below the last seq seen, and the pages join
    // without a gap or a repeat.
    let next = list(
        RunFilter {
            before_seq: Some(first[1].1),
            ..RunFilter::default()
        },
        10,
    );
    assert_eq!(
        next.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    let mine = list(
        RunFilter {
            to: Some(to(3)),
            ..RunFilter::default()
        },
        10,
    );
    assert_eq!(mine.iter().map(|r| r.0).collect::<Vec<_>>(), vec![ids[2]]);
}

#[test]
fn flows_are_listed_by_tenant_then_name_in_pages_after_a_flow() {
    let mut store = MemStore::new();
    let acme = TenantId::new("acme").unwrap();
    let flow = |name: &str| {
        Flow::new(
            FlowId::new(name).unwrap(),
            vec![FlowStep::text(Template::parse("hi").unwrap(), 0)],
        )
        .unwrap()
    };
    for (tenant, name) in [
        (TenantId::default_tenant(), "welcome"),
        (acme.clone(), "bye"),
        (TenantId::default_tenant(), "bye"),
    ] {
        store.apply(StoreOp::PutFlow {
            tenant,
            flow: flow(name),
        });
    }
    let page = |after: Option<(TenantId, FlowId)>, limit| match store
        .clone()
        .apply(StoreOp::ListFlows { after, limit })
    {
        StoreReply::Flows(f) => f
            .into_iter()
            .map(|(t, f)| format!("{}/{}", t.as_str(), f.id().as_str()))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        page(None, 10),
        ["acme/bye", "default/bye", "default/welcome"]
    );
    assert_eq!(page(None, 2), ["acme/bye", "default/bye"]);
    assert_eq!(
        page(
            Some((TenantId::default_tenant(), FlowId::new("bye").unwrap())),
            10
        ),
        ["default/welcome"]
    );
    assert!(page(
        Some((TenantId::default_tenant(), FlowId::new("welcome").unwrap())),
        10
    )
    .is_empty());
}

#[test]
fn the_queue_s_figures_count_each_run_where_it_stands() {
    let mut store = MemStore::new();
    enqueue(&mut store, new_run(1, 0, None), 100);
    enqueue(&mut store, new_run(2, 0, None), 400);
    enqueue(&mut store, new_run(3, 5_000, None), 0);
    enqueue(&mut store, new_run(4, 0, None), 0);
    enqueue(&mut store, new_run(5, 0, None), 0);
    // Runs 4 and 5 (due at 0, the oldest) are claimed; 5's send is unknown
    // and it waits for the provider's word.
    let c = claim(&mut store, 2, 500);
    let mut claimed: Vec<RunId> = c.iter().map(|r| r.id).collect();
    claimed.sort();
    assert_eq!(claimed, vec![RunId::new(104, 4), RunId::new(105, 5)]);
    let five = c.iter().find(|r| r.id == RunId::new(105, 5)).unwrap();
    let key = DeliveryKey {
        run: five.id,
        step: 0,
    };
    common::begin_unknown(&mut store, key, five.epoch, 500, 600);
    store.apply(StoreOp::AwaitOutcome {
        run: five.id,
        epoch: five.epoch,
        step: 0,
        wait_ms: Some(60_000),
        reason: "timed out".into(),
        now_ms: 600,
    });
    let StoreReply::Stats(s) = store.apply(StoreOp::Stats { now_ms: 1_000 }) else {
        panic!()
    };
    assert_eq!(
        s,
        QueueStats {
            pending: 3,
            due: 2,
            leased: 1,
            waiting: 1,
            oldest_due_age_ms: 900,
            unknown_deliveries: 1,
        }
    );
}

#[test]
fn pruning_deletes_the_oldest_runs_finished_before_the_retention_and_frees_their_keys() {
    let mut store = MemStore::new();
    let (a, _) = enqueue(&mut store, new_run(1, 0, Some("order-1")), 0);
    let (b, _) = enqueue(&mut store, new_run(2, 0, Some("order-2")), 0);
    let (c, _) = enqueue(&mut store, new_run(3, 0, None), 0);
    let (open, _) = enqueue(&mut store, new_run(4, 0, None), 0);
    store.apply(StoreOp::Cancel { run: a, now_ms: 10 });
    store.apply(StoreOp::Cancel { run: b, now_ms: 10 });
    store.apply(StoreOp::Cancel { run: c, now_ms: 20 });
    let prune = |store: &mut MemStore, max| match store.apply(StoreOp::Prune {
        retention_ms: 100,
        max,
        now_ms: 120,
    }) {
        StoreReply::Pruned { runs } => runs,
        other => panic!("{other:?}"),
    };
    // The cutoff is 20: a run finished at 20 is kept; of the two before it,
    // at most one goes, the oldest by trigger order.
    assert_eq!(prune(&mut store, 1), 1);
    let exists = |store: &mut MemStore, run| {
        !matches!(store.apply(StoreOp::GetRun { run }), StoreReply::NotFound)
    };
    assert!(!exists(&mut store, a) && exists(&mut store, b));
    assert_eq!(prune(&mut store, 10), 1);
    assert!(!exists(&mut store, b));
    assert!(exists(&mut store, c) && exists(&mut store, open));
    assert_eq!(prune(&mut store, 10), 0);
    // A pruned run's trigger key may be used again.
    let (again, created) = enqueue(&mut store, new_run(5, 0, Some("order-1")), 200);
    assert!(created);
    assert_ne!(again, a);
}
