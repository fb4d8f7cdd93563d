//! `oncesend`: the admin CLI, and `oncesend up`, everything in one process.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use oncesend::clock::TokioClock;
use oncesend::config::{DbArgs, EngineArgs, LeaseArgs, LogArgs};
use oncesend::daemon;
use oncesend::db::{Db, DEFAULT_DATABASE_URL};
use oncesend::net::{HttpClient, HttpUrl, MaybeTls, TcpConnector, TlsTrust};
use std::process::ExitCode;
use std::time::Duration;

/// oncesend: WhatsApp message flows, delivered exactly once.
#[derive(Parser)]
#[command(name = "oncesend", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Engine, worker and database in one process.
    Up(UpArgs),
    /// Create or update the database schema.
    Migrate(DbArgs),
    /// Flows.
    Flow {
        #[command(subcommand)]
        command: FlowCommand,
    },
    /// Start a run of a flow for one recipient.
    Trigger(TriggerArgs),
    /// Runs.
    Run {
        #[command(subcommand)]
        command: RunCommand,
    },
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Load a scratch database with runs, drain them, and report
    /// throughput, latency and transactions per message (runs the
    /// `oncesend-bench` executable beside this one; `--help` lists its flags).
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
}

/// `oncesend bench`'s arguments: all of them go to `oncesend-bench`.
#[derive(Args)]
struct BenchArgs {
    /// The load tool's flags.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

#[derive(Args)]
struct UpArgs {
    /// Database (default sqlite://oncesend.db?mode=rwc).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// In-process workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    lease: LeaseArgs,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The engine's base URL.
    #[arg(
        long,
        env = "ONCESEND_ENGINE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    engine_url: String,
    /// Bearer token.
    #[arg(long, env = "ONCESEND_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Create or replace a flow.
    Put {
        /// The flow's name.
        flow: String,
        /// A JSON file `{"steps":[{"text":…,"delay_ms":…}]}` (`-` for stdin).
        #[arg(long, conflicts_with = "step")]
        file: Option<String>,
        /// A step's text; repeat for more steps.
        #[arg(long)]
        step: Vec<String>,
        /// The delay before each step, in order (missing ones are 0).
        #[arg(long)]
        delay_ms: Vec<u64>,
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct TriggerArgs {
    /// The flow.
    flow: String,
    /// The recipient, in E.164 (+5511913390707).
    #[arg(long)]
    to: String,
    /// A template variable, `name=value`; repeat for more.
    #[arg(long = "var")]
    vars: Vec<String>,
    /// The tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Makes a repeated trigger return the same run.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum RunCommand {
    /// A run, step by step.
    Show {
        /// The run's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a run.
    Cancel {
        /// The run's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a failed run on from its failed step.
    Retry {
        /// The run's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Settle a step whose outcome is unknown: `sent` (the recipient got
    /// it; the run goes on) or `failed` (it did not go out; it is sent
    /// again).
    Resolve {
        /// The run's id.
        id: String,
        /// The step's index, from 0.
        step: u32,
        /// `sent` or `failed`.
        #[arg(long = "as", value_parser = ["sent", "failed"])]
        outcome: String,
        /// Who decides (recorded on the step; default `operator`).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Clone)]
struct RunFilterArgs {
    /// Only runs of this status: pending, leased, waiting, completed,
    /// failed, cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Only runs of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Only runs of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only runs whose reason holds this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only runs triggered before this time (ms since the Unix epoch).
    #[arg(long)]
    before_ms: Option<u64>,
    /// Only runs triggered after this time (ms since the Unix epoch).
    #[arg(long)]
    after_ms: Option<u64>,
}

impl RunFilterArgs {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({});
        for (k, val) in [
            ("status", self.status.clone()),
            ("flow", self.flow.clone()),
            ("tenant", self.tenant.clone()),
            ("reason", self.reason.clone()),
        ] {
            if let Some(val) = val {
                v[k] = val.into();
            }
        }
        if let Some(t) = self.before_ms {
            v["before_ms"] = t.into();
        }
        if let Some(t) = self.after_ms {
            v["after_ms"] = t.into();
        }
        v
    }

    fn query(&self) -> String {
        let mut q = String::new();
        for (k, val) in self.json().as_object().expect("an object") {
            let val = match val {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let val: String = url_escape(&val);
            q.push_str(&format!("&{k}={val}"));
        }
        q
    }
}

/// Percent-escapes a query value.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Args)]
struct RunsArgs {
    #[command(subcommand)]
    action: Option<RunsAction>,
    #[command(flatten)]
    filter: RunFilterArgs,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum RunsAction {
    /// Cancel the unfinished runs that match (at most 500 a call).
    Cancel {
        #[command(flatten)]
        filter: RunFilterArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry the failed runs that match, each from its failed step (at
    /// most 500 a call).
    Retry {
        #[command(flatten)]
        filter: RunFilterArgs,
        /// Who asks (recorded on each retried step).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Per-message info lines would be most of what the bench measured.
        Command::Bench(_) => cli.log.init_with_default("warn"),
        _ => cli.log.init(),
    }
    if let Command::Bench(args) = cli.command {
        return bench(args, &cli.log).await;
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncesend: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The load tool lives in `oncesend-benches`, which depends on this crate,
/// so it cannot be linked in here: `oncesend bench` runs the
/// `oncesend-bench` executable built beside this one, passes every argument
/// on and answers its exit status.
async fn bench(args: BenchArgs, log: &LogArgs) -> ExitCode {
    let name = format!("oncesend-bench{}", std::env::consts::EXE_SUFFIX);
    let tool = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(&name),
        Err(e) => {
            eprintln!("oncesend: cannot find this executable's folder to look for {name}: {e}");
            return ExitCode::from(1);
        }
    };
    if !tool.is_file() {
        eprintln!(
            "oncesend: the load tool is a separate executable and {} does not exist; \
             build it beside oncesend with `cargo build --release -p oncesend-benches --bin oncesend-bench` \
             (without --release for a debug oncesend), or run it directly with \
             `cargo run --release -p oncesend-benches --bin oncesend-bench -- …`",
            tool.display()
        );
        return ExitCode::from(1);
    }
    let format = clap::ValueEnum::to_possible_value(&log.log_format)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let status = tokio::process::Command::new(&tool)
        .args(&args.args)
        .env("ONCESEND_LOG_FORMAT", format)
        .status()
        .await;
    match status {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                eprintln!(
                    "oncesend: {} ended without an exit code: {status}",
                    tool.display()
                );
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("oncesend: cannot run {}: {e}", tool.display());
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up(args).await,
        Command::Bench(_) => unreachable!("main runs the load tool itself"),
        Command::Migrate(db) => {
            // Opening migrates.
            Db::open_patiently(
                &db.database_url,
                TokioClock::system(),
                Duration::from_secs(30),
            )
            .await?;
            println!("migrated {}", oncesend::db::redact(&db.database_url));
            Ok(())
        }
        Command::Flow {
            command:
                FlowCommand::Put {
                    flow,
                    file,
                    step,
                    delay_ms,
                    tenant,
                    client,
                },
        } => {
            let mut body: serde_json::Value = match file {
                Some(path) => {
                    let text = if path == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {path}"))?
                    };
                    serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?
                }
                None if step.is_empty() => {
                    bail!("give the steps with --step TEXT (repeat) or --file FLOW.json")
                }
                None => {
                    let steps: Vec<serde_json::Value> = step
                        .iter()
                        .enumerate()
                        .map(|(i, text)| serde_json::json!({"text": text, "delay_ms": delay_ms.get(i).copied().unwrap_or(0)}))
                        .collect();
                    serde_json::json!({ "steps": steps })
                }
            };
            if tenant != "default" {
                body["tenant"] = tenant.into();
            }
            call(
                &client,
                Method::PUT,
                &format!("/v1/flows/{flow}"),
                Some(body),
                None,
            )
            .await
        }
        Command::Trigger(t) => {
            let mut vars = serde_json::Map::new();
            for v in &t.vars {
                let (k, val) = v
                    .split_once('=')
                    .with_context(|| format!("--var {v:?} must be name=value"))?;
                vars.insert(k.to_string(), val.into());
            }
            let body = serde_json::json!({"tenant": t.tenant, "to": t.to, "vars": vars});
            call(
                &t.client,
                Method::POST,
                &format!("/v1/flows/{}/runs", t.flow),
                Some(body),
                t.idempotency_key,
            )
            .await
        }
        Command::Run {
            command: RunCommand::Show { id, client },
        } => call(&client, Method::GET, &format!("/v1/runs/{id}"), None, None).await,
        Command::Run {
            command: RunCommand::Cancel { id, client },
        } => {
            call(
                &client,
                Method::POST,
                &format!("/v1/runs/{id}/cancel"),
                None,
                None,
            )
            .await
        }
        Command::Run {
            command: RunCommand::Retry { id, client },
        } => {
            call(
                &client,
                Method::POST,
                &format!("/v1/runs/{id}/retry"),
                None,
                None,
            )
            .await
        }
        Command::Run {
            command:
                RunCommand::Resolve {
                    id,
                    step,
                    outcome,
                    by,
                    client,
                },
        } => {
            let mut body = serde_json::json!({"as": outcome});
            if let Some(by) = by {
                body["by"] = by.into();
            }
            call(
                &client,
                Method::POST,
                &format!("/v1/runs/{id}/steps/{step}/resolve"),
                Some(body),
                None,
            )
            .await
        }
        Command::Runs(RunsArgs {
            action: Some(RunsAction::Cancel { filter, client }),
            ..
        }) => {
            call(
                &client,
                Method::POST,
                "/v1/runs/cancel",
                Some(filter.json()),
                None,
            )
            .await
        }
        Command::Runs(RunsArgs {
            action: Some(RunsAction::Retry { filter, by, client }),
            ..
        }) => {
            let mut body = filter.json();
            if let Some(by) = by {
                body["by"] = by.into();
            }
            call(&client, Method::POST, "/v1/runs/retry", Some(body), None).await
        }
        Command::Runs(r) => {
            let path = format!("/v1/runs?limit={}{}", r.limit, r.filter.query());
            call(&r.client, Method::GET, &path, None, None).await
        }
    }
}

/// One API call; prints the answer, fails on an error status.
async fn call(
    client: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let url =
        HttpUrl::parse(&client.engine_url).map_err(|e| anyhow::anyhow!("--engine-url: {e}"))?;
    // An engine behind a TLS-terminating proxy is reached over https.
    let connector = MaybeTls::for_url(
        TcpConnector::new(url.addr.clone()),
        &url,
        &TlsTrust::web_roots(),
    )
    .map_err(|e| anyhow::anyhow!("--engine-url: {e}"))?;
    let http = HttpClient::new(
        connector,
        &url.authority,
        client.token.clone(),
        Duration::from_secs(30),
    );
    let mut headers = Vec::new();
    if let Some(k) = idempotency_key {
        headers.push(("idempotency-key", k));
    }
    let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
    let (status, _, bytes) = http
        .request(method, &format!("{}{path}", url.path), &headers, body)
        .await
        .with_context(|| format!("cannot reach the engine at {}", client.engine_url))?;
    let shown = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) => serde_json::to_string_pretty(&v).expect("json"),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    if status.is_success() {
        println!("{shown}");
        Ok(())
    } else {
        bail!("{status}\n{shown}")
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let clock = TokioClock::system();
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let db = Db::open_patiently(&url, clock.clone(), Duration::from_secs(30)).await?;
    if db.is_memory() {
        tracing::warn!("DATABASE_URL=memory: keeps runs in this process; they are lost at exit");
    }
    let sample = match daemon::put_sample_flow(&db).await {
        Ok(put) => {
            if put {
                tracing::info!(
                    flow = daemon::SAMPLE_FLOW,
                    "no flows yet: put the sample flow"
                );
            }
            put
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot put the sample flow; the console's Flows page starts empty");
            false
        }
    };
    let engine = daemon::engine(&args.engine, db.clone(), clock.clone())?;
    let listener = tokio::net::TcpListener::bind(args.engine.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.engine.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = daemon::spawn_inner_workers(
        args.workers,
        &args.lease,
        args.engine.send_timeout_ms,
        &engine,
        db.clone(),
        clock.clone(),
        db.wakeups(),
        stop_rx.clone(),
        daemon::os_random,
    )?;
    tokio::spawn(oncesend::api::history::sample_forever(engine.state.clone()));
    banner(&args, &addr.to_string(), &url, sample);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(daemon::serve(listener, engine.state, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    daemon::shutdown_signal().await;
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    server.await??;
    tracing::info!("oncesend stopped");
    Ok(())
}

fn banner(args: &UpArgs, addr: &str, database: &str, sample: bool) {
    let base = format!("http://{addr}");
    let auth = match &args.engine.token {
        Some(t) => format!(" -H 'authorization: Bearer {t}'"),
        None => String::new(),
    };
    println!("oncesend is up at {base}");
    if let Ok(a) = addr.parse::<std::net::SocketAddr>() {
        println!("  console: {}", oncesend::api::console::console_url(a));
        if sample {
            println!(
                "  sample flow: `{}` is ready; trigger it from the console's Flows page",
                daemon::SAMPLE_FLOW
            );
        }
    }
    println!(
        "  database: {}   provider: {}   recipient gap: {} ms",
        oncesend::db::redact(database),
        clap::ValueEnum::to_possible_value(&args.engine.provider)
            .map_or_else(String::new, |v| v.get_name().to_string()),
        args.engine.recipient_gap_ms
    );
    match &args.engine.token {
        Some(t) => println!("  token: {t}"),
        None => println!("  token: none (listening on loopback only)"),
    }
    println!("Try it:");
    println!(
        "  curl -sS -X PUT {base}/v1/flows/welcome{auth} -H 'content-type: application/json' -d '{{\"steps\":[{{\"text\":\"Hi {{{{name}}}}!\",\"delay_ms\":0}},{{\"text\":\"Your code is {{{{code}}}}\",\"delay_ms\":1000}}]}}'"
    );
    println!(
        "  curl -sS -X POST {base}/v1/flows/welcome/runs{auth} -H 'content-type: application/json' -d '{{\"to\":\"+5511913390707\",\"vars\":{{\"name\":\"Ana\",\"code\":\"4521\"}}}}'"
    );
    println!("  curl -sS {base}/v1/runs/RUN_ID{auth}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
