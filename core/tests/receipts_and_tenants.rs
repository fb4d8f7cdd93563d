//! Provider receipts against the reference store: forward only, late and
//! repeated receipts change nothing, and an unknown delivery is settled.

mod common;

use oncesend_core::{
    DeliveryKey, DeliveryOutcome, DeliveryState, MemStore, ReceiptStatus, RunId, StoreOp,
    StoreReply, TenantId,
};

fn begun(store: &mut MemStore) -> DeliveryKey {
    let (id, _) = common::enqueue(store, common::one_step_run(7), 0);
    let c = common::claim(store, 1, 0);
    let key = DeliveryKey { run: id, step: 0 };
    let r = store.apply(StoreOp::BeginDelivery {
        key,
        epoch: c[0].epoch,
        send_timeout_ms: 1_000,
        now_ms: 0,
    });
    assert_eq!(
        r,
        StoreReply::Begun {
            attempt: 1,
            probe: false
        }
    );
    key
}

fn receipt(store: &mut MemStore, key: DeliveryKey, status: ReceiptStatus) -> StoreReply {
    store.apply(StoreOp::RecordReceipt {
        key,
        status,
        provider_message_id: Some("wamid.X".into()),
        reason: None,
        resend: false,
        now_ms: 5,
    })
}

fn state(store: &mut MemStore, key: DeliveryKey) -> DeliveryState {
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run: key.run }) else {
        panic!()
    };
    v.deliveries[key.step as usize].clone().unwrap().state
}

#[test]
fn receipts_move_a_sent_delivery_forward_and_never_back() {
    let mut store = MemStore::new();
    let key = begun(&mut store);
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: DeliveryOutcome::Sent {
            provider_message_id: "wamid.X".into(),
        },
        now_ms: 1,
    });
    assert_eq!(
        receipt(&mut store, key, ReceiptStatus::Read),
        StoreReply::ReceiptRecorded {
            state: DeliveryState::Read,
            changed: true
        }
    );
    for late in [
        ReceiptStatus::Delivered,
        ReceiptStatus::Sent,
        ReceiptStatus::Failed,
        ReceiptStatus::Read,
    ] {
        assert_eq!(
            receipt(&mut store, key, late),
            StoreReply::ReceiptRecorded {
                state: DeliveryState::Read,
                changed: false
            },
            "{late:?}"
        );
    }
    // A read delivery is still a sent one: the key is never sent again.
    assert!(matches!(
        store.apply(StoreOp::BeginDelivery {
            key,
            epoch: 1,
            send_timeout_ms: 1_000,
            now_ms: 10,
        }),
        StoreReply::AlreadySent { .. }
    ));
}

#[test]
fn a_receipt_settles_an_unknown_delivery_with_its_message_id() {
    let mut store = MemStore::new();
    let key = begun(&mut store);
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: DeliveryOutcome::Unknown {
            reason: "connection lost".into(),
        },
        now_ms: 1,
    });
    assert_eq!(state(&mut store, key), DeliveryState::Unknown);
    assert!(matches!(
        receipt(&mut store, key, ReceiptStatus::Delivered),
        StoreReply::ReceiptRecorded { changed: true, .. }
    ));
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run: key.run }) else {
        panic!()
    };
    let rec = v.deliveries[0].clone().unwrap();
    assert_eq!(rec.state, DeliveryState::Delivered);
    assert_eq!(rec.provider_message_id.as_deref(), Some("wamid.X"));
    assert_eq!(rec.last_error, None);
    let StoreReply::Stats(s) = store.apply(StoreOp::Stats { now_ms: 10 }) else {
        panic!()
    };
    assert_eq!(s.unknown_deliveries, 0);
}

#[test]
fn a_failure_receipt_is_kept_with_its_reason() {
    let mut store = MemStore::new();
    let key = begun(&mut store);
    store.apply(StoreOp::FinishDelivery {
        key,
        outcome: DeliveryOutcome::Sent {
            provider_message_id: "wamid.X".into(),
        },
        now_ms: 1,
    });
    store.apply(StoreOp::RecordReceipt {
        key,
        status: ReceiptStatus::Failed,
        provider_message_id: None,
        reason: Some("131026: message undeliverable".into()),
        resend: false,
        now_ms: 2,
    });
    let StoreReply::Run(v) = store.apply(StoreOp::GetRun { run: key.run }) else {
        panic!()
    };
    let rec = v.deliveries[0].clone().unwrap();
    assert_eq!(rec.state, DeliveryState::Failed { retryable: false });
    assert_eq!(
        rec.last_error.as_deref(),
        Some("131026: message undeliverable")
    );
    // A late "delivered" does not undo a failure.
    assert!(matches!(
        receipt(&mut store, key, ReceiptStatus::Delivered),
        StoreReply::ReceiptRecorded { changed: false, .. }
    ));
}

#[test]
fn a_receipt_for_a_key_never_begun_is_not_found() {
    let mut store = MemStore::new();
    let key = DeliveryKey {
        run: RunId::new(9, 9),
        step: 0,
    };
    assert_eq!(
        receipt(&mut store, key, ReceiptStatus::Sent),
        StoreReply::NotFound
    );
}

#[test]
fn tenants_are_stored_replaced_and_read_back() {
    use oncesend_core::{ProviderSettings, Tenant};
    let mut store = MemStore::new();
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(
        store.apply(StoreOp::GetTenant {
            tenant: acme.clone()
        }),
        StoreReply::NotFound
    );
    let t = Tenant::new(acme.clone(), ProviderSettings::Log {}).unwrap();
    assert_eq!(
        store.apply(StoreOp::PutTenant { tenant: t.clone() }),
        StoreReply::TenantPut { created: true }
    );
    assert_eq!(
        store.apply(StoreOp::PutTenant { tenant: t.clone() }),
        StoreReply::TenantPut { created: false }
    );
    assert_eq!(
        store.apply(StoreOp::GetTenant { tenant: acme }),
        StoreReply::Tenant(t)
    );
}
