//! End to end through the real `oncesend up` process and a mock Cloud API
//! that throttles, refuses and drops: 300 runs of 3 steps over 100
//! recipients, every step delivered exactly once and in order, or reported
//! `unknown` where the mock dropped the reply.

mod common;

use common::*;
use oncesend_core::check::{check, Accepted, FinalRun, History, ProviderCall};
use oncesend_core::{DeliveryKey, Recipient, RunId, RunStatus, TenantId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A stable pick per key, so faults land on ~5% of keys each.
fn bucket(key: &DeliveryKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h % 100
}

fn faults(key: &DeliveryKey, attempt: u32) -> Fault {
    match (bucket(key), attempt) {
        (0..=4, 1) => Fault::Throttle,
        (5..=9, 1) => Fault::PairRate,
        (10..=14, 1 | 2) => Fault::ServerError,
        (15..=16, _) => Fault::Drop,
        _ => Fault::Accept,
    }
}

async fn count(api: &Api, status: &str) -> usize {
    let (s, j) = api
        .get(&format!("/v1/runs?status={status}&limit=1000"))
        .await;
    assert_eq!(s, 200, "{j}");
    j["runs"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_runs_are_delivered_exactly_once_in_order_through_up() {
    let mock = MockCloudApi::start(faults).await;
    let (_up, url) = start_up(
        &[
            "--workers",
            "2",
            "--recipient-gap-ms",
            "0",
            "--rate-per-sec",
            "100000",
            "--send-timeout-ms",
            "1000",
            "--lease-ms",
            "3000",
            "--poll-ms",
            "20",
            "--batch",
            "50",
            "--concurrency",
            "200",
        ],
        &[
            cloud_env(&mock),
            vec![("DATABASE_URL", "memory:".to_string())],
        ]
        .concat(),
    )
    .await;
    let api = Api::new(&url, None);
    let (s, j) = api
        .json(
            "PUT",
            "/v1/flows/onboarding",
            serde_json::json!({"steps": [
                {"text": "Hi {{name}}", "delay_ms": 0},
                {"text": "Your code is {{code}}", "delay_ms": 0},
                {"text": "Bye {{name}}", "delay_ms": 0},
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{j}");

    let mut accepted = Vec::new();
    for i in 0..300u32 {
        let to = format!("+55119{:08}", 10_000 + i % 100);
        let body = serde_json::json!({"to": to, "vars": {"name": format!("n{i}"), "code": i}});
        let key = format!("trigger-{i}");
        let (s, _, j) = api
            .raw(
                "POST",
                "/v1/flows/onboarding/runs",
                &[("idempotency-key", key)],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(s, 201, "{j}");
        let run: RunId = j["run_id"].as_str().unwrap().parse().unwrap();
        accepted.push(Accepted {
            run,
            tenant: TenantId::default_tenant(),
            to: Recipient::parse(&to).unwrap(),
            steps: 3,
        });
    }
    // The same Idempotency-Key again: 200, the same run, no second run.
    let (s, _, j) = api
        .raw(
            "POST",
            "/v1/flows/onboarding/runs",
            &[("idempotency-key", "trigger-7".into())],
            Some(br#"{"to":"+5511900010007","vars":{"name":"x","code":1}}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["run_id"].as_str().unwrap(), accepted[7].run.to_string());

    eventually("every run to finish", Duration::from_secs(90), || async {
        count(&api, "pending").await + count(&api, "leased").await == 0
    })
    .await;

    let mut finals = BTreeMap::new();
    let mut unknown_keys = BTreeSet::new();
    let mut sent_ids = BTreeMap::new();
    for a in &accepted {
        let (s, v) = api.get(&format!("/v1/runs/{}", a.run)).await;
        assert_eq!(s, 200, "{v}");
        let status = RunStatus::parse(v["status"].as_str().unwrap()).unwrap();
        let mut unknown_steps = Vec::new();
        for step in v["steps"].as_array().unwrap() {
            let index = step["index"].as_u64().unwrap() as u32;
            let key = DeliveryKey {
                run: a.run,
                step: index,
            };
            match step["status"].as_str().unwrap() {
                "unknown" => {
                    unknown_steps.push(index);
                    unknown_keys.insert(key);
                }
                "sent" => {
                    sent_ids.insert(
                        key,
                        step["provider_message_id"].as_str().unwrap().to_string(),
                    );
                }
                other => assert!(
                    other == "pending" && status == RunStatus::Failed,
                    "run {} step {index} is {other}: {v}",
                    a.run
                ),
            }
        }
        finals.insert(
            a.run,
            FinalRun {
                status,
                cursor: v["cursor"].as_u64().unwrap() as u32,
                reason: v["reason"].as_str().map(str::to_string),
                unknown_steps,
            },
        );
    }
    let deliveries = mock.deliveries();
    assert!(mock.shape_errors().is_empty(), "{:?}", mock.shape_errors());
    let history = History {
        accepted: accepted.clone(),
        calls: deliveries
            .iter()
            .enumerate()
            .map(|(i, c)| ProviderCall {
                key: c.key,
                at_ms: i as u64,
            })
            .collect(),
        finals: finals.clone(),
    };
    let report = check(&history);
    assert!(report.is_clean(), "{report}");

    // Unknown exactly where the mock dropped the reply, and nowhere else.
    let dropped: BTreeSet<DeliveryKey> = deliveries
        .iter()
        .filter(|c| c.fault == Fault::Drop)
        .map(|c| c.key)
        .collect();
    assert!(!dropped.is_empty(), "the test should drop some replies");
    assert_eq!(unknown_keys, dropped);
    // Every other run completed, and the run API names each message id.
    for a in &accepted {
        let f = &finals[&a.run];
        if f.unknown_steps.is_empty() {
            assert_eq!(f.status, RunStatus::Completed, "{f:?}");
        } else {
            assert_eq!(f.status, RunStatus::Failed, "{f:?}");
            assert!(f.reason.as_deref().unwrap().contains("unknown"), "{f:?}");
        }
    }
    for c in deliveries.iter().filter(|c| c.fault == Fault::Accept) {
        assert_eq!(sent_ids.get(&c.key), c.message_id.as_ref(), "{}", c.key);
    }
    assert_eq!(sent_ids.len(), deliveries.len() - dropped.len());
    // Retryable refusals were retried, and never counted as deliveries.
    let calls = mock.calls();
    for fault in [Fault::Throttle, Fault::PairRate, Fault::ServerError] {
        assert!(
            calls.iter().any(|c| c.fault == fault),
            "no {fault:?} injected"
        );
    }
    // Each message carries its own rendered text to its own recipient.
    for c in &deliveries {
        let a = accepted.iter().find(|a| a.run == c.key.run).unwrap();
        assert_eq!(c.to, a.to.as_str());
    }
    let (_, metrics) = (0, api.raw("GET", "/metrics", &[], None).await);
    assert_eq!(metrics.0, 200);
}
