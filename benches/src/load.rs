//! The load tool (`oncesend-bench`, also run as `oncesend bench`).
//! Enqueues runs into the database `DATABASE_URL` names, drains them with
//! workers in this process, checks that every step went out exactly once,
//! and reports what it cost.
//!
//! Two paths:
//! - `store`: claim, advance and complete against the store alone, no
//!   engine and no HTTP: the queue's own ceiling. It drives the storage
//!   contract directly rather than through the core's `Worker` machine,
//!   because the machine writes each advance as its own op (one transaction
//!   per message), while the ceiling is what the queue can do when a worker
//!   claims a batch and then moves the whole batch on with one
//!   `apply_batch` per step, and each of those transactions also claims
//!   the next runs: one commit per batch and step.
//! - `full`: the real worker driver (`run_worker_woken` and the core's
//!   `Worker`) sending through `BatchedHttpEngineClient` (as the worker
//!   daemon does; `--send-batch 1` sends each alone through
//!   `HttpEngineClient`) to the engine's HTTP API on loopback, with the
//!   ledger's `BeginDelivery`/`FinishDelivery` in the path and the `null`
//!   provider at the end.
//!
//! How it measures:
//! - a message is one step of one run;
//! - a message is *sent* when the store reply recording it comes back: the
//!   `Advance`/`Complete` of its step on the store path, the
//!   `FinishDelivery` that records it `sent` on the full path;
//! - latency runs from just before its run's `Enqueue` was applied to that
//!   moment;
//! - throughput is messages over the time from the first message being
//!   available to a worker (the workers' start, or the first enqueue under
//!   `--rate`) to the last one sent;
//! - transactions are those the SQL store committed during the drain, less
//!   the enqueues' own (in memory: the `Store::apply` and
//!   `Store::apply_batch` calls the workers and the engine make); the
//!   final check is not counted;
//! - peak memory is the process's `VmHWM`.

use crate::sizes;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use oncesend::api::{self, ApiConfig, AppState};
use oncesend::clock::TokioClock;
use oncesend::coalesce::CoalesceOptions;
use oncesend::daemon;
use oncesend::db::{self, Db};
use oncesend::engine::EngineHandle;
use oncesend::net::{HttpClient, TcpConnector};
use oncesend::provider::NullProvider;
use oncesend::store::Store;
use oncesend::worker::{run_worker_woken, BatchedHttpEngineClient, HttpEngineClient};
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{
    ClaimedRun, DeliveryOutcome, DeliveryState, EngineConfig, FlowId, NewRun, PlannedStep,
    Recipient, RunId, RunStatus, StoreOp, StoreReply, TenantId, Worker, WorkerConfig, WorkerId,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Runs enqueued per `apply_batch` when loading the queue.
const ENQUEUE_CHUNK: usize = 500;
/// Lease length of every bench worker; far longer than any drain step.
const LEASE_MS: u64 = 30_000;
/// The engine's provider-call limit (the workers must agree with it).
const SEND_TIMEOUT_MS: u64 = 10_000;
/// How often a soak samples the database's size.
const SAMPLE_SECS: u64 = 60;
/// Runs checked at once after the drain.
const VERIFY_CONCURRENCY: usize = 16;

/// Which path the messages take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPath {
    /// Claim, advance and complete against the store, no HTTP.
    Store,
    /// Workers send through the engine's HTTP API and ledger.
    Full,
}

impl BenchPath {
    fn name(self) -> &'static str {
        match self {
            BenchPath::Store => "store",
            BenchPath::Full => "full",
        }
    }
}

/// The load tool's flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The database to load (a scratch one: the runs stay in it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "memory:",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Runs to enqueue.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub runs: u32,
    /// Steps (messages) per run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=oncesend_core::limits::MAX_STEPS as i64))]
    pub steps: u32,
    /// Conversations (recipients) the runs are spread over; runs of one
    /// conversation go out one at a time.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub conversations: u32,
    /// Workers in this process.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// Most runs per claim.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=oncesend_core::limits::MAX_CLAIM_BATCH as i64))]
    pub batch: u32,
    /// `store`: the queue alone; `full`: through the engine's HTTP API.
    #[arg(long, value_enum, default_value = "store")]
    pub path: BenchPath,
    /// Enqueue at this many runs per second while the workers drain
    /// (open loop), for latency at a given load. Without it, everything is
    /// enqueued first and then drained.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Delay before every step after the first, in ms (each one gives the
    /// lease up and makes the run due again later).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Runs a `full`-path worker holds at once (default: twice --batch).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// `full` path: most sends a worker gathers into one
    /// `POST /v1/messages/batch`; 1 sends each alone to `POST /v1/messages`.
    #[arg(long, default_value_t = oncesend::worker::SEND_BATCH.max_batch as u32, value_parser = clap::value_parser!(u32).range(1..=oncesend_core::limits::MAX_SEND_BATCH as i64))]
    pub send_batch: u32,
    /// How long an idle worker waits before claiming again, in ms, when no
    /// enqueue wakes it first.
    #[arg(long, default_value_t = 50)]
    pub poll_ms: u64,
    /// Give up, and fail, when no message has been sent for this long.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
    /// The raw ceiling measured on this machine in the same sitting, in
    /// rows per second (`pg_ceiling.sh`'s claim+complete at batch 100):
    /// the result then also says what fraction of it this run reached.
    #[arg(long, value_parser = parse_ceiling)]
    pub ceiling_rows_per_s: Option<f64>,
    /// Soak: enqueue at `--rate` for this many seconds (the runs are then
    /// rate × seconds, and `--runs` is not used), print latency and the
    /// database's size minute by minute, and check a sample of the runs.
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub soak_secs: Option<u32>,
    /// Delete runs finished this many ms ago while the bench runs, as the
    /// engine's pruner does (every few seconds here, not every minute), so
    /// the tables stay the size of the work in flight.
    #[arg(long)]
    pub prune_retention_ms: Option<u64>,
    /// Check every Nth run from the store after the drain (default: every
    /// run; under `--soak-secs`, about 20,000 of them).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_every: Option<u32>,
}

