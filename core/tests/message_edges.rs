//! The message checks at their edges: each Cloud API limit's largest
//! accepted value and first refused one, and what a template may leave to
//! a variable.

use oncesend_core::{Message, MessageError, MessageTemplate};
use serde_json::{json, Value};

fn checked(v: Value) -> Result<Message, MessageError> {
    Message::checked(v)
}

fn refused(v: Value) -> MessageError {
    checked(v.clone()).expect_err(&format!("{v} must be refused"))
}

fn image(link: &str) -> Value {
    json!({"type": "image", "image": {"link": link}})
}

#[test]
fn a_media_link_is_an_https_url_with_something_after_the_scheme() {
    assert!(checked(image("https://a")).is_ok());
    assert!(checked(image("HTTPS://example.com/a.png")).is_ok());
    let e = refused(image("https://"));
    assert_eq!(e.path, "image.link", "{e}");
    refused(image("http://example.com/a.png"));
}

fn location(lat: Value) -> Value {
    json!({"type": "location", "location": {"latitude": lat, "longitude": 10}})
}

#[test]
fn a_location_may_leave_its_coordinates_to_a_variable_until_rendered() {
    // Rendered: a number, or a string holding one, within range.
    assert!(checked(location(json!("45.5"))).is_ok());
    assert!(checked(location(json!(-90))).is_ok());
    let e = refused(location(json!("100")));
    assert_eq!(e.path, "location.latitude", "{e}");
    assert!(e.problem.contains("-90 to 90"), "{e}");
    refused(location(json!("{{lat}}")));
    // In a flow: a variable is checked once rendered, a literal now.
    assert!(MessageTemplate::parse(location(json!("{{lat}}"))).is_ok());
    assert!(MessageTemplate::parse(location(json!("100"))).is_err());
}

fn template(components: Value) -> Value {
    json!({
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en"}, "components": components},
    })
}

fn text_param(kind: &str, chars: usize) -> Value {
    template(json!([{"type": kind, "parameters": [{"type": "text", "text": "x".repeat(chars)}]}]))
}

#[test]
fn a_template_s_text_parameters_keep_to_their_component_s_length() {
    assert!(checked(text_param("header", 60)).is_ok());
    let e = refused(text_param("header", 61));
    assert_eq!(e.path, "template.components[0].parameters[0].text", "{e}");
    assert!(checked(text_param("body", 61)).is_ok());
    assert!(checked(text_param("body", 4096)).is_ok());
    refused(text_param("body", 4097));
}

#[test]
fn a_template_s_media_parameter_is_checked_as_media() {
    let media = |v: Value| template(json!([{"type": "header", "parameters": [v]}]));
    assert!(checked(media(
        json!({"type": "image", "image": {"link": "https://a/b.png"}})
    ))
    .is_ok());
    let e = refused(media(
        json!({"type": "image", "image": {"link": "http://a/b.png"}}),
    ));
    assert_eq!(
        e.path, "template.components[0].parameters[0].image.link",
        "{e}"
    );
    refused(media(json!({"type": "document", "document": {}})));
}

#[test]
fn header_and_body_parameters_are_all_named_or_all_positional() {
    let params = |a: Value, b: Value| {
        template(json!([
            {"type": "header", "parameters": [a]},
            {"type": "body", "parameters": [b]},
        ]))
    };
    let named = |n: &str| json!({"type": "text", "text": "x", "parameter_name": n});
    let positional = json!({"type": "text", "text": "x"});
    assert!(checked(params(named("name"), named("order_2"))).is_ok());
    assert!(checked(params(positional.clone(), positional.clone())).is_ok());
    let e = refused(params(named("name"), positional.clone()));
    assert_eq!(e.path, "template.components[1].parameters[0]", "{e}");
    // A button's parameters are not part of it.
    let with_button = template(json!([
        {"type": "body", "parameters": [named("name")]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "x"}]},
    ]));
    assert!(checked(with_button).is_ok());
    // A name: 1 to 20 lowercase letters, digits or '_'.
    assert!(checked(params(named(&"a".repeat(20)), named("b"))).is_ok());
    for bad in ["a".repeat(21), "Name".to_string(), "with space".to_string()] {
        let e = refused(params(named(&bad), named("b")));
        assert_eq!(
            e.path, "template.components[0].parameters[0].parameter_name",
            "{bad}: {e}"
        );
    }
}

fn interactive(kind: &str, header: Value, action: Value) -> Value {
    json!({"type": "interactive", "interactive": {
        "type": kind, "header": header, "body": {"text": "pick"}, "action": action,
    }})
}

fn list_action(sections: usize, rows_each: usize, titled: bool) -> Value {
    let sections: Vec<Value> = (0..sections)
        .map(|s| {
            let rows: Vec<Value> = (0..rows_each)
                .map(|r| json!({"id": format!("s{s}r{r}"), "title": "row"}))
                .collect();
            if titled {
                json!({"title": format!("section {s}"), "rows": rows})
            } else {
                json!({"rows": rows})
            }
        })
        .collect();
    json!({"button": "Choose", "sections": sections})
}

#[test]
fn a_list_s_header_is_text_and_a_button_message_s_may_be_media() {
    let text = json!({"type": "text", "text": "Menu"});
    let img = json!({"type": "image", "image": {"link": "https://a/b.png"}});
    assert!(checked(interactive("list", text, list_action(1, 1, true))).is_ok());
    let e = refused(interactive("list", img.clone(), list_action(1, 1, true)));
    assert_eq!(e.path, "interactive.header.type", "{e}");
    assert_eq!(e.problem, "a list message's header is text, not \"image\"");
    let buttons = json!({"buttons": [{"type": "reply", "reply": {"id": "y", "title": "Yes"}}]});
    assert!(checked(interactive("button", img, buttons.clone())).is_ok());
    let e = refused(interactive("button", json!({"type": "location"}), buttons));
    assert_eq!(
        e.problem,
        "a button message's header is text, image, video or document, not \"location\""
    );
}

#[test]
fn a_list_holds_one_to_ten_sections_and_ten_rows_in_all() {
    let text = json!({"type": "text", "text": "Menu"});
    let list = |action| interactive("list", text.clone(), action);
    assert!(checked(list(list_action(10, 1, true))).is_ok());
    let e = refused(list(list_action(11, 1, true)));
    assert_eq!(e.path, "interactive.action.sections", "{e}");
    assert!(e.problem.starts_with("11 sections"), "{e}");
    refused(list(list_action(0, 1, true)));
    assert!(checked(list(list_action(1, 10, false))).is_ok());
    assert!(checked(list(list_action(2, 5, true))).is_ok());
    let e = refused(list(list_action(2, 6, true)));
    assert!(e.problem.contains("at most 10"), "{e}");
    // One section may go without a title; several each need one.
    let e = refused(list(list_action(2, 1, false)));
    assert_eq!(e.path, "interactive.action.sections[0].title", "{e}");
}

#[test]
fn a_message_may_be_exactly_as_large_as_its_bound() {
    let max = oncesend_core::limits::MAX_MESSAGE_BYTES;
    // {"type":"text","text":{"body":"…"}} is 34 bytes around the body.
    let sized = |body: usize| {
        Message::try_from(json!({"type": "text", "text": {"body": "a".repeat(body)}})).unwrap()
    };
    let at_bound = sized(max - 34);
    assert_eq!(at_bound.encoded_len(), max);
    assert!(at_bound.check_size().is_ok());
    let over = sized(max - 33).check_size().unwrap_err();
    assert!(
        over.problem.contains(&format!("{} bytes", max + 1)),
        "{over}"
    );
}
