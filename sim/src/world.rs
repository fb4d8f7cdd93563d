//! One simulation: the hosts, the fault schedule, and the history the
//! checker reads at the end.

use crate::db::{self, DbClient, DbRequest, DbResponse};
use crate::fault::{schedule_from_seed, FaultEvent, FaultKind, Gate, GatedEngine, Node};
use crate::legacy::{self, LegacyOp, LegacyTable, Sender};
use crate::net::{SimConnector, SimListener};
use crate::provider::SimProvider;
use crate::trace::{sim_ms, Shared, BASE_MS};
use oncesend::api::{self, ApiConfig, AppState};
use oncesend::clock::TokioClock;
use oncesend::engine::EngineHandle;
use oncesend::net::HttpClient;
use oncesend::store::MemoryStore;
use oncesend::worker::{run_worker, HttpEngineClient};
use oncesend_core::check::{check, Accepted, FinalRun, History, Report};
use oncesend_core::rng::SplitMix64;
use oncesend_core::{
    DeliveryKey, DeliveryState, EngineConfig, Guards, MemStore, RetryPolicy, RunId, RunStatus,
    StoreOp, StoreReply, Worker, WorkerConfig, WorkerId,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lease length in the simulation.
pub const LEASE_MS: u64 = 2_000;
/// The engine's provider-call limit in the simulation.
pub const SEND_TIMEOUT_MS: u64 = 400;
/// Every run must be finished this long after the last fault heals.
pub const LIVENESS_BOUND_MS: u64 = 20_000;
/// Triggers arrive within this window.
const TRIGGER_WINDOW_MS: u64 = 3_000;
/// Faults start within this window.
const FAULT_WINDOW_MS: u64 = 8_000;
/// The engine's port.
const ENGINE_PORT: u16 = 8080;
/// How long a run waits for a status on an unknown step in the simulation.
pub const UNKNOWN_TIMEOUT_MS: u64 = 3_000;
/// The Meta app secret the simulated provider signs its webhooks with.
const APP_SECRET: &str = "sim-app-secret";

/// Which system runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// oncesend: fenced claims and the idempotency ledger.
    Fixed,
    /// The old system: two processors polling the same pending rows.
    Legacy,
}

impl Mode {
    /// The mode's name, as the RESULT line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Legacy => "legacy",
        }
    }
}

/// Where the faults come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Faults {
    /// None at all.
    None,
    /// Drawn from the seed.
    FromSeed,
    /// Only the old race itself: several processors claiming at once over
    /// a network with latency, and the db's clock skewed. Nothing is
    /// crashed, cut, paused or lost: a send whose outcome is lost after it
    /// left is the ledger's case, which no fencing can cover because the
    /// provider does not check fencing tokens.
    Race,
    /// Exactly these.
    Explicit(Vec<FaultEvent>),
}

/// One simulation's shape.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Which system.
    pub mode: Mode,
    /// Runs triggered.
    pub runs: u32,
    /// Steps per run.
    pub steps: u32,
    /// Distinct recipients (conversations).
    pub recipients: u32,
    /// Standalone workers (the engine runs one more processor inside).
    pub workers: u8,
    /// The store's guards (ablation tests turn them off).
    pub guards: Guards,
    /// The fault schedule.
    pub faults: Faults,
    /// Test-only: a planted bug (unknown treated as retryable).
    pub planted_bug: bool,
    /// turmoil's tick.
    pub tick_ms: u64,
}

impl SimConfig {
    /// The standard scenario: 20 runs of 3 steps, 2 standalone workers plus
    /// the engine's own processor, faults from the seed.
    pub fn fixed() -> Self {
        Self {
            mode: Mode::Fixed,
            runs: 20,
            steps: 3,
            recipients: 8,
            workers: 2,
            guards: Guards::default(),
            faults: Faults::FromSeed,
            planted_bug: false,
            tick_ms: 10,
        }
    }

    /// The old system's race, with no faults: it needs none.
    pub fn legacy() -> Self {
        Self {
            mode: Mode::Legacy,
            faults: Faults::None,
            ..Self::fixed()
        }
    }
}

