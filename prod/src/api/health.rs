//! The probes and counters: `/readyz`, `/metrics`, and `/v1/stats` (the
//! same figures as JSON, for the console; `/healthz` is a constant in the
//! router).

use super::body::{store_reply, unexpected};
use super::{AppState, Problem};
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oncesend_core::worker::WorkerStats;
use oncesend_core::{StoreOp, StoreReply, TenantId};

pub(super) async fn readyz<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    if !st.engine.is_running() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Engine stopped",
            "the engine's send path has stopped; every send is answered busy and nothing goes out. Restart the engine",
        ));
    }
    let now_ms = st.clock.now_ms();
    match store_reply(st.store.apply(StoreOp::Stats { now_ms }).await)? {
        StoreReply::Stats(_) => Ok("ready\n".into_response()),
        other => Err(unexpected(other)),
    }
}

/// How many of the latest finished runs `GET /v1/stats` counts.
pub const FINISHED_COUNTED: u32 = 10_000;

/// `GET /v1/stats`: the queue's figures and the engine's sends by outcome
/// since it started, as JSON. Open runs are all counted; finished ones
/// among the latest [`FINISHED_COUNTED`] only (all of them would mean
/// reading the whole table).
pub(super) async fn stats<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    let now_ms = st.clock.now_ms();
    let q = match store_reply(st.store.apply(StoreOp::Stats { now_ms }).await)? {
        StoreReply::Stats(s) => s,
        other => return Err(unexpected(other)),
    };
    let finished = match store_reply(
        st.store
            .apply(StoreOp::CountFinished {
                limit: FINISHED_COUNTED,
            })
            .await,
    )? {
        StoreReply::FinishedCounts(c) => c,
        other => return Err(unexpected(other)),
    };
    let paused = match store_reply(st.store.apply(StoreOp::ListPausedSenders).await)? {
        StoreReply::PausedSenders(p) => p.len(),
        other => return Err(unexpected(other)),
    };
    let e = st.engine.stats();
    Ok(axum::Json(serde_json::json!({
        "now_ms": now_ms,
        "runs": {
            "pending": q.pending,
            "due": q.due,
            "leased": q.leased,
            "waiting": q.waiting,
        },
        "finished": {
            "completed": finished.completed,
            "failed": finished.failed,
            "cancelled": finished.cancelled,
            "latest": FINISHED_COUNTED,
            "all": finished.completed + finished.failed + finished.cancelled < u64::from(FINISHED_COUNTED),
        },
        "oldest_due_age_ms": q.oldest_due_age_ms,
        "unknown_deliveries": q.unknown_deliveries,
        "paused_tenants": paused,
        "sends": {
            "sent": e.sent,
            "failed": e.failed,
            "unknown": e.unknown,
            "replayed": e.replayed,
            "fenced": e.fenced,
            "busy": e.busy,
            "paced": e.paced,
            "throttled": e.throttled,
            "sender_blocked": e.sender_blocked,
            "held_for_pause": e.held_for_pause,
        },
    }))
    .into_response())
}

