//! The storage contract on SQLite and PostgreSQL, through `sqlx`.
//!
//! One implementation serves both databases (sqlx's `Any` driver, `$n`
//! placeholders in both); the few statements that must differ say so.
//!
//! What an op does to one run or one ledger row is decided by the core's
//! [`rules`], on rows loaded under lock and written back when changed, so a
//! SQL store cannot drift from the model on fencing, retried writes or the
//! ledger. What spans rows is SQL's own and is held to the model by the
//! differential tests:
//!
//! - **Claims.** On PostgreSQL one statement: a CTE picks the claimable heads
//!   in due order `FOR NO KEY UPDATE SKIP LOCKED` with the `LIMIT` inside it,
//!   and the outer `UPDATE` re-checks each row, bumps its epoch, sets the
//!   lease and returns it. On SQLite the same pick and write run under
//!   `BEGIN IMMEDIATE` on the one writer connection.
//! - **One run at a time per conversation.** Only a conversation's head
//!   (`is_head`) is claimable; the schema allows one head per conversation
//!   (a partial unique index) and a leased run must be the head (a CHECK),
//!   so two leased runs in one conversation cannot be stored at all. The
//!   transaction that finishes a head promotes the next run.
//! - **Fencing.** Holder writes load their run `FOR UPDATE`, and the write
//!   back is conditional on the epoch that was read: a row count other than
//!   the number of rows written aborts the transaction.
//! - **Batches.** Consecutive per-row ops of one [`Store::apply_batch`] call
//!   are applied with one read and one write per table, in one transaction.

use crate::store::group::is_row_write;
use crate::store::Store;
use oncesend_core::store::rules::{self, RunRecord};
use oncesend_core::store::{QueueStats, StoreUnavailable};
use oncesend_core::store::{RecipientInfo, RunFilter, RunWait, Suppression};
use oncesend_core::tenant::SenderPause;
use oncesend_core::{
    ClaimedRun, DeliveryKey, DeliveryRecord, DeliveryState, Flow, FlowId, Guards, Lease, NewRun,
    PlannedStep, Recipient, RunId, RunStatus, StoreOp, StoreReply, Tenant, TenantId, WorkerId,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool};
use sqlx::{Connection, Executor, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Once};
use std::time::Duration;
use tokio::sync::Notify;

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The channel enqueues notify on PostgreSQL.
pub const NOTIFY_CHANNEL: &str = "oncesend_runs";

/// SQL stores never run without their guards.
const GUARDS: Guards = Guards {
    fencing: true,
    ledger: true,
};

/// Rows per multi-row statement (well under both databases' parameter caps).
const CHUNK: usize = 400;

/// How often a transaction that lost a race (deadlock, a unique index taken
/// by a concurrent enqueue, a busy SQLite file) is tried again.
const TX_ATTEMPTS: u32 = 12;

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file, one writer.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if any.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Whose clock the store's times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlClock {
    /// The `now_ms` each op carries (tests, which drive time themselves).
    Caller,
    /// The database server's clock, read once per transaction, so workers
    /// with skewed clocks cannot stretch or cut leases.
    Database,
}

/// How to open a SQL store.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// Whose clock.
    pub clock: SqlClock,
    /// PostgreSQL pool size (SQLite always has one writer connection).
    pub max_connections: u32,
    /// PostgreSQL only: keep the tables in this schema (created if absent).
    pub schema: Option<String>,
    /// PostgreSQL only: LISTEN for enqueues and wake [`SqlStore::wakeups`].
    pub listen: bool,
    /// How long to wait for a connection before the op is unavailable.
    pub acquire_timeout: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            clock: SqlClock::Database,
            max_connections: 8,
            schema: None,
            listen: false,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A SQLite or PostgreSQL store.
#[derive(Clone)]
pub struct SqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    clock: SqlClock,
    wake: Arc<Notify>,
    transactions: AtomicU64,
}

/// Why a transaction did not commit.
enum TxError {
    /// Lost a race; the whole transaction may simply be tried again.
    Retry(String),
    /// The database failed or could not be reached.
    Db(sqlx::Error),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if is_retryable(db.code().as_deref()) => {
                TxError::Retry(db.message().to_string())
            }
            _ => TxError::Db(e),
        }
    }
}

/// PostgreSQL: unique violation (two enqueues raced for a conversation's
/// head or a trigger key), serialization failure, deadlock, lock not
/// available. SQLite: busy, locked, and unique constraint.
fn is_retryable(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("23505" | "40001" | "40P01" | "55P03" | "5" | "6" | "517" | "2067" | "1555")
    )
}

type Tx<T> = Result<T, TxError>;

