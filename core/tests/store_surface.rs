//! The small pieces of the storage contract every backend and driver
//! leans on: the database spellings, the run filter, the customer-service
//! window, an op's clock, a stored step's two shapes, and the simulation's
//! random stream.

use oncesend_core::rng::SplitMix64;
use oncesend_core::store::{
    After, DeliveryState, RecipientInfo, RunFilter, RunWait, CUSTOMER_SERVICE_WINDOW_MS,
};
use oncesend_core::{
    DeliveryKey, FlowId, Message, OutboundMessage, PlannedStep, Recipient, RunId, RunStatus,
    StoreOp, TenantId,
};

#[test]
fn every_status_and_wait_reads_back_its_database_spelling() {
    let statuses = [
        (RunStatus::Pending, "pending"),
        (RunStatus::Leased, "leased"),
        (RunStatus::Waiting, "waiting"),
        (RunStatus::Completed, "completed"),
        (RunStatus::Failed, "failed"),
        (RunStatus::Cancelled, "cancelled"),
    ];
    for (status, spelling) in statuses {
        assert_eq!(status.as_str(), spelling);
        assert_eq!(RunStatus::parse(spelling), Some(status));
    }
    assert_eq!(RunStatus::parse("done"), None);
    let waits = [
        (RunWait::Outcome, "outcome"),
        (RunWait::After(After::Sent), "sent"),
        (RunWait::After(After::Delivered), "delivered"),
        (RunWait::After(After::Read), "read"),
    ];
    for (wait, spelling) in waits {
        assert_eq!(wait.as_str(), spelling);
        assert_eq!(RunWait::parse(spelling), Some(wait));
    }
    assert_eq!(RunWait::parse("status"), None);
    for (state, spelling) in [
        (DeliveryState::Sending { deadline_ms: 5 }, "sending"),
        (DeliveryState::Sent, "sent"),
        (DeliveryState::Delivered, "delivered"),
        (DeliveryState::Read, "read"),
        (DeliveryState::Failed { retryable: true }, "failed"),
        (DeliveryState::Unknown, "unknown"),
    ] {
        assert_eq!(state.as_str(), spelling);
    }
}

#[test]
fn a_run_filter_matches_only_when_every_field_set_matches() {
    let (flow, other_flow) = (FlowId::new("welcome").unwrap(), FlowId::new("bye").unwrap());
    let (tenant, other_tenant) = (TenantId::new("acme").unwrap(), TenantId::default_tenant());
    let all = RunFilter::default();
    assert!(all.matches(&flow, &tenant, None, 100));
    let by_flow = RunFilter {
        flow: Some(flow.clone()),
        ..RunFilter::default()
    };
    assert!(by_flow.matches(&flow, &tenant, None, 100));
    assert!(!by_flow.matches(&other_flow, &tenant, None, 100));
    let by_tenant = RunFilter {
        tenant: Some(tenant.clone()),
        ..RunFilter::default()
    };
    assert!(by_tenant.matches(&flow, &tenant, None, 100));
    assert!(!by_tenant.matches(&flow, &other_tenant, None, 100));
    let by_reason = RunFilter {
        reason_contains: Some("131026".into()),
        ..RunFilter::default()
    };
    assert!(by_reason.matches(&flow, &tenant, Some("Cloud API error 131026"), 100));
    assert!(!by_reason.matches(&flow, &tenant, Some("Cloud API error 131047"), 100));
    assert!(!by_reason.matches(&flow, &tenant, None, 100));
    let window = RunFilter {
        created_after_ms: Some(100),
        created_before_ms: Some(200),
        ..RunFilter::default()
    };
    assert!(
        !window.matches(&flow, &tenant, None, 100),
        "after is strict"
    );
    assert!(window.matches(&flow, &tenant, None, 101));
    assert!(window.matches(&flow, &tenant, None, 199));
    assert!(
        !window.matches(&flow, &tenant, None, 200),
        "before is strict"
    );
    // Each field must hold, not any one of them.
    let both = RunFilter {
        flow: Some(flow.clone()),
        tenant: Some(tenant.clone()),
        ..RunFilter::default()
    };
    assert!(!both.matches(&flow, &other_tenant, None, 1));
    assert!(!both.matches(&other_flow, &tenant, None, 1));
    let flow_and_reason = RunFilter {
        flow: Some(flow.clone()),
        reason_contains: Some("x".into()),
        created_before_ms: Some(50),
        ..RunFilter::default()
    };
    assert!(!flow_and_reason.matches(&flow, &tenant, Some("y"), 1));
    assert!(!flow_and_reason.matches(&flow, &tenant, Some("x"), 60));
    assert!(flow_and_reason.matches(&flow, &tenant, Some("x"), 10));
}

#[test]
fn the_customer_service_window_is_open_for_twenty_four_hours_after_the_last_message() {
    const DAY_MS: u64 = 86_400_000;
    assert_eq!(CUSTOMER_SERVICE_WINDOW_MS, DAY_MS);
    let info = RecipientInfo {
        last_inbound_ms: Some(1_000),
        suppressed: None,
    };
    assert!(info.window_open(1_000));
    assert!(info.window_open(1_000 + DAY_MS - 1));
    assert!(!info.window_open(1_000 + DAY_MS));
    assert!(!RecipientInfo::default().window_open(0));
}

