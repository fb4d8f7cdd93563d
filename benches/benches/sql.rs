//! Claim + advance + complete on the SQL stores, at batch 1, 10 and 100:
//! one claim of `batch` two-step runs, then one `apply_batch` with an
//! advance and a completion for each, on the database's own clock (as in
//! production). SQLite always; PostgreSQL when `TEST_DATABASE_URL` is set.
//! Runs are enqueued outside the timed part, one conversation each.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oncesend::store::sql::{SqlClock, SqlOptions, SqlStore};
use oncesend::store::Store;
use oncesend_core::{
    FlowId, NewRun, PlannedStep, Recipient, RunId, StoreOp, StoreReply, TenantId, WorkerId,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn new_run() -> NewRun {
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    NewRun {
        id: RunId::new(1_700_000_000_000 + i, i ^ 0x9E37_79B9),
        tenant: TenantId::default_tenant(),
        flow: FlowId::new("bench").unwrap(),
        to: Recipient::parse(&format!("+55{:011}", 11_000_000_000 + i)).unwrap(),
        steps: vec![
            PlannedStep {
                message: oncesend_core::Message::text("first"),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            },
            PlannedStep {
                message: oncesend_core::Message::text("second"),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            },
        ],
        trigger_key: None,
    }
}

async fn open(url: &str, schema: Option<&str>) -> SqlStore {
    let store = SqlStore::connect(
        url,
        SqlOptions {
            clock: SqlClock::Database,
            max_connections: 2,
            schema: schema.map(str::to_string),
            ..SqlOptions::default()
        },
    )
    .await
    .expect("connect");
    store.recreate().await.expect("drop old tables and migrate");
    store
}

/// Times `iters` rounds of: claim `batch`, then advance and complete each.
async fn rounds(store: &SqlStore, batch: u32, iters: u64) -> Duration {
    let owner = WorkerId::new("bench").unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let runs: Vec<StoreOp> = (0..batch)
            .map(|_| StoreOp::Enqueue {
                run: new_run(),
                now_ms: 0,
            })
            .collect();
        store.apply_batch(runs).await.expect("enqueue");
        let start = Instant::now();
        let StoreReply::Claimed(claimed) = store
            .apply(StoreOp::Claim {
                owner: owner.clone(),
                max: batch,
                lease_ms: 30_000,
                now_ms: 0,
            })
            .await
            .expect("claim")
        else {
            panic!("claim answered something else")
        };
        assert_eq!(claimed.len(), batch as usize);
        let mut ops = Vec::with_capacity(claimed.len() * 2);
        for run in &claimed {
            ops.push(StoreOp::Advance {
                run: run.id,
                epoch: run.epoch,
                step: 0,
                delay_ms: None,
                now_ms: 0,
            });
            ops.push(StoreOp::Complete {
                run: run.id,
                epoch: run.epoch,
                step: 1,
                now_ms: 0,
            });
        }
        let replies = store.apply_batch(ops).await.expect("steps");
        assert!(replies
            .iter()
            .all(|r| matches!(r, StoreReply::Advanced { .. } | StoreReply::Completed)));
        total += start.elapsed();
    }
    total
}

fn bench_backend(c: &mut Criterion, name: &str, url: &str, schema: Option<&str>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(open(url, schema));
    let mut group = c.benchmark_group(format!("{name}: claim + advance + complete"));
    for batch in [1u32, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| rt.block_on(rounds(&store, batch, iters)));
        });
    }
    group.finish();
}

fn sql_stores(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("oncesend-bench-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    bench_backend(
        c,
        "sqlite",
        &format!("sqlite://{}?mode=rwc", path.display()),
        None,
    );
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => bench_backend(c, "postgres", &url, Some("bench")),
        _ => eprintln!("TEST_DATABASE_URL is not set: skipping the PostgreSQL benches"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = sql_stores
}
criterion_main!(benches);
