//! Flags and environment of the daemons, shared by `oncesend-engine`,
//! `oncesend-worker` and `oncesend up`.

use crate::db::DEFAULT_DATABASE_URL;
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Which provider sends the `default` tenant's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Each delivery as a JSON line on stdout or `--log-file`.
    Log,
    /// The WhatsApp Cloud API.
    CloudApi,
    /// Accepts everything, sends nothing (load tests).
    Null,
}

impl ProviderKind {
    /// Its name, as the flag and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::CloudApi => "cloud-api",
            Self::Null => "null",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging, for every binary.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format (the level comes from RUST_LOG, default `info`).
    #[arg(long, env = "ONCESEND_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the tracing subscriber; logs go to stderr, so stdout stays
    /// free for the log provider's delivery lines.
    pub fn init(&self) {
        self.init_with_default("info")
    }

    /// [`LogArgs::init`], with `level` when RUST_LOG is unset.
    pub fn init_with_default(&self, level: &str) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// The engine's settings.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Address to listen on. Off loopback, ONCESEND_TOKEN is required.
    #[arg(long, env = "ONCESEND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token every API request must carry.
    #[arg(long, env = "ONCESEND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Provider of the `default` tenant.
    #[arg(long, env = "ONCESEND_PROVIDER", value_enum, default_value = "log")]
    pub provider: ProviderKind,
    /// File the log provider appends to (stdout if unset).
    #[arg(long, env = "ONCESEND_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Cloud API base URL.
    #[arg(
        long,
        env = "ONCESEND_CLOUD_API_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub cloud_api_url: String,
    /// Extra roots (PEM) to trust for the Cloud API's HTTPS, on top of the
    /// standard web roots: a corporate proxy's CA, or a test server's.
    #[arg(long, env = "ONCESEND_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Cloud API access token.
    #[arg(long, env = "ONCESEND_CLOUD_API_TOKEN", hide_env_values = true)]
    pub cloud_api_token: Option<String>,
    /// Cloud API phone number id of the default tenant.
    #[arg(long, env = "ONCESEND_PHONE_NUMBER_ID")]
    pub phone_number_id: Option<String>,
    /// Cloud API (Graph) version.
    #[arg(long, env = "ONCESEND_CLOUD_API_VERSION", default_value = "v21.0")]
    pub cloud_api_version: String,
    /// Messages per second per sender (token bucket rate and burst).
    #[arg(long, env = "ONCESEND_RATE_PER_SEC", default_value_t = 80)]
    pub rate_per_sec: u32,
    /// Least gap between two messages to one recipient, in ms (0: none).
    #[arg(long, env = "ONCESEND_RECIPIENT_GAP_MS", default_value_t = 6_000)]
    pub recipient_gap_ms: u64,
    /// Longest a provider call may take, in ms; past it the delivery is
    /// `unknown`. Workers need a lease of at least 3x this.
    #[arg(long, env = "ONCESEND_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ONCESEND_MAX_BODY_BYTES", default_value_t = crate::api::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Meta app secret, to verify status webhook signatures.
    #[arg(long, env = "ONCESEND_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Token for the webhook's GET verification challenge.
    #[arg(long, env = "ONCESEND_WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    pub webhook_verify_token: Option<String>,
    /// Inbound texts that opt a recipient out of the tenant's messages
    /// (the whole text, trimmed, any case), comma-separated.
    #[arg(
        long,
        env = "ONCESEND_OPT_OUT_KEYWORDS",
        value_delimiter = ',',
        default_value = "STOP,UNSUBSCRIBE,PARAR,SAIR,CANCELAR"
    )]
    pub opt_out_keywords: Vec<String>,
    /// Inbound texts that opt a recipient back in, comma-separated.
    #[arg(
        long,
        env = "ONCESEND_OPT_IN_KEYWORDS",
        value_delimiter = ',',
        default_value = "START,VOLTAR"
    )]
    pub opt_in_keywords: Vec<String>,
    /// Keep finished runs (and their ledger rows and trigger keys) this
    /// long, in ms, then delete them. A trigger key is reusable once its
    /// run is gone.
    #[arg(long, env = "ONCESEND_RETENTION_MS", default_value_t = 7 * 24 * 3_600_000)]
    pub retention_ms: u64,
}

/// How a worker claims and holds runs.
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// Most runs held at once.
    #[arg(long, env = "ONCESEND_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Length of each lease, in ms.
    #[arg(long, env = "ONCESEND_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Most runs per claim.
    #[arg(long, env = "ONCESEND_BATCH", default_value_t = 10)]
    pub batch: u32,
    /// Wait before claiming again after finding nothing, in ms.
    #[arg(long, env = "ONCESEND_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// How long a run whose step's outcome is unknown waits for the
    /// provider's status webhook before it fails, in ms (one hour: Meta
    /// retries webhooks for days, but a flow that waits longer has lost
    /// its moment; an operator can still resolve the step).
    #[arg(long, env = "ONCESEND_UNKNOWN_TIMEOUT_MS", default_value_t = oncesend_core::worker::DEFAULT_UNKNOWN_TIMEOUT_MS)]
    pub unknown_timeout_ms: u64,
    /// The first retry of a failed step waits up to this long, in ms; each
    /// further one up to twice as long (with full jitter).
    #[arg(long, env = "ONCESEND_RETRY_BASE_MS", default_value_t = oncesend_core::RetryPolicy::default().base_ms)]
    pub retry_base_ms: u64,
    /// The longest wait between two tries of a step, in ms.
    #[arg(long, env = "ONCESEND_RETRY_CAP_MS", default_value_t = oncesend_core::RetryPolicy::default().cap_ms)]
    pub retry_cap_ms: u64,
    /// Tries of a step before its run fails.
    #[arg(long, env = "ONCESEND_MAX_ATTEMPTS", default_value_t = oncesend_core::RetryPolicy::default().max_attempts)]
    pub max_attempts: u32,
}

/// The standalone worker's settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The engine's base URL.
    #[arg(
        long,
        env = "ONCESEND_ENGINE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub engine_url: String,
    /// Name on leases and in logs (a fresh UUID if unset).
    #[arg(long, env = "ONCESEND_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Bearer token for the engine.
    #[arg(long, env = "ONCESEND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The engine's provider time limit, in ms (must match the engine's).
    #[arg(long, env = "ONCESEND_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub lease: LeaseArgs,
}

/// The database URL, for every binary that opens one.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// `sqlite://PATH?mode=rwc`, `postgres://USER@HOST/DB`, or `memory:`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}
