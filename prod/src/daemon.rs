//! Assembling the daemons from their parts: the database, the providers,
//! the engine driver, the HTTP API and the worker driver. Nothing here
//! decides how a message is delivered; that is all in the core machines.

use crate::api::{self, ApiConfig, AppState};
use crate::clock::TokioClock;
use crate::config::{EngineArgs, LeaseArgs, ProviderKind, WorkerArgs};
use crate::db::Db;
use crate::engine::EngineHandle;
use crate::net::{HttpClient, HttpUrl, MaybeTls, Network, Tcp, TlsTrust};
use crate::provider::{AnyProvider, CloudApiProvider, LogProvider, NullProvider, TenantProviders};
use crate::store::Store;
use crate::worker::{run_worker_woken, BatchedHttpEngineClient, EngineClient, SEND_BATCH};
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{CloudApiSettings, EngineConfig, PacingConfig, Worker, WorkerConfig, WorkerId};
use oncesend_core::{StoreOp, StoreReply};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a daemon could not be assembled from its settings: each says which
/// flag or variable is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--ca-file` could not be read or holds no certificate.
    #[error("--ca-file {0}")]
    CaFile(crate::net::NetError),
    /// `--log-file` could not be opened.
    #[error("cannot open --log-file {path}: {source}")]
    LogFile {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--provider cloud-api` without its credentials.
    #[error("--provider cloud-api needs ONCESEND_CLOUD_API_TOKEN and ONCESEND_PHONE_NUMBER_ID")]
    CloudApiCredentials,
    /// The Cloud API URL is not one the client can use.
    #[error("ONCESEND_CLOUD_API_URL: {0}")]
    CloudApiUrl(crate::net::NetError),
    /// An open API off loopback.
    #[error("listening on {0} without a token would let anyone send messages; set ONCESEND_TOKEN (or listen on 127.0.0.1)")]
    OpenApi(std::net::SocketAddr),
    /// `--engine-url` is not one the worker can use.
    #[error("--engine-url: {0}")]
    EngineUrl(crate::net::NetError),
    /// `--worker-id` is not a valid name.
    #[error("--worker-id: {0}")]
    WorkerId(String),
    /// The lease, batch and timeout settings do not fit together.
    #[error("worker settings: {0}")]
    Worker(#[from] oncesend_core::worker::ConfigError),
}

/// 64 bits from the operating system, for run ids and backoff jitter.
#[allow(clippy::disallowed_methods)] // The daemons seed from the OS; the simulation seeds from its seed.
pub fn os_random() -> u64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A fresh worker id.
#[allow(clippy::disallowed_methods)] // A new worker's name is random by design.
pub fn fresh_worker_id() -> WorkerId {
    WorkerId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid worker id")
}

/// The roots the Cloud API client trusts: the web roots and `--ca-file`.
pub fn tls_trust(args: &EngineArgs) -> Result<TlsTrust, SetupError> {
    TlsTrust::load(args.ca_file.as_deref()).map_err(SetupError::CaFile)
}

/// How long one exchange with the Cloud API may take: the engine's send
/// timeout, and then the window in which the engine still listens for a
/// late answer (the call is `unknown` to the worker by then, but a late
/// "sent" settles its ledger row).
pub fn provider_timeout(args: &EngineArgs) -> Duration {
    Duration::from_millis(
        args.send_timeout_ms
            .saturating_mul(1 + oncesend_core::engine::LATE_REPLY_TIMEOUTS),
    )
}

/// The default tenant's provider, from flags and environment, reaching the
/// Cloud API over `network`.
pub fn default_provider<N: Network>(
    network: &N,
    args: &EngineArgs,
    trust: &TlsTrust,
) -> Result<(AnyProvider<N::Connector>, LogProvider), SetupError> {
    let log = match &args.log_file {
        Some(path) => LogProvider::file(path).map_err(|source| SetupError::LogFile {
            path: path.clone(),
            source,
        })?,
        None => LogProvider::stdout(),
    };
    let provider = match args.provider {
        ProviderKind::Log => AnyProvider::Log(log.clone()),
        ProviderKind::Null => AnyProvider::Null(NullProvider::default()),
        ProviderKind::CloudApi => {
            let (Some(token), Some(phone_number_id)) =
                (&args.cloud_api_token, &args.phone_number_id)
            else {
                return Err(SetupError::CloudApiCredentials);
            };
            let settings = CloudApiSettings {
                base_url: args.cloud_api_url.clone(),
                version: args.cloud_api_version.clone(),
                phone_number_id: phone_number_id.clone(),
                token: token.clone(),
            };
            AnyProvider::CloudApi(
                CloudApiProvider::over(network, &settings, provider_timeout(args), trust)
                    .map_err(SetupError::CloudApiUrl)?,
            )
        }
    };
    Ok((provider, log))
}

/// A fingerprint of the `default` tenant's provider settings (a digest:
/// the token itself is never stored). A pause of `default` records it, and
/// an engine started with other settings lifts that pause.
pub fn default_settings_fingerprint(args: &EngineArgs) -> String {
    use sha2::{Digest, Sha256};
    let kind = args.provider.name();
    let mut h = Sha256::new();
    for part in [
        kind,
        args.cloud_api_url.as_str(),
        args.cloud_api_version.as_str(),
        args.phone_number_id.as_deref().unwrap_or(""),
        args.cloud_api_token.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

/// Lifts a pause of `default` that the provider set under settings other
/// than `settings` (the engine was restarted with a new token, say). A
/// pause set by an operator stays.
pub async fn lift_outlived_default_pause<S: Store>(
    store: &S,
    settings: &str,
) -> Result<bool, StoreUnavailable> {
    let tenant = oncesend_core::TenantId::default_tenant();
    let StoreReply::Sender(Some(pause)) = store
        .apply(StoreOp::GetSender {
            tenant: tenant.clone(),
        })
        .await?
    else {
        return Ok(false);
    };
    if !pause.outlived_by(settings) {
        tracing::warn!(tenant = %tenant, reason = pause.reason, code = pause.code, "the default tenant is paused; nothing of it is sent until POST /v1/tenants/default/resume (or a restart with new provider settings)");
        return Ok(false);
    }
    store
        .apply(StoreOp::ResumeSender {
            tenant: tenant.clone(),
        })
        .await?;
    tracing::warn!(tenant = %tenant, reason = pause.reason, code = pause.code, "the default tenant's pause is lifted: the engine starts with other provider settings than the ones refused");
    Ok(true)
}

/// Refuses to serve an open API off loopback.
pub fn check_token(args: &EngineArgs) -> Result<(), SetupError> {
    if args.token.is_none() && !args.listen.ip().is_loopback() {
        return Err(SetupError::OpenApi(args.listen));
    }
    Ok(())
}

/// The engine: its driver and its API state, ready to serve.
pub struct Engine<S = Db> {
    /// The send path.
    pub handle: EngineHandle,
    /// The HTTP API's state.
    pub state: AppState<S>,
}

/// The engine machine's settings from flags.
pub fn engine_config(args: &EngineArgs) -> EngineConfig {
    EngineConfig {
        send_timeout_ms: args.send_timeout_ms,
        pacing: Some(PacingConfig {
            rate_per_s: args.rate_per_sec.max(1),
            burst: args.rate_per_sec.max(1),
            recipient_gap_ms: args.recipient_gap_ms,
        }),
        default_settings: Some(default_settings_fingerprint(args)),
        ..EngineConfig::default()
    }
}

/// The HTTP API's settings from flags.
pub fn api_config(args: &EngineArgs) -> ApiConfig {
    ApiConfig {
        token: args.token.clone(),
        max_body_bytes: args.max_body_bytes,
        app_secret: args.app_secret.clone(),
        webhook_verify_token: args.webhook_verify_token.clone(),
        default_provider: args.provider.name(),
        default_settings: Some(default_settings_fingerprint(args)),
        default_phone_number_id: args.phone_number_id.clone(),
        keywords: crate::api::Keywords::new(&args.opt_out_keywords, &args.opt_in_keywords),
        pacing: crate::api::Pacing {
            rate_per_sec: args.rate_per_sec.max(1),
            recipient_gap_ms: args.recipient_gap_ms,
        },
    }
}

/// Builds the engine over the database `db`, on this machine's network.
pub fn engine(args: &EngineArgs, db: Db, clock: TokioClock) -> Result<Engine, SetupError> {
    engine_over(args, db, Tcp, clock, os_random())
}

/// Builds the engine: per-tenant providers over `network`, the engine
/// driver over `store`, pruning, and the API's state. The daemons call it
/// through [`engine`]; the simulation calls it with its own network, store
/// and seed, so both run this wiring.
pub fn engine_over<S: Store, N: Network>(
    args: &EngineArgs,
    store: S,
    network: N,
    clock: TokioClock,
    seed: u64,
) -> Result<Engine<S>, SetupError> {
    check_token(args)?;
    let trust = tls_trust(args)?;
    let (default, log) = default_provider(&network, args, &trust)?;
    let providers = TenantProviders::over(
        network,
        default,
        log,
        store.clone(),
        clock.clone(),
        provider_timeout(args),
        trust,
    );
    {
        let (store, settings) = (store.clone(), default_settings_fingerprint(args));
        tokio::spawn(async move {
            if let Err(e) = lift_outlived_default_pause(&store, &settings).await {
                tracing::warn!(error = %e, "could not read the default tenant's pause at start");
            }
        });
    }
    let handle = EngineHandle::spawn(
        engine_config(args),
        store.clone(),
        providers.clone(),
        clock.clone(),
    );
    tokio::spawn(prune_forever(
        store.clone(),
        clock.clone(),
        args.retention_ms,
    ));
    let state = AppState::new(store, handle.clone(), clock, seed, api_config(args))
        .on_tenant_put(Arc::new(move |t| providers.forget(t)));
    Ok(Engine { handle, state })
}

/// Starts `count` workers inside the engine's process, as `oncesend up`
/// runs them: claiming from `store`, sending through the engine's handle
/// (no HTTP), each stopping once `stop` is set and it holds nothing.
#[allow(clippy::too_many_arguments)] // Each is one part of the assembly.
pub fn spawn_inner_workers<S: Store>(
    count: usize,
    lease: &LeaseArgs,
    send_timeout_ms: u64,
    engine: &Engine<S>,
    store: S,
    clock: TokioClock,
    wakeups: Option<Arc<tokio::sync::Notify>>,
    stop: tokio::sync::watch::Receiver<bool>,
    mut seed: impl FnMut() -> u64,
) -> Result<Vec<tokio::task::JoinHandle<()>>, SetupError> {
    let mut workers = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let id = WorkerId::new(format!("inner-{:016x}", seed()))
            .expect("a hex name is a valid worker id");
        let config = worker_config(lease, id, send_timeout_ms)?;
        let stats = Arc::new(Mutex::new(Default::default()));
        engine.state.watch_worker(stats.clone());
        let worker = Worker::new(config, seed())?;
        let mut stop = stop.clone();
        workers.push(tokio::spawn(run_worker_woken(
            worker,
            store.clone(),
            engine.handle.clone(),
            clock.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            stats,
            wakeups.clone(),
        )));
    }
    Ok(workers)
}

/// A worker waits this many provider-call timeouts for the engine's
/// answer to a batch: one for the call, one for the sends queued ahead of
/// it under pacing.
pub const ENGINE_CALL_SEND_TIMEOUTS: u64 = 2;
/// And this much more, for recording the outcomes and the HTTP exchange.
pub const ENGINE_CALL_SLACK_MS: u64 = 2_000;

/// The standalone worker's way to the engine: `POST /v1/messages/batch`
/// to `--engine-url` over `network` (TLS when the URL says `https://`),
/// with time for the engine to finish a provider call and record it.
pub fn engine_client<N: Network>(
    args: &WorkerArgs,
    network: &N,
) -> Result<BatchedHttpEngineClient, SetupError> {
    let url = HttpUrl::parse(&args.engine_url).map_err(SetupError::EngineUrl)?;
    let timeout = Duration::from_millis(
        args.send_timeout_ms * ENGINE_CALL_SEND_TIMEOUTS + ENGINE_CALL_SLACK_MS,
    );
    let connector = MaybeTls::for_url(network.connector(&url.addr), &url, &TlsTrust::web_roots())
        .map_err(SetupError::EngineUrl)?;
    let http = HttpClient::new(connector, &url.authority, args.token.clone(), timeout);
    Ok(BatchedHttpEngineClient::new(http, SEND_BATCH))
}

/// Runs the standalone worker `id` over `store`, sending through `engine`
/// (see [`engine_client`]), until `stop` resolves and it holds nothing.
#[allow(clippy::too_many_arguments)] // Each is one part of the assembly.
pub async fn run_standalone<S: Store, E: EngineClient>(
    args: &WorkerArgs,
    id: WorkerId,
    store: S,
    engine: E,
    clock: TokioClock,
    seed: u64,
    stop: impl std::future::Future<Output = ()> + Send,
    wakeups: Option<Arc<tokio::sync::Notify>>,
) -> Result<(), SetupError> {
    let config = worker_config(&args.lease, id, args.send_timeout_ms)?;
    let worker = Worker::new(config, seed)?;
    let stats = Arc::new(Mutex::new(Default::default()));
    run_worker_woken(worker, store, engine, clock, stop, stats, wakeups).await;
    Ok(())
}

/// The flow `oncesend up` puts when the database holds none.
pub const SAMPLE_FLOW: &str = "welcome";

/// Puts [`SAMPLE_FLOW`] for the default tenant when no tenant has any flow
/// yet, so someone who has just started `oncesend up` finds a flow to
/// trigger on the console's Flows page. It needs no variables. Answers
/// whether it put it; a database that already holds a flow is left as it is.
pub async fn put_sample_flow<S: Store>(store: &S) -> Result<bool, StoreUnavailable> {
    let cannot_use = |other: StoreReply| {
        StoreUnavailable(format!(
            "the sample flow got an answer it cannot use: {other:?}"
        ))
    };
    match store
        .apply(StoreOp::ListFlows {
            after: None,
            limit: 1,
        })
        .await?
    {
        StoreReply::Flows(flows) if flows.is_empty() => {}
        StoreReply::Flows(_) => return Ok(false),
        other => return Err(cannot_use(other)),
    }
    let steps: Vec<oncesend_core::RawFlowStep> = serde_json::from_value(serde_json::json!([
        {"text": "Hi! This is oncesend's sample flow: step 1 of 2.", "delay_ms": 0},
        {"text": "Step 2 of 2, sent a second after the first. Each step goes out once.", "delay_ms": 1000}
    ]))
    .expect("the sample flow's steps are well formed");
    let flow = oncesend_core::Flow::from_raw(
        oncesend_core::FlowId::new(SAMPLE_FLOW).expect("a valid flow id"),
        steps,
    )
    .expect("the sample flow is within every limit");
    match store
        .apply(StoreOp::PutFlow {
            tenant: oncesend_core::TenantId::default_tenant(),
            flow,
        })
        .await?
    {
        StoreReply::FlowPut { .. } => Ok(true),
        other => Err(cannot_use(other)),
    }
}

/// Runs deleted per `Prune` op.
const PRUNE_BATCH: u32 = 1_000;

/// Deletes every run that finished more than `retention_ms` before
/// `now_ms`, a bounded batch per transaction. Returns how many.
pub async fn prune_finished<S: Store>(
    store: &S,
    retention_ms: u64,
    now_ms: u64,
) -> Result<u64, StoreUnavailable> {
    let mut total = 0u64;
    loop {
        let op = StoreOp::Prune {
            retention_ms,
            max: PRUNE_BATCH,
            now_ms,
        };
        match store.apply(op).await? {
            StoreReply::Pruned { runs } => {
                total += u64::from(runs);
                if runs < PRUNE_BATCH {
                    return Ok(total);
                }
            }
            other => {
                return Err(StoreUnavailable(format!(
                    "prune got an answer it cannot use: {other:?}"
                )))
            }
        }
    }
}

/// Prunes once a minute, for as long as the engine runs.
async fn prune_forever<S: Store>(db: S, clock: TokioClock, retention_ms: u64) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        match prune_finished(&db, retention_ms, clock.now_ms()).await {
            Ok(0) => {}
            Ok(runs) => tracing::info!(runs, retention_ms, "pruned finished runs"),
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again in a minute"),
        }
    }
}