/// What one seed showed.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The checker's report.
    pub report: Report,
    /// Unknown keys the faults do not explain, or sent more than once.
    pub unexplained_unknown: Vec<DeliveryKey>,
    /// Why liveness failed, if it did.
    pub liveness: Option<String>,
    /// Time from the last fault healing to every run finishing.
    pub settle_ms: Option<u64>,
    /// Hash of the event trace.
    pub trace_hash: u64,
    /// The event trace.
    pub trace: Vec<String>,
    /// Simulated time the seed took.
    pub sim_ms: u64,
    /// Fault kinds that had an effect.
    pub fired: BTreeSet<&'static str>,
    /// Runs accepted.
    pub runs: u64,
    /// The schedule that ran.
    pub schedule: Vec<FaultEvent>,
    /// Requests the provider refused because of the sender itself.
    pub sender_refusals: u64,
    /// Runs that ended `failed`.
    pub failed: u64,
    /// Runs waiting on an unknown step that a status moved on.
    pub receipt_settled: u64,
    /// Runs failed because no status came within the unknown timeout.
    pub unknown_timeouts: u64,
}

impl SeedResult {
    /// No invariant broken.
    pub fn ok(&self) -> bool {
        self.report.is_clean() && self.unexplained_unknown.is_empty() && self.liveness.is_none()
    }
}