impl SqlStore {
    /// Connects to `url`; does not migrate (see [`SqlStore::migrate`]).
    pub async fn connect(url: &str, options: SqlOptions) -> Result<Self, sqlx::Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::of_url(url).ok_or_else(|| {
            sqlx::Error::Configuration(
                format!("expected sqlite://PATH or postgres://…, got {url:?}").into(),
            )
        })?;
        if let (Backend::Postgres, Some(schema)) = (backend, &options.schema) {
            check_schema_name(schema)?;
            let mut conn = AnyConnection::connect(url).await?;
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        let schema = options.schema.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => options.max_connections.max(1),
            })
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA busy_timeout = 10000",
                            ] {
                                conn.execute(pragma).await?;
                            }
                        }
                        Backend::Postgres => {
                            // Plan every execution for the parameters and
                            // table sizes of now: a plan cached while the
                            // tables were small (a fresh deployment) would
                            // scan them whole once they have grown, until an
                            // autovacuum analyze invalidated it.
                            conn.execute("SET plan_cache_mode = force_custom_plan")
                                .await?;
                            if let Some(schema) = schema {
                                let set = format!("SET search_path TO {schema}");
                                conn.execute(set.as_str()).await?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let wake = Arc::new(Notify::new());
        if backend == Backend::Postgres && options.listen {
            tokio::spawn(listen(url.to_string(), wake.clone()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                clock: options.clock,
                wake,
                transactions: AtomicU64::new(0),
            }),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Notified when another process enqueues (PostgreSQL with `listen`).
    pub fn wakeups(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// Transactions committed so far (for the load tool's figures).
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// The pool, for tests that inspect the tables.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Brings the schema up to date. Running it again changes nothing.
    /// Several processes starting at once on one SQLite file may race to
    /// apply the same migration; the loser finds it applied on its retry.
    pub async fn migrate(&self) -> Result<(), StoreUnavailable> {
        let migrator = match self.inner.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let mut last = None;
        for attempt in 0..5u64 {
            match migrator.run(&self.inner.pool).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "migration failed; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
        Err(StoreUnavailable(format!(
            "migrating the database failed: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Drops every table oncesend keeps (in the store's schema, when it has
    /// one), then migrates afresh: an empty store. For tests and benchmarks
    /// on a scratch database; never called by the daemons.
    pub async fn recreate(&self) -> Result<(), StoreUnavailable> {
        for table in TABLES.iter().chain(&["_sqlx_migrations"]) {
            sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(&self.inner.pool)
                .await
                .map_err(unavailable)?;
        }
        self.migrate().await
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreUnavailable> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn transaction(&self, ops: &[StoreOp]) -> Tx<Vec<StoreReply>> {
        let begin = match self.inner.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        let mut tx = self.inner.pool.begin_with(begin).await?;
        let mut ops = ops.to_vec();
        if self.inner.clock == SqlClock::Database {
            let now = db_now(&mut tx, self.inner.backend).await?;
            for op in &mut ops {
                op.set_now_ms(now);
            }
        }
        let mut run = Batch {
            conn: &mut tx,
            backend: self.inner.backend,
            notify: false,
        };
        let replies = run.apply_all(ops).await?;
        if run.notify && self.inner.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(NOTIFY_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.inner.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(replies)
    }
}

impl Store for SqlStore {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        let mut replies = self.apply_batch(vec![op]).await?;
        Ok(replies.pop().expect("one reply per op"))
    }

    async fn apply_batch(&self, ops: Vec<StoreOp>) -> Result<Vec<StoreReply>, StoreUnavailable> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transaction(&ops).await {
                Ok(replies) => return Ok(replies),
                Err(TxError::Retry(why)) if attempt < TX_ATTEMPTS => {
                    tracing::debug!(attempt, why = %why, "transaction lost a race; retrying");
                    // Spread the retries out a little (1, 2, 4 … 64 ms).
                    let ms = 1u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(TxError::Retry(why)) => {
                    return Err(StoreUnavailable(format!(
                        "gave up after {attempt} attempts at a contended transaction: {why}"
                    )))
                }
                Err(TxError::Db(e)) => return Err(unavailable(e)),
            }
        }
    }
}

fn unavailable(e: sqlx::Error) -> StoreUnavailable {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => {}
        other => tracing::error!(error = %other, "database error"),
    }
    StoreUnavailable(e.to_string())
}

fn check_schema_name(schema: &str) -> Result<(), sqlx::Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("schema name {schema:?}: use lowercase letters, digits and _").into(),
        ))
    }
}

async fn listen(url: String, wake: Arc<Notify>) {
    loop {
        let result = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            tracing::debug!(channel = NOTIFY_CHANNEL, "listening for enqueues");
            loop {
                listener.recv().await?;
                wake.notify_waiters();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "LISTEN connection lost; workers fall back to polling until it is back");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn db_now(conn: &mut AnyConnection, backend: Backend) -> Tx<u64> {
    let sql = match backend {
        Backend::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        Backend::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    };
    let now: i64 = sqlx::query(sql).fetch_one(conn).await?.try_get(0)?;
    Ok(now.max(0) as u64)
}

/// Store times and counters are `u64`; the databases keep `BIGINT`.
fn db(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn un(v: i64) -> u64 {
    v.max(0) as u64
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> TxError {
    TxError::Db(sqlx::Error::Decode(format!("{what}: {e}").into()))
}

fn run_id(bytes: &[u8]) -> Tx<RunId> {
    uuid::Uuid::from_slice(bytes)
        .map(RunId)
        .map_err(|e| decode_err("run id", e))
}

/// `$from, $from+1, …` for one row of `width` values, as `($a, $b, …)`.
fn tuple(from: usize, width: usize) -> String {
    let cols: Vec<String> = (from..from + width).map(|i| format!("${i}")).collect();
    format!("({})", cols.join(", "))
}

/// `($1, …), ($k+1, …), …` for `rows` rows of `width` values.
fn tuples(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| tuple(r * width + 1, width))
        .collect::<Vec<_>>()
        .join(", ")
}

const RUN_COLUMNS: &str = "seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms, \
     attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key, created_at_ms, finished_at_ms, \
     wait, note";

fn run_from_row(row: &AnyRow) -> Tx<RunRecord> {
    let steps: String = row.try_get("steps")?;
    let steps: Vec<PlannedStep> =
        serde_json::from_str(&steps).map_err(|e| decode_err("steps", e))?;
    let status: String = row.try_get("status")?;
    let status = RunStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?;
    let owner: Option<String> = row.try_get("lease_owner")?;
    let until: Option<i64> = row.try_get("lease_until_ms")?;
    let epoch = un(row.try_get("epoch")?);
    let lease = match (owner, until) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: WorkerId::new(owner).map_err(|e| decode_err("lease owner", e))?,
            epoch,
            until_ms: un(until),
        }),
        _ => None,
    };
    let id: Vec<u8> = row.try_get("id")?;
    Ok(RunRecord {
        id: run_id(&id)?,
        seq: un(row.try_get("seq")?),
        tenant: TenantId::new(row.try_get::<String, _>("tenant")?)
            .map_err(|e| decode_err("tenant", e))?,
        flow: FlowId::new(row.try_get::<String, _>("flow")?).map_err(|e| decode_err("flow", e))?,
        to: Recipient::parse(&row.try_get::<String, _>("recipient")?)
            .map_err(|e| decode_err("recipient", e))?,
        steps,
        cursor: un(row.try_get("next_step")?) as u32,
        status,
        run_at_ms: un(row.try_get("run_at_ms")?),
        attempts: un(row.try_get("attempts")?) as u32,
        epoch,
        lease,
        wait: match row.try_get::<Option<String>, _>("wait")? {
            Some(w) => Some(RunWait::parse(&w).ok_or_else(|| decode_err("wait", &w))?),
            None => None,
        },
        note: row.try_get("note")?,
        reason: row.try_get("reason")?,
        trigger_key: row.try_get("trigger_key")?,
        created_at_ms: un(row.try_get("created_at_ms")?),
        finished_at_ms: row.try_get::<Option<i64>, _>("finished_at_ms")?.map(un),
    })
}

const DELIVERY_COLUMNS: &str = "run_id, step, state, deadline_ms, retryable, epoch, attempts, \
     provider_message_id, last_error, resolved_by, resolved_at_ms";

/// Every table the store keeps.
pub const TABLES: [&str; 7] = [
    "runs",
    "deliveries",
    "trigger_keys",
    "flows",
    "tenants",
    "sender_pauses",
    "recipients",
];

const PAUSE_COLUMNS: &str = "tenant, reason, code, since_ms, probe_at_ms, probes, settings";

fn pause_from_row(row: &AnyRow) -> Tx<(TenantId, SenderPause)> {
    let tenant =
        TenantId::new(row.try_get::<String, _>("tenant")?).map_err(|e| decode_err("tenant", e))?;
    let probe_at: Option<i64> = row.try_get("probe_at_ms")?;
    Ok((
        tenant,
        SenderPause {
            reason: row.try_get("reason")?,
            code: row.try_get("code")?,
            since_ms: un(row.try_get("since_ms")?),
            probe_at_ms: probe_at.map(un),
            probes: u32::try_from(un(row.try_get("probes")?)).unwrap_or(u32::MAX),
            settings: row.try_get("settings")?,
        },
    ))
}

fn delivery_from_row(row: &AnyRow) -> Tx<DeliveryRecord> {
    let run: Vec<u8> = row.try_get("run_id")?;
    let state: String = row.try_get("state")?;
    let deadline: Option<i64> = row.try_get("deadline_ms")?;
    let retryable: Option<i64> = row.try_get("retryable")?;
    let state = match state.as_str() {
        "sending" => DeliveryState::Sending {
            deadline_ms: un(deadline.unwrap_or(0)),
        },
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "failed" => DeliveryState::Failed {
            retryable: retryable.unwrap_or(0) != 0,
        },
        "unknown" => DeliveryState::Unknown,
        other => return Err(decode_err("delivery state", other)),
    };
    Ok(DeliveryRecord {
        key: DeliveryKey {
            run: run_id(&run)?,
            step: un(row.try_get("step")?) as u32,
        },
        state,
        epoch: un(row.try_get("epoch")?),
        attempts: un(row.try_get("attempts")?) as u32,
        provider_message_id: row.try_get("provider_message_id")?,
        last_error: row.try_get("last_error")?,
        resolved_by: row.try_get("resolved_by")?,
        resolved_at_ms: row.try_get::<Option<i64>, _>("resolved_at_ms")?.map(un),
    })
}

/// The row statements take their rows as one JSON parameter, so each has
/// one text whatever the batch size: prepared once per connection, never
/// re-parsed or re-planned for a new size, and one bind instead of
/// thousands. In PostgreSQL the id lists go through `= ANY(ARRAY(…))`, an
/// index condition, so the plan stays an index probe per row however the
/// planner sizes the table (a join against a `VALUES` list of 200 rows was
/// planned as a sequential scan of `runs`).
fn hex_ids<'a>(ids: impl Iterator<Item = &'a RunId>) -> String {
    let ids: Vec<String> = ids.map(|id| hex::encode(id.0.as_bytes())).collect();
    serde_json::to_string(&ids).expect("ids serialize")
}

/// `[{"tenant", "recipient"}, …]`, as the statements read conversations.
fn json_conversations(conversations: &BTreeSet<(&str, &str)>) -> String {
    #[derive(serde::Serialize)]
    struct Conversation<'a> {
        tenant: &'a str,
        recipient: &'a str,
    }
    serde_json::to_string(
        &conversations
            .iter()
            .map(|(tenant, recipient)| Conversation { tenant, recipient })
            .collect::<Vec<_>>(),
    )
    .expect("conversations serialize")
}

/// One backend's row statements.
struct RowSql {
    find_suppressed: &'static str,
    find_suppressed_locked: &'static str,
    load_runs: String,
    load_runs_locked: String,
    load_deliveries: String,
    load_deliveries_locked: String,
    write_runs: &'static str,
    write_deliveries: String,
    promote: &'static str,
    find_trigger_keys: &'static str,
    find_runs: String,
    lock_heads: &'static str,
    insert_runs: &'static str,
    insert_trigger_keys: &'static str,
}

fn row_sql(backend: Backend) -> &'static RowSql {
    static POSTGRES: LazyLock<RowSql> = LazyLock::new(|| {
        let ids = "ARRAY(SELECT decode(x, 'hex') FROM json_array_elements_text($1::json) AS x)";
        let runs = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ANY({ids}) ORDER BY id");
        let deliveries = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ANY({ids}) \
             ORDER BY run_id, step"
        );
        RowSql {
            find_suppressed: "SELECT r.tenant, r.recipient, r.suppressed_since_ms, r.suppressed_reason \
                 FROM recipients r JOIN json_to_recordset($1::json) AS c (tenant text, recipient text) \
                   ON r.tenant = c.tenant AND r.recipient = c.recipient \
                 WHERE r.suppressed_since_ms IS NOT NULL",
            find_suppressed_locked: "SELECT r.tenant, r.recipient FROM recipients r \
                 JOIN json_to_recordset($1::json) AS c (tenant text, recipient text) \
                   ON r.tenant = c.tenant AND r.recipient = c.recipient \
                 WHERE r.suppressed_since_ms IS NOT NULL ORDER BY r.tenant, r.recipient FOR SHARE OF r",
            load_runs_locked: format!("{runs} FOR UPDATE"),
            load_runs: runs,
            load_deliveries_locked: format!("{deliveries} FOR UPDATE"),
            load_deliveries: deliveries,
            write_runs: PG_WRITE_RUNS,
            write_deliveries: format!("{PG_WRITE_DELIVERIES}{UPSERT_DELIVERY}"),
            promote: PG_PROMOTE,
            find_trigger_keys: "SELECT t.tenant, t.key, t.run_id FROM trigger_keys t \
                 JOIN json_to_recordset($1::json) AS k (tenant text, key text) \
                   ON t.tenant = k.tenant AND t.key = k.key",
            find_runs: format!("SELECT id FROM runs WHERE id = ANY({ids})"),
            lock_heads: "SELECT tenant, recipient FROM runs \
                 WHERE is_head AND (tenant, recipient) IN ( \
                     SELECT c.tenant, c.recipient \
                     FROM json_to_recordset($1::json) AS c (tenant text, recipient text)) \
                 ORDER BY id FOR SHARE OF runs",
            insert_runs: "INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, \
                     next_step, status, is_head, run_at_ms, attempts, epoch, trigger_key, \
                     created_at_ms) \
                 SELECT decode(x->>'id', 'hex'), x->>'tenant', x->>'flow', x->>'recipient', \
                     x->>'steps', (x->>'step_count')::integer, 0, 'pending', \
                     (x->>'is_head')::boolean, (x->>'run_at_ms')::bigint, 0, 0, \
                     x->>'trigger_key', (x->>'created_at_ms')::bigint \
                 FROM json_array_elements($1::json) WITH ORDINALITY AS e (x, n) ORDER BY n",
            insert_trigger_keys: "INSERT INTO trigger_keys (tenant, key, run_id) \
                 SELECT k.tenant, k.key, decode(k.run_id, 'hex') \
                 FROM json_to_recordset($1::json) AS k (tenant text, key text, run_id text)",
        }
    });
    static SQLITE: LazyLock<RowSql> = LazyLock::new(|| {
        let ids = "SELECT unhex(value) FROM json_each($1)";
        let runs = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({ids}) ORDER BY id");
        let deliveries = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id IN ({ids}) \
             ORDER BY run_id, step"
        );
        RowSql {
            find_suppressed:
                "SELECT r.tenant, r.recipient, r.suppressed_since_ms, r.suppressed_reason \
                 FROM json_each($1) AS c JOIN recipients r \
                   ON r.tenant = c.value->>'tenant' AND r.recipient = c.value->>'recipient' \
                 WHERE r.suppressed_since_ms IS NOT NULL",
            find_suppressed_locked: "SELECT r.tenant, r.recipient FROM json_each($1) AS c \
                 JOIN recipients r \
                   ON r.tenant = c.value->>'tenant' AND r.recipient = c.value->>'recipient' \
                 WHERE r.suppressed_since_ms IS NOT NULL",
            load_runs_locked: runs.clone(),
            load_runs: runs,
            load_deliveries_locked: deliveries.clone(),
            load_deliveries: deliveries,
            write_runs: SQLITE_WRITE_RUNS,
            write_deliveries: format!("{SQLITE_WRITE_DELIVERIES}{UPSERT_DELIVERY}"),
            promote: SQLITE_PROMOTE,
            find_trigger_keys: "SELECT t.tenant, t.key, t.run_id FROM json_each($1) AS k \
                 JOIN trigger_keys t \
                   ON t.tenant = k.value->>'tenant' AND t.key = k.value->>'key'",
            find_runs: format!("SELECT id FROM runs WHERE id IN ({ids})"),
            lock_heads: "SELECT tenant, recipient FROM runs \
                 WHERE is_head AND (tenant, recipient) IN ( \
                     SELECT value->>'tenant', value->>'recipient' FROM json_each($1))",
            insert_runs: "INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, \
                     next_step, status, is_head, run_at_ms, attempts, epoch, trigger_key, \
                     created_at_ms) \
                 SELECT unhex(value->>'id'), value->>'tenant', value->>'flow', \
                     value->>'recipient', value->>'steps', value->>'step_count', 0, 'pending', \
                     value->>'is_head', value->>'run_at_ms', 0, 0, value->>'trigger_key', \
                     value->>'created_at_ms' \
                 FROM json_each($1) ORDER BY key",
            insert_trigger_keys: "INSERT INTO trigger_keys (tenant, key, run_id) \
                 SELECT value->>'tenant', value->>'key', unhex(value->>'run_id') \
                 FROM json_each($1)",
        }
    });
    match backend {
        Backend::Postgres => &POSTGRES,
        Backend::Sqlite => &SQLITE,
    }
}

