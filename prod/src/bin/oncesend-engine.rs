//! `oncesend-engine`: the HTTP API and the send path, over the database
//! `DATABASE_URL` names. Workers (`oncesend-worker`) claim the runs.

use anyhow::Context;
use clap::Parser;
use oncesend::clock::TokioClock;
use oncesend::config::{DbArgs, EngineArgs, LogArgs};
use oncesend::daemon;
use oncesend::db::Db;
use std::process::ExitCode;

/// oncesend's engine: flows, triggers, run status, and the send API.
#[derive(Parser)]
#[command(name = "oncesend-engine", version)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    engine: EngineArgs,
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
            eprintln!("oncesend-engine: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        tracing::warn!("DATABASE_URL=memory: keeps runs in this process only; no oncesend-worker can see them. Use `oncesend up` for a one-process trial");
    }
    let engine = daemon::engine(&cli.engine, db, clock)?;
    let listener = tokio::net::TcpListener::bind(cli.engine.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.engine.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, provider = ?cli.engine.provider, database = %oncesend::db::redact(&cli.db.database_url), "engine listening");
    tracing::info!("console: {}", oncesend::api::console::console_url(addr));
    tokio::spawn(oncesend::api::history::sample_forever(engine.state.clone()));
    daemon::serve(listener, engine.state, daemon::stopped(flag)).await?;
    tracing::info!("engine stopped");
    Ok(())
}
