//! One simulation: the hosts, the fault schedule, and the history the
//! checker reads at the end.

use crate::db::{self, DbClient, DbRequest, DbResponse};
use crate::fault::{schedule_from_seed, FaultEvent, FaultKind, Gate, GatedEngine, Node};
use crate::legacy::{self, LegacyOp, LegacyTable, Sender};
use crate::marks::{Mark, MarkKind, CLIENT_LANE};
use crate::meta::{self, NUMBERS};
use crate::net::{SimConnector, SimListener, SimNet};
use crate::provider::SimProvider;
use crate::trace::{sim_ms, Exercised, OwedInbound, Shared, BASE_MS};
use oncesend::clock::TokioClock;
use oncesend::config::{EngineArgs, LeaseArgs, ProviderKind, WorkerArgs};
use oncesend::daemon;
use oncesend::db::group_options;
use oncesend::net::HttpClient;
use oncesend::store::group::GroupCommit;
use oncesend::store::sql::Backend;
use oncesend::store::MemoryStore;
use oncesend_core::check::{check, Accepted, FinalRun, History, Liveness, Report};
use oncesend_core::rng::SplitMix64;
use oncesend_core::{
    DeliveryKey, DeliveryState, Guards, MemStore, Recipient, RunEventKind, RunId, RunStatus,
    StoreOp, StoreReply, WorkerId,
};
use std::collections::{BTreeMap, BTreeSet};
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
pub const ENGINE_PORT: u16 = 8080;
/// The engine's pacing: messages a second per sender (its burst too).
const ENGINE_RATE_PER_S: u32 = 40;
/// The engine's pacing: the least time between two messages to one
/// recipient. The provider's pair limit is a little looser
/// ([`meta::META_PAIR_GAP_MS`]), and so is the default number's throughput;
/// the second tenant's number is in a lower tier than this
/// ([`meta::NUMBERS`]), so its sends meet the Cloud API's 130429.
const ENGINE_RECIPIENT_GAP_MS: u64 = 120;
/// How long a run waits for a status on an unknown step in the simulation.
pub const UNKNOWN_TIMEOUT_MS: u64 = 3_000;
/// The API's bearer token (the engine listens on every interface).
const API_TOKEN: &str = "sim-api-token";
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
    /// Test-only: a planted bug in the worker's batched engine client (a
    /// batch whose request failed is taken as sent).
    pub planted_batch_bug: bool,
    /// turmoil's tick.
    pub tick_ms: u64,
    /// Keep the marks the race page draws (`--html`). Off, recording them
    /// costs nothing; on or off, the seed runs the same.
    pub marks: bool,
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
            planted_batch_bug: false,
            tick_ms: 10,
            marks: false,
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
    /// What the production parts did, from their own counters.
    pub exercised: Exercised,
    /// Why each key the faults touched may end `unknown`.
    pub causes: BTreeMap<DeliveryKey, String>,
    /// What the race page draws, in the order it happened (empty unless
    /// [`SimConfig::marks`] asked for them).
    pub marks: Vec<Mark>,
}