/// A trigger key, as the statements read it (`run_id` empty in lookups).
#[derive(serde::Serialize)]
struct TriggerKeyRow {
    tenant: String,
    key: String,
    run_id: String,
}

/// A new run, as the insert reads it.
#[derive(serde::Serialize)]
struct RunInsert {
    id: String,
    tenant: String,
    flow: String,
    recipient: String,
    steps: String,
    step_count: i64,
    is_head: bool,
    run_at_ms: i64,
    trigger_key: Option<String>,
    created_at_ms: i64,
}

/// One run's write-back, as the statements read it.
#[derive(serde::Serialize)]
struct RunWrite {
    id: String,
    read_epoch: i64,
    status: &'static str,
    next_step: i64,
    run_at_ms: i64,
    attempts: i64,
    epoch: i64,
    lease_owner: Option<String>,
    lease_until_ms: Option<i64>,
    reason: Option<String>,
    finished_at_ms: Option<i64>,
    wait: Option<&'static str>,
    note: Option<String>,
}

/// Writes runs back where their epoch is still the one they were read with.
const PG_WRITE_RUNS: &str = "UPDATE runs SET status = v.status, next_step = v.next_step, \
         run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch, \
         lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms, \
         reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note, \
         is_head = (runs.is_head AND v.status IN ('pending', 'leased', 'waiting')) \
     FROM json_to_recordset($1::json) AS v (id text, read_epoch bigint, status text, \
         next_step integer, run_at_ms bigint, attempts integer, epoch bigint, \
         lease_owner text, lease_until_ms bigint, reason text, finished_at_ms bigint, \
         wait text, note text) \
     WHERE runs.id = decode(v.id, 'hex') AND runs.epoch = v.read_epoch \
       AND runs.id = ANY(ARRAY(SELECT decode(x->>'id', 'hex') FROM json_array_elements($1::json) AS x))";

const SQLITE_WRITE_RUNS: &str = "UPDATE runs SET status = v.status, next_step = v.next_step, \
         run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch, \
         lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms, \
         reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note, \
         is_head = (runs.is_head AND v.status IN ('pending', 'leased', 'waiting')) \
     FROM (SELECT unhex(value->>'id') AS id, value->>'read_epoch' AS read_epoch, \
             value->>'status' AS status, value->>'next_step' AS next_step, \
             value->>'run_at_ms' AS run_at_ms, value->>'attempts' AS attempts, \
             value->>'epoch' AS epoch, value->>'lease_owner' AS lease_owner, \
             value->>'lease_until_ms' AS lease_until_ms, value->>'reason' AS reason, \
             value->>'finished_at_ms' AS finished_at_ms, value->>'wait' AS wait, \
             value->>'note' AS note \
           FROM json_each($1)) AS v \
     WHERE runs.id = v.id AND runs.epoch = v.read_epoch";

/// One ledger row's upsert, as the statements read it.
#[derive(serde::Serialize)]
struct DeliveryWrite {
    run_id: String,
    step: i64,
    state: &'static str,
    deadline_ms: Option<i64>,
    retryable: Option<i64>,
    epoch: i64,
    attempts: i64,
    provider_message_id: Option<String>,
    last_error: Option<String>,
    resolved_by: Option<String>,
    resolved_at_ms: Option<i64>,
}

const UPSERT_DELIVERY: &str = " ON CONFLICT (run_id, step) DO UPDATE SET state = excluded.state, \
         deadline_ms = excluded.deadline_ms, retryable = excluded.retryable, \
         epoch = excluded.epoch, attempts = excluded.attempts, \
         provider_message_id = excluded.provider_message_id, \
         last_error = excluded.last_error, resolved_by = excluded.resolved_by, \
         resolved_at_ms = excluded.resolved_at_ms";

const PG_WRITE_DELIVERIES: &str = "INSERT INTO deliveries (run_id, step, state, deadline_ms, \
         retryable, epoch, attempts, provider_message_id, last_error, resolved_by, resolved_at_ms) \
     SELECT decode(v.run_id, 'hex'), v.step, v.state, v.deadline_ms, v.retryable, v.epoch, \
         v.attempts, v.provider_message_id, v.last_error, v.resolved_by, v.resolved_at_ms \
     FROM json_to_recordset($1::json) AS v (run_id text, step integer, state text, \
         deadline_ms bigint, retryable integer, epoch bigint, attempts integer, \
         provider_message_id text, last_error text, resolved_by text, resolved_at_ms bigint)";

