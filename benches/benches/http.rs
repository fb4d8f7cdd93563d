//! The engine's send path over HTTP on loopback: `POST /v1/messages`
//! through the real router, the engine driver and the ledger, to the `log`
//! provider writing into a sink, over one keep-alive connection. One
//! iteration is one send of a fresh key, so this is µs per send, one at a
//! time (latency, not throughput: the load tool measures throughput).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oncesend::api::{self, ApiConfig, AppState};
use oncesend::clock::TokioClock;
use oncesend::engine::EngineHandle;
use oncesend::net::{HttpClient, TcpConnector};
use oncesend::provider::LogProvider;
use oncesend::store::MemoryStore;
use oncesend::worker::{EngineClient, HttpEngineClient};
use oncesend_core::{
    DeliveryKey, EngineConfig, FlowId, MemStore, NewRun, PlannedStep, Recipient, RunId,
    SendRequest, SendResponse, StoreOp, StoreReply, TenantId, WorkerId,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running engine on loopback and a keep-alive client to it.
struct Loopback {
    store: MemoryStore,
    client: HttpEngineClient<TcpConnector>,
    next_run: Arc<AtomicU64>,
}

impl Loopback {
    async fn start() -> Self {
        let clock = TokioClock::new(1_700_000_000_000);
        let store = MemoryStore::new(MemStore::new());
        let provider = LogProvider::to_writer(Box::new(std::io::sink()));
        let engine = EngineHandle::spawn(
            EngineConfig::default(),
            store.clone(),
            provider,
            clock.clone(),
        );
        let state = AppState::new(store.clone(), engine, clock, 7, ApiConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum_serve(listener, state).await });
        let http = HttpClient::new(
            TcpConnector::new(addr.clone()),
            &addr,
            None,
            Duration::from_secs(10),
        );
        Self {
            store,
            client: HttpEngineClient::new(http),
            next_run: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `n` one-step runs, each of its own conversation, claimed: one send
    /// request each, with a live lease behind it.
    fn claimed_requests(&self, n: u64) -> Vec<SendRequest> {
        let first = self.next_run.fetch_add(n, Ordering::Relaxed);
        for i in first..first + n {
            let reply = self.store.apply_now(StoreOp::Enqueue {
                run: NewRun {
                    id: RunId::new(1_700_000_000_000 + i, i),
                    tenant: TenantId::default_tenant(),
                    flow: FlowId::new("bench").unwrap(),
                    to: Recipient::parse(&format!("+1555{:08}", i)).unwrap(),
                    steps: vec![PlannedStep {
                        message: oncesend_core::Message::text("Hi from the bench"),
                        delay_ms: 0,
                        after: Default::default(),
                        after_timeout_ms: None,
                    }],
                    trigger_key: None,
                },
                now_ms: 1_700_000_000_000,
            });
            assert!(matches!(reply, StoreReply::Enqueued { created: true, .. }));
        }
        let mut requests = Vec::with_capacity(n as usize);
        while (requests.len() as u64) < n {
            let StoreReply::Claimed(runs) = self.store.apply_now(StoreOp::Claim {
                owner: WorkerId::new("bench").unwrap(),
                max: oncesend_core::limits::MAX_CLAIM_BATCH,
                lease_ms: 3_600_000,
                now_ms: 1_700_000_000_000,
            }) else {
                unreachable!("a claim answers Claimed")
            };
            assert!(!runs.is_empty(), "every enqueued run is claimable");
            requests.extend(runs.into_iter().map(|r| SendRequest {
                key: DeliveryKey { run: r.id, step: 0 },
                epoch: r.epoch,
                tenant: r.tenant,
                to: r.to,
                message: r.steps[0].message.clone(),
            }));
        }
        requests
    }
}

async fn axum_serve(listener: tokio::net::TcpListener, state: AppState<MemoryStore>) {
    axum::serve(listener, api::router(state)).await.unwrap()
}

fn http_send(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lo = rt.block_on(Loopback::start());
    let mut group = c.benchmark_group("engine over HTTP");
    group.throughput(Throughput::Elements(1));
    group.bench_function("POST /v1/messages, log provider to a sink", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let requests = lo.claimed_requests(iters);
            let client = lo.client.clone();
            async move {
                let start = tokio::time::Instant::now();
                for request in requests {
                    match client.send(request).await {
                        Ok(SendResponse::Sent {
                            replayed: false, ..
                        }) => {}
                        other => panic!("a fresh key was answered {other:?}"),
                    }
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, http_send);
criterion_main!(benches);
