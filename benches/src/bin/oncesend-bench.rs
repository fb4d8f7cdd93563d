//! `oncesend-bench`: the load tool. `oncesend bench` runs this executable
//! when it sits beside `oncesend`; see `oncesend_benches::load`.

use clap::Parser;
use oncesend::config::LogArgs;
use oncesend_benches::load::{self, BenchArgs};
use std::process::ExitCode;

/// Load a scratch database with runs, drain them, and report throughput,
/// latency and transactions per message.
#[derive(Parser)]
#[command(name = "oncesend-bench", version)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Per-message info lines would be most of what the bench measured.
    cli.log.init_with_default("warn");
    match load::run(cli.bench).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncesend-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