impl BenchArgs {
    /// Runs this bench enqueues.
    pub fn total_runs(&self) -> u32 {
        match (self.soak_secs, self.rate) {
            (Some(secs), Some(rate)) => secs.saturating_mul(rate),
            _ => self.runs,
        }
    }

    fn verify_every(&self) -> u32 {
        self.verify_every.unwrap_or(match self.soak_secs {
            Some(_) => (self.total_runs() / 20_000).max(1),
            None => 1,
        })
    }
}

fn parse_ceiling(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a rate: give the ceiling's rows per second as a positive number, \
             e.g. 107568"
        )),
    }
}

/// What one bench run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// `store` or `full`.
    pub path: &'static str,
    /// `memory`, `sqlite` or `postgres`.
    pub db: &'static str,
    /// Runs enqueued.
    pub runs: u32,
    /// Steps per run.
    pub steps: u32,
    /// Workers.
    pub workers: u32,
    /// Messages sent per second of drain.
    pub msgs_per_s: f64,
    /// Enqueue-to-sent latency percentiles, in ms.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Store transactions per message.
    pub txn_per_msg: f64,
    /// Peak resident memory, in MiB.
    pub peak_rss_mb: f64,
    /// Seconds from the first message available to the last sent.
    pub drain_secs: f64,
    /// The ceiling it was measured against, when given.
    pub ceiling_rows_per_s: Option<f64>,
    /// First steps, from their run's enqueue (when they fell due) to their
    /// recorded send: p50 and p99, in ms.
    pub from_due_first: Option<(f64, f64)>,
    /// Later steps, from when they fell due (the previous step's recorded
    /// send, plus the delay) to their own: p50 and p99, in ms.
    pub from_due_later: Option<(f64, f64)>,
    /// Soak: the lowest and highest per-minute p99 from due, in ms.
    pub minute_p99_ms: Option<(f64, f64)>,
    /// Soak: the largest the database's tables grew while it ran.
    pub largest: Option<sizes::Largest>,
}

impl BenchReport {
    /// The machine-readable summary, printed last.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT path={} db={} runs={} steps={} workers={} msgs_per_s={:.0} p50_ms={:.2} p99_ms={:.2} txn_per_msg={:.4} max_ms={:.2} peak_rss_mb={:.1} drain_secs={:.3}",
            self.path,
            self.db,
            self.runs,
            self.steps,
            self.workers,
            self.msgs_per_s,
            self.p50_ms,
            self.p99_ms,
            self.txn_per_msg,
            self.max_ms,
            self.peak_rss_mb,
            self.drain_secs
        ) + &[("first", self.from_due_first), ("later", self.from_due_later)]
            .iter()
            .filter_map(|(which, spread)| {
                let (p50, p99) = (*spread)?;
                Some(format!(" {which}_p50_ms={p50:.2} {which}_p99_ms={p99:.2}"))
            })
            .collect::<String>()
            + &self
                .ceiling_ratio()
            .map(|r| {
                format!(
                    " ceiling_rows_per_s={:.0} of_ceiling={r:.3}",
                    self.ceiling_rows_per_s.unwrap_or_default()
                )
            })
            .unwrap_or_default()
            + &self
                .minute_p99_ms
                .map(|(lo, hi)| format!(" minute_p99_min_ms={lo:.2} minute_p99_max_ms={hi:.2}"))
                .unwrap_or_default()
            + &self.largest.map(|l| l.fields()).unwrap_or_default()
    }

    /// Messages per second as a fraction of the ceiling, when one was given.
    pub fn ceiling_ratio(&self) -> Option<f64> {
        self.ceiling_rows_per_s.map(|c| self.msgs_per_s / c)
    }
}

/// Where each message stands, shared by the counting store and the driver.
struct Tally {
    origin: Instant,
    steps: u32,
    index: BTreeMap<RunId, u32>,
    /// Per run: µs after `origin` its enqueue began, plus one (0: not yet).
    enqueued_us: Vec<AtomicU64>,
    /// Per message: µs after `origin` it was recorded sent, plus one.
    sent_us: Vec<AtomicU64>,
    sent: AtomicU64,
    duplicates: AtomicU64,
    transactions: AtomicU64,
    progress: Notify,
}