const SQLITE_WRITE_DELIVERIES: &str = "INSERT INTO deliveries (run_id, step, state, \
         deadline_ms, retryable, epoch, attempts, provider_message_id, last_error, resolved_by, \
         resolved_at_ms) \
     SELECT unhex(value->>'run_id'), value->>'step', value->>'state', value->>'deadline_ms', \
         value->>'retryable', value->>'epoch', value->>'attempts', \
         value->>'provider_message_id', value->>'last_error', value->>'resolved_by', \
         value->>'resolved_at_ms' \
     FROM json_each($1) WHERE true";

/// Makes the oldest waiting run of each listed conversation its head,
/// where it has none; answers how many it meant to promote and how many it
/// did. The update finds its rows by primary key: the re-check is written
/// so it cannot use `runs_waiting`, whose leading columns are not `seq`.
const PG_PROMOTE: &str = "WITH wanted AS ( \
         SELECT (SELECT w.seq FROM runs w \
                 WHERE w.tenant = c.tenant AND w.recipient = c.recipient \
                   AND w.status = 'pending' AND NOT w.is_head \
                 ORDER BY w.seq LIMIT 1) AS seq \
         FROM json_to_recordset($1::json) AS c (tenant text, recipient text) \
         WHERE NOT EXISTS (SELECT 1 FROM runs h \
                           WHERE h.tenant = c.tenant AND h.recipient = c.recipient \
                             AND h.is_head)), \
     promoted AS ( \
         UPDATE runs SET is_head = TRUE \
         WHERE coalesce(status, '') = 'pending' AND is_head IS NOT TRUE \
           AND seq = ANY(ARRAY(SELECT seq FROM wanted WHERE seq IS NOT NULL)) \
         RETURNING 1) \
     SELECT (SELECT COUNT(*) FROM wanted WHERE seq IS NOT NULL), \
            (SELECT COUNT(*) FROM promoted)";

/// The same for SQLite, whose one writer needs no re-check: everything it
/// meant to promote, it did.
const SQLITE_PROMOTE: &str = "UPDATE runs SET is_head = TRUE \
     WHERE status = 'pending' AND NOT is_head AND seq IN ( \
         SELECT (SELECT w.seq FROM runs w \
                 WHERE w.tenant = c.tenant AND w.recipient = c.recipient \
                   AND w.status = 'pending' AND NOT w.is_head \
                 ORDER BY w.seq LIMIT 1) \
         FROM (SELECT value->>'tenant' AS tenant, value->>'recipient' AS recipient \
               FROM json_each($1)) AS c \
         WHERE NOT EXISTS (SELECT 1 FROM runs h \
                           WHERE h.tenant = c.tenant AND h.recipient = c.recipient \
                             AND h.is_head))";

/// One transaction's worth of ops.
struct Batch<'c> {
    conn: &'c mut AnyConnection,
    backend: Backend,
    /// Something became claimable: tell listening workers at commit.
    notify: bool,
}

fn is_enqueue(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Enqueue { .. })
}