fn fnv1a(lines: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn recipient(i: u32) -> String {
    format!("+55119133{:05}", 90_000 + i)
}

fn worker_config(name: &str) -> WorkerConfig {
    WorkerConfig {
        lease_ms: LEASE_MS,
        batch: 4,
        concurrency: 8,
        poll_ms: 100,
        send_timeout_ms: SEND_TIMEOUT_MS,
        retry: RetryPolicy {
            base_ms: 50,
            cap_ms: 1_000,
            max_attempts: 6,
        },
        unknown_timeout_ms: UNKNOWN_TIMEOUT_MS,
        ..WorkerConfig::new(WorkerId::new(name).expect("valid name"))
    }
}

fn db_client(shared: &Shared, gate: Gate) -> DbClient {
    DbClient::new(Duration::from_millis(500), gate, shared.clone())
}

fn host_clock() -> TokioClock {
    TokioClock::new(BASE_MS + sim_ms())
}

/// Notes every delivery still `sending` when the engine crashes: their
/// outcome is lost with it.
fn note_sending(store: &MemoryStore, shared: &Shared) {
    let StoreReply::Runs(runs) = store.apply_now(StoreOp::ListRuns {
        status: None,
        filter: Default::default(),
        limit: u32::MAX,
    }) else {
        return;
    };
    for r in runs {
        if let StoreReply::Run(v) = store.apply_now(StoreOp::GetRun { run: r.id }) {
            for d in v.deliveries.into_iter().flatten() {
                if matches!(d.state, DeliveryState::Sending { .. }) {
                    shared.note_ambiguous(d.key, "engine_crash");
                }
            }
        }
    }
}

/// Runs one seed and checks its history.
///
/// Each simulation runs on a thread of its own, so no thread-local state
/// (tokio's and the standard library's) carries over from an earlier one:
/// a seed gives the same trace whatever ran before it.
pub fn run_seed(seed: u64, config: &SimConfig) -> SeedResult {
    // One simulation at a time per process: tokio's task counter is shared
    // by every thread (see `align_task_ids`).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || run_seed_here(seed, &config))
        .expect("spawn a simulation thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// tokio numbers tasks from one process-wide counter, and a runtime that
/// shuts down (a crashed host) drops its tasks in an order that follows
/// those numbers modulo a small power of two. Dropping a connection sends
/// on the simulated network, so that order must not depend on how many
/// tasks earlier simulations in this process made. Spending numbers up to
/// the next multiple of 64 puts every simulation on the same footing.
fn align_task_ids() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime to align task ids");
    loop {
        let handle = rt.spawn(async {});
        let id: u64 = handle.id().to_string().parse().unwrap_or(0);
        let _ = rt.block_on(handle);
        if id % 64 == 63 {
            break;
        }
    }
}

fn run_seed_here(seed: u64, config: &SimConfig) -> SeedResult {
    align_task_ids();
    let mut rng = SplitMix64::new(seed);
    let shared = Shared::default();
    let store = MemoryStore::new(MemStore::with_guards(config.guards));
    let legacy_table = Arc::new(Mutex::new(LegacyTable::default()));
    let max_latency_ms = 2 + rng.next_u64() % 25;
    let schedule = match &config.faults {
        Faults::None => Vec::new(),
        Faults::FromSeed => schedule_from_seed(seed, config.workers, FAULT_WINDOW_MS, LEASE_MS),
        Faults::Race => schedule_from_seed(seed, config.workers, FAULT_WINDOW_MS, LEASE_MS)
            .into_iter()
            .filter(|e| matches!(e.kind, FaultKind::Skew { .. }))
            .collect(),
        Faults::Explicit(s) => s.clone(),
    };
    let last_heal_ms = schedule.iter().map(FaultEvent::heal_ms).max().unwrap_or(0);
    if config.mode == Mode::Fixed {
        shared.seed_statuses(seed);
    }
    let hard_limit_ms = last_heal_ms.max(TRIGGER_WINDOW_MS) + LIVENESS_BOUND_MS * 2;

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(BASE_MS))
        .tick_duration(Duration::from_millis(config.tick_ms))
        .simulation_duration(Duration::from_millis(hard_limit_ms + 10_000))
        .tcp_capacity(4096)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(max_latency_ms))
        .build();
    shared.fired("latency");

    // The db host.
    {
        let (store, legacy_table, shared) = (store.clone(), legacy_table.clone(), shared.clone());
        sim.host("db", move || {
            let (store, legacy_table, shared) =
                (store.clone(), legacy_table.clone(), shared.clone());
            async move {
                shared.log(format!("db started (restart {})", shared.started("db")));
                db::serve(store, legacy_table, shared).await
            }
        });
    }

    // The engine host, with the processor inside it.
    {
        let shared = shared.clone();
        let mode = config.mode;
        sim.host("engine", move || {
            let shared = shared.clone();
            async move {
                let restart = shared.started("engine");
                shared.log(format!("engine started (restart {restart})"));
                let clock = host_clock();
                let store = db_client(&shared, Gate::open(shared.clone()));
                let provider = SimProvider::new(shared.clone(), Duration::from_millis(3));
                let engine = EngineHandle::spawn(
                    EngineConfig {
                        send_timeout_ms: SEND_TIMEOUT_MS,
                        ..EngineConfig::default()
                    },
                    store.clone(),
                    provider.clone(),
                    clock.clone(),
                );
                let state = AppState::new(
                    store.clone(),
                    engine.clone(),
                    clock.clone(),
                    seed ^ (restart << 32) ^ 0xE,
                    ApiConfig {
                        app_secret: Some(APP_SECRET.into()),
                        ..ApiConfig::default()
                    },
                );
                let mut router = api::router(state);
                match mode {
                    Mode::Fixed => {
                        // The old topology on the new core: a processor
                        // inside the engine, beside the standalone workers.
                        let worker =
                            Worker::new(worker_config("engine-queue"), seed ^ restart ^ 0xA)
                                .expect("valid worker config");
                        tokio::spawn(run_worker(
                            worker,
                            store,
                            engine,
                            clock,
                            std::future::pending(),
                            Arc::default(),
                        ));
                    }
                    Mode::Legacy => {
                        tokio::spawn(legacy::processor(
                            "[Message Queue]",
                            store,
                            Sender::Direct(provider.clone()),
                            500,
                            shared.clone(),
                        ));
                        router = router.merge(legacy::router(provider));
                    }
                }
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", ENGINE_PORT)).await?;
                axum::serve(SimListener(listener), router).await?;
                Ok(())
            }
        });
    }

    // Standalone workers (or, in legacy mode, the old queue worker).
    let workers = match config.mode {
        Mode::Fixed => config.workers,
        Mode::Legacy => 1,
    };
    for i in 0..workers {
        let shared = shared.clone();
        let name = Node::Worker(i).host();
        let mode = config.mode;
        let planted_bug = config.planted_bug;
        let start_delay_ms = rng.next_u64() % 100;
        let host = name.clone();
        sim.host(host.as_str(), move || {
            let (shared, name) = (shared.clone(), name.clone());
            async move {
                let restart = shared.started(&name);
                shared.log(format!("{name} started (restart {restart})"));
                let gate = Gate::new(shared.clone(), &name, LEASE_MS);
                let store = db_client(&shared, gate.clone());
                let http = HttpClient::new(
                    SimConnector::new(format!("engine:{ENGINE_PORT}")),
                    "engine",
                    None,
                    Duration::from_millis(1_500),
                );
                match mode {
                    Mode::Fixed => {
                        let worker =
                            Worker::new(worker_config(&name), seed ^ restart ^ (i as u64 + 1) << 8)
                                .expect("valid worker config");
                        let engine = GatedEngine {
                            inner: HttpEngineClient::new(http),
                            gate,
                            planted_bug,
                        };
                        run_worker(
                            worker,
                            store,
                            engine,
                            host_clock(),
                            std::future::pending(),
                            Arc::default(),
                        )
                        .await;
                    }
                    Mode::Legacy => {
                        tokio::time::sleep(Duration::from_millis(start_delay_ms)).await;
                        legacy::processor("[Queue Worker]", store, Sender::Http(http), 500, shared)
                            .await;
                    }
                }
                Ok(())
            }
        });
    }

    // Meta's webhook sender: posts the statuses the provider owes to the
    // engine's webhook, signed, several to a POST, retrying what the
    // engine did not take.
    if config.mode == Mode::Fixed {
        let shared = shared.clone();
        sim.host("meta", move || {
            let shared = shared.clone();
            async move {
                post_statuses(shared).await;
                Ok(())
            }
        });
    }

    // The client: creates the flow, triggers runs, waits for them to finish.
    let done_at: Arc<Mutex<Option<u64>>> = Arc::default();
    {
        let shared = shared.clone();
        let store = store.clone();
        let legacy_table = legacy_table.clone();
        let done_at = done_at.clone();
        let mode = config.mode;
        let (runs, steps, recipients) = (config.runs, config.steps, config.recipients);
        let delays: Vec<u64> = (0..steps)
            .map(|s| if s == 0 { 0 } else { rng.next_u64() % 400 })
            .collect();
        // In half the seeds the last step waits for the one before it to
        // be delivered (an image overtaken by the text after it).
        let wait_for_delivery = steps > 1 && rng.next_u64().is_multiple_of(2);
        let mut plan: Vec<(u64, u32)> = (0..runs)
            .map(|_| {
                (
                    rng.next_u64() % TRIGGER_WINDOW_MS,
                    (rng.next_u64() % recipients as u64) as u32,
                )
            })
            .collect();
        plan.sort();
        let id_seed = rng.next_u64();
        sim.client("client", async move {
            let http = HttpClient::new(
                SimConnector::new(format!("engine:{ENGINE_PORT}")),
                "engine",
                None,
                Duration::from_millis(1_000),
            );
            let flow_steps: Vec<serde_json::Value> = delays
                .iter()
                .enumerate()
                .map(|(s, d)| {
                    let mut step = serde_json::json!({"text": format!("Hi {{{{name}}}}, message {} of {steps}", s + 1), "delay_ms": d});
                    if wait_for_delivery && s + 1 == steps as usize {
                        step["after"] = "delivered".into();
                        step["after_timeout_ms"] = 1_500.into();
                    }
                    step
                })
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({"steps": flow_steps})).expect("json");
            if mode == Mode::Fixed {
                while !matches!(http.request(hyper::Method::PUT, "/v1/flows/welcome", &[], Some(body.clone())).await,
                    Ok((s, _, _)) if s.is_success())
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if mode == Mode::Fixed {
                tokio::spawn(operator(shared.clone(), http.clone()));
            }
            let db = db_client(&shared, Gate::open(shared.clone()));
            let mut ids = SplitMix64::new(id_seed);
            for (i, (at_ms, to)) in plan.iter().enumerate() {
                let wait = at_ms.saturating_sub(sim_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let to = recipient(*to);
                match mode {
                    Mode::Fixed => {
                        // Retried with one Idempotency-Key until accepted:
                        // a lost answer never makes a second run.
                        let body = serde_json::to_vec(&serde_json::json!({"to": to, "vars": {"name": format!("guest{i}")}})).expect("json");
                        let key = ("idempotency-key", format!("trigger-{i}"));
                        loop {
                            match http.request(hyper::Method::POST, "/v1/flows/welcome/runs", std::slice::from_ref(&key), Some(body.clone())).await {
                                Ok((s, _, b)) if s.is_success() => {
                                    shared.log(format!("client: trigger {i} for {to} accepted: {}", String::from_utf8_lossy(&b)));
                                    break;
                                }
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                    Mode::Legacy => {
                        let run = RunId::new(BASE_MS + sim_ms(), ids.next_u64());
                        let steps = delays
                            .iter()
                            .enumerate()
                            .map(|(s, d)| (format!("Hi guest{i}, message {} of {steps}", s + 1), *d))
                            .collect();
                        let op = LegacyOp::Insert { run, to: oncesend_core::Recipient::parse(&to).expect("valid"), steps };
                        while !matches!(db.request(&DbRequest::Legacy(LegacyOp::FetchPending { limit: 0 })).await, Ok(DbResponse::Legacy(_))) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = db.request(&DbRequest::Legacy(op)).await;
                        shared.log(format!("client: webhook for {to} queued run {run}"));
                    }
                }
            }
            // Wait for every run to finish, or for the hard limit.
            loop {
                let finished = match mode {
                    Mode::Fixed => all_finished(&store),
                    Mode::Legacy => legacy_table.lock().expect("legacy lock").all_sent(),
                };
                if finished {
                    *done_at.lock().expect("done lock") = Some(sim_ms());
                    break;
                }
                if sim_ms() > hard_limit_ms {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        });
    }

    // Drive the simulation, applying and healing faults on schedule.
    let mut actions: Vec<(u64, bool, usize)> = Vec::new();
    for (i, e) in schedule.iter().enumerate() {
        actions.push((e.at_ms, true, i));
        actions.push((e.heal_ms(), false, i));
    }
    actions.sort();
    let mut next = 0;
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while next < actions.len() && actions[next].0 <= now_ms {
            let (_, start, i) = actions[next];
            apply(&mut sim, &schedule[i], start, &shared, &store, now_ms);
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                shared.log_at(now_ms, format!("simulation error: {e}"));
                break;
            }
        }
    }
    let sim_ms_total = sim.elapsed().as_millis() as u64;
    drop(sim);

    // Build the history and check it.
    let calls = shared.calls();
    let (begun, pauses) = shared.begun_and_pauses();
    let mut history = History {
        calls: calls.clone(),
        begun,
        pauses,
        said_failed: shared.said_failed(),
        ..History::default()
    };
    match config.mode {
        Mode::Fixed => {
            let StoreReply::Runs(mut runs) = store.apply_now(StoreOp::ListRuns {
                status: None,
                filter: Default::default(),
                limit: u32::MAX,
            }) else {
                unreachable!("ListRuns answers Runs")
            };
            runs.reverse();
            for r in runs {
                let StoreReply::Run(v) = store.apply_now(StoreOp::GetRun { run: r.id }) else {
                    unreachable!("the run exists")
                };
                history.accepted.push(Accepted {
                    run: v.id,
                    tenant: v.tenant.clone(),
                    to: v.to.clone(),
                    steps: v.steps.len() as u32,
                });
                let unknown_steps = v
                    .deliveries
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        d.as_ref()
                            .is_some_and(|d| d.state == DeliveryState::Unknown)
                    })
                    .map(|(i, _)| i as u32)
                    .collect();
                history.finals.insert(
                    v.id,
                    FinalRun {
                        status: v.status,
                        cursor: v.cursor,
                        reason: v.reason.clone(),
                        unknown_steps,
                    },
                );
            }
        }
        Mode::Legacy => {
            for (run, (to, steps, sent)) in legacy_table.lock().expect("legacy lock").runs() {
                history.accepted.push(Accepted {
                    run,
                    tenant: oncesend_core::TenantId::default_tenant(),
                    to,
                    steps,
                });
                let status = if sent == steps {
                    RunStatus::Completed
                } else {
                    RunStatus::Pending
                };
                history.finals.insert(
                    run,
                    FinalRun {
                        status,
                        cursor: sent,
                        reason: None,
                        unknown_steps: vec![],
                    },
                );
            }
        }
    }
    let report = check(&history);
    let ambiguous = shared.ambiguous();
    let unexplained_unknown: Vec<DeliveryKey> = report
        .unknown
        .iter()
        .filter(|k| !ambiguous.contains_key(k) || report.duplicates.iter().any(|(d, _)| d == *k))
        .copied()
        .collect();
    let (receipt_settled, unknown_timeouts) = shared.wait_outcomes();
    let done = *done_at.lock().expect("done lock");
    let settle_ms = done.map(|d| d.saturating_sub(last_heal_ms));
    let liveness = match settle_ms {
        None => Some(format!("runs still unfinished at {hard_limit_ms} ms")),
        Some(s) if s > LIVENESS_BOUND_MS => Some(format!(
            "runs took {s} ms to finish after the last fault healed; the bound is {LIVENESS_BOUND_MS} ms"
        )),
        Some(_) => None,
    };
    let mut trace = shared.trace();
    for line in report.to_string().lines() {
        trace.push(format!("check: {line}"));
    }
    SeedResult {
        seed,
        trace_hash: fnv1a(&trace),
        trace,
        report,
        unexplained_unknown,
        liveness,
        settle_ms,
        sim_ms: sim_ms_total,
        fired: shared.fired_kinds(),
        runs: history.accepted.len() as u64,
        schedule,
        sender_refusals: shared.refusals(),
        failed: history
            .finals
            .values()
            .filter(|f| f.status == RunStatus::Failed)
            .count() as u64,
        receipt_settled,
        unknown_timeouts,
    }
}

/// The Cloud API's status webhook body for `owed`, as Meta sends it.
fn status_payload(owed: &[crate::trace::OwedStatus]) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = owed
        .iter()
        .map(|o| {
            let mut s = serde_json::json!({
                "id": format!("wamid.{}", o.key),
                "status": o.status,
                "timestamp": (BASE_MS + o.due_ms) / 1000,
                "recipient_id": "5511913390000",
                "biz_opaque_callback_data": o.key.to_string(),
            });
            if let Some(code) = o.code {
                s["errors"] = serde_json::json!([{
                    "code": code,
                    "title": "Something went wrong",
                    "error_data": {"details": "the message could not be delivered"}
                }]);
            }
            s
        })
        .collect();
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": statuses,
        }}]}],
    })
}

