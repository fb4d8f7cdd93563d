//! `oncesend-sim`: runs seeds of the simulation and reports what the
//! checker found. The last line is machine-readable; the exit status is 1
//! when any invariant was broken.

use clap::Parser;
use oncesend_sim::fault::FAULT_KINDS;
use oncesend_sim::html::{self, Page};
use oncesend_sim::trace::Exercised;
use oncesend_sim::{run_seed, Faults, Mode, SeedResult, SimConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;

// A seed allocates and frees millions of small buffers (HTTP heads, JSON,
// frames on the simulated wire); mimalloc serves them faster than the
// system allocator. Allocation addresses never reach a decision.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Draw the race as one self-contained HTML page at PATH: the seed
    /// given with --seed, or else the first seed that broke an invariant.
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
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
    /// Processes to run seeds in (each seed runs whole in one of them, so
    /// it gives the same trace whatever this is). Default: one per core.
    #[arg(long)]
    jobs: Option<usize>,
    /// Internal: run only the seeds whose index is PART modulo PARTS, and
    /// print one JSON line per seed for the process that started this one.
    #[arg(long, hide = true, value_parser = parse_part)]
    part: Option<(usize, usize)>,
}

fn parse_part(s: &str) -> Result<(usize, usize), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("--part takes K/N, not {s:?}"))?;
    let k: usize = k.parse().map_err(|e| format!("--part {s}: {e}"))?;
    let n: usize = n.parse().map_err(|e| format!("--part {s}: {e}"))?;
    if n == 0 || k >= n {
        return Err(format!("--part {s}: K must be below N"));
    }
    Ok((k, n))
}

impl Args {
    /// The command line of the process that runs part `k` of `n`.
    fn part_args(&self, k: usize, n: usize) -> Vec<String> {
        let mut a = vec![
            "--start".to_string(),
            self.start.to_string(),
            "--seeds".into(),
            self.seeds.to_string(),
            "--workers".into(),
            self.workers.to_string(),
            "--runs".into(),
            self.runs.to_string(),
            "--tick-ms".into(),
            self.tick_ms.to_string(),
            "--part".into(),
            format!("{k}/{n}"),
        ];
        for (on, flag) in [
            (self.legacy, "--legacy"),
            (self.no_faults, "--no-faults"),
            (self.no_fencing, "--no-fencing"),
            (self.no_ledger, "--no-ledger"),
            (self.race_faults, "--race-faults"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a
    }

    fn replay_line(&self, seed: u64) -> String {
        format!("  replay: {} --trace", self.command(seed))
    }

    /// The command that runs `seed` alone with this run's settings.
    fn command(&self, seed: u64) -> String {
        format!(
            "cargo run --release -p oncesend-sim --{} --seed {seed} --workers {} --runs {} --tick-ms {}{}{}{}{}",
            if self.legacy { " --legacy" } else { "" },
            self.workers,
            self.runs,
            self.tick_ms,
            if self.no_faults { " --no-faults" } else { "" },
            if self.race_faults { " --race-faults" } else { "" },
            if self.no_fencing { " --no-fencing" } else { "" },
            if self.no_ledger { " --no-ledger" } else { "" },
        )
    }
}

/// The figures of a seed that add up over seeds.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counts {
    runs: u64,
    deliveries: u64,
    duplicates: u64,
    out_of_order: u64,
    lost: u64,
    unknown: u64,
    sim_ms: u64,
    receipt_settled: u64,
    unknown_timeouts: u64,
    exercised: Exercised,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.runs += o.runs;
        self.deliveries += o.deliveries;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.lost += o.lost;
        self.unknown += o.unknown;
        self.sim_ms += o.sim_ms;
        self.receipt_settled += o.receipt_settled;
        self.unknown_timeouts += o.unknown_timeouts;
        self.exercised += o.exercised;
    }
}

/// What the summary needs of one seed: the line a part process prints.
#[derive(Debug, Serialize, Deserialize)]
struct SeedLine {
    seed: u64,
    /// The checker's report, when the seed broke an invariant.
    failure: Option<String>,
    counts: Counts,
    settle_ms: u64,
    fired: Vec<String>,
}