impl Tally {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64 + 1
    }

    fn record_sent(&self, run: &RunId, step: u32) {
        let Some(&i) = self.index.get(run) else {
            return;
        };
        if step >= self.steps {
            return;
        }
        let slot = &self.sent_us[(i * self.steps + step) as usize];
        if slot.swap(self.now_us(), Ordering::Relaxed) == 0 {
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.progress.notify_one();
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes what a reply records as sent on this path.
    fn observe(&self, path: BenchPath, op: &StoreOp, reply: &StoreReply) {
        match (path, op, reply) {
            (BenchPath::Store, StoreOp::Advance { run, step, .. }, StoreReply::Advanced { .. })
            | (BenchPath::Store, StoreOp::Complete { run, step, .. }, StoreReply::Completed) => {
                self.record_sent(run, *step)
            }
            (
                BenchPath::Full,
                StoreOp::FinishDelivery {
                    key,
                    outcome: DeliveryOutcome::Sent { .. },
                    ..
                },
                StoreReply::Finished(state),
            ) if state.is_sent() => self.record_sent(&key.run, key.step),
            _ => {}
        }
    }
}

/// A [`Store`] that counts every call (one transaction each in the SQL
/// stores) and notes each message recorded sent.
#[derive(Clone)]
struct CountingStore<S> {
    inner: S,
    tally: Arc<Tally>,
    path: BenchPath,
}

impl<S: Store> Store for CountingStore<S> {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        self.tally.transactions.fetch_add(1, Ordering::Relaxed);
        let observed = op.clone();
        let reply = self.inner.apply(op).await?;
        self.tally.observe(self.path, &observed, &reply);
        Ok(reply)
    }

    async fn apply_batch(&self, ops: Vec<StoreOp>) -> Result<Vec<StoreReply>, StoreUnavailable> {
        self.tally.transactions.fetch_add(1, Ordering::Relaxed);
        let observed = ops.clone();
        let replies = self.inner.apply_batch(ops).await?;
        for (op, reply) in observed.iter().zip(&replies) {
            self.tally.observe(self.path, op, reply);
        }
        Ok(replies)
    }
}

/// Runs the bench, prints its progress and its RESULT line last.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = bench(&args).await?;
    println!("{}", report.result_line());
    Ok(())
}

