//! Bad input on every endpoint of the real `oncesend-engine`: the right
//! status, a problem-details body, and nothing written.

use crate::common::*;

const TOKEN: &str = "t0ken";

fn unknown_field(path: &str) -> Vec<u8> {
    if path.contains("tenants") {
        br#"{"provider":"log","bogus":1}"#.to_vec()
    } else {
        br#"{"bogus":1}"#.to_vec()
    }
}

fn assert_problem(
    what: &str,
    got: (u16, String, serde_json::Value),
    status: u16,
    detail_has: &str,
) {
    let (s, ct, j) = got;
    assert_eq!(s, status, "{what}: {j}");
    assert_eq!(ct, "application/problem+json", "{what}");
    assert_eq!(j["status"], status, "{what}: {j}");
    assert!(
        j["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://")),
        "{what}: {j}"
    );
    assert!(j["title"].is_string(), "{what}: {j}");
    let detail = j["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(detail_has),
        "{what}: {detail:?} lacks {detail_has:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_bad_input_with_a_problem_and_writes_nothing() {
    let (_engine, url) = start_engine(
        &["--recipient-gap-ms", "0"],
        &[
            ("DATABASE_URL", "memory:".into()),
            ("ONCESEND_TOKEN", TOKEN.into()),
            ("ONCESEND_APP_SECRET", "app-secret".into()),
            ("ONCESEND_WEBHOOK_VERIFY_TOKEN", "verify-me".into()),
            ("ONCESEND_PHONE_NUMBER_ID", "1234".into()),
        ],
    )
    .await;
    let api = Api::new(&url, Some(TOKEN));
    let wrong = Api::new(&url, Some("nope"));
    let anon = Api::new(&url, None);
    let run_id = "01a223cc-8d84-7a53-b07a-5027eed1b529";
    let flow_body = br#"{"steps":[{"text":"Hi {{name}}","delay_ms":0}]}"#.to_vec();
    let trigger_body = br#"{"to":"+5511913390707","vars":{"name":"Ana"}}"#.to_vec();
    let send_body = format!(
        r#"{{"key":"{run_id}:0","epoch":1,"tenant":"default","to":"+5511913390707","message":{{"type":"text","text":{{"body":"x"}}}}}}"#
    )
    .into_bytes();
    let batch_body = format!(
        r#"{{"messages":[{}]}}"#,
        String::from_utf8_lossy(&send_body)
    )
    .into_bytes();
    let key_header = vec![("idempotency-key", format!("{run_id}:0"))];
    let guarded: Vec<(&str, String, Option<Vec<u8>>)> = vec![
        ("PUT", "/v1/flows/welcome".into(), Some(flow_body.clone())),
        (
            "POST",
            "/v1/flows/welcome/runs".into(),
            Some(trigger_body.clone()),
        ),
        ("GET", format!("/v1/runs/{run_id}"), None),
        ("GET", "/v1/runs".into(), None),
        ("POST", format!("/v1/runs/{run_id}/cancel"), None),
        ("POST", "/v1/messages".into(), Some(send_body.clone())),
        (
            "POST",
            "/v1/messages/batch".into(),
            Some(batch_body.clone()),
        ),
        (
            "PUT",
            "/v1/tenants/acme".into(),
            Some(br#"{"provider":"log"}"#.to_vec()),
        ),
    ];
    for (m, path, body) in &guarded {
        let what = format!("{m} {path}");
        assert_problem(
            &format!("{what} wrong token"),
            wrong.raw(m, path, &key_header, body.clone()).await,
            401,
            "token is wrong",
        );
        assert_problem(
            &format!("{what} no token"),
            anon.raw(m, path, &key_header, body.clone()).await,
            401,
            "missing",
        );
    }

    let bodies: Vec<(&str, &str)> = vec![
        ("PUT", "/v1/flows/welcome"),
        ("POST", "/v1/flows/welcome/runs"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/batch"),
        ("PUT", "/v1/tenants/acme"),
    ];
    let huge = {
        let mut b = br#"{"steps":[{"text":""#.to_vec();
        b.extend(std::iter::repeat_n(b'a', 70 * 1024));
        b.extend(br#""}]}"#);
        b
    };
    for (m, path) in &bodies {
        let what = format!("{m} {path}");
        assert_problem(
            &format!("{what} malformed"),
            api.raw(m, path, &key_header, Some(b"{,}".to_vec())).await,
            400,
            "malformed JSON",
        );
        assert_problem(
            &format!("{what} unknown field"),
            api.raw(m, path, &key_header, Some(unknown_field(path)))
                .await,
            422,
            "bogus",
        );
        assert_problem(
            &format!("{what} huge"),
            api.raw(m, path, &key_header, Some(huge.clone())).await,
            413,
            "over",
        );
        assert_problem(
            &format!("{what} empty"),
            api.raw(m, path, &key_header, None).await,
            400,
            "JSON body",
        );
    }
    // A batch of sends: empty, too many, and one bad message spoil it all.
    assert_problem(
        "empty batch",
        api.raw(
            "POST",
            "/v1/messages/batch",
            &[],
            Some(br#"{"messages":[]}"#.to_vec()),
        )
        .await,
        422,
        "at least one",
    );
    let many = format!(
        r#"{{"messages":[{}]}}"#,
        vec![String::from_utf8_lossy(&send_body).to_string(); 1001].join(",")
    );
    let (s, _, j) = api
        .raw("POST", "/v1/messages/batch", &[], Some(many.into_bytes()))
        .await;
    // 1001 messages of this size are over the 64 KiB body limit.
    assert_eq!(s, 413, "{j}");
    let bad_phone = format!(
        r#"{{"messages":[{},{{"key":"{run_id}:1","epoch":1,"tenant":"default","to":"12","message":{{"type":"text","text":{{"body":"x"}}}}}}]}}"#,
        String::from_utf8_lossy(&send_body)
    );
    assert_problem(
        "bad phone in a batch",
        api.raw(
            "POST",
            "/v1/messages/batch",
            &[],
            Some(bad_phone.into_bytes()),
        )
        .await,
        422,
        "messages[1]",
    );
    // Unknown fields inside a step and beside the provider are refused too.
    assert_problem(
        "step field",
        api.raw(
            "PUT",
            "/v1/flows/welcome",
            &[],
            Some(br#"{"steps":[{"text":"x","dealy_ms":5}]}"#.to_vec()),
        )
        .await,
        422,
        "dealy_ms",
    );
    assert_problem(
        "tenant field",
        api.raw(
            "PUT",
            "/v1/tenants/acme",
            &[],
            Some(br#"{"provider":"log","x":1}"#.to_vec()),
        )
        .await,
        422,
        "x",
    );
    assert_problem("bad tenant settings", api.raw("PUT", "/v1/tenants/acme", &[], Some(br#"{"provider":"cloud-api","cloud_api":{"base_url":"graph.facebook.com","version":"v21.0","phone_number_id":"1","token":"t"}}"#.to_vec())).await, 422, "base_url");
    assert_problem(
        "default tenant",
        api.raw(
            "PUT",
            "/v1/tenants/default",
            &[],
            Some(br#"{"provider":"log"}"#.to_vec()),
        )
        .await,
        422,
        "default",
    );
    assert_problem(
        "empty flow",
        api.raw(
            "PUT",
            "/v1/flows/welcome",
            &[],
            Some(br#"{"steps":[]}"#.to_vec()),
        )
        .await,
        422,
        "1 to 50 steps",
    );
    // Lengths are characters, as the Cloud API counts them, and a text
    // that could never be sent is refused when the flow is put.
    let long = format!(r#"{{"steps":[{{"text":"{}"}}]}}"#, "a".repeat(5000));
    assert_problem(
        "5,000-character text",
        api.raw("PUT", "/v1/flows/welcome", &[], Some(long.into_bytes()))
            .await,
        422,
        "steps[0].text: text is 5000 characters; a message may be at most 4096",
    );
    // Message steps: each refusal names the JSON path, and stores nothing.
    let buttons = |n: usize| {
        let b: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": "t"}}))
            .collect();
        serde_json::json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "x"}, "action": {"buttons": b}}})
    };
    let message_cases = [
        (
            serde_json::json!({"message": {"type": "fax", "fax": {}}}),
            "steps[0].message.type",
            "unknown message type \"fax\"",
        ),
        (
            serde_json::json!({"text": "hi", "message": {"type": "text", "text": {"body": "hi"}}}),
            "steps[0]",
            "exactly one of \"text\" or \"message\"",
        ),
        (
            serde_json::json!({"message": {"type": "template", "template": {"name": "order_ready"}}}),
            "steps[0].message.template.language",
            "missing",
        ),
        (
            serde_json::json!({"message": {"type": "image", "image": {"link": "http://example.com/a.png"}}}),
            "steps[0].message.image.link",
            "https://",
        ),
        (
            serde_json::json!({"message": buttons(4)}),
            "steps[0].message.interactive.action.buttons",
            "4 reply buttons; at least 1 and at most 3",
        ),
        (
            serde_json::json!({"message": {"type": "text", "text": {"body": "hi", "bold": true}}}),
            "steps[0].message.text.bold",
            "unknown field",
        ),
    ];
    for (step, path, detail) in message_cases {
        let body = serde_json::to_vec(&serde_json::json!({"steps": [step]})).unwrap();
        let got = api.raw("PUT", "/v1/flows/welcome", &[], Some(body)).await;
        assert_eq!(got.2["path"], path, "{step}: {}", got.2);
        assert_problem(&format!("{step}"), got, 422, detail);
    }
    assert_problem(
        "no flow was stored",
        api.raw("GET", "/v1/flows/welcome", &[], None).await,
        404,
        "no flow \"welcome\"",
    );
    assert_problem(
        "bad flow name",
        api.raw("PUT", "/v1/flows/we%20lcome", &[], Some(flow_body.clone()))
            .await,
        422,
        "flow id",
    );

    // Triggers: unknown flow, then (with the flow) bad phone, unknown
    // tenant, missing variable.
    assert_problem(
        "unknown flow",
        api.raw(
            "POST",
            "/v1/flows/welcome/runs",
            &[],
            Some(trigger_body.clone()),
        )
        .await,
        404,
        "no flow",
    );
    let (s, _, j) = api
        .raw("PUT", "/v1/flows/welcome", &[], Some(flow_body.clone()))
        .await;
    assert_eq!(s, 201, "{j}");
    for (to, why) in [
        ("5511913390707", "must start with '+'"),
        ("+55 11 9133", "only digits"),
        ("+123", "8 to 15 digits"),
    ] {
        let body = serde_json::json!({"to": to, "vars": {"name": "Ana"}});
        assert_problem(
            &format!("phone {to}"),
            api.raw(
                "POST",
                "/v1/flows/welcome/runs",
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await,
            422,
            why,
        );
    }
    let body = br#"{"tenant":"ghost","to":"+5511913390707","vars":{"name":"Ana"}}"#.to_vec();
    assert_problem(
        "unknown tenant",
        api.raw("POST", "/v1/flows/welcome/runs", &[], Some(body))
            .await,
        422,
        "unknown tenant \"ghost\"",
    );
    let body = br#"{"to":"+5511913390707","vars":{}}"#.to_vec();
    assert_problem(
        "missing var",
        api.raw("POST", "/v1/flows/welcome/runs", &[], Some(body))
            .await,
        422,
        "name",
    );
    assert_problem(
        "bad var",
        api.raw(
            "POST",
            "/v1/flows/welcome/runs",
            &[],
            Some(br#"{"to":"+5511913390707","vars":{"name":[1]}}"#.to_vec()),
        )
        .await,
        422,
        "vars.name",
    );

    // Runs: unknown and malformed ids, a bad list filter.
    assert_problem(
        "unknown run",
        api.raw("GET", &format!("/v1/runs/{run_id}"), &[], None)
            .await,
        404,
        "no run",
    );
    assert_problem(
        "bad run id",
        api.raw("GET", "/v1/runs/not-a-uuid", &[], None).await,
        404,
        "UUID",
    );
    assert_problem(
        "cancel unknown",
        api.raw("POST", &format!("/v1/runs/{run_id}/cancel"), &[], None)
            .await,
        404,
        "no run",
    );
    assert_problem(
        "bad status",
        api.raw("GET", "/v1/runs?status=done", &[], None).await,
        422,
        "done",
    );
    assert_problem(
        "bad query",
        api.raw("GET", "/v1/runs?bogus=1", &[], None).await,
        422,
        "bogus",
    );

    // The send API: the key header must be there and match.
    assert_problem(
        "no key",
        api.raw("POST", "/v1/messages", &[], Some(send_body.clone()))
            .await,
        400,
        "Idempotency-Key",
    );
    assert_problem(
        "other key",
        api.raw(
            "POST",
            "/v1/messages",
            &[("idempotency-key", format!("{run_id}:1"))],
            Some(send_body.clone()),
        )
        .await,
        400,
        "must equal",
    );
    let bad_to = String::from_utf8(send_body.clone())
        .unwrap()
        .replace("+5511913390707", "5511");
    assert_problem(
        "send bad phone",
        api.raw(
            "POST",
            "/v1/messages",
            &key_header,
            Some(bad_to.into_bytes()),
        )
        .await,
        422,
        "phone number",
    );

    // The webhook: signature checked before anything is read.
    let hook = "/v1/providers/cloud-api/webhook";
    let payload = br#"{"entry":[]}"#.to_vec();
    assert_problem(
        "unsigned webhook",
        anon.raw("POST", hook, &[], Some(payload.clone())).await,
        401,
        "X-Hub-Signature-256",
    );
    let forged = oncesend::api::webhook::sign("wrong-secret", &payload);
    assert_problem(
        "forged webhook",
        anon.raw(
            "POST",
            hook,
            &[("x-hub-signature-256", forged)],
            Some(payload.clone()),
        )
        .await,
        401,
        "HMAC",
    );
    // A forged opt-out writes nothing.
    let stop = br#"{"entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"1234"},"messages":[{"from":"5511913390707","type":"text","text":{"body":"STOP"}}]}}]}]}"#.to_vec();
    let forged = oncesend::api::webhook::sign("wrong-secret", &stop);
    assert_problem(
        "forged opt-out",
        anon.raw("POST", hook, &[("x-hub-signature-256", forged)], Some(stop))
            .await,
        401,
        "HMAC",
    );
    let (s, j) = api
        .get("/v1/tenants/default/recipients/+5511913390707")
        .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["suppressed"], serde_json::Value::Null, "{j}");
    assert_eq!(j["last_inbound_ms"], serde_json::Value::Null, "{j}");
    let huge = vec![b' '; 70 * 1024];
    let signed = oncesend::api::webhook::sign("app-secret", &huge);
    assert_problem(
        "oversized webhook",
        anon.raw("POST", hook, &[("x-hub-signature-256", signed)], Some(huge))
            .await,
        413,
        "bytes",
    );
    let bad = b"{not json".to_vec();
    let signed = oncesend::api::webhook::sign("app-secret", &bad);
    assert_problem(
        "malformed webhook",
        anon.raw("POST", hook, &[("x-hub-signature-256", signed)], Some(bad))
            .await,
        400,
        "malformed",
    );
    assert_problem(
        "wrong verify token",
        anon.raw(
            "GET",
            &format!("{hook}?hub.mode=subscribe&hub.verify_token=x&hub.challenge=42"),
            &[],
            None,
        )
        .await,
        403,
        "verify_token",
    );
    let (s, _, _) = anon
        .raw(
            "GET",
            &format!("{hook}?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=42"),
            &[],
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_problem(
        "no such endpoint",
        api.raw("GET", "/v2/nothing", &[], None).await,
        404,
        "no such endpoint",
    );
    // Pausing, resuming or reading a tenant that does not exist.
    for (method, path) in [
        ("POST", "/v1/tenants/ghost/pause"),
        ("POST", "/v1/tenants/ghost/resume"),
        ("GET", "/v1/tenants/ghost"),
    ] {
        assert_problem(
            &format!("{method} {path}"),
            api.raw(method, path, &[], None).await,
            404,
            "PUT /v1/tenants/ghost",
        );
    }
    assert_problem(
        "pause reason of the wrong type",
        api.raw(
            "POST",
            "/v1/tenants/default/pause",
            &[],
            Some(br#"{"reason":7}"#.to_vec()),
        )
        .await,
        422,
        "reason",
    );
    assert_problem(
        "pause with an unknown field",
        api.raw(
            "POST",
            "/v1/tenants/default/pause",
            &[],
            Some(br#"{"why":"x"}"#.to_vec()),
        )
        .await,
        422,
        "why",
    );
    assert_problem(
        "pause reason too long",
        api.raw(
            "POST",
            "/v1/tenants/default/pause",
            &[],
            Some(format!(r#"{{"reason":"{}"}}"#, "é".repeat(501)).into_bytes()),
        )
        .await,
        422,
        "at most 500 characters",
    );
    let (s, j) = api.get("/v1/tenants/default").await;
    assert_eq!((s, &j["paused"]), (200, &serde_json::Value::Null), "{j}");

    // Operator actions on what is not there, or said wrongly.
    for (what, method, path, body, status, needle) in [
        (
            "retry unknown run",
            "POST",
            format!("/v1/runs/{run_id}/retry"),
            None,
            404,
            "no run",
        ),
        (
            "resolve unknown run",
            "POST",
            format!("/v1/runs/{run_id}/steps/0/resolve"),
            Some(r#"{"as":"sent"}"#),
            404,
            "no run",
        ),
        (
            "resolve step not a number",
            "POST",
            format!("/v1/runs/{run_id}/steps/x/resolve"),
            Some(r#"{"as":"sent"}"#),
            404,
            "numbered from 0",
        ),
        (
            "resolve without as",
            "POST",
            format!("/v1/runs/{run_id}/steps/0/resolve"),
            Some("{}"),
            422,
            "as",
        ),
        (
            "bulk without filter",
            "POST",
            "/v1/runs/cancel".to_string(),
            Some("{}"),
            422,
            "at least one filter",
        ),
        (
            "bulk retry of completed",
            "POST",
            "/v1/runs/retry".to_string(),
            Some(r#"{"status":"completed"}"#),
            422,
            "only failed runs",
        ),
        (
            "list by a status that is none",
            "GET",
            "/v1/runs?status=done".to_string(),
            None,
            422,
            "waiting",
        ),
        (
            "suppress a number that is none",
            "PUT",
            "/v1/tenants/default/suppressions/12ab".to_string(),
            None,
            422,
            "E.164",
        ),
        (
            "suppress in an unknown tenant",
            "PUT",
            "/v1/tenants/acme/suppressions/+5511913390707".to_string(),
            None,
            404,
            "acme",
        ),
        (
            "lift what is not there",
            "DELETE",
            "/v1/tenants/default/suppressions/+5511913390707".to_string(),
            None,
            404,
            "has not opted out",
        ),
    ] {
        assert_problem(
            what,
            api.raw(method, &path, &[], body.map(|b| b.as_bytes().to_vec()))
                .await,
            status,
            needle,
        );
    }

    // Nothing was written: no runs at all, no tenant.
    let (s, j) = api.get("/v1/runs").await;
    assert_eq!(s, 200);
    assert_eq!(j["runs"], serde_json::json!([]), "{j}");
    let body = br#"{"tenant":"acme","to":"+5511913390707","vars":{"name":"Ana"}}"#.to_vec();
    assert_problem(
        "tenant not created",
        api.raw("POST", "/v1/flows/welcome/runs", &[], Some(body))
            .await,
        422,
        "acme",
    );
}