/// Posts owed statuses as they fall due, up to 20 to a POST; what the
/// engine did not answer 200 is posted again later, as Meta retries.
async fn post_statuses(shared: Shared) {
    let http = HttpClient::new(
        SimConnector::new(format!("engine:{ENGINE_PORT}")),
        "engine",
        None,
        Duration::from_millis(1_000),
    );
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let due = shared.take_due_statuses(sim_ms());
        for chunk in due.chunks(20) {
            for o in chunk.iter().filter(|o| o.status == "failed") {
                shared.note_said_failed(o.key);
            }
            let body = serde_json::to_vec(&status_payload(chunk)).expect("json");
            let signature = (
                "x-hub-signature-256",
                oncesend::api::webhook::sign(APP_SECRET, &body),
            );
            let answer = http
                .request(
                    hyper::Method::POST,
                    "/v1/providers/cloud-api/webhook",
                    std::slice::from_ref(&signature),
                    Some(body),
                )
                .await;
            match answer {
                Ok((s, _, _)) if s.is_success() => {}
                other => {
                    let why = match other {
                        Ok((s, _, _)) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    shared.log(format!(
                        "meta: {} statuses not taken ({why}); again later",
                        chunk.len()
                    ));
                    shared.owe_again(chunk.to_vec(), sim_ms() + 250);
                }
            }
        }
    }
}

