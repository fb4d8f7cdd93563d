//! The reading of a Cloud API exchange and the pacing of sends, at their
//! edges: what a 2xx without an id means, how long a `Retry-After` is
//! honoured, what a stored reason says, and a conversation's gap.

use oncesend_core::provider_error::code_in_reason;
use oncesend_core::{
    CloudApiError, CloudApiExchange, DeliveryOutcome, Pacer, PacingConfig, ReceiptStatus,
    Recipient, TenantId,
};

fn answered(http_status: u16, retry_after_ms: Option<u64>, body: &str) -> DeliveryOutcome {
    CloudApiExchange::Answered {
        http_status,
        retry_after_ms,
        body: body.as_bytes(),
    }
    .outcome()
}

#[test]
fn a_2xx_is_sent_only_with_a_message_id() {
    let ok = r#"{"messaging_product":"whatsapp","messages":[{"id":"wamid.HBg"}]}"#;
    assert_eq!(
        answered(200, None, ok),
        DeliveryOutcome::Sent {
            provider_message_id: "wamid.HBg".into()
        }
    );
    assert_eq!(
        answered(201, None, ok),
        DeliveryOutcome::Sent {
            provider_message_id: "wamid.HBg".into()
        }
    );
    for body in [
        r#"{"messages":[{"id":""}]}"#,
        r#"{"messages":[]}"#,
        "not json",
    ] {
        assert!(
            matches!(answered(200, None, body), DeliveryOutcome::Unknown { .. }),
            "{body}"
        );
    }
    // An error answer is never read as a success, whatever its body says.
    let error = r#"{"error":{"message":"(#131026) Message undeliverable","code":131026},"messages":[{"id":"wamid.x"}]}"#;
    assert!(matches!(
        answered(400, None, error),
        DeliveryOutcome::Failed {
            retryable: false,
            ..
        }
    ));
    assert!(matches!(
        answered(300, None, ok),
        DeliveryOutcome::Failed { .. }
    ));
}

#[test]
fn a_retry_after_is_honoured_up_to_fifteen_minutes() {
    const FIFTEEN_MINUTES_MS: u64 = 900_000;
    let busy = r#"{"error":{"message":"Service temporarily unavailable","code":2}}"#;
    let wait = |asked| match answered(503, Some(asked), busy) {
        DeliveryOutcome::Failed {
            retryable: true,
            retry_after_ms,
            ..
        } => retry_after_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(wait(FIFTEEN_MINUTES_MS), Some(FIFTEEN_MINUTES_MS));
    assert_eq!(wait(FIFTEEN_MINUTES_MS + 1), Some(FIFTEEN_MINUTES_MS));
    assert_eq!(wait(7_000), Some(7_000));
}

#[test]
fn a_stored_reason_gives_back_its_code() {
    assert_eq!(
        code_in_reason("Cloud API error 131026 (HTTP 400): x"),
        Some(131026)
    );
    assert_eq!(code_in_reason("Cloud API error -1: unknown"), Some(-1));
    // A '-' only signs the code; one later ends it.
    assert_eq!(code_in_reason("Cloud API error 12-34"), Some(12));
    assert_eq!(code_in_reason("Cloud API error --1"), None);
    assert_eq!(code_in_reason("Cloud API error"), None);
    assert_eq!(code_in_reason("HTTP 500"), None);
}

#[test]
fn a_reason_says_what_to_do_for_the_codes_whose_fix_is_not_obvious() {
    let reason = |code: i64| {
        CloudApiError {
            http_status: 400,
            code: Some(code),
            message: "m".into(),
            ..CloudApiError::default()
        }
        .reason()
    };
    for (code, advice) in [
        (131047, "24-hour customer-service window"),
        (131050, "stopped marketing messages"),
        (131026, "not on WhatsApp"),
        (0, "access token is invalid or expired"),
        (190, "access token is invalid or expired"),
        (3, "lacks permission"),
        (10, "lacks permission"),
        (200, "lacks permission"),
        (299, "lacks permission"),
        (131042, "payment problem"),
        (368, "blocked or restricted"),
        (131031, "blocked or restricted"),
        (131048, "blocked or restricted"),
        (132015, "paused or disabled"),
        (132016, "paused or disabled"),
    ] {
        let r = reason(code);
        assert!(
            r.starts_with(&format!("Cloud API error {code} (HTTP 400): m")) && r.contains(advice),
            "{code}: {r}"
        );
    }
    assert_eq!(reason(131000), "Cloud API error 131000 (HTTP 400): m");
}

#[test]
fn every_status_the_cloud_api_sends_is_read() {
    for (s, status) in [
        ("sent", ReceiptStatus::Sent),
        ("delivered", ReceiptStatus::Delivered),
        ("read", ReceiptStatus::Read),
        ("failed", ReceiptStatus::Failed),
    ] {
        assert_eq!(ReceiptStatus::parse(s), Some(status));
    }
    assert_eq!(ReceiptStatus::parse("deleted"), None);
}

#[test]
fn a_pacer_keeps_its_limits_and_each_conversation_s_gap() {
    let config = PacingConfig {
        rate_per_s: 1_000,
        burst: 1_000,
        recipient_gap_ms: 500,
    };
    let mut pacer = Pacer::new(config);
    assert_eq!(pacer.config(), config);
    let tenant = TenantId::default_tenant();
    let to = Recipient::parse("+5511913390701").unwrap();
    assert_eq!(pacer.admit(&tenant, &to, 0), Ok(()));
    assert_eq!(pacer.admit(&tenant, &to, 499), Err(1));
    assert_eq!(pacer.admit(&tenant, &to, 500), Ok(()));
}

/// The pacer remembers at most 100,000 conversations' last sends; when it
/// is full it forgets only those whose gap has passed, so a conversation
/// still inside its gap stays held back.
#[test]
fn a_full_pacer_forgets_only_conversations_whose_gap_has_passed() {
    let mut pacer = Pacer::new(PacingConfig {
        rate_per_s: 1_000_000,
        burst: 1_000_000,
        recipient_gap_ms: 500,
    });
    let tenant = TenantId::default_tenant();
    let to = |i: u32| Recipient::parse(&format!("+5511{i:09}")).unwrap();
    for i in 0..100_000 {
        assert_eq!(pacer.admit(&tenant, &to(i), 0), Ok(()));
    }
    // Full: this send sweeps the memory at 1 ms, inside everyone's gap.
    assert_eq!(pacer.admit(&tenant, &to(100_000), 1), Ok(()));
    assert_eq!(pacer.admit(&tenant, &to(0), 2), Err(498));
    assert_eq!(pacer.admit(&tenant, &to(99_999), 2), Err(498));
}
