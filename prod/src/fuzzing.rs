//! Bodies of the fuzz targets that exercise production's parsers, one
//! function per target, each taking the fuzzer's raw bytes. They live here
//! so `cargo test` replays `fuzz/corpus/<target>/` without libFuzzer.

use crate::api::webhook::{sign, signature_ok, statuses};
use crate::api::{parse_flow_body, parse_send_batch, parse_trigger_body, trigger_vars, Problem};
use crate::provider::cloud_api::outcome;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use oncesend_core::flow::Trigger;
use oncesend_core::fuzzing::ByteReader;
use oncesend_core::limits::MAX_STEPS;
use oncesend_core::provider_error::{
    classify_cloud_api, ErrorClass, FAIL_STEP_CODES, MAX_RETRY_AFTER_MS, RETRY_CODES,
    RETRY_LATER_MIN_MS,
};
use oncesend_core::{
    plan_run, DeliveryOutcome, Flow, FlowId, FlowStep, PlanError, RunId, Template,
};

/// A refusal of a client's body is the client's fault: 400 or 422, worded.
fn refused(p: Problem) {
    assert!(
        p.status == StatusCode::BAD_REQUEST || p.status == StatusCode::UNPROCESSABLE_ENTITY,
        "a body was refused with {}: {}",
        p.status,
        p.detail
    );
    assert!(!p.detail.is_empty());
    let _ = p.into_response();
}

/// `api_json`: `data` as the body of `PUT /v1/flows/{flow}` and of
/// `POST /v1/flows/{flow}/runs`, through the handlers' own parsing. Nothing
/// panics; refusals are 400 or 422; a body that is accepted, written back
/// as JSON, is accepted again as the same request; an accepted trigger
/// plans a run (or is refused with a reason) against a flow using its vars.
pub fn api_json(data: &[u8]) {
    let id = FlowId::new("fuzz").expect("valid");
    match parse_flow_body(id.clone(), data) {
        Ok(req) => {
            assert!((1..=MAX_STEPS).contains(&req.flow.steps().len()));
            let again = serde_json::to_vec(&serde_json::json!({
                "tenant": req.tenant,
                "steps": req.flow.steps(),
            }))
            .expect("a flow serializes");
            match parse_flow_body(id.clone(), &again) {
                Ok(back) => assert_eq!(back, req, "flow did not round-trip"),
                Err(p) => panic!("a written-back flow was refused: {}", p.detail),
            }
            let stored = serde_json::to_vec(&req.flow).expect("a flow serializes");
            let back: Flow = serde_json::from_slice(&stored).expect("a stored flow reads back");
            assert_eq!(back, req.flow);
        }
        Err(p) => refused(p),
    }
    match parse_trigger_body(data) {
        Ok(req) => {
            let again = serde_json::to_vec(&serde_json::json!({
                "tenant": req.tenant,
                "to": req.to,
                "vars": req.vars,
            }))
            .expect("a trigger serializes");
            match parse_trigger_body(&again) {
                Ok(back) => {
                    assert_eq!(back.tenant, req.tenant);
                    assert_eq!(back.to, req.to);
                    assert_eq!(
                        trigger_vars(back.vars).ok(),
                        trigger_vars(req.vars.clone()).ok(),
                        "trigger vars did not round-trip"
                    );
                }
                Err(p) => panic!("a written-back trigger was refused: {}", p.detail),
            }
            match trigger_vars(req.vars) {
                Ok(vars) => plan(req.tenant, req.to, vars),
                Err(p) => refused(p),
            }
        }
        Err(p) => refused(p),
    }
    match parse_send_batch(data) {
        Ok(batch) => {
            let n = batch.messages.len();
            assert!((1..=oncesend_core::limits::MAX_SEND_BATCH).contains(&n));
            let again = serde_json::to_vec(&batch).expect("a batch serializes");
            match parse_send_batch(&again) {
                Ok(back) => assert_eq!(back, batch, "send batch did not round-trip"),
                Err(p) => panic!("a written-back send batch was refused: {}", p.detail),
            }
        }
        Err(p) => refused(p),
    }
}

/// Plans a run of a flow with one step per variable whose name a template
/// accepts (and one plain step), as the trigger handler would.
fn plan(
    tenant: oncesend_core::TenantId,
    to: oncesend_core::Recipient,
    vars: std::collections::BTreeMap<String, String>,
) {
    let mut steps = vec![FlowStep::text(Template::parse("hello").expect("valid"), 0)];
    for name in vars.keys().take(MAX_STEPS - 1) {
        if let Ok(text) = Template::parse(&format!("Hi {{{{{name}}}}}!")) {
            steps.push(FlowStep::text(text, 5));
        }
    }
    let flow = Flow::new(FlowId::new("fuzz").expect("valid"), steps).expect("within bounds");
    let trigger = Trigger {
        tenant,
        to,
        vars: vars.clone(),
        trigger_key: None,
    };
    match plan_run(&flow, trigger, RunId::new(1, 2)) {
        Ok(run) => {
            assert_eq!(run.steps.len(), flow.steps().len());
            for (s, p) in flow.steps().iter().zip(&run.steps) {
                assert_eq!(Ok(&p.message), s.render(&vars).as_ref());
            }
        }
        Err(PlanError::Vars(_) | PlanError::Step { .. }) => {}
        Err(e) => panic!("planning refused a trigger for {e}"),
    }
}