impl SeedResult {
    /// No invariant broken.
    pub fn ok(&self) -> bool {
        self.report.is_clean()
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

/// The engine's settings, as flags would give them: the daemons' Cloud
/// API provider pointed at the `meta` host, the webhook secret, pacing.
/// Written out in full (not parsed) so no environment variable reaches in.
fn engine_args() -> EngineArgs {
    EngineArgs {
        listen: ([0, 0, 0, 0], ENGINE_PORT).into(),
        token: Some(API_TOKEN.into()),
        provider: ProviderKind::CloudApi,
        log_file: None,
        cloud_api_url: format!("http://meta:{}", meta::META_PORT),
        ca_file: None,
        cloud_api_token: Some(NUMBERS[0].token.into()),
        phone_number_id: Some(NUMBERS[0].phone_number_id.into()),
        cloud_api_version: meta::GRAPH_VERSION.into(),
        rate_per_sec: ENGINE_RATE_PER_S,
        recipient_gap_ms: ENGINE_RECIPIENT_GAP_MS,
        send_timeout_ms: SEND_TIMEOUT_MS,
        max_body_bytes: oncesend::api::DEFAULT_MAX_BODY_BYTES,
        app_secret: Some(APP_SECRET.into()),
        webhook_verify_token: None,
        opt_out_keywords: vec!["STOP".into(), "PARAR".into()],
        opt_in_keywords: vec!["START".into()],
        retention_ms: 7 * 24 * 3_600_000,
    }
}

/// Every worker's settings, engine's and standalone.
fn lease_args() -> LeaseArgs {
    LeaseArgs {
        concurrency: 8,
        lease_ms: LEASE_MS,
        batch: 4,
        poll_ms: 100,
        unknown_timeout_ms: UNKNOWN_TIMEOUT_MS,
        retry_base_ms: 50,
        retry_cap_ms: 1_000,
        max_attempts: 6,
    }
}

/// A standalone worker's settings.
fn worker_args(name: &str) -> WorkerArgs {
    WorkerArgs {
        engine_url: format!("http://engine:{ENGINE_PORT}"),
        worker_id: Some(name.into()),
        token: Some(API_TOKEN.into()),
        send_timeout_ms: SEND_TIMEOUT_MS,
        lease: lease_args(),
    }
}

fn db_client(shared: &Shared, gate: Gate) -> DbClient {
    DbClient::new(Duration::from_millis(500), gate, shared.clone())
}

/// A host's store: the db host behind the group commit the daemons put in
/// front of PostgreSQL.
fn group_store(shared: &Shared, gate: Gate) -> GroupCommit<DbClient> {
    let store = GroupCommit::new(db_client(shared, gate), group_options(Backend::Postgres));
    let counted = store.clone();
    shared.group_started(move || counted.stats());
    store
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
    let shared = if config.marks {
        Shared::with_marks()
    } else {
        Shared::default()
    };
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

    // The engine host: `oncesend up`'s assembly (the engine, and a worker
    // inside it that sends through the engine's handle), by the daemons'
    // own builders over the simulated network and the db host.
    {
        let shared = shared.clone();
        let mode = config.mode;
        sim.host("engine", move || {
            let shared = shared.clone();
            async move {
                let restart = shared.started("engine");
                shared.log(format!("engine started (restart {restart})"));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", ENGINE_PORT)).await?;
                match mode {
                    Mode::Fixed => {
                        let clock = host_clock();
                        let store = group_store(&shared, Gate::open(shared.clone()));
                        let engine = daemon::engine_over(
                            &engine_args(),
                            store.clone(),
                            SimNet,
                            clock.clone(),
                            seed ^ (restart << 32) ^ 0xE,
                        )
                        .expect("the simulation's engine settings are valid");
                        shared.engine_started(engine.handle.clone(), clock.clone());
                        let (_running, stop) = tokio::sync::watch::channel(false);
                        let mut ids = SplitMix64::new(seed ^ restart ^ 0xA);
                        daemon::spawn_inner_workers(
                            1,
                            &lease_args(),
                            SEND_TIMEOUT_MS,
                            &engine,
                            store,
                            clock,
                            None,
                            stop,
                            move || ids.next_u64(),
                        )
                        .expect("the simulation's worker settings are valid");
                        daemon::serve(SimListener(listener), engine.state, std::future::pending())
                            .await?;
                    }
                    Mode::Legacy => {
                        // The old engine: its own processor, and a send
                        // endpoint for the old queue worker.
                        let provider = SimProvider::new(shared.clone(), Duration::from_millis(3));
                        let store = db_client(&shared, Gate::open(shared.clone()));
                        tokio::spawn(legacy::processor(
                            "[Message Queue]",
                            store,
                            Sender::Direct(provider.clone()),
                            500,
                            shared.clone(),
                        ));
                        axum::serve(SimListener(listener), legacy::router(provider)).await?;
                    }
                }
                Ok(())
            }
        });
    }

    // Standalone workers: `oncesend-worker`'s assembly (or, in legacy mode,
    // the old queue worker).
    let workers = match config.mode {
        Mode::Fixed => config.workers,
        Mode::Legacy => 1,
    };
    for i in 0..workers {
        let shared = shared.clone();
        let name = Node::Worker(i).host();
        let mode = config.mode;
        let (planted_bug, planted_batch_bug) = (config.planted_bug, config.planted_batch_bug);
        let start_delay_ms = rng.next_u64() % 100;
        let host = name.clone();
        sim.host(host.as_str(), move || {
            let (shared, name) = (shared.clone(), name.clone());
            async move {
                let restart = shared.started(&name);
                shared.log(format!("{name} started (restart {restart})"));
                let gate = Gate::new(shared.clone(), &name, LEASE_MS);
                match mode {
                    Mode::Fixed => {
                        let args = worker_args(&name);
                        let client = daemon::engine_client(&args, &SimNet)
                            .expect("the simulation's engine URL is valid");
                        if planted_batch_bug {
                            client.plant_bug_failed_batch_taken_as_sent();
                        }
                        shared.sender_started(client.clone());
                        let engine = GatedEngine {
                            inner: client,
                            gate: gate.clone(),
                            planted_bug,
                        };
                        daemon::run_standalone(
                            &args,
                            WorkerId::new(name.as_str()).expect("valid name"),
                            group_store(&shared, gate),
                            engine,
                            host_clock(),
                            seed ^ restart ^ (i as u64 + 1) << 8,
                            std::future::pending(),
                            None,
                        )
                        .await
                        .expect("the simulation's worker settings are valid");
                    }
                    Mode::Legacy => {
                        let store = db_client(&shared, gate);
                        let http = HttpClient::new(
                            SimConnector::new(format!("engine:{ENGINE_PORT}")),
                            "engine",
                            None,
                            Duration::from_millis(1_500),
                        );
                        tokio::time::sleep(Duration::from_millis(start_delay_ms)).await;
                        legacy::processor("[Queue Worker]", store, Sender::Http(http), 500, shared)
                            .await;
                    }
                }
                Ok(())
            }
        });
    }

    // Meta: the Cloud API the engine sends through, and the webhooks it
    // posts back (statuses, and recipients' inbound messages).
    if config.mode == Mode::Fixed {
        let shared = shared.clone();
        sim.host("meta", move || {
            let shared = shared.clone();
            async move { meta::serve(shared, APP_SECRET).await }
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
        // (when, recipient, which number's tenant)
        let mut plan: Vec<(u64, u32, usize)> = (0..runs)
            .map(|_| {
                (
                    rng.next_u64() % TRIGGER_WINDOW_MS,
                    (rng.next_u64() % recipients as u64) as u32,
                    (rng.next_u64() % NUMBERS.len() as u64) as usize,
                )
            })
            .collect();
        plan.sort();
        // In a third of the seeds a recipient texts STOP to one number
        // while its runs are under way.
        if mode == Mode::Fixed && rng.next_u64().is_multiple_of(3) {
            let (_, to, number) = plan[(rng.next_u64() % plan.len().max(1) as u64) as usize];
            shared.owe_inbound(OwedInbound {
                due_ms: rng.next_u64() % (TRIGGER_WINDOW_MS + 1_000),
                phone_number_id: NUMBERS[number].phone_number_id,
                from: Recipient::parse(&recipient(to)).expect("valid"),
                text: if rng.next_u64().is_multiple_of(2) {
                    "STOP"
                } else {
                    " parar "
                },
            });
        }
        let id_seed = rng.next_u64();
        sim.client("client", async move {
            let http = HttpClient::new(
                SimConnector::new(format!("engine:{ENGINE_PORT}")),
                "engine",
                Some(API_TOKEN.into()),
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
            if mode == Mode::Fixed {
                // The second tenant sends from its own number, stored
                // through the API as an operator would.
                let acme = NUMBERS[1];
                let body = serde_json::to_vec(&serde_json::json!({
                    "provider": "cloud-api",
                    "cloud_api": {
                        "base_url": format!("http://meta:{}", meta::META_PORT),
                        "version": meta::GRAPH_VERSION,
                        "phone_number_id": acme.phone_number_id,
                        "token": acme.token,
                    }
                }))
                .expect("json");
                let path = format!("/v1/tenants/{}", acme.tenant);
                while !matches!(http.request(hyper::Method::PUT, &path, &[], Some(body.clone())).await,
                    Ok((s, _, _)) if s.is_success())
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The flow, for each tenant.
                for number in NUMBERS {
                    let body = serde_json::to_vec(&serde_json::json!({"tenant": number.tenant, "steps": flow_steps})).expect("json");
                    while !matches!(http.request(hyper::Method::PUT, "/v1/flows/welcome", &[], Some(body.clone())).await,
                        Ok((s, _, _)) if s.is_success())
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::spawn(operator(shared.clone(), http.clone()));
            }
            let db = db_client(&shared, Gate::open(shared.clone()));
            let mut ids = SplitMix64::new(id_seed);
            for (i, (at_ms, to, number)) in plan.iter().enumerate() {
                let wait = at_ms.saturating_sub(sim_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let to = recipient(*to);
                match mode {
                    Mode::Fixed => {
                        // Retried with one Idempotency-Key until accepted:
                        // a lost answer never makes a second run.
                        let tenant = NUMBERS[*number].tenant;
                        let body = serde_json::to_vec(&serde_json::json!({"tenant": tenant, "to": to, "vars": {"name": format!("guest{i}")}})).expect("json");
                        let key = ("idempotency-key", format!("trigger-{i}"));
                        loop {
                            match http.request(hyper::Method::POST, "/v1/flows/welcome/runs", std::slice::from_ref(&key), Some(body.clone())).await {
                                Ok((s, _, b)) if s.is_success() => {
                                    shared.log(format!("client: trigger {i} for {tenant} {to} accepted: {}", String::from_utf8_lossy(&b)));
                                    break;
                                }
                                // The recipient opted out: nothing to send.
                                Ok((hyper::StatusCode::CONFLICT, _, _)) => {
                                    shared.log(format!("client: trigger {i} for {tenant} {to} refused: opted out"));
                                    break;
                                }
                                Ok((s, _, b)) => {
                                    shared.log(format!("client: trigger {i} answered {s}: {}; again", String::from_utf8_lossy(&b)));
                                    tokio::time::sleep(Duration::from_millis(100)).await
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                    Mode::Legacy => {
                        let run = RunId::new(BASE_MS + sim_ms(), ids.next_u64());
                        let steps: Vec<(String, u64)> = delays
                            .iter()
                            .enumerate()
                            .map(|(s, d)| (format!("Hi guest{i}, message {} of {steps}", s + 1), *d))
                            .collect();
                        let rows = steps.len() as u32;
                        let op = LegacyOp::Insert { run, to: oncesend_core::Recipient::parse(&to).expect("valid"), steps };
                        while !matches!(db.request(&DbRequest::Legacy(LegacyOp::FetchPending { limit: 0 })).await, Ok(DbResponse::Legacy(_))) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let _ = db.request(&DbRequest::Legacy(op)).await;
                        shared.marks().add(|| Mark {
                            epoch: None,
                            at_ms: sim_ms(),
                            lane: CLIENT_LANE.into(),
                            kind: MarkKind::Write,
                            keys: (0..rows).map(|step| DeliveryKey { run, step }).collect(),
                            text: format!("webhook: one pending row per step for {to}"),
                        });
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
    let mut exercised = shared.daemons_stopped();
    // With the simulation gone, nothing of the seed may still hold its
    // record: whatever did would keep its part of the world alive, for
    // every seed of a long run.
    assert_eq!(
        shared.handles(),
        1,
        "seed {seed}: a part of the simulated world outlived the simulation"
    );

    // Build the history and check it.
    let calls = shared.calls();
    let (begun, pauses) = shared.begun_and_pauses();
    let done = *done_at.lock().expect("done lock");
    let mut history = History {
        calls: calls.clone(),
        begun,
        pauses,
        said_failed: shared.said_failed(),
        opt_outs: shared.opt_outs(),
        causes: Some(
            shared
                .ambiguous()
                .into_iter()
                .map(|(k, why)| (k, why.to_string()))
                .collect(),
        ),
        liveness: Some(Liveness {
            healed_at_ms: last_heal_ms,
            finished_at_ms: done,
            bound_ms: LIVENESS_BOUND_MS,
        }),
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
                for e in &v.events {
                    match e.kind {
                        RunEventKind::Rescued { .. } => exercised.rescues += 1,
                        RunEventKind::Fenced { .. } => exercised.fenced += 1,
                        RunEventKind::Replayed { .. } => exercised.replays += 1,
                    }
                }
                if !v.events.is_empty() {
                    history.events.insert(v.id, v.events.clone());
                }
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
                    .filter_map(|(i, d)| {
                        let d = d.as_ref().filter(|d| d.state == DeliveryState::Unknown)?;
                        shared.log(format!(
                            "end: {} unknown after {} attempts: {}",
                            d.key,
                            d.attempts,
                            d.last_error.as_deref().unwrap_or("no error recorded")
                        ));
                        Some(i as u32)
                    })
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
    let (receipt_settled, unknown_timeouts) = shared.wait_outcomes();
    let mut trace = shared.trace();
    for line in report.to_string().lines() {
        trace.push(format!("check: {line}"));
    }
    SeedResult {
        seed,
        trace_hash: fnv1a(&trace),
        trace,
        unexplained_unknown: report.unexplained_unknown.clone(),
        liveness: report.liveness.clone(),
        settle_ms: report.settle_ms,
        report,
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
        exercised,
        causes: history
            .causes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        marks: shared.marks().take(),
    }
}

/// An operator: once the provider takes the sender again (its token was
/// replaced, its bill paid) and a tenant's pause is still open, resumes it
/// through the API, trying until the engine answers.
async fn operator(shared: Shared, http: HttpClient<SimConnector>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for tenant in shared.resumable() {
            let path = format!("/v1/tenants/{tenant}/resume");
            let answer = http.request(hyper::Method::POST, &path, &[], None).await;
            if let Ok((status, _, _)) = answer {
                shared.log(format!("operator: resume {tenant} answered {status}"));
            }
        }
    }
}

fn all_finished(store: &MemoryStore) -> bool {
    // The queue's figures answer "not yet" without copying a run; only a
    // queue with nothing open is read in full.
    if let StoreReply::Stats(s) = store.apply_now(StoreOp::Stats { now_ms: 0 }) {
        if s.pending + s.leased + s.waiting > 0 {
            return false;
        }
    }
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
    if start {
        shared.marks().add(|| crate::marks::of_fault(now_ms, e));
    }
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
        FaultKind::SlowStore { delay_ms } => shared.set_db_delay_ms(start.then_some(*delay_ms)),
        FaultKind::SlowProvider { delay_ms } => {
            shared.set_provider_slow_ms(start.then_some(*delay_ms))
        }
        FaultKind::ClockJump { by_ms } => {
            // A step, then stepped back when it heals (NTP corrects it).
            let by = *by_ms as i64;
            shared.step_engine_clock(if start { by } else { -by });
        }
    }
    if start {
        let name = e.kind.name();
        // These act the moment they are applied; lost replies and pauses
        // count only when they catch a request (see provider and gate).
        if !matches!(
            e.kind,
            FaultKind::LoseReplies
                | FaultKind::Pause { .. }
                | FaultKind::SenderBlocked { .. }
                | FaultKind::SlowStore { .. }
                | FaultKind::SlowProvider { .. }
        ) {
            shared.fired(name);
        }
    }
}