impl Batch<'_> {
    async fn apply_all(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let mut replies = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter().peekable();
        while let Some(op) = ops.next() {
            if is_row_write(&op) {
                let mut segment = vec![op];
                while let Some(next) = ops.next_if(is_row_write) {
                    segment.push(next);
                }
                replies.extend(self.rows(segment).await?);
            } else if is_enqueue(&op) {
                let mut segment = vec![op];
                while let Some(next) = ops.next_if(is_enqueue) {
                    segment.push(next);
                }
                replies.extend(self.enqueue(segment).await?);
            } else {
                replies.push(self.one(op).await?);
            }
        }
        Ok(replies)
    }

    async fn one(&mut self, op: StoreOp) -> Tx<StoreReply> {
        match op {
            StoreOp::PutFlow { tenant, flow } => self.put_flow(tenant, flow).await,
            StoreOp::GetFlow { tenant, flow } => {
                let row = sqlx::query("SELECT body FROM flows WHERE tenant = $1 AND id = $2")
                    .bind(tenant.as_str())
                    .bind(flow.as_str())
                    .fetch_optional(&mut *self.conn)
                    .await?;
                match row {
                    Some(row) => {
                        let body: String = row.try_get(0)?;
                        let flow: Flow =
                            serde_json::from_str(&body).map_err(|e| decode_err("flow", e))?;
                        Ok(StoreReply::Flow(flow))
                    }
                    None => Ok(StoreReply::NotFound),
                }
            }
            StoreOp::PutTenant { tenant } => self.put_tenant(tenant).await,
            StoreOp::GetTenant { tenant } => {
                let row = sqlx::query("SELECT body FROM tenants WHERE id = $1")
                    .bind(tenant.as_str())
                    .fetch_optional(&mut *self.conn)
                    .await?;
                match row {
                    Some(row) => {
                        let body: String = row.try_get(0)?;
                        let tenant: Tenant =
                            serde_json::from_str(&body).map_err(|e| decode_err("tenant", e))?;
                        Ok(StoreReply::Tenant(tenant))
                    }
                    None => Ok(StoreReply::NotFound),
                }
            }
            StoreOp::Claim {
                owner,
                max,
                lease_ms,
                now_ms,
            } => self.claim(owner, max, lease_ms, now_ms).await,
            StoreOp::PauseSender {
                tenant,
                reason,
                code,
                temporary,
                settings,
                now_ms,
            } => {
                let mut pause = self
                    .load_pauses(std::slice::from_ref(&tenant))
                    .await?
                    .remove(&tenant);
                let before = pause.clone();
                let reply = rules::pause_sender(
                    &mut pause,
                    &reason,
                    code,
                    temporary,
                    settings.as_deref(),
                    now_ms,
                );
                if pause != before {
                    if let Some(p) = &pause {
                        self.write_pause(&tenant, p).await?;
                    }
                }
                Ok(reply)
            }
            StoreOp::ResumeSender { tenant } => Ok(StoreReply::Resumed {
                was_paused: self.delete_pause(&tenant).await?,
            }),
            StoreOp::GetSender { tenant } => Ok(StoreReply::Sender(
                self.load_pauses(std::slice::from_ref(&tenant))
                    .await?
                    .remove(&tenant),
            )),
            StoreOp::ListPausedSenders => {
                let rows = sqlx::query(&format!(
                    "SELECT {PAUSE_COLUMNS} FROM sender_pauses ORDER BY tenant"
                ))
                .fetch_all(&mut *self.conn)
                .await?;
                Ok(StoreReply::PausedSenders(
                    rows.iter().map(pause_from_row).collect::<Tx<_>>()?,
                ))
            }
            StoreOp::ListTenants => {
                let rows = sqlx::query("SELECT body FROM tenants ORDER BY id")
                    .fetch_all(&mut *self.conn)
                    .await?;
                let tenants = rows
                    .iter()
                    .map(|row| {
                        let body: String = row.try_get(0)?;
                        serde_json::from_str(&body).map_err(|e| decode_err("tenant", e))
                    })
                    .collect::<Tx<Vec<Tenant>>>()?;
                Ok(StoreReply::Tenants(tenants))
            }
            StoreOp::Suppress {
                tenant,
                to,
                reason,
                now_ms,
            } => self.suppress(tenant, to, reason, now_ms).await,
            StoreOp::Unsuppress { tenant, to } => {
                let done = sqlx::query(
                    "UPDATE recipients SET suppressed_since_ms = NULL, suppressed_reason = NULL \
                     WHERE tenant = $1 AND recipient = $2 AND suppressed_since_ms IS NOT NULL",
                )
                .bind(tenant.as_str())
                .bind(to.as_str())
                .execute(&mut *self.conn)
                .await?;
                Ok(StoreReply::Unsuppressed {
                    was_suppressed: done.rows_affected() > 0,
                })
            }
            StoreOp::GetRecipient { tenant, to } => {
                let row = sqlx::query(
                    "SELECT last_inbound_ms, suppressed_since_ms, suppressed_reason \
                     FROM recipients WHERE tenant = $1 AND recipient = $2",
                )
                .bind(tenant.as_str())
                .bind(to.as_str())
                .fetch_optional(&mut *self.conn)
                .await?;
                let Some(row) = row else {
                    return Ok(StoreReply::RecipientIs(RecipientInfo::default()));
                };
                let since: Option<i64> = row.try_get(1)?;
                let reason: Option<String> = row.try_get(2)?;
                Ok(StoreReply::RecipientIs(RecipientInfo {
                    last_inbound_ms: row.try_get::<Option<i64>, _>(0)?.map(un),
                    suppressed: since.map(|s| Suppression {
                        since_ms: un(s),
                        reason: reason.unwrap_or_default(),
                    }),
                }))
            }
            StoreOp::ListSuppressed {
                tenant,
                after,
                limit,
            } => {
                let rows = sqlx::query(
                    "SELECT recipient, suppressed_since_ms, suppressed_reason FROM recipients \
                     WHERE tenant = $1 AND suppressed_since_ms IS NOT NULL AND recipient > $2 \
                     ORDER BY recipient LIMIT $3",
                )
                .bind(tenant.as_str())
                .bind(after.as_ref().map_or("", |a| a.as_str()))
                .bind(limit as i64)
                .fetch_all(&mut *self.conn)
                .await?;
                let list = rows
                    .iter()
                    .map(|row| {
                        let to = Recipient::parse(&row.try_get::<String, _>(0)?)
                            .map_err(|e| decode_err("recipient", e))?;
                        Ok((
                            to,
                            Suppression {
                                since_ms: un(row.try_get(1)?),
                                reason: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                            },
                        ))
                    })
                    .collect::<Tx<Vec<_>>>()?;
                Ok(StoreReply::Suppressions(list))
            }
            StoreOp::RecordInbound { tenant, to, now_ms } => {
                let sql = match self.backend {
                    Backend::Postgres => "INSERT INTO recipients (tenant, recipient, last_inbound_ms) \
                         VALUES ($1, $2, $3) ON CONFLICT (tenant, recipient) DO UPDATE SET \
                         last_inbound_ms = GREATEST(COALESCE(recipients.last_inbound_ms, 0), excluded.last_inbound_ms)",
                    Backend::Sqlite => "INSERT INTO recipients (tenant, recipient, last_inbound_ms) \
                         VALUES ($1, $2, $3) ON CONFLICT (tenant, recipient) DO UPDATE SET \
                         last_inbound_ms = MAX(COALESCE(recipients.last_inbound_ms, 0), excluded.last_inbound_ms)",
                };
                sqlx::query(sql)
                    .bind(tenant.as_str())
                    .bind(to.as_str())
                    .bind(db(now_ms))
                    .execute(&mut *self.conn)
                    .await?;
                Ok(StoreReply::InboundRecorded)
            }
            StoreOp::GetRun { run } => self.get_run(run).await,
            StoreOp::ListRuns {
                status,
                filter,
                limit,
            } => self.list_runs(status, &filter, limit).await,
            StoreOp::Stats { now_ms } => self.stats(now_ms).await,
            StoreOp::Prune {
                retention_ms,
                max,
                now_ms,
            } => self.prune(retention_ms, max, now_ms).await,
            other => unreachable!("{} is a row op", other.name()),
        }
    }

    async fn put_flow(&mut self, tenant: TenantId, flow: Flow) -> Tx<StoreReply> {
        let body = serde_json::to_string(&flow).expect("a flow serializes");
        let existed = sqlx::query("SELECT 1 FROM flows WHERE tenant = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(flow.id.as_str())
            .fetch_optional(&mut *self.conn)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO flows (tenant, id, body) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body",
        )
        .bind(tenant.as_str())
        .bind(flow.id.as_str())
        .bind(body)
        .execute(&mut *self.conn)
        .await?;
        Ok(StoreReply::FlowPut { created: !existed })
    }

    async fn put_tenant(&mut self, tenant: Tenant) -> Tx<StoreReply> {
        assert!(
            tenant.id != TenantId::default_tenant(),
            "the default tenant is never stored"
        );
        let body = serde_json::to_string(&tenant).expect("a tenant serializes");
        let existed = sqlx::query("SELECT 1 FROM tenants WHERE id = $1")
            .bind(tenant.id.as_str())
            .fetch_optional(&mut *self.conn)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO tenants (id, body) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(tenant.id.as_str())
        .bind(body)
        .execute(&mut *self.conn)
        .await?;
        // New settings (a new token, say) end a pause.
        self.delete_pause(&tenant.id).await?;
        Ok(StoreReply::TenantPut { created: !existed })
    }

    /// Enqueues a run of consecutive `Enqueue` ops set-wise: one read of
    /// the trigger keys, one of the ids, one that locks the conversations'
    /// heads, then each op decided in order (a later op sees the runs and
    /// keys of the earlier ones), one insert of the runs and one of the keys.
    ///
    /// Every transaction here locks runs in id order (the holders' writes
    /// too), so two of them wait for each other at worst, never in a cycle.
    ///
    /// The heads are locked `FOR SHARE` against a concurrent finish: either
    /// the finish commits first (and this sees its promotion, or no head and
    /// makes its run the head) or this commits first (and the finish's
    /// promotion sees these runs).
    async fn enqueue(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let runs: Vec<(NewRun, u64)> = ops
            .into_iter()
            .map(|op| match op {
                StoreOp::Enqueue { run, now_ms } => {
                    assert!(!run.steps.is_empty(), "a run has at least one step");
                    (run, now_ms)
                }
                other => unreachable!("{} is not an enqueue", other.name()),
            })
            .collect();
        let sql = row_sql(self.backend);

        let keys: Vec<TriggerKeyRow> = runs
            .iter()
            .filter_map(|(run, _)| {
                run.trigger_key.as_ref().map(|key| TriggerKeyRow {
                    tenant: run.tenant.as_str().to_string(),
                    key: key.as_str().to_string(),
                    run_id: String::new(),
                })
            })
            .collect();
        let mut known: BTreeMap<(String, String), RunId> = BTreeMap::new();
        if !keys.is_empty() {
            let json = serde_json::to_string(&keys).expect("keys serialize");
            for row in sqlx::query(sql.find_trigger_keys)
                .bind(json)
                .fetch_all(&mut *self.conn)
                .await?
            {
                let id: Vec<u8> = row.try_get(2)?;
                known.insert((row.try_get(0)?, row.try_get(1)?), run_id(&id)?);
            }
        }

        let mut taken = BTreeSet::new();
        for row in sqlx::query(&sql.find_runs)
            .bind(hex_ids(runs.iter().map(|(run, _)| &run.id)))
            .fetch_all(&mut *self.conn)
            .await?
        {
            let id: Vec<u8> = row.try_get(0)?;
            taken.insert(run_id(&id)?);
        }

        let conversations: BTreeSet<(&str, &str)> = runs
            .iter()
            .map(|(run, _)| (run.tenant.as_str(), run.to.as_str()))
            .collect();
        let json = json_conversations(&conversations);
        let mut headed: BTreeSet<(String, String)> = BTreeSet::new();
        for row in sqlx::query(sql.lock_heads)
            .bind(json)
            .fetch_all(&mut *self.conn)
            .await?
        {
            headed.insert((row.try_get(0)?, row.try_get(1)?));
        }

        // Recipients who opted out of these tenants.
        let mut suppressed: BTreeMap<(String, String), Suppression> = BTreeMap::new();
        for row in sqlx::query(sql.find_suppressed)
            .bind(json_conversations(&conversations))
            .fetch_all(&mut *self.conn)
            .await?
        {
            suppressed.insert(
                (row.try_get(0)?, row.try_get(1)?),
                Suppression {
                    since_ms: un(row.try_get(2)?),
                    reason: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                },
            );
        }

        let mut replies = Vec::with_capacity(runs.len());
        let mut inserts = Vec::new();
        let mut new_keys = Vec::new();
        for (run, now_ms) in runs {
            let tenant = run.tenant.as_str().to_string();
            if let Some(key) = &run.trigger_key {
                if let Some(existing) = known.get(&(tenant.clone(), key.as_str().to_string())) {
                    replies.push(StoreReply::Enqueued {
                        run: *existing,
                        created: false,
                    });
                    continue;
                }
            }
            if let Some(s) = suppressed.get(&(tenant.clone(), run.to.as_str().to_string())) {
                replies.push(StoreReply::RecipientSuppressed(s.clone()));
                continue;
            }
            if taken.contains(&run.id) {
                replies.push(StoreReply::Conflict {
                    reason: format!("run {} already exists", run.id),
                });
                continue;
            }
            let is_head = headed.insert((tenant.clone(), run.to.as_str().to_string()));
            if is_head {
                self.notify = true;
            }
            let record = RunRecord::new(run, 0, now_ms);
            let id = hex::encode(record.id.0.as_bytes());
            taken.insert(record.id);
            if let Some(key) = &record.trigger_key {
                known.insert((tenant.clone(), key.clone()), record.id);
                new_keys.push(TriggerKeyRow {
                    tenant: tenant.clone(),
                    key: key.clone(),
                    run_id: id.clone(),
                });
            }
            inserts.push(RunInsert {
                id,
                tenant,
                flow: record.flow.as_str().to_string(),
                recipient: record.to.as_str().to_string(),
                steps: serde_json::to_string(&record.steps).expect("steps serialize"),
                step_count: record.steps.len() as i64,
                is_head,
                run_at_ms: db(record.run_at_ms),
                trigger_key: record.trigger_key.clone(),
                created_at_ms: db(now_ms),
            });
            replies.push(StoreReply::Enqueued {
                run: record.id,
                created: true,
            });
        }
        if !inserts.is_empty() {
            self.execute_json(sql.insert_runs, &inserts).await?;
        }
        if !new_keys.is_empty() {
            self.execute_json(sql.insert_trigger_keys, &new_keys)
                .await?;
        }
        Ok(replies)
    }

    async fn claim(
        &mut self,
        owner: WorkerId,
        max: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let max = max.min(oncesend_core::limits::MAX_CLAIM_BATCH);
        if max == 0 {
            return Ok(StoreReply::Claimed(Vec::new()));
        }
        let until = now_ms.saturating_add(lease_ms);
        let mut claimed: Vec<(u64, u64, ClaimedRun)> = match self.backend {
            Backend::Postgres => {
                // One statement. The CTE walks the partial index of heads
                // in due order and locks at most `max` of them, skipping
                // rows another claimer holds; the outer UPDATE re-checks
                // each row as it is now, so a row that changed since the
                // CTE read it is left alone.
                let rows = sqlx::query(
                    "WITH picked AS ( \
                         SELECT seq, status AS was, wait AS waited FROM runs \
                         WHERE is_head AND run_at_ms <= $1 \
                           AND (status IN ('pending', 'waiting') OR lease_until_ms <= $1) \
                           AND NOT EXISTS (SELECT 1 FROM sender_pauses p WHERE p.tenant = runs.tenant \
                             AND (p.probe_at_ms IS NULL OR p.probe_at_ms > $1)) \
                         ORDER BY run_at_ms, seq \
                         LIMIT $2 \
                         FOR NO KEY UPDATE SKIP LOCKED \
                     ) \
                     UPDATE runs SET status = 'leased', epoch = runs.epoch + 1, \
                         lease_owner = $3, lease_until_ms = $4, wait = NULL \
                     FROM picked \
                     WHERE runs.seq = picked.seq AND runs.is_head \
                       AND ((runs.status IN ('pending', 'waiting') AND runs.run_at_ms <= $1) \
                         OR (runs.status = 'leased' AND runs.lease_until_ms <= $1)) \
                     RETURNING runs.seq, runs.id, runs.tenant, runs.flow, runs.recipient, \
                         runs.steps, runs.next_step, runs.epoch, runs.attempts, runs.run_at_ms, \
                         CASE WHEN picked.was = 'leased' THEN 1 ELSE 0 END AS rescued, \
                         CASE WHEN picked.was = 'waiting' THEN picked.waited END AS waited",
                )
                .bind(db(now_ms))
                .bind(max as i64)
                .bind(owner.as_str())
                .bind(db(until))
                .fetch_all(&mut *self.conn)
                .await?;
                let rows = rows
                    .iter()
                    .map(|row| {
                        let steps: String = row.try_get("steps")?;
                        let id: Vec<u8> = row.try_get("id")?;
                        let claimed = ClaimedRun {
                            id: run_id(&id)?,
                            tenant: TenantId::new(row.try_get::<String, _>("tenant")?)
                                .map_err(|e| decode_err("tenant", e))?,
                            flow: FlowId::new(row.try_get::<String, _>("flow")?)
                                .map_err(|e| decode_err("flow", e))?,
                            to: Recipient::parse(&row.try_get::<String, _>("recipient")?)
                                .map_err(|e| decode_err("recipient", e))?,
                            steps: serde_json::from_str(&steps)
                                .map_err(|e| decode_err("steps", e))?,
                            cursor: un(row.try_get("next_step")?) as u32,
                            epoch: un(row.try_get("epoch")?),
                            lease_until_ms: until,
                            attempts: un(row.try_get("attempts")?) as u32,
                            rescued: row.try_get::<i64, _>("rescued")? != 0,
                            waited: match row.try_get::<Option<String>, _>("waited")? {
                                Some(w) => {
                                    Some(RunWait::parse(&w).ok_or_else(|| decode_err("wait", &w))?)
                                }
                                None => None,
                            },
                        };
                        Ok((
                            un(row.try_get("run_at_ms")?),
                            un(row.try_get("seq")?),
                            claimed,
                        ))
                    })
                    .collect::<Tx<Vec<_>>>()?;
                // A step whose wait for the previous step's status ran out
                // goes anyway, and its run says so (rare: one more write).
                for (_, _, c) in &rows {
                    if let Some(RunWait::After(after)) = c.waited {
                        let note = rules::after_expired_note(
                            c.cursor,
                            after,
                            c.steps[c.cursor as usize].after_timeout(),
                        );
                        sqlx::query("UPDATE runs SET note = $1 WHERE id = $2")
                            .bind(note)
                            .bind(c.id.0.as_bytes().to_vec())
                            .execute(&mut *self.conn)
                            .await?;
                    }
                }
                rows
            }
            Backend::Sqlite => {
                // The one writer holds the database under BEGIN IMMEDIATE:
                // read the due heads, lease them with the shared rules,
                // write them back.
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE is_head AND run_at_ms <= $1 \
                       AND (status IN ('pending', 'waiting') OR lease_until_ms <= $1) \
                       AND NOT EXISTS (SELECT 1 FROM sender_pauses p WHERE p.tenant = runs.tenant \
                         AND (p.probe_at_ms IS NULL OR p.probe_at_ms > $1)) \
                     ORDER BY run_at_ms, seq LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(db(now_ms))
                    .bind(max as i64)
                    .fetch_all(&mut *self.conn)
                    .await?;
                let mut before = Vec::with_capacity(rows.len());
                let mut after = Vec::with_capacity(rows.len());
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let record = run_from_row(row)?;
                    let mut leased = record.clone();
                    let claimed = leased.claim(&owner, lease_ms, now_ms);
                    out.push((record.run_at_ms, record.seq, claimed));
                    before.push(record);
                    after.push(leased);
                }
                let before: Vec<&RunRecord> = before.iter().collect();
                let after: Vec<&RunRecord> = after.iter().collect();
                self.write_runs(&before, &after).await?;
                out
            }
        };
        claimed.sort_by_key(|(run_at, seq, _)| (*run_at, *seq));
        Ok(StoreReply::Claimed(
            claimed.into_iter().map(|(_, _, c)| c).collect(),
        ))
    }

    /// Loads runs by id, locked for the rest of the transaction when
    /// `lock` (SQLite's one writer already holds the database).
    async fn load_runs(
        &mut self,
        ids: &BTreeSet<RunId>,
        lock: bool,
    ) -> Tx<BTreeMap<RunId, RunRecord>> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let sql = row_sql(self.backend);
        let rows = sqlx::query(if lock {
            &sql.load_runs_locked
        } else {
            &sql.load_runs
        })
        .bind(hex_ids(ids.iter()))
        .fetch_all(&mut *self.conn)
        .await?;
        for row in rows {
            let record = run_from_row(&row)?;
            out.insert(record.id, record);
        }
        Ok(out)
    }

    /// Loads the ledger rows of these runs, locked when `lock`.
    async fn load_deliveries(
        &mut self,
        runs: &BTreeSet<RunId>,
        lock: bool,
    ) -> Tx<BTreeMap<DeliveryKey, DeliveryRecord>> {
        let mut out = BTreeMap::new();
        if runs.is_empty() {
            return Ok(out);
        }
        let sql = row_sql(self.backend);
        let rows = sqlx::query(if lock {
            &sql.load_deliveries_locked
        } else {
            &sql.load_deliveries
        })
        .bind(hex_ids(runs.iter()))
        .fetch_all(&mut *self.conn)
        .await?;
        for row in rows {
            let record = delivery_from_row(&row)?;
            out.insert(record.key, record);
        }
        Ok(out)
    }

    /// A run of consecutive per-row ops: read every row they touch once,
    /// decide each op with the core's rules in order, write back what
    /// changed, and promote the next run of every conversation whose head
    /// finished (or give a run an operator sent on again its place).
    async fn rows(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let run_ids: BTreeSet<RunId> = ops.iter().filter_map(rules::row_op_run).collect();
        let before_runs = self.load_runs(&run_ids, true).await?;
        let ledger_runs: BTreeSet<RunId> = ops
            .iter()
            .filter_map(|op| {
                let id = rules::row_op_run(op)?;
                rules::needs_ledger(op, before_runs.get(&id)).then_some(id)
            })
            .collect();
        let before_ledger = self.load_deliveries(&ledger_runs, true).await?;
        // The pauses of the tenants whose sends begin here (none at all in
        // the common case, and then no query).
        let begin_tenants: Vec<TenantId> = ops
            .iter()
            .filter(|op| rules::needs_pause(op))
            .filter_map(|op| before_runs.get(&rules::row_op_run(op)?))
            .map(|r| r.tenant.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let before_pauses = if begin_tenants.is_empty() {
            BTreeMap::new()
        } else {
            self.load_pauses(&begin_tenants).await?
        };
        // The opt-outs of the recipients sends begin for, read in this
        // transaction (locked on PostgreSQL, so an opt-out commits
        // before or after, never beside, the `sending` it would stop).
        let begin_conversations: BTreeSet<(&str, &str)> = ops
            .iter()
            .filter(|op| rules::needs_pause(op))
            .filter_map(|op| before_runs.get(&rules::row_op_run(op)?))
            .map(|r| (r.tenant.as_str(), r.to.as_str()))
            .collect();
        let mut opted_out: BTreeSet<(String, String)> = BTreeSet::new();
        if !begin_conversations.is_empty() {
            let sql = row_sql(self.backend);
            for row in sqlx::query(sql.find_suppressed_locked)
                .bind(json_conversations(&begin_conversations))
                .fetch_all(&mut *self.conn)
                .await?
            {
                opted_out.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        let suppressed = |t: &TenantId, to: &Recipient| {
            opted_out.contains(&(t.as_str().to_string(), to.as_str().to_string()))
        };
        // Runs an operator may send on again: the other unfinished runs of
        // their conversations, as they stand before this batch; the batch's
        // own changes are read from the rows as each op comes.
        let mut others: BTreeMap<RunId, Vec<RunId>> = BTreeMap::new();
        for op in &ops {
            if let StoreOp::RetryRun { run, .. }
            | StoreOp::ResolveUnknown {
                key: DeliveryKey { run, .. },
                ..
            } = op
            {
                if let Some(r) = before_runs.get(run) {
                    if !others.contains_key(run) {
                        let ids = self.other_open(r).await?;
                        others.insert(*run, ids);
                    }
                }
            }
        }
        let mut pauses = before_pauses.clone();
        let mut runs = before_runs.clone();
        let mut ledger = before_ledger.clone();
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            let crowded = rules::row_op_run(&op)
                .and_then(|id| Some((runs.get(&id)?, others.get(&id)?)))
                .is_some_and(|(me, ids)| {
                    let open = |r: &RunRecord| !r.status.is_terminal();
                    ids.iter().any(|id| runs.get(id).is_none_or(open))
                        || runs.values().any(|r| {
                            r.id != me.id && r.tenant == me.tenant && r.to == me.to && open(r)
                        })
                });
            let mut rows = rules::Rows {
                runs: &mut runs,
                ledger: &mut ledger,
                pauses: &mut pauses,
                suppressed: &suppressed,
            };
            replies.push(rules::apply_row_op(&mut rows, GUARDS, op, &|_| crowded));
        }

        let mut old = Vec::new();
        let mut new = Vec::new();
        let mut finished = BTreeSet::new();
        for (id, after) in &runs {
            let before = &before_runs[id];
            if before != after {
                if before.status.is_terminal() != after.status.is_terminal() {
                    // A head that finished hands its place on; a run sent
                    // on again takes the empty place.
                    finished.insert((after.tenant.clone(), after.to.clone()));
                }
                if after.status == RunStatus::Pending && before.status != RunStatus::Pending {
                    // Released for a delay or a retry: due again later.
                    self.notify = true;
                }
                old.push(before);
                new.push(after);
            }
        }
        self.write_runs(&old, &new).await?;
        let changed: Vec<&DeliveryRecord> = ledger
            .iter()
            .filter(|(key, rec)| before_ledger.get(key) != Some(rec))
            .map(|(_, rec)| rec)
            .collect();
        self.write_deliveries(&changed).await?;
        for (tenant, p) in &pauses {
            if before_pauses.get(tenant) != Some(p) {
                self.write_pause(tenant, p).await?;
            }
        }
        if !finished.is_empty() {
            self.promote(&finished).await?;
        }
        Ok(replies)
    }

    /// Records an opt-out and cancels the recipient's unfinished runs, in
    /// this transaction: a send begun after it commits finds its run
    /// cancelled and is refused by the fence.
    async fn suppress(
        &mut self,
        tenant: TenantId,
        to: Recipient,
        reason: String,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let newly = sqlx::query(
            "INSERT INTO recipients (tenant, recipient, suppressed_since_ms, suppressed_reason) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, recipient) DO UPDATE SET \
             suppressed_since_ms = excluded.suppressed_since_ms, \
             suppressed_reason = excluded.suppressed_reason \
             WHERE recipients.suppressed_since_ms IS NULL",
        )
        .bind(tenant.as_str())
        .bind(to.as_str())
        .bind(db(now_ms))
        .bind(oncesend_core::limits::clip_reason(&reason))
        .execute(&mut *self.conn)
        .await?
        .rows_affected()
            > 0;
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE tenant = $1 AND recipient = $2 \
             AND status IN ('pending', 'leased', 'waiting') ORDER BY id",
        )
        .bind(tenant.as_str())
        .bind(to.as_str())
        .fetch_all(&mut *self.conn)
        .await?;
        let ids = rows
            .iter()
            .map(|row| run_id(&row.try_get::<Vec<u8>, _>(0)?))
            .collect::<Tx<BTreeSet<RunId>>>()?;
        let before = self.load_runs(&ids, true).await?;
        let mut after = before.clone();
        let mut cancelled = 0;
        for row in after.values_mut() {
            cancelled += u32::from(rules::opt_out(row, now_ms));
        }
        let (old, new): (Vec<&RunRecord>, Vec<&RunRecord>) = before
            .values()
            .zip(after.values())
            .filter(|(b, a)| b != a)
            .unzip();
        self.write_runs(&old, &new).await?;
        Ok(StoreReply::Suppressed { newly, cancelled })
    }

    /// The unfinished runs of `run`'s conversation besides it.
    async fn other_open(&mut self, run: &RunRecord) -> Tx<Vec<RunId>> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE tenant = $1 AND recipient = $2 AND id <> $3 \
             AND status IN ('pending', 'leased', 'waiting')",
        )
        .bind(run.tenant.as_str())
        .bind(run.to.as_str())
        .bind(run.id.0.as_bytes().to_vec())
        .fetch_all(&mut *self.conn)
        .await?;
        rows.iter()
            .map(|row| run_id(&row.try_get::<Vec<u8>, _>(0)?))
            .collect()
    }

    /// Runs a statement that takes its rows as one JSON parameter; answers
    /// how many rows it changed.
    async fn execute_json<T: serde::Serialize>(&mut self, sql: &str, rows: &[T]) -> Tx<u64> {
        let json = serde_json::to_string(rows).expect("rows serialize to JSON");
        let done = sqlx::query(sql).bind(json).execute(&mut *self.conn).await?;
        Ok(done.rows_affected())
    }

    /// Writes changed runs back, each conditional on the epoch it was read
    /// with. A run that became terminal stops being its conversation's head.
    async fn write_runs(&mut self, before: &[&RunRecord], after: &[&RunRecord]) -> Tx<()> {
        if after.is_empty() {
            return Ok(());
        }
        let rows: Vec<RunWrite> = before
            .iter()
            .zip(after)
            .map(|(o, n)| RunWrite {
                id: hex::encode(n.id.0.as_bytes()),
                read_epoch: db(o.epoch),
                status: n.status.as_str(),
                next_step: n.cursor as i64,
                run_at_ms: db(n.run_at_ms),
                attempts: n.attempts as i64,
                epoch: db(n.epoch),
                lease_owner: n.lease.as_ref().map(|l| l.owner.as_str().to_string()),
                lease_until_ms: n.lease.as_ref().map(|l| db(l.until_ms)),
                reason: n.reason.clone(),
                finished_at_ms: n.finished_at_ms.map(db),
                wait: n.wait.map(RunWait::as_str),
                note: n.note.clone(),
            })
            .collect();
        let written = self
            .execute_json(row_sql(self.backend).write_runs, &rows)
            .await?;
        if written != after.len() as u64 {
            return Err(TxError::Retry(format!(
                "{written} of {} runs matched the epoch they were read with",
                after.len()
            )));
        }
        Ok(())
    }

    /// Inserts or updates ledger rows.
    async fn write_deliveries(&mut self, rows: &[&DeliveryRecord]) -> Tx<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<DeliveryWrite> = rows
            .iter()
            .map(|rec| {
                let (deadline_ms, retryable) = match rec.state {
                    DeliveryState::Sending { deadline_ms } => (Some(db(deadline_ms)), None),
                    DeliveryState::Failed { retryable } => (None, Some(retryable as i64)),
                    _ => (None, None),
                };
                DeliveryWrite {
                    run_id: hex::encode(rec.key.run.0.as_bytes()),
                    step: rec.key.step as i64,
                    state: rec.state.as_str(),
                    deadline_ms,
                    retryable,
                    epoch: db(rec.epoch),
                    attempts: rec.attempts as i64,
                    provider_message_id: rec.provider_message_id.clone(),
                    last_error: rec.last_error.clone(),
                    resolved_by: rec.resolved_by.clone(),
                    resolved_at_ms: rec.resolved_at_ms.map(db),
                }
            })
            .collect();
        self.execute_json(&row_sql(self.backend).write_deliveries, &rows)
            .await?;
        Ok(())
    }

    /// Makes the oldest waiting run of each conversation its head, where
    /// the conversation has none.
    async fn promote(&mut self, conversations: &BTreeSet<(TenantId, Recipient)>) -> Tx<()> {
        #[derive(serde::Serialize)]
        struct Conversation<'a> {
            tenant: &'a str,
            recipient: &'a str,
        }
        let json = serde_json::to_string(
            &conversations
                .iter()
                .map(|(tenant, to)| Conversation {
                    tenant: tenant.as_str(),
                    recipient: to.as_str(),
                })
                .collect::<Vec<_>>(),
        )
        .expect("conversations serialize");
        // Under PostgreSQL's read committed, a waiting run cancelled or
        // promoted elsewhere while this ran is skipped without promoting the
        // one after it; the statement counts what it meant to promote, and
        // when it fell short, a fresh pass (a new snapshot) looks again.
        // SQLite's one writer sees no concurrent change: one pass does.
        if self.backend == Backend::Sqlite {
            let promoted = sqlx::query(row_sql(self.backend).promote)
                .bind(json)
                .execute(&mut *self.conn)
                .await?
                .rows_affected();
            if promoted > 0 {
                self.notify = true;
            }
            return Ok(());
        }
        for pass in 0.. {
            let row = sqlx::query(row_sql(self.backend).promote)
                .bind(json.clone())
                .fetch_one(&mut *self.conn)
                .await?;
            let wanted: i64 = row.try_get(0)?;
            let promoted: i64 = row.try_get(1)?;
            if promoted > 0 {
                self.notify = true;
            }
            if promoted >= wanted {
                break;
            }
            if pass >= 4 {
                return Err(TxError::Retry(format!(
                    "{} conversations still have no head",
                    wanted - promoted
                )));
            }
        }
        Ok(())
    }

    /// The pauses of `tenants` (absent: active), locked for the rest of
    /// the transaction on PostgreSQL, so a probe is taken once.
    async fn load_pauses(&mut self, tenants: &[TenantId]) -> Tx<BTreeMap<TenantId, SenderPause>> {
        let list = serde_json::to_string(&tenants.iter().map(TenantId::as_str).collect::<Vec<_>>())
            .expect("names serialize");
        let sql = match self.backend {
            Backend::Postgres => format!(
                "SELECT {PAUSE_COLUMNS} FROM sender_pauses \
                 WHERE tenant IN (SELECT jsonb_array_elements_text($1::jsonb)) FOR UPDATE"
            ),
            Backend::Sqlite => format!(
                "SELECT {PAUSE_COLUMNS} FROM sender_pauses \
                 WHERE tenant IN (SELECT value FROM json_each($1))"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(list)
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter().map(pause_from_row).collect()
    }

    async fn write_pause(&mut self, tenant: &TenantId, p: &SenderPause) -> Tx<()> {
        sqlx::query(
            "INSERT INTO sender_pauses (tenant, reason, code, since_ms, probe_at_ms, probes, settings) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant) DO UPDATE SET reason = excluded.reason, code = excluded.code, \
                 since_ms = excluded.since_ms, probe_at_ms = excluded.probe_at_ms, \
                 probes = excluded.probes, settings = excluded.settings",
        )
        .bind(tenant.as_str())
        .bind(p.reason.as_str())
        .bind(p.code)
        .bind(db(p.since_ms))
        .bind(p.probe_at_ms.map(db))
        .bind(i64::from(p.probes))
        .bind(p.settings.as_deref())
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    /// Ends a tenant's pause; answers whether it had one.
    async fn delete_pause(&mut self, tenant: &TenantId) -> Tx<bool> {
        let done = sqlx::query("DELETE FROM sender_pauses WHERE tenant = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_run(&mut self, run: RunId) -> Tx<StoreReply> {
        let ids = BTreeSet::from([run]);
        let Some(record) = self.load_runs(&ids, false).await?.remove(&run) else {
            return Ok(StoreReply::NotFound);
        };
        let mut ledger = self.load_deliveries(&ids, false).await?;
        let deliveries = (0..record.steps.len() as u32)
            .map(|step| ledger.remove(&DeliveryKey { run, step }))
            .collect();
        Ok(StoreReply::Run(record.view(deliveries)))
    }

    async fn list_runs(
        &mut self,
        status: Option<RunStatus>,
        filter: &RunFilter,
        limit: u32,
    ) -> Tx<StoreReply> {
        let mut conds: Vec<String> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut nums: Vec<i64> = Vec::new();
        let mark = |conds: &mut Vec<String>, sql: &dyn Fn(usize) -> String| {
            let n = conds.len() + 1;
            conds.push(sql(n));
        };
        // Text conditions first, then numbers, each bound in that order.
        if let Some(s) = status {
            mark(&mut conds, &|n| format!("status = ${n}"));
            texts.push(s.as_str().to_string());
        }
        if let Some(f) = &filter.flow {
            mark(&mut conds, &|n| format!("flow = ${n}"));
            texts.push(f.as_str().to_string());
        }
        if let Some(t) = &filter.tenant {
            mark(&mut conds, &|n| format!("tenant = ${n}"));
            texts.push(t.as_str().to_string());
        }
        if let Some(r) = &filter.reason_contains {
            let backend = self.backend;
            mark(&mut conds, &|n| match backend {
                Backend::Postgres => format!("strpos(reason, ${n}) > 0"),
                Backend::Sqlite => format!("instr(reason, ${n}) > 0"),
            });
            texts.push(r.clone());
        }
        if let Some(t) = filter.created_before_ms {
            mark(&mut conds, &|n| format!("created_at_ms < ${n}"));
            nums.push(db(t));
        }
        if let Some(t) = filter.created_after_ms {
            mark(&mut conds, &|n| format!("created_at_ms > ${n}"));
            nums.push(db(t));
        }
        let limit_mark = conds.len() + 1;
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs {where_} ORDER BY seq DESC LIMIT ${limit_mark}"
        );
        let mut q = sqlx::query(&sql);
        for t in texts {
            q = q.bind(t);
        }
        for n in nums {
            q = q.bind(n);
        }
        let rows = q.bind(limit as i64).fetch_all(&mut *self.conn).await?;
        let views = rows
            .iter()
            .map(|row| Ok(run_from_row(row)?.view(Vec::new())))
            .collect::<Tx<Vec<_>>>()?;
        Ok(StoreReply::Runs(views))
    }

    async fn stats(&mut self, now_ms: u64) -> Tx<StoreReply> {
        // Open runs only, through the two partial indexes that hold them:
        // the heads, and the runs waiting behind them.
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN status = 'pending' THEN 1 END), \
                    COUNT(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN 1 END), \
                    COUNT(CASE WHEN status = 'leased' THEN 1 END), \
                    MIN(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN run_at_ms END), \
                    COUNT(CASE WHEN status = 'waiting' THEN 1 END) \
             FROM (SELECT status, run_at_ms FROM runs WHERE is_head \
                   UNION ALL \
                   SELECT status, run_at_ms FROM runs WHERE status = 'pending' AND NOT is_head) o",
        )
        .bind(db(now_ms))
        .fetch_one(&mut *self.conn)
        .await?;
        let oldest: Option<i64> = row.try_get(3)?;
        let unknown: i64 = sqlx::query("SELECT COUNT(*) FROM deliveries WHERE state = 'unknown'")
            .fetch_one(&mut *self.conn)
            .await?
            .try_get(0)?;
        Ok(StoreReply::Stats(QueueStats {
            pending: un(row.try_get(0)?),
            due: un(row.try_get(1)?),
            leased: un(row.try_get(2)?),
            waiting: un(row.try_get(4)?),
            oldest_due_age_ms: oldest.map_or(0, |t| now_ms.saturating_sub(un(t))),
            unknown_deliveries: un(unknown),
        }))
    }

    async fn prune(&mut self, retention_ms: u64, max: u32, now_ms: u64) -> Tx<StoreReply> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let rows = sqlx::query(
            "SELECT id, tenant, trigger_key FROM runs \
             WHERE finished_at_ms IS NOT NULL AND finished_at_ms < $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(db(cutoff))
        .bind(max as i64)
        .fetch_all(&mut *self.conn)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut keys = Vec::new();
        for row in &rows {
            ids.push(row.try_get::<Vec<u8>, _>(0)?);
            if let Some(key) = row.try_get::<Option<String>, _>(2)? {
                keys.push((row.try_get::<String, _>(1)?, key));
            }
        }
        for chunk in ids.chunks(CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            for table in ["deliveries WHERE run_id", "runs WHERE id"] {
                let sql = format!("DELETE FROM {table} IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q.execute(&mut *self.conn).await?;
            }
        }
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "WITH k (tenant, key) AS (VALUES {}) \
                 DELETE FROM trigger_keys WHERE (tenant, key) IN (SELECT tenant, key FROM k)",
                tuples(chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (tenant, key) in chunk {
                q = q.bind(tenant.clone()).bind(key.clone());
            }
            q.execute(&mut *self.conn).await?;
        }
        Ok(StoreReply::Pruned {
            runs: ids.len() as u32,
        })
    }
}