/// Runs the bench and returns what it measured; fails when any run did not
/// complete or any step was not sent exactly once.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let clock = TokioClock::system();
    let db = Db::open(&args.database_url, clock.clone())
        .await
        .context("bench needs a database it can load (DATABASE_URL; memory: works anywhere)")?;
    let total_runs = args.total_runs();
    if total_runs > 10_000_000 {
        bail!("{total_runs} runs is more than the bench holds (10,000,000): lower --rate or --soak-secs");
    }
    let total_msgs = u64::from(total_runs) * u64::from(args.steps);
    println!(
        "bench: path={} db={} ({}) runs={} steps={} conversations={} workers={} batch={} send_batch={}{}",
        args.path.name(),
        db.kind(),
        db::redact(&args.database_url),
        total_runs,
        args.steps,
        args.conversations,
        args.workers,
        args.batch,
        args.send_batch,
        match args.rate {
            Some(r) => format!(" rate={r}/s"),
            None => String::new(),
        }
    );

    let plan = Arc::new(RunPlan::new(args, &clock)?);
    let index: BTreeMap<RunId, u32> = plan
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u32))
        .collect();
    assert_eq!(index.len(), plan.len(), "run ids are unique");
    let tally = Arc::new(Tally {
        origin: Instant::now(),
        steps: args.steps,
        index,
        enqueued_us: (0..total_runs).map(|_| AtomicU64::new(0)).collect(),
        sent_us: (0..total_msgs).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        transactions: AtomicU64::new(0),
        progress: Notify::new(),
    });
    let counted = CountingStore {
        inner: db.clone(),
        tally: tally.clone(),
        path: args.path,
    };
    let wakeups: Vec<Arc<Notify>> = (0..args.workers).map(|_| Arc::new(Notify::new())).collect();

    if args.rate.is_none() {
        enqueue_all(&db, &plan, &tally, &wakeups, &clock).await?;
        println!("bench: {total_runs} runs enqueued; draining");
    }
    let start_us = tally.now_us();
    let txn_start = db.transactions();
    let enqueue_txn_start = db.enqueue_transactions();
    let (stop_tx, stop_rx) = watch::channel(false);
    // The pruner and the size sampler stop after the workers, in that
    // order, so the last prune sees every run finished and the last sample
    // sees what the last prune left.
    let (prune_stop, prune_rx) = watch::channel(false);
    let (sample_stop, sample_rx) = watch::channel(false);
    let drain = Drain::start(args, &counted, &clock, &wakeups, stop_rx).await?;
    let enqueuer = args.rate.map(|rate| {
        let (db, tally, wakeups, clock) =
            (db.clone(), tally.clone(), wakeups.clone(), clock.clone());
        let plan = plan.clone();
        tokio::spawn(async move { enqueue_at(&db, &plan, rate, &tally, &wakeups, &clock).await })
    });
    let pruner = args.prune_retention_ms.map(|retention_ms| {
        tokio::spawn(prune_while(
            db.clone(),
            clock.clone(),
            retention_ms,
            prune_rx,
        ))
    });
    let sampler = args.soak_secs.map(|_| {
        tokio::spawn(sizes::sample_every(
            args.database_url.clone(),
            Duration::from_secs(SAMPLE_SECS),
            sample_rx,
        ))
    });

    let outcome = wait_for_all(&tally, total_msgs, Duration::from_secs(args.stall_secs)).await;
    let end_us = tally.now_us();
    let txn_end = db.transactions();
    let enqueue_txn_end = db.enqueue_transactions();
    let _ = stop_tx.send(true);
    if let Some(e) = enqueuer {
        e.await.context("the enqueuer panicked")??;
    }
    drain.stop().await?;
    let _ = prune_stop.send(true);
    let pruned = match pruner {
        Some(p) => p.await.context("the pruner panicked")??,
        None => 0,
    };
    let _ = sample_stop.send(true);
    let samples = match sampler {
        Some(s) => s.await.context("the size sampler panicked")?,
        None => Vec::new(),
    };
    outcome?;
    if args.prune_retention_ms.is_some() {
        println!("bench: pruned {pruned} finished runs while it ran");
    }

    verify(&db, args, &tally).await?;

    let first_us = if args.rate.is_some() {
        first_enqueue_us(&tally, start_us)
    } else {
        start_us
    };
    let drain_secs = (end_us.saturating_sub(first_us)) as f64 / 1e6;
    let mut latencies_us: Vec<u64> = Vec::with_capacity(total_msgs as usize);
    for (m, sent) in tally.sent_us.iter().enumerate() {
        let run = m / args.steps as usize;
        let enq = tally.enqueued_us[run].load(Ordering::Relaxed);
        latencies_us.push(sent.load(Ordering::Relaxed).saturating_sub(enq));
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| percentile_ms(&latencies_us, p);
    // From the moment each step was due: its run's enqueue for the first
    // step, the previous step's recorded send plus the delay for the rest.
    let mut first_us = Vec::with_capacity(total_runs as usize);
    let mut later_us = Vec::with_capacity((total_msgs - u64::from(total_runs)) as usize);
    for (m, sent) in tally.sent_us.iter().enumerate() {
        let (run, step) = (m / args.steps as usize, m % args.steps as usize);
        let sent = sent.load(Ordering::Relaxed);
        if step == 0 {
            first_us.push(sent.saturating_sub(tally.enqueued_us[run].load(Ordering::Relaxed)));
        } else {
            let due = tally.sent_us[m - 1].load(Ordering::Relaxed) + args.delay_ms * 1000;
            later_us.push(sent.saturating_sub(due));
        }
    }
    let minutes = args
        .soak_secs
        .map(|_| by_minute(&tally, args, first_enqueue_us(&tally, start_us)));
    for m in minutes.iter().flatten() {
        println!("{}", m.line());
    }
    first_us.sort_unstable();
    later_us.sort_unstable();
    let spread =
        |v: &[u64]| (!v.is_empty()).then(|| (percentile_ms(v, 0.5), percentile_ms(v, 0.99)));
    Ok(BenchReport {
        path: args.path.name(),
        db: db.kind(),
        runs: total_runs,
        steps: args.steps,
        workers: args.workers,
        msgs_per_s: total_msgs as f64 / drain_secs.max(1e-6),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        txn_per_msg: match (txn_start, txn_end) {
            (Some(a), Some(b)) => b
                .saturating_sub(a)
                .saturating_sub(enqueue_txn_end.saturating_sub(enqueue_txn_start))
                as f64,
            _ => tally.transactions.load(Ordering::Relaxed) as f64,
        } / total_msgs as f64,
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
        drain_secs,
        ceiling_rows_per_s: args.ceiling_rows_per_s,
        from_due_first: spread(&first_us),
        from_due_later: spread(&later_us),
        minute_p99_ms: minutes.as_deref().and_then(p99_range),
        largest: sizes::largest(&samples),
    })
}

/// When the first run went in (µs after the tally's origin, plus one).
fn first_enqueue_us(tally: &Tally, otherwise: u64) -> u64 {
    tally
        .enqueued_us
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(otherwise)
}

/// One minute of a soak: the messages recorded sent in it, and how long
/// after falling due they went.
#[derive(Debug, Clone)]
pub struct Minute {
    /// Minutes from the first enqueue, from 1.
    pub minute: u64,
    /// Messages recorded sent in this minute.
    pub sent: u64,
    /// First steps: p50 and p99 from due, in ms.
    pub first: Option<(f64, f64)>,
    /// Later steps: p50 and p99 from due, in ms.
    pub later: Option<(f64, f64)>,
}

