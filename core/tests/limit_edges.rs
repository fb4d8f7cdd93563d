//! The bounds of `limits` and the names of `ids`, each at its edge: the
//! largest accepted value and the first refused one.

use oncesend_core::limits::{clip_reason, MAX_REASON_BYTES};
use oncesend_core::{FlowId, MessageTemplate, TenantId, WorkerId};

#[test]
fn names_are_accepted_up_to_their_length_and_refused_past_it() {
    for (max, ok, too_long) in [
        (
            64,
            TenantId::new("t".repeat(64)).is_ok(),
            TenantId::new("t".repeat(65)).is_err(),
        ),
        (
            64,
            FlowId::new("f".repeat(64)).is_ok(),
            FlowId::new("f".repeat(65)).is_err(),
        ),
        (
            128,
            WorkerId::new("w".repeat(128)).is_ok(),
            WorkerId::new("w".repeat(129)).is_err(),
        ),
    ] {
        assert!(ok, "a name of {max} characters is accepted");
        assert!(too_long, "a name of {} characters is refused", max + 1);
    }
    let e = FlowId::new("f".repeat(65)).unwrap_err().to_string();
    assert!(e.contains("64"), "{e}");
    assert!(FlowId::new("").is_err());
}

/// A step's longest wait, as the README and the error word it.
const THIRTY_DAYS_MS: u64 = 30 * 86_400_000;

#[test]
fn a_step_may_wait_thirty_days_and_not_a_millisecond_more() {
    let flow = |delay_ms: u64| {
        serde_json::from_value::<oncesend_core::Flow>(serde_json::json!({
            "id": "long_wait",
            "steps": [{"text": "hi"}, {"text": "later", "delay_ms": delay_ms}],
        }))
    };
    assert!(flow(THIRTY_DAYS_MS).is_ok());
    let e = flow(THIRTY_DAYS_MS + 1).unwrap_err().to_string();
    assert!(e.contains("30 days"), "{e}");
}

#[test]
fn a_reason_is_clipped_to_its_bound_on_a_character_boundary() {
    let exact = "r".repeat(MAX_REASON_BYTES);
    assert_eq!(clip_reason(&exact), exact);
    assert_eq!(clip_reason("short"), "short");
    let long = "r".repeat(MAX_REASON_BYTES + 10);
    assert_eq!(clip_reason(&long), exact);
    // A two-byte character across the bound is left out whole.
    let straddling = format!("{}é{}", "r".repeat(MAX_REASON_BYTES - 1), "tail");
    let clipped = clip_reason(&straddling);
    assert_eq!(clipped, "r".repeat(MAX_REASON_BYTES - 1));
    // One that ends exactly at the bound is kept.
    let ending = format!("{}é{}", "r".repeat(MAX_REASON_BYTES - 2), "tail");
    assert_eq!(
        clip_reason(&ending),
        format!("{}é", "r".repeat(MAX_REASON_BYTES - 2))
    );
}

#[test]
fn a_bad_template_inside_an_array_is_found_and_named_by_its_index() {
    let e = MessageTemplate::parse(serde_json::json!({
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "fine {{name}}"},
                {"type": "text", "text": "broken {{name"},
            ]}],
        },
    }))
    .unwrap_err();
    assert_eq!(e.path, "template.components[0].parameters[1].text", "{e}");
}

#[test]
fn an_unclosed_variable_is_placed_by_its_byte_offset_in_the_whole_text() {
    use oncesend_core::template::{Template, TemplateError};
    assert_eq!(
        Template::parse("Hi {{a}} and {{b}}, {{c").unwrap_err(),
        TemplateError::Unclosed { at: 20 }
    );
    assert_eq!(
        Template::parse("{{x").unwrap_err(),
        TemplateError::Unclosed { at: 0 }
    );
}
