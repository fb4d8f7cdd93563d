//! `oncesend-sim`: runs seeds of the simulation and reports what the
//! checker found. The last line is machine-readable; the exit status is 1
//! when any invariant was broken.

use clap::Parser;
use oncesend_sim::fault::FAULT_KINDS;
use oncesend_sim::{run_seed, Faults, Mode, SimConfig};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Deterministic simulation of oncesend (and of the old system's race).
#[derive(Parser, Debug)]
#[command(name = "oncesend-sim", version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run only this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Replay the old dual-processor system instead of oncesend.
    #[arg(long)]
    legacy: bool,
    /// Print the seed's interleaving, in the old logs' style.
    #[arg(long)]
    trace: bool,
    /// Standalone workers (the engine runs one more processor inside).
    #[arg(long, default_value_t = 2)]
    workers: u8,
    /// Runs triggered per seed.
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Run with no faults at all.
    #[arg(long)]
    no_faults: bool,
    /// Ablation: turn off the store's fencing.
    #[arg(long)]
    no_fencing: bool,
    /// Ablation: turn off the engine's idempotency ledger.
    #[arg(long)]
    no_ledger: bool,
    /// Only the faults around the race itself: pauses and clock skew.
    #[arg(long)]
    race_faults: bool,
    /// turmoil's tick, in ms.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
}

#[allow(clippy::disallowed_methods)] // Wall time is only reported, never fed to the simulation.
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = if args.legacy {
        SimConfig::legacy()
    } else {
        SimConfig::fixed()
    };
    config.workers = args.workers;
    config.runs = args.runs;
    config.tick_ms = args.tick_ms;
    if args.no_faults {
        config.faults = Faults::None;
    }
    if args.race_faults {
        config.faults = Faults::Race;
    }
    config.guards.fencing = !args.no_fencing;
    config.guards.ledger = !args.no_ledger;
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    };
    let started = wall_clock();
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    let mut fired: BTreeMap<&str, u64> = BTreeMap::new();
    let mut worst_settle = 0u64;
    let (mut receipt_settled, mut unknown_timeouts) = (0u64, 0u64);
    let mut ex = oncesend_sim::trace::Exercised::default();
    for &seed in &seeds {
        let r = run_seed(seed, &config);
        if args.trace {
            for line in &r.trace {
                println!("{line}");
            }
        }
        totals.0 += r.runs;
        totals.1 += r.report.deliveries;
        totals.2 += r.report.duplicates.len() as u64;
        totals.3 += (r.report.out_of_order.len() + r.report.interleaved.len()) as u64;
        totals.4 += r.report.lost.len() as u64;
        totals.5 += r.report.unknown.len() as u64;
        totals.6 += r.sim_ms;
        receipt_settled += r.receipt_settled;
        unknown_timeouts += r.unknown_timeouts;
        ex += r.exercised;
        worst_settle = worst_settle.max(r.settle_ms.unwrap_or(0));
        for k in &r.fired {
            *fired.entry(k).or_default() += 1;
        }
        if !r.ok() {
            let legacy = if args.legacy { " --legacy" } else { "" };
            println!("seed {seed} FAILED: {}", r.report);
            println!(
                "  replay: cargo run --release -p oncesend-sim --{legacy} --seed {seed} --workers {} --runs {} --tick-ms {}{}{}{}{} --trace",
                args.workers,
                args.runs,
                args.tick_ms,
                if args.no_faults { " --no-faults" } else { "" },
                if args.race_faults { " --race-faults" } else { "" },
                if args.no_fencing { " --no-fencing" } else { "" },
                if args.no_ledger { " --no-ledger" } else { "" },
            );
            failed.push(seed);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let sim_secs = totals.6 as f64 / 1000.0;
    let mode = if args.legacy {
        Mode::Legacy
    } else {
        Mode::Fixed
    };
    println!();
    println!("{:<22} {:>12}", "mode", mode.name());
    println!("{:<22} {:>12}", "seeds", seeds.len());
    println!("{:<22} {:>12}", "seeds with violations", failed.len());
    println!("{:<22} {:>12}", "runs", totals.0);
    println!("{:<22} {:>12}", "deliveries", totals.1);
    println!("{:<22} {:>12}", "duplicate keys", totals.2);
    println!("{:<22} {:>12}", "out of order", totals.3);
    println!("{:<22} {:>12}", "lost runs", totals.4);
    println!("{:<22} {:>12}", "unknown keys", totals.5);
    println!("{:<22} {:>12}", "settled by a status", receipt_settled);
    println!("{:<22} {:>12}", "unknown timeouts", unknown_timeouts);
    println!("{:<22} {:>12}", "worst settle (ms)", worst_settle);
    if mode == Mode::Fixed {
        println!("{:<22} {:>12}", "send batches (>1)", ex.send_batches);
        println!("{:<22} {:>12}", "group commits (>1)", ex.group_commits);
        println!("{:<22} {:>12}", "pacing waits", ex.paced);
        println!("{:<22} {:>12}", "rate refusals", ex.rate_refusals);
        println!("{:<22} {:>12}", "send timeouts", ex.timed_out);
        println!("{:<22} {:>12}", "late replies", ex.late_replies);
        println!("{:<22} {:>12}", "sender pauses", ex.pauses);
        println!("{:<22} {:>12}", "opt-outs", ex.opt_outs);
    }
    println!(
        "{:<22} {:>12.1}",
        "seeds per second",
        seeds.len() as f64 / wall.max(1e-9)
    );
    println!(
        "{:<22} {:>12.0}",
        "sim time / wall time",
        sim_secs / wall.max(1e-9)
    );
    if mode == Mode::Fixed && !args.no_faults {
        println!("fault kinds fired (seeds):");
        for k in FAULT_KINDS {
            println!("  {:<20} {:>8}", k, fired.get(k).copied().unwrap_or(0));
        }
    }
    println!(
        "RESULT mode={} seeds={} runs={} deliveries={} duplicates={} out_of_order={} lost={} unknown={} receipt_settled={} unknown_timeouts={} sim_secs={:.1} wall_secs={:.2}",
        mode.name(),
        seeds.len(),
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        totals.4,
        totals.5,
        receipt_settled,
        unknown_timeouts,
        sim_secs,
        wall
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