impl SeedLine {
    fn of(r: &SeedResult) -> Self {
        Self {
            seed: r.seed,
            failure: (!r.ok()).then(|| r.report.to_string()),
            counts: Counts {
                runs: r.runs,
                deliveries: r.report.deliveries,
                duplicates: r.report.duplicates.len() as u64,
                out_of_order: (r.report.out_of_order.len() + r.report.interleaved.len()) as u64,
                lost: r.report.lost.len() as u64,
                unknown: r.report.unknown.len() as u64,
                sim_ms: r.sim_ms,
                receipt_settled: r.receipt_settled,
                unknown_timeouts: r.unknown_timeouts,
                exercised: r.exercised,
            },
            settle_ms: r.settle_ms.unwrap_or(0),
            fired: r.fired.iter().map(|k| k.to_string()).collect(),
        }
    }
}

/// The sums over every seed run.
#[derive(Default)]
struct Tally {
    seeds: u64,
    counts: Counts,
    worst_settle: u64,
    fired: BTreeMap<String, u64>,
    failed: Vec<u64>,
}

impl Tally {
    /// Adds a seed; prints its failure and how to replay it.
    fn add(&mut self, line: SeedLine, args: &Args) {
        self.seeds += 1;
        self.counts += line.counts;
        self.worst_settle = self.worst_settle.max(line.settle_ms);
        for k in line.fired {
            *self.fired.entry(k).or_default() += 1;
        }
        if let Some(report) = line.failure {
            println!("seed {} FAILED: {report}", line.seed);
            println!("{}", args.replay_line(line.seed));
            self.failed.push(line.seed);
        }
    }
}

/// Runs the seeds in `jobs` processes of this same program, each taking
/// every `jobs`-th seed, and adds up the lines they print.
fn run_in_parts(args: &Args, jobs: usize, tally: &mut Tally) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let (tx, rx) = mpsc::channel::<Result<SeedLine, String>>();
    let mut children = Vec::new();
    for k in 0..jobs {
        let mut child = Command::new(&exe)
            .args(args.part_args(k, jobs))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start part {k} of {jobs}: {e}"))?;
        let out = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let parsed = line.map_err(|e| format!("part {k}: {e}")).and_then(|l| {
                    serde_json::from_str::<SeedLine>(&l)
                        .map_err(|e| format!("part {k} printed {l:?}: {e}"))
                });
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let mut trouble = Vec::new();
    for line in rx {
        match line {
            Ok(line) => tally.add(line, args),
            Err(e) => trouble.push(e),
        }
    }
    for (k, mut child) in children.into_iter().enumerate() {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => trouble.push(format!(
                "part {k} of {jobs} stopped ({status}); its error is above"
            )),
            Err(e) => trouble.push(format!("part {k} of {jobs}: {e}")),
        }
    }
    let expected = seed_list(args).len() as u64;
    if trouble.is_empty() && tally.seeds != expected {
        trouble.push(format!("{} of {expected} seeds reported back", tally.seeds));
    }
    if trouble.is_empty() {
        Ok(())
    } else {
        Err(trouble.join("\n"))
    }
}

fn seed_list(args: &Args) -> Vec<u64> {
    match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    }
}