#[test]
fn an_op_s_clock_is_read_and_replaced_by_the_store_s() {
    let run = RunId::new(1, 1);
    let mut op = StoreOp::Cancel { run, now_ms: 7 };
    assert_eq!(op.now_ms(), Some(7));
    op.set_now_ms(42);
    assert_eq!(op, StoreOp::Cancel { run, now_ms: 42 });
    assert_eq!(op.name(), "cancel");
    let mut read = StoreOp::GetRun { run };
    assert_eq!(read.now_ms(), None);
    read.set_now_ms(42);
    assert_eq!(read, StoreOp::GetRun { run });
    assert_eq!(read.name(), "get_run");
}

#[test]
fn a_stored_step_reads_back_in_either_shape_but_not_both_or_neither() {
    let text: PlannedStep = serde_json::from_str(r#"{"text":"hi","delay_ms":5}"#).unwrap();
    assert_eq!(text.message, Message::text("hi"));
    assert_eq!(text.delay_ms, 5);
    let message: PlannedStep =
        serde_json::from_str(r#"{"message":{"type":"text","text":{"body":"hi"}},"delay_ms":0}"#)
            .unwrap();
    assert_eq!(message.message, Message::text("hi"));
    let both = r#"{"text":"a","message":{"type":"text","text":{"body":"b"}},"delay_ms":0}"#;
    assert!(serde_json::from_str::<PlannedStep>(both).is_err());
    assert!(serde_json::from_str::<PlannedStep>(r#"{"delay_ms":0}"#).is_err());
}

#[test]
fn a_recipient_is_its_e164_text_and_a_send_body_is_the_cloud_api_envelope() {
    let to = Recipient::parse("+5511913390701").unwrap();
    assert_eq!(to.to_string(), "+5511913390701");
    assert_eq!(String::from(to.clone()), "+5511913390701");
    let key = DeliveryKey {
        run: RunId::new(1, 1),
        step: 2,
    };
    let body = OutboundMessage {
        key,
        tenant: TenantId::default_tenant(),
        to,
        message: Message::text("hi"),
    }
    .body();
    assert_eq!(
        body,
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+5511913390701",
            "biz_opaque_callback_data": key.to_string(),
            "type": "text",
            "text": {"body": "hi"},
        })
    );
}

/// SplitMix64's published reference outputs for seed 0: a seed printed by
/// the simulation replays the same faults on any machine.
#[test]
fn the_random_stream_is_splitmix64() {
    let mut rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
}

#[test]
fn a_template_s_source_may_be_as_long_as_its_bound_and_no_longer() {
    use oncesend_core::limits::MAX_TEMPLATE_BYTES;
    use oncesend_core::template::Template;
    let at_bound = format!("{{{{name}}}}{}", "x".repeat(MAX_TEMPLATE_BYTES - 8));
    assert_eq!(at_bound.len(), MAX_TEMPLATE_BYTES);
    assert!(Template::parse(&at_bound).is_ok());
    let e = Template::parse(&format!("{at_bound}x")).unwrap_err();
    assert!(
        e.to_string()
            .contains(&(MAX_TEMPLATE_BYTES + 1).to_string()),
        "{e}"
    );
}

fn claimed_run() -> oncesend_core::ClaimedRun {
    let mut store = oncesend_core::MemStore::new();
    store.apply(StoreOp::Enqueue {
        run: oncesend_core::NewRun {
            id: RunId::new(1, 1),
            tenant: TenantId::default_tenant(),
            flow: FlowId::new("f").unwrap(),
            to: Recipient::parse("+5511913390701").unwrap(),
            steps: vec![PlannedStep {
                message: Message::text("hi"),
                delay_ms: 0,
                after: After::Sent,
                after_timeout_ms: None,
            }],
            trigger_key: None,
        },
        now_ms: 0,
    });
    match store.apply(StoreOp::Claim {
        owner: oncesend_core::WorkerId::new("w").unwrap(),
        max: 1,
        lease_ms: 1_000,
        now_ms: 0,
    }) {
        oncesend_core::StoreReply::Claimed(mut c) => c.pop().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_claim_read_back_is_sound_when_its_steps_cursor_and_epoch_are() {
    claimed_run().assert_sound(1);
}

#[test]
#[should_panic(expected = "1 steps read back, the row counts 2")]
fn a_claim_whose_steps_disagree_with_the_row_is_refused() {
    claimed_run().assert_sound(2);
}

#[test]
#[should_panic(expected = "claimed at cursor 1 of 1 steps")]
fn a_claim_past_its_last_step_is_refused() {
    let mut c = claimed_run();
    c.cursor = 1;
    c.assert_sound(1);
}

#[test]
#[should_panic(expected = "claimed under epoch 0")]
fn a_claim_under_epoch_zero_is_refused() {
    let mut c = claimed_run();
    c.epoch = 0;
    c.assert_sound(1);
}