pub(super) async fn metrics<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    let now_ms = st.clock.now_ms();
    let stats = match store_reply(st.store.apply(StoreOp::Stats { now_ms }).await)? {
        StoreReply::Stats(s) => s,
        other => return Err(unexpected(other)),
    };
    let paused = match store_reply(st.store.apply(StoreOp::ListPausedSenders).await)? {
        StoreReply::PausedSenders(p) => p,
        other => return Err(unexpected(other)),
    };
    let e = st.engine.stats();
    let mut w = WorkerStats::default();
    for cell in st.workers.lock().expect("workers lock").iter() {
        let s = *cell.lock().expect("worker stats lock");
        w.claimed += s.claimed;
        w.rescued += s.rescued;
        w.sent += s.sent;
        w.fenced += s.fenced;
        w.lease_lost += s.lease_lost;
        w.completed += s.completed;
        w.failed += s.failed;
    }
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "oncesend_queue_depth",
        "gauge",
        "Runs waiting, due or not.",
        &[("", stats.pending)],
    );
    metric(
        "oncesend_queue_due",
        "gauge",
        "Runs waiting whose time has come.",
        &[("", stats.due)],
    );
    metric(
        "oncesend_runs_leased",
        "gauge",
        "Runs held by a worker.",
        &[("", stats.leased)],
    );
    metric(
        "oncesend_runs_waiting",
        "gauge",
        "Runs waiting for the provider's word: a status for an unknown step, or for the step before.",
        &[("", stats.waiting)],
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            "oncesend_webhook_items_total",
            "counter",
            "Statuses and messages the Cloud API webhook brought, by what became of them.",
            &[
                ("{result=\"applied\"}", st.webhook.applied.load(Relaxed)),
                ("{result=\"ignored\"}", st.webhook.ignored.load(Relaxed)),
            ],
        );
    }
    metric(
        "oncesend_provider_timeouts_total",
        "counter",
        "Provider calls past the send timeout (unknown), and their answers that still came in time to be recorded as sent.",
        &[
            ("{answer=\"none_in_time\"}", e.timed_out),
            ("{answer=\"late_sent\"}", e.late_replies),
        ],
    );
    metric(
        "oncesend_oldest_pending_age_ms",
        "gauge",
        "How long the longest-waiting due run has waited.",
        &[("", stats.oldest_due_age_ms)],
    );
    metric(
        "oncesend_unknown_deliveries",
        "gauge",
        "Deliveries whose outcome is unknown.",
        &[("", stats.unknown_deliveries)],
    );
    metric(
        "oncesend_sends_total",
        "counter",
        "Send requests answered by the engine, by outcome.",
        &[
            ("{outcome=\"sent\"}", e.sent),
            ("{outcome=\"failed\"}", e.failed),
            ("{outcome=\"unknown\"}", e.unknown),
            ("{outcome=\"replayed\"}", e.replayed),
            ("{outcome=\"fenced\"}", e.fenced),
            ("{outcome=\"busy\"}", e.busy),
            ("{outcome=\"paced\"}", e.paced),
            ("{outcome=\"throttled\"}", e.throttled),
            ("{outcome=\"sender_blocked\"}", e.sender_blocked),
            ("{outcome=\"held_for_pause\"}", e.held_for_pause),
        ],
    );
    // Every paused tenant at 1, and `default` always, so the series exists
    // before its first pause.
    let mut paused_labels: Vec<(String, u64)> = paused
        .iter()
        .map(|(t, _)| (format!("{{tenant=\"{t}\"}}"), 1))
        .collect();
    if !paused.iter().any(|(t, _)| *t == TenantId::default_tenant()) {
        paused_labels.push(("{tenant=\"default\"}".to_string(), 0));
        paused_labels.sort();
    }
    let paused_samples: Vec<(&str, u64)> = paused_labels
        .iter()
        .map(|(l, v)| (l.as_str(), *v))
        .collect();
    metric(
        "oncesend_tenant_paused",
        "gauge",
        "1 while the tenant's sender is paused (nothing of it goes to the provider).",
        &paused_samples,
    );
    metric(
        "oncesend_fenced_writes_total",
        "counter",
        "Worker writes and sends refused for a stale epoch.",
        &[("", w.fenced)],
    );
    metric(
        "oncesend_lease_rescues_total",
        "counter",
        "Runs claimed again after another worker's lease lapsed.",
        &[("", w.rescued)],
    );
    metric(
        "oncesend_leases_lost_total",
        "counter",
        "Runs a worker let go because its lease ran out.",
        &[("", w.lease_lost)],
    );
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{router, ApiConfig};
    use crate::clock::TokioClock;
    use crate::engine::EngineHandle;
    use oncesend_core::{SendRequest, SendResponse};

    /// Answers `GET path` from a router over `state`: status and body.
    async fn get<S: Store>(state: AppState<S>, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let answer = router(state)
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_stopped_engine_is_not_ready_and_answers_busy_with_nothing_sent() {
        let engine = EngineHandle::stopped();
        assert!(!engine.is_running());
        let store = crate::store::MemoryStore::new(oncesend_core::MemStore::new());
        let state = |engine| {
            AppState::new(
                store.clone(),
                engine,
                TokioClock::new(1_000),
                1,
                ApiConfig::default(),
            )
        };
        let (status, body) = get(state(engine.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("Restart the engine"), "{body}");
        let request: SendRequest = serde_json::from_value(serde_json::json!({
            "key": "01a223cc-8d84-7a53-b07a-5027eed1b529:0",
            "epoch": 1,
            "tenant": "default",
            "to": "+5511913390707",
            "message": {"type": "text", "text": {"body": "hi"}},
        }))
        .unwrap();
        assert_eq!(engine.send(request).await, SendResponse::engine_gone());
        // And a running one is ready, with its provider timeouts counted.
        let live = EngineHandle::spawn(
            oncesend_core::EngineConfig::default(),
            store.clone(),
            crate::provider::NullProvider::default(),
            TokioClock::new(1_000),
        );
        assert!(live.is_running());
        let (status, _) = get(state(live.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        let (_, metrics) = get(state(live), "/metrics").await;
        for line in [
            "oncesend_provider_timeouts_total{answer=\"none_in_time\"} 0",
            "oncesend_provider_timeouts_total{answer=\"late_sent\"} 0",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line} in\n{metrics}"
            );
        }
    }
}
