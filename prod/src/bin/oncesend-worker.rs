//! `oncesend-worker`: claims runs from the database and sends their steps
//! through the engine's send API, in order, exactly once.

use clap::Parser;
use oncesend::clock::TokioClock;
use oncesend::config::{DbArgs, LogArgs, WorkerArgs};
use oncesend::daemon;
use oncesend::db::Db;
use oncesend::net::Tcp;
use std::process::ExitCode;

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
    // Refuse bad settings before waiting for a database.
    daemon::worker_config(&cli.worker.lease, id.clone(), cli.worker.send_timeout_ms)?;
    let engine = daemon::engine_client(&cli.worker, &Tcp)?;
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
    tracing::info!(worker_id = %id, engine = %cli.worker.engine_url, database = %oncesend::db::redact(&cli.db.database_url), "worker starting");
    let wakeups = db.wakeups();
    daemon::run_standalone(
        &cli.worker,
        id,
        db,
        engine,
        clock,
        daemon::os_random(),
        daemon::stopped(flag),
        wakeups,
    )
    .await?;
    Ok(())
}