/// An operator: once the provider takes the sender again (its token was
/// replaced, its bill paid) and a pause is still open, resumes it through
/// the API, trying until the engine answers.
async fn operator(shared: Shared, http: HttpClient<SimConnector>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !shared.resume_wanted() {
            continue;
        }
        let answer = http
            .request(hyper::Method::POST, "/v1/tenants/default/resume", &[], None)
            .await;
        if let Ok((status, _, _)) = answer {
            shared.log(format!("operator: resume answered {status}"));
        }
    }
}

fn all_finished(store: &MemoryStore) -> bool {
    let StoreReply::Runs(runs) = store.apply_now(StoreOp::ListRuns {
        status: None,
        filter: Default::default(),
        limit: u32::MAX,
    }) else {
        return false;
    };
    !runs.is_empty() && runs.iter().all(|r| r.status.is_terminal())
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    e: &FaultEvent,
    start: bool,
    shared: &Shared,
    store: &MemoryStore,
    now_ms: u64,
) {
    let verb = if start { "fault" } else { "heal" };
    shared.log_at(now_ms, format!("{verb}: {:?}", e.kind));
    match &e.kind {
        FaultKind::Partition { a, b, oneway } => {
            let (a, b) = (a.host(), b.host());
            match (start, oneway) {
                (true, false) => sim.partition(a.as_str(), b.as_str()),
                (true, true) => sim.partition_oneway(a.as_str(), b.as_str()),
                (false, false) => sim.repair(a.as_str(), b.as_str()),
                (false, true) => sim.repair_oneway(a.as_str(), b.as_str()),
            }
        }
        FaultKind::Hold { a, b } => {
            let (a, b) = (a.host(), b.host());
            if start {
                sim.hold(a.as_str(), b.as_str());
            } else {
                sim.release(a.as_str(), b.as_str());
            }
        }
        FaultKind::Crash { node } => {
            let host = node.host();
            // Bouncing a running host restarts it too: either way, what
            // the engine had in flight is lost.
            if *node == Node::Engine {
                shared.engine_crashed();
                note_sending(store, shared);
            }
            if start {
                sim.crash(host.as_str());
            } else {
                sim.bounce(host.as_str());
            }
        }
        FaultKind::LoseReplies => shared.set_lose_replies(start),
        FaultKind::Pause { worker } => {
            if start {
                shared.pause(&Node::Worker(*worker).host(), now_ms + e.duration_ms);
            }
        }
        FaultKind::Loss { a, b } => {
            let (a, b) = (a.host(), b.host());
            sim.set_link_fail_rate(a.as_str(), b.as_str(), if start { 0.05 } else { 0.0 });
            if !start {
                sim.repair(a.as_str(), b.as_str());
            }
        }
        FaultKind::Skew { skew_ms } => {
            shared.set_db_skew_ms(if start { *skew_ms as i64 } else { 0 })
        }
        FaultKind::SenderBlocked { code } => shared.set_sender_blocked(start.then_some(*code)),
    }
    if start {
        let name = e.kind.name();
        // These act the moment they are applied; lost replies and pauses
        // count only when they catch a request (see provider and gate).
        if !matches!(
            e.kind,
            FaultKind::LoseReplies | FaultKind::Pause { .. } | FaultKind::SenderBlocked { .. }
        ) {
            shared.fired(name);
        }
    }
}