/// `cloud_api_response`: the first two bytes are an HTTP status, then
/// (each led by a length byte) a `Retry-After` value, a webhook secret and
/// an `X-Hub-Signature-256` value, then the body. The body is classified as
/// a Cloud API answer and read as a status webhook. Nothing panics; the
/// classification follows the core's rule; only the body's own signature
/// passes the check.
pub fn cloud_api_response(data: &[u8]) {
    let mut r = ByteReader::new(data);
    let raw_status = r.u16();
    let n = r.below(16) as usize;
    let retry_after = r.take(n);
    let n = r.below(24) as usize;
    let secret = String::from_utf8_lossy(r.take(n)).into_owned();
    let n = r.below(96) as usize;
    let header = r.take(n);
    let body = r.rest();

    // The core's rule, for any status and code.
    let code = body
        .get(..8)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
    let class = classify_cloud_api(raw_status, code);
    if code.is_some_and(|c| RETRY_CODES.contains(&c)) {
        assert_eq!(class, ErrorClass::Retry);
    }
    if raw_status >= 500 && class == ErrorClass::FailStep {
        assert!(
            code.is_some_and(|c| FAIL_STEP_CODES.contains(&c)),
            "a 5xx failed the step without a code that says so"
        );
    }

    let status = StatusCode::from_u16(100 + raw_status % 900).expect("100..=999");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(retry_after) {
        headers.insert(axum::http::header::RETRY_AFTER, v);
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match outcome(status, &headers, body) {
        DeliveryOutcome::Sent {
            provider_message_id,
        } => {
            assert!(status.is_success(), "{status} taken as sent");
            let id = json.as_ref().and_then(|j| j.pointer("/messages/0/id"));
            assert_eq!(
                id.and_then(|v| v.as_str()),
                Some(provider_message_id.as_str())
            );
        }
        DeliveryOutcome::Unknown { .. } => assert!(status.is_success()),
        DeliveryOutcome::SenderBlocked { code, .. } => {
            assert!(!status.is_success());
            let class = classify_cloud_api(status.as_u16(), code);
            assert!(
                matches!(class, ErrorClass::PauseSender | ErrorClass::PauseTemplate),
                "{code:?} blocked the sender"
            );
        }
        DeliveryOutcome::Failed {
            retryable,
            retry_after_ms,
            ..
        } => {
            assert!(!status.is_success());
            let code = json
                .as_ref()
                .and_then(|j| j.pointer("/error/code"))
                .and_then(|c| c.as_i64());
            let class = classify_cloud_api(status.as_u16(), code);
            assert!(!matches!(
                class,
                ErrorClass::PauseSender | ErrorClass::PauseTemplate
            ));
            assert_eq!(retryable, class != ErrorClass::FailStep);
            assert!(retryable || retry_after_ms.is_none());
            assert!(
                retry_after_ms.is_none_or(|ms| ms <= MAX_RETRY_AFTER_MS.max(RETRY_LATER_MIN_MS))
            );
        }
    }

    // The status webhook: the signature first, then the payload.
    let header = std::str::from_utf8(header).ok();
    let good = sign(&secret, body);
    assert!(signature_ok(&secret, Some(&good), body));
    assert!(!signature_ok(&secret, None, body));
    if signature_ok(&secret, header, body) {
        let given = header
            .and_then(|h| h.strip_prefix("sha256="))
            .map(|h| h.trim().to_ascii_lowercase());
        assert_eq!(
            given.as_deref(),
            good.strip_prefix("sha256="),
            "a forged signature passed"
        );
    }
    let mut tampered = body.to_vec();
    tampered.push(b' ');
    assert!(!signature_ok(&secret, Some(&good), &tampered));
    if let Some(payload) = json {
        for s in statuses(&payload) {
            if let Some(key) = s.key {
                assert_eq!(key.to_string().parse().ok(), Some(key));
            }
        }
        // Inbound messages: a sender is always a valid number, and a
        // keyword is matched on the whole text, trimmed, in any case.
        let keywords = crate::api::Keywords::default();
        for m in crate::api::webhook::inbound(&payload) {
            if let Some(from) = &m.from {
                assert_eq!(
                    oncesend_core::Recipient::parse(from.as_str()).ok().as_ref(),
                    Some(from)
                );
            }
            if let Some(text) = &m.text {
                let verdict = keywords.classify(text);
                assert_eq!(keywords.classify(&format!("  {text}\n")), verdict);
                assert_eq!(keywords.classify(&text.to_lowercase()), verdict);
                if verdict.is_some() {
                    assert!(
                        text.trim().chars().count() <= 11,
                        "{text:?} matched a keyword"
                    );
                }
            }
        }
    }
}