/// Serves the API on `listener` (a TCP listener, or the simulation's)
/// until `shutdown` resolves.
pub async fn serve<L, S>(
    listener: L,
    state: AppState<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    S: Store,
{
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A worker's configuration from flags.
pub fn worker_config(
    lease: &LeaseArgs,
    id: WorkerId,
    send_timeout_ms: u64,
) -> Result<WorkerConfig, SetupError> {
    let config = WorkerConfig {
        lease_ms: lease.lease_ms,
        batch: lease.batch,
        concurrency: lease.concurrency,
        poll_ms: lease.poll_ms,
        send_timeout_ms,
        unknown_timeout_ms: lease.unknown_timeout_ms,
        retry: oncesend_core::RetryPolicy {
            base_ms: lease.retry_base_ms,
            cap_ms: lease.retry_cap_ms,
            max_attempts: lease.max_attempts,
        },
        ..WorkerConfig::new(id)
    };
    config.validate()?;
    Ok(config)
}

/// The standalone worker's id.
pub fn worker_id(args: &WorkerArgs) -> Result<WorkerId, SetupError> {
    match &args.worker_id {
        Some(id) => WorkerId::new(id.clone()).map_err(|e| SetupError::WorkerId(e.to_string())),
        None => Ok(fresh_worker_id()),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        biased;
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// A flag set once SIGTERM or SIGINT arrives, for waits that must end on
/// either (waiting for the database, serving, working).
pub fn shutdown_flag() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once `flag` is set.
pub async fn stopped(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use oncesend_core::{FlowId, MemStore, NewRun, PlannedStep, Recipient, RunId, TenantId};

    #[tokio::test]
    async fn the_sample_flow_goes_only_into_a_database_without_flows() {
        let store = MemoryStore::new(MemStore::new());
        assert!(put_sample_flow(&store).await.unwrap());
        let flow = match store
            .apply(StoreOp::GetFlow {
                tenant: TenantId::default_tenant(),
                flow: FlowId::new(SAMPLE_FLOW).unwrap(),
            })
            .await
            .unwrap()
        {
            StoreReply::Flow(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(flow.steps().len(), 2);
        // Triggered from a form with no variables, it must render as is.
        let body = serde_json::to_string(flow.steps()).unwrap();
        assert!(!body.contains("{{"), "{body}");
        // Once there is a flow (this one or the user's), it is left alone.
        assert!(!put_sample_flow(&store).await.unwrap());
        let other = MemoryStore::new(MemStore::new());
        let mine = oncesend_core::Flow::from_raw(
            FlowId::new("mine").unwrap(),
            serde_json::from_value(serde_json::json!([{"text": "hi"}])).unwrap(),
        )
        .unwrap();
        other
            .apply(StoreOp::PutFlow {
                tenant: TenantId::default_tenant(),
                flow: mine,
            })
            .await
            .unwrap();
        assert!(!put_sample_flow(&other).await.unwrap());
    }

    #[tokio::test]
    async fn a_restart_with_other_default_settings_lifts_a_provider_pause_only() {
        let store = MemoryStore::new(MemStore::new());
        let pause = |settings: Option<&str>| StoreOp::PauseSender {
            tenant: TenantId::default_tenant(),
            reason: "Cloud API error 190".into(),
            code: settings.map(|_| 190),
            temporary: false,
            settings: settings.map(str::to_string),
            now_ms: 1,
        };
        let paused = |store: &MemoryStore| {
            let store = store.clone();
            async move {
                match store
                    .apply(StoreOp::GetSender {
                        tenant: TenantId::default_tenant(),
                    })
                    .await
                    .unwrap()
                {
                    StoreReply::Sender(p) => p.is_some(),
                    other => panic!("{other:?}"),
                }
            }
        };
        // Nothing to lift.
        assert!(!lift_outlived_default_pause(&store, "a").await.unwrap());
        store.apply(pause(Some("a"))).await.unwrap();
        // The same settings: the provider would refuse them again.
        assert!(!lift_outlived_default_pause(&store, "a").await.unwrap());
        assert!(paused(&store).await);
        // A new token: lifted.
        assert!(lift_outlived_default_pause(&store, "b").await.unwrap());
        assert!(!paused(&store).await);
        // A pause by hand stays, whatever the settings.
        store.apply(pause(None)).await.unwrap();
        assert!(!lift_outlived_default_pause(&store, "c").await.unwrap());
        assert!(paused(&store).await);
    }

    #[test]
    fn the_settings_fingerprint_changes_with_the_token_and_never_shows_it() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            engine: EngineArgs,
        }
        let args = |token: &str| {
            Cli::parse_from([
                "engine",
                "--provider",
                "cloud-api",
                "--cloud-api-token",
                token,
                "--phone-number-id",
                "1234",
            ])
            .engine
        };
        let a = default_settings_fingerprint(&args("EAAGsecret1"));
        assert_eq!(a, default_settings_fingerprint(&args("EAAGsecret1")));
        assert_ne!(a, default_settings_fingerprint(&args("EAAGsecret2")));
        assert!(!a.contains("secret"), "{a}");
    }

    #[tokio::test]
    async fn pruning_deletes_only_runs_finished_before_the_retention() {
        let store = MemoryStore::new(MemStore::new());
        let mut ids = Vec::new();
        for i in 0..3u64 {
            let run = NewRun {
                id: RunId::new(10 + i, i),
                tenant: TenantId::default_tenant(),
                flow: FlowId::new("f").unwrap(),
                to: Recipient::parse(&format!("+551191339000{i}")).unwrap(),
                steps: vec![PlannedStep {
                    message: oncesend_core::Message::text("hi"),
                    delay_ms: 0,
                    after: Default::default(),
                    after_timeout_ms: None,
                }],
                trigger_key: Some(format!("k{i}")),
            };
            ids.push(run.id);
            store
                .apply(StoreOp::Enqueue { run, now_ms: 0 })
                .await
                .unwrap();
        }
        // Finished at 100 and at 900; the third is still open.
        for (id, at) in [(ids[0], 100), (ids[1], 900)] {
            let reply = store
                .apply(StoreOp::Cancel {
                    run: id,
                    now_ms: at,
                })
                .await
                .unwrap();
            assert_eq!(reply, StoreReply::Cancelled);
        }
        assert_eq!(prune_finished(&store, 500, 1_000).await.unwrap(), 1);
        let gone = store.apply(StoreOp::GetRun { run: ids[0] }).await.unwrap();
        assert_eq!(gone, StoreReply::NotFound);
        for id in &ids[1..] {
            let kept = store.apply(StoreOp::GetRun { run: *id }).await.unwrap();
            assert!(matches!(kept, StoreReply::Run(_)));
        }
        assert_eq!(prune_finished(&store, 500, 1_000).await.unwrap(), 0);
    }
}