impl Minute {
    fn line(&self) -> String {
        let spread = |name: &str, s: Option<(f64, f64)>| match s {
            Some((p50, p99)) => format!(" {name}_p50_ms={p50:.2} {name}_p99_ms={p99:.2}"),
            None => String::new(),
        };
        format!(
            "soak: minute={} sent={}{}{}",
            self.minute,
            self.sent,
            spread("first", self.first),
            spread("later", self.later)
        )
    }

    /// The worse of its two p99s.
    fn p99(&self) -> Option<f64> {
        match (self.first, self.later) {
            (Some(a), Some(b)) => Some(a.1.max(b.1)),
            (a, b) => a.or(b).map(|s| s.1),
        }
    }
}

/// Each minute's messages, by when they were recorded sent.
fn by_minute(tally: &Tally, args: &BenchArgs, origin_us: u64) -> Vec<Minute> {
    const MINUTE_US: u64 = 60_000_000;
    let steps = args.steps as usize;
    let mut buckets: BTreeMap<u64, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for (m, sent) in tally.sent_us.iter().enumerate() {
        let sent = sent.load(Ordering::Relaxed);
        if sent == 0 {
            continue;
        }
        let (run, step) = (m / steps, m % steps);
        let due = if step == 0 {
            tally.enqueued_us[run].load(Ordering::Relaxed)
        } else {
            tally.sent_us[m - 1].load(Ordering::Relaxed) + args.delay_ms * 1000
        };
        let bucket = buckets
            .entry(sent.saturating_sub(origin_us) / MINUTE_US)
            .or_default();
        let lat = sent.saturating_sub(due);
        if step == 0 {
            bucket.0.push(lat);
        } else {
            bucket.1.push(lat);
        }
    }
    buckets
        .into_iter()
        .map(|(i, (mut first, mut later))| {
            first.sort_unstable();
            later.sort_unstable();
            let spread = |v: &[u64]| {
                (!v.is_empty()).then(|| (percentile_ms(v, 0.5), percentile_ms(v, 0.99)))
            };
            Minute {
                minute: i + 1,
                sent: (first.len() + later.len()) as u64,
                first: spread(&first),
                later: spread(&later),
            }
        })
        .collect()
}

/// The lowest and highest p99 of the whole minutes (the last, partial
/// one, the drain's tail, is left out when there are others).
fn p99_range(minutes: &[Minute]) -> Option<(f64, f64)> {
    let whole = match minutes.len() {
        0 => return None,
        1 => minutes,
        n => &minutes[..n - 1],
    };
    let p99s: Vec<f64> = whole.iter().filter_map(Minute::p99).collect();
    let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = p99s.iter().copied().fold(0.0, f64::max);
    (!p99s.is_empty()).then_some((lo, hi))
}

/// The `p` quantile of sorted µs figures, in ms.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[i] as f64 / 1000.0
}

/// The runs to enqueue, made one at a time when they go in: a soak of a
/// million runs holds sixteen bytes per run here, not a million flows.
/// Run `i` goes to conversation `i % conversations`.
struct RunPlan {
    ids: Vec<RunId>,
    tenant: TenantId,
    flow: FlowId,
    steps: Vec<PlannedStep>,
    recipients: Vec<Recipient>,
}

