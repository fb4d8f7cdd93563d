//! `oncesend-worker`: claims runs from the database and sends their steps
//! through the engine's send API, in order, exactly once.

use clap::Parser;
use oncesend::clock::TokioClock;
use oncesend::config::{DbArgs, LogArgs, WorkerArgs};
use oncesend::daemon;
use oncesend::db::Db;
use oncesend::net::{HttpClient, HttpUrl, MaybeTls, TcpConnector, TlsTrust};
use oncesend::worker::{run_worker_woken, BatchedHttpEngineClient, SEND_BATCH};
use oncesend_core::Worker;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// oncesend's worker: any number may run against one database.
#[derive(Parser)]
#[command(name = "oncesend-worker", version)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("oncesend-worker: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let id = daemon::worker_id(&cli.worker)?;
    let config = daemon::worker_config(&cli.worker.lease, id.clone(), cli.worker.send_timeout_ms)?;
    let url =
        HttpUrl::parse(&cli.worker.engine_url).map_err(|e| anyhow::anyhow!("--engine-url: {e}"))?;
    let clock = TokioClock::system();
    let flag = daemon::shutdown_flag();
    let Some(db) = Db::open_for_daemon(
        &cli.db.database_url,
        clock.clone(),
        daemon::stopped(flag.clone()),
    )
    .await?
    else {
        tracing::info!("stopped while waiting for the database");
        return Ok(());
    };
    if db.is_memory() {
        anyhow::bail!("a separate worker needs a database shared with the engine; DATABASE_URL=memory: lives in one process (use `oncesend up`, or sqlite:// / postgres://)");
    }
    // Long enough for the engine to finish a provider call and record it.
    let timeout = Duration::from_millis(cli.worker.send_timeout_ms * 2 + 2_000);
    // An engine behind a TLS-terminating proxy is reached over https.
    let connector = MaybeTls::for_url(
        TcpConnector::new(url.addr.clone()),
        &url,
        &TlsTrust::web_roots(),
    )
    .map_err(|e| anyhow::anyhow!("--engine-url: {e}"))?;
    let http = HttpClient::new(connector, &url.authority, cli.worker.token.clone(), timeout);
    let worker = Worker::new(config, daemon::os_random())?;
    let stats = Arc::new(Mutex::new(Default::default()));
    tracing::info!(worker_id = %id, engine = %cli.worker.engine_url, database = %oncesend::db::redact(&cli.db.database_url), "worker starting");
    let wakeups = db.wakeups();
    run_worker_woken(
        worker,
        db,
        BatchedHttpEngineClient::new(http, SEND_BATCH),
        clock,
        daemon::stopped(flag),
        stats,
        wakeups,
    )
    .await;
    Ok(())
}