#[allow(clippy::disallowed_methods)] // Wall time is only reported, never fed to the simulation.
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The daemons' own logs, for a replayed seed: `RUST_LOG=info`.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_writer(std::io::stderr)
            .init();
    }
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
    let seeds = seed_list(&args);

    // A part process: one JSON line per seed, nothing else.
    if let Some((k, n)) = args.part {
        let stdout = std::io::stdout();
        for &seed in seeds.iter().skip(k).step_by(n) {
            let line = serde_json::to_string(&SeedLine::of(&run_seed(seed, &config)))
                .expect("a seed line serializes");
            let mut out = stdout.lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return ExitCode::from(2);
            }
        }
        return ExitCode::SUCCESS;
    }

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let started = wall_clock();
    let mut tally = Tally::default();
    if jobs > 1 && !args.trace {
        if let Err(e) = run_in_parts(&args, jobs, &mut tally) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    } else {
        for &seed in &seeds {
            let r = run_seed(seed, &config);
            if args.trace {
                for line in &r.trace {
                    println!("{line}");
                }
            }
            tally.add(SeedLine::of(&r), &args);
        }
    }
    tally.failed.sort_unstable();
    let wall = started.elapsed().as_secs_f64();
    let c = tally.counts;
    let sim_secs = c.sim_ms as f64 / 1000.0;
    let mode = if args.legacy {
        Mode::Legacy
    } else {
        Mode::Fixed
    };
    let ex = c.exercised;
    let row = |label: &str, value: &dyn std::fmt::Display| println!("{label:<22} {value:>12}");
    println!();
    row("mode", &mode.name());
    row("seeds", &tally.seeds);
    row("processes", &(if args.trace { 1 } else { jobs }));
    row("seeds with violations", &tally.failed.len());
    row("runs", &c.runs);
    row("deliveries", &c.deliveries);
    row("duplicate keys", &c.duplicates);
    row("out of order", &c.out_of_order);
    row("lost runs", &c.lost);
    row("unknown keys", &c.unknown);
    row("settled by a status", &c.receipt_settled);
    row("unknown timeouts", &c.unknown_timeouts);
    row("worst settle (ms)", &tally.worst_settle);
    if mode == Mode::Fixed {
        row("send batches (>1)", &ex.send_batches);
        row("group commits (>1)", &ex.group_commits);
        row("pacing waits", &ex.paced);
        row("rate refusals", &ex.rate_refusals);
        row("send timeouts", &ex.timed_out);
        row("late replies", &ex.late_replies);
        row("sender pauses", &ex.pauses);
        row("opt-outs", &ex.opt_outs);
        row("lease rescues", &ex.rescues);
        row("fenced writes", &ex.fenced);
        row("ledger replays", &ex.replays);
    }
    println!(
        "{:<22} {:>12.1}",
        "seeds per second",
        tally.seeds as f64 / wall.max(1e-9)
    );
    println!(
        "{:<22} {:>12.0}",
        "sim time / wall time",
        sim_secs / wall.max(1e-9)
    );
    if !tally.failed.is_empty() {
        let list: Vec<String> = tally.failed.iter().map(u64::to_string).collect();
        println!("{:<22} {}", "failed seeds", list.join(" "));
    }
    if mode == Mode::Fixed && !args.no_faults {
        println!("fault kinds fired (seeds):");
        for k in FAULT_KINDS {
            println!(
                "  {:<20} {:>8}",
                k,
                tally.fired.get(k).copied().unwrap_or(0)
            );
        }
    }
    let mut page_trouble = false;
    if let Some(path) = &args.html {
        match draw(&args, &config, mode, &tally, path) {
            Ok(said) => println!("{said}"),
            Err(e) => {
                eprintln!("error: {e}");
                page_trouble = true;
            }
        }
    }
    println!(
        "RESULT mode={} seeds={} runs={} deliveries={} duplicates={} out_of_order={} lost={} unknown={} receipt_settled={} unknown_timeouts={} sim_secs={:.1} wall_secs={:.2}",
        mode.name(),
        tally.seeds,
        c.runs,
        c.deliveries,
        c.duplicates,
        c.out_of_order,
        c.lost,
        c.unknown,
        c.receipt_settled,
        c.unknown_timeouts,
        sim_secs,
        wall
    );
    if page_trouble {
        ExitCode::from(2)
    } else if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Draws the page for `--html`: runs the seed to draw once more, in this
/// process, keeping its marks (a seed runs the same with marks kept, so
/// this is the very run the summary counted). Says what it wrote.
fn draw(
    args: &Args,
    config: &SimConfig,
    mode: Mode,
    tally: &Tally,
    path: &Path,
) -> Result<String, String> {
    let (seed, why) = match (args.seed, tally.failed.first()) {
        (Some(seed), _) => (seed, "the seed given"),
        (None, Some(&seed)) => (seed, "the first seed that broke an invariant"),
        (None, None) => {
            return Ok(format!(
                "html: no seed broke an invariant, so no page was written to {}; give --seed S to draw one",
                path.display()
            ))
        }
    };
    let config = SimConfig {
        marks: true,
        ..config.clone()
    };
    let r = run_seed(seed, &config);
    if r.ok() == tally.failed.contains(&seed) {
        return Err(format!(
            "seed {seed} ran differently when its marks were kept (a determinism bug in the simulation); no page written: replay it with `{} --trace` twice and compare",
            args.command(seed)
        ));
    }
    let page = html::render(&Page::of(
        &r,
        mode,
        format!("{} --html FILE", args.command(seed)),
    ));
    std::fs::write(path, &page).map_err(|e| {
        format!(
            "cannot write the page to {}: {e}; give --html a path in a directory that exists and can be written",
            path.display()
        )
    })?;
    Ok(format!(
        "html: wrote {} for seed {seed} ({why}): {} marks, {} KB",
        path.display(),
        r.marks.len(),
        page.len().div_ceil(1024)
    ))
}