impl RunPlan {
    fn new(args: &BenchArgs, clock: &TokioClock) -> anyhow::Result<Self> {
        let now_ms = clock.now_ms();
        let mut seed = oncesend_core::rng::SplitMix64::new(daemon::os_random());
        let steps = (0..args.steps)
            .map(|s| PlannedStep {
                message: oncesend_core::Message::text(format!("bench message {}", s + 1)),
                delay_ms: if s == 0 { 0 } else { args.delay_ms },
                after: Default::default(),
                after_timeout_ms: None,
            })
            .collect();
        let recipients = (0..args.conversations.min(args.total_runs()))
            .map(|c| Recipient::parse(&format!("+1555{:08}", c)))
            .collect::<Result<_, _>>()
            .context("bench recipients")?;
        Ok(Self {
            ids: (0..args.total_runs())
                .map(|_| RunId::new(now_ms, seed.next_u64()))
                .collect(),
            tenant: TenantId::default_tenant(),
            flow: FlowId::new("bench").expect("a valid flow id"),
            steps,
            recipients,
        })
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn run(&self, i: usize) -> NewRun {
        NewRun {
            id: self.ids[i],
            tenant: self.tenant.clone(),
            flow: self.flow.clone(),
            to: self.recipients[i % self.recipients.len()].clone(),
            steps: self.steps.clone(),
            trigger_key: None,
        }
    }
}

/// Enqueues `chunk` in one `apply_batch`, noting each run's enqueue time,
/// then wakes every worker.
async fn enqueue_chunk(
    db: &Db,
    chunk: &[NewRun],
    tally: &Tally,
    wakeups: &[Arc<Notify>],
    clock: &TokioClock,
) -> anyhow::Result<()> {
    let now_us = tally.now_us();
    let now_ms = clock.now_ms();
    for run in chunk {
        tally.enqueued_us[tally.index[&run.id] as usize].store(now_us, Ordering::Relaxed);
    }
    let ops = chunk
        .iter()
        .map(|run| StoreOp::Enqueue {
            run: run.clone(),
            now_ms,
        })
        .collect();
    let replies = db
        .apply_batch(ops)
        .await
        .context("cannot enqueue the bench's runs")?;
    for (run, reply) in chunk.iter().zip(replies) {
        match reply {
            StoreReply::Enqueued { created: true, .. } => {}
            other => bail!("enqueueing run {} was answered {other:?}", run.id),
        }
    }
    for w in wakeups {
        w.notify_one();
    }
    Ok(())
}

async fn enqueue_all(
    db: &Db,
    plan: &RunPlan,
    tally: &Tally,
    wakeups: &[Arc<Notify>],
    clock: &TokioClock,
) -> anyhow::Result<()> {
    for start in (0..plan.len()).step_by(ENQUEUE_CHUNK) {
        let chunk: Vec<NewRun> = (start..(start + ENQUEUE_CHUNK).min(plan.len()))
            .map(|i| plan.run(i))
            .collect();
        enqueue_chunk(db, &chunk, tally, wakeups, clock).await?;
    }
    Ok(())
}

/// Open loop: run `i` is due `i / rate` seconds after the start, whatever
/// the workers are doing; every millisecond, whatever is due goes in, each
/// run as its own `Store::apply` as the trigger API does it (the store's
/// group commit gathers the concurrent ones into shared transactions).
async fn enqueue_at(
    db: &Db,
    plan: &RunPlan,
    rate: u32,
    tally: &Arc<Tally>,
    wakeups: &[Arc<Notify>],
    clock: &TokioClock,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending = tokio::task::JoinSet::new();
    let wakeups: Arc<[Arc<Notify>]> = wakeups.into();
    while next < plan.len() {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(plan.len());
        for i in next..due {
            let (db, tally, wakeups) = (db.clone(), tally.clone(), wakeups.clone());
            let (run, now_ms) = (plan.run(i), clock.now_ms());
            tally.enqueued_us[tally.index[&run.id] as usize]
                .store(tally.now_us(), Ordering::Relaxed);
            pending.spawn(async move {
                let id = run.id;
                match db.apply(StoreOp::Enqueue { run, now_ms }).await {
                    Ok(StoreReply::Enqueued { created: true, .. }) => {}
                    Ok(other) => bail!("enqueueing run {id} was answered {other:?}"),
                    Err(e) => bail!("cannot enqueue run {id}: {e}"),
                }
                for w in wakeups.iter() {
                    w.notify_one();
                }
                Ok(())
            });
        }
        next = due.max(next);
        while let Some(done) = pending.try_join_next() {
            done.context("an enqueue panicked")??;
        }
    }
    while let Some(done) = pending.join_next().await {
        done.context("an enqueue panicked")??;
    }
    Ok(())
}

/// How often `--prune-retention-ms` prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// Prunes as the engine does, every [`PRUNE_EVERY`], until `stop`; then
/// once more. Returns the runs it deleted.
async fn prune_while(
    db: Db,
    clock: TokioClock,
    retention_ms: u64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut pruned = 0u64;
    loop {
        let stopping = *stop.borrow();
        pruned += daemon::prune_finished(&db, retention_ms, clock.now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("pruning failed: {e}"))?;
        if stopping {
            return Ok(pruned);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Waits until every message is sent; fails when none has been for `stall`.
async fn wait_for_all(tally: &Tally, total: u64, stall: Duration) -> anyhow::Result<()> {
    loop {
        let sent = tally.sent.load(Ordering::Relaxed);
        if sent >= total {
            return Ok(());
        }
        let heard = tokio::time::timeout(stall, tally.progress.notified()).await;
        if heard.is_err() && tally.sent.load(Ordering::Relaxed) == sent {
            bail!(
                "stalled: {sent} of {total} messages sent and none for {} s (raise --stall-secs if the database is slow)",
                stall.as_secs()
            );
        }
    }
}

/// The workers (and, on the full path, the engine) of one bench run.
struct Drain {
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    server: Option<(
        watch::Sender<bool>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl Drain {
    async fn start(
        args: &BenchArgs,
        store: &CountingStore<Db>,
        clock: &TokioClock,
        wakeups: &[Arc<Notify>],
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        match args.path {
            BenchPath::Store => {
                let workers = wakeups
                    .iter()
                    .enumerate()
                    .map(|(i, wake)| {
                        let w = StoreWorker {
                            store: store.clone(),
                            owner: WorkerId::new(format!("bench-{i}")).expect("a valid worker id"),
                            batch: args.batch,
                            poll: Duration::from_millis(args.poll_ms.max(1)),
                            clock: clock.clone(),
                            wake: wake.clone(),
                            stop: stop.clone(),
                        };
                        tokio::spawn(w.run())
                    })
                    .collect();
                Ok(Self {
                    workers,
                    server: None,
                })
            }
            BenchPath::Full => {
                let config = EngineConfig {
                    send_timeout_ms: SEND_TIMEOUT_MS,
                    pacing: None,
                    ..EngineConfig::default()
                };
                let handle: EngineHandle = EngineHandle::spawn(
                    config,
                    store.clone(),
                    NullProvider::default(),
                    clock.clone(),
                );
                let state = AppState::new(
                    store.clone(),
                    handle,
                    clock.clone(),
                    daemon::os_random(),
                    ApiConfig::default(),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("cannot listen on loopback")?;
                let addr = listener.local_addr()?.to_string();
                let (server_stop, mut server_rx) = watch::channel(false);
                let server = tokio::spawn(async move {
                    axum::serve(listener, api::router(state))
                        .with_graceful_shutdown(async move {
                            let _ = server_rx.wait_for(|s| *s).await;
                        })
                        .await
                });
                let concurrency = args.concurrency.unwrap_or(2 * args.batch) as usize;
                let mut workers = Vec::new();
                for (i, wake) in wakeups.iter().enumerate() {
                    let config = WorkerConfig {
                        lease_ms: LEASE_MS,
                        batch: args.batch,
                        concurrency,
                        poll_ms: args.poll_ms.max(1),
                        send_timeout_ms: SEND_TIMEOUT_MS,
                        ..WorkerConfig::new(
                            WorkerId::new(format!("bench-{i}")).expect("a valid worker id"),
                        )
                    };
                    let worker = Worker::new(config, daemon::os_random())
                        .map_err(|e| anyhow::anyhow!("worker settings: {e}"))?;
                    let http = HttpClient::new(
                        TcpConnector::new(addr.clone()),
                        &addr,
                        None,
                        Duration::from_millis(SEND_TIMEOUT_MS),
                    );
                    let mut stop = stop.clone();
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let stats = Arc::new(Mutex::new(Default::default()));
                    let wake = Some(wake.clone());
                    let store = store.clone();
                    let clock = clock.clone();
                    workers.push(if args.send_batch > 1 {
                        let options = CoalesceOptions {
                            max_batch: args.send_batch as usize,
                            ..oncesend::worker::SEND_BATCH
                        };
                        let engine = BatchedHttpEngineClient::new(http, options);
                        tokio::spawn(async move {
                            run_worker_woken(worker, store, engine, clock, stopped, stats, wake)
                                .await;
                            Ok(())
                        })
                    } else {
                        let engine = HttpEngineClient::new(http);
                        tokio::spawn(async move {
                            run_worker_woken(worker, store, engine, clock, stopped, stats, wake)
                                .await;
                            Ok(())
                        })
                    });
                }
                Ok(Self {
                    workers,
                    server: Some((server_stop, server)),
                })
            }
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        for w in self.workers {
            w.await.context("a bench worker panicked")??;
        }
        if let Some((stop, server)) = self.server {
            let _ = stop.send(true);
            server
                .await
                .context("the engine's server panicked")?
                .context("the engine's server failed")?;
        }
        Ok(())
    }
}

/// The store path's worker. It holds up to `batch` runs; each transaction
/// records the next step of every run it holds and, in the same
/// transaction, claims as many more as there will be room for. One commit
/// per batch and step, where a claim and a write of their own cost two.
struct StoreWorker {
    store: CountingStore<Db>,
    owner: WorkerId,
    batch: u32,
    poll: Duration,
    clock: TokioClock,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

impl StoreWorker {
    async fn run(mut self) -> anyhow::Result<()> {
        let mut held: Vec<ClaimedRun> = Vec::new();
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            let now_ms = self.clock.now_ms();
            let mut ops: Vec<StoreOp> = held.iter().map(|r| next_write(r, now_ms)).collect();
            // Runs that move on to another step stay held; the rest leave.
            let staying = ops
                .iter()
                .filter(|op| matches!(op, StoreOp::Advance { delay_ms: None, .. }))
                .count() as u32;
            let room = self.batch.saturating_sub(staying);
            if room > 0 {
                ops.push(StoreOp::Claim {
                    owner: self.owner.clone(),
                    max: room,
                    lease_ms: LEASE_MS,
                    now_ms,
                });
            }
            let replies = match self.store.apply_batch(ops).await {
                Ok(replies) => replies,
                Err(e) => {
                    // Every write is safe to repeat, and a claim that did
                    // commit without its answer is rescued when its lease
                    // lapses.
                    tracing::warn!(worker_id = %self.owner, error = %e, "batch failed; retrying");
                    tokio::time::sleep(self.poll).await;
                    continue;
                }
            };
            let mut replies = replies.into_iter();
            let mut still = Vec::with_capacity(self.batch as usize);
            for (mut run, reply) in std::mem::take(&mut held).into_iter().zip(replies.by_ref()) {
                match reply {
                    StoreReply::Advanced {
                        cursor,
                        released: false,
                    } => {
                        run.cursor = cursor;
                        still.push(run);
                    }
                    StoreReply::Advanced { released: true, .. } | StoreReply::Completed => {}
                    other => bail!(
                        "{}: the write for run {} step {} was answered {other:?}",
                        self.owner,
                        run.id,
                        run.cursor
                    ),
                }
            }
            if room > 0 {
                match replies.next() {
                    Some(StoreReply::Claimed(runs)) => still.extend(runs),
                    other => bail!("{}: a claim was answered {other:?}", self.owner),
                }
            }
            held = still;
            if held.is_empty() {
                tokio::select! {
                    biased;
                    _ = self.stop.changed() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                }
            }
        }
    }
}

/// The write that records `run`'s current step as sent.
fn next_write(run: &ClaimedRun, now_ms: u64) -> StoreOp {
    let step = run.cursor;
    let last = run.steps.len() as u32 - 1;
    if step >= last {
        StoreOp::Complete {
            run: run.id,
            epoch: run.epoch,
            step,
            now_ms,
        }
    } else {
        let delay = run.steps[step as usize + 1].delay_ms;
        StoreOp::Advance {
            run: run.id,
            epoch: run.epoch,
            step,
            delay_ms: (delay > 0).then_some(delay),
            now_ms,
        }
    }
}

/// Checks, from the store itself, that every run completed with every step
/// sent exactly once, and that the bench saw each message sent once.
async fn verify(db: &Db, args: &BenchArgs, tally: &Tally) -> anyhow::Result<()> {
    let duplicates = tally.duplicates.load(Ordering::Relaxed);
    if duplicates > 0 {
        bail!("{duplicates} messages were recorded sent more than once");
    }
    let every = args.verify_every() as usize;
    let ids: Vec<RunId> = tally.index.keys().copied().step_by(every).collect();
    let pruning = args.prune_retention_ms.is_some();
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let gone = Arc::new(AtomicU64::new(0));
    let mut checks = tokio::task::JoinSet::new();
    for part in ids.chunks(ids.len().div_ceil(VERIFY_CONCURRENCY)) {
        let (db, part, problems, gone) =
            (db.clone(), part.to_vec(), problems.clone(), gone.clone());
        let (steps, path) = (args.steps, args.path);
        checks.spawn(async move {
            for id in part {
                match check_run(&db, id, steps, path).await {
                    // A pruned run finished before it went; that its every
                    // step was sent once is the tally's to say, below.
                    Checked::Gone if pruning => {
                        gone.fetch_add(1, Ordering::Relaxed);
                    }
                    Checked::Gone => problems
                        .lock()
                        .expect("problems lock")
                        .push(format!("run {id} is not in the store")),
                    Checked::Wrong(p) => problems.lock().expect("problems lock").push(p),
                    Checked::Right => {}
                }
            }
        });
    }
    while let Some(done) = checks.join_next().await {
        done.context("a check panicked")?;
    }
    let problems = problems.lock().expect("problems lock");
    if !problems.is_empty() {
        bail!(
            "{} of {} runs are wrong; the first: {}",
            problems.len(),
            ids.len(),
            problems[..problems.len().min(5)].join("; ")
        );
    }
    let unsent = tally
        .sent_us
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == 0)
        .count();
    if unsent > 0 {
        bail!("{unsent} messages were never recorded sent");
    }
    let gone = gone.load(Ordering::Relaxed);
    println!(
        "bench: verified {} runs completed, each of their {} steps sent exactly once{}{}",
        ids.len() as u64 - gone,
        args.steps,
        if every > 1 {
            format!(" (1 run in {every} of {} checked)", tally.index.len())
        } else {
            String::new()
        },
        if gone > 0 {
            format!("; {gone} checked runs were already pruned (finished), and the bench saw every step of every run sent once")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// What the store says of one run after the drain.
enum Checked {
    Right,
    Gone,
    Wrong(String),
}

async fn check_run(db: &Db, id: RunId, steps: u32, path: BenchPath) -> Checked {
    let view = match db.apply(StoreOp::GetRun { run: id }).await {
        Ok(StoreReply::Run(view)) => view,
        Ok(StoreReply::NotFound) => return Checked::Gone,
        Ok(other) => return Checked::Wrong(format!("run {id}: GetRun answered {other:?}")),
        Err(e) => return Checked::Wrong(format!("run {id}: {e}")),
    };
    if view.status != RunStatus::Completed || view.cursor != steps {
        return Checked::Wrong(format!(
            "run {id} is {} at step {} of {steps}",
            view.status.as_str(),
            view.cursor
        ));
    }
    if path == BenchPath::Full {
        for step in 0..steps as usize {
            match view.deliveries.get(step).cloned().flatten() {
                Some(d) if d.state == DeliveryState::Sent && d.attempts == 1 => {}
                Some(d) => {
                    return Checked::Wrong(format!(
                        "run {id} step {step}: ledger says {} after {} attempts",
                        d.state.as_str(),
                        d.attempts
                    ))
                }
                None => return Checked::Wrong(format!("run {id} step {step}: no ledger row")),
            }
        }
    }
    Checked::Right
}

/// The process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
