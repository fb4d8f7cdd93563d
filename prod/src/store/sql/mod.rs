//! The storage contract on SQLite and PostgreSQL, through `sqlx`.
//!
//! One implementation serves both databases (sqlx's `Any` driver, `$n`
//! placeholders in both); the few statements that must differ say so.
//!
//! What an op does to one run or one ledger row is decided by the core's
//! [`rules`](oncesend_core::store::rules), on rows loaded under lock and
//! written back when changed, so a SQL store cannot drift from the model on
//! fencing, retried writes or the ledger. What spans rows is SQL's own and
//! is held to the model by the differential tests:
//!
//! - **Claims.** On PostgreSQL one statement: a CTE picks the claimable heads
//!   in due order `FOR NO KEY UPDATE SKIP LOCKED` with the `LIMIT` inside it,
//!   and the outer `UPDATE` re-checks each row, bumps its epoch, sets the
//!   lease and returns it. On SQLite the same pick and write run under
//!   `BEGIN IMMEDIATE` on the one writer connection.
//! - **One run at a time per conversation.** Only a conversation's head is
//!   claimable. On PostgreSQL the heads are a narrow table of their own
//!   (`heads`, one row per conversation with unfinished runs, its primary
//!   key the conversation) holding the head run's claim state, so a claim
//!   writes one small row and never the run's; the view `runs_now` overlays
//!   it on `runs`. On SQLite a head is a flag on its run, with a partial
//!   unique index, and a leased run must be the head (a CHECK). Either way
//!   two leased runs in one conversation cannot be stored at all. The
//!   transaction that finishes a head promotes the next run.
//! - **Finishes in place.** On PostgreSQL no index of `runs` names a column
//!   a claim, a step or a finish writes, so each is a heap-only update. The
//!   finished runs are listed by finish time in `finished_runs` (for
//!   pruning and the finished counts), written by the same statement as
//!   the finish; promotion walks a conversation's runs by recipient from
//!   the head that finished.
//! - **Fencing.** Holder writes load their run `FOR UPDATE` (on PostgreSQL
//!   with its `heads` row), and the write back is conditional on the epoch
//!   that was read (a head's in `heads`): a row count other than the number
//!   of rows written aborts the transaction.
//! - **Batches.** Consecutive per-row ops of one [`Store::apply_batch`] call
//!   are applied with one read and one write per table, in one transaction.
//!
//! # Where the SQL is
//!
//! Every statement with a fixed text is a file of its own under
//! `statements/` (`common/` when both databases take the same text,
//! `postgres/` or `sqlite/` otherwise), included at compile time by
//! `statements.rs` and named there after its file. Statements whose shape
//! depends on the call (a filter's conditions, one placeholder per row of a
//! chunk) keep their fixed text in a file too, with a `{marker}` that a
//! small builder beside the code that runs it replaces; nothing else
//! assembles SQL. `benches/pgbench/run.sh` runs the PostgreSQL claim and
//! write-back files as they are, so the raw-SQL floor measures these texts.
//!
//! # The modules
//!
//! `connect` opens the pool, migrates and listens; `batch` splits a
//! transaction's ops and sends each to the module that applies it:
//! `claim`, `rows` (holders' writes, the ledger, promotion),
//! `enqueue`, `tenants` (flows, tenants, sender pauses),
//! `recipients` (opt-outs, inbound), `read` (runs and queue figures)
//! and `prune`. `codec` turns rows into records and records into
//! parameters.

mod batch;
mod claim;
mod codec;
mod connect;
mod enqueue;
mod prune;
mod read;
mod recipients;
mod rows;
mod statements;
mod tenants;
mod tx;

use crate::store::Store;
use batch::Batch;
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{Guards, StoreOp, StoreReply};
use sqlx::{AnyConnection, AnyPool, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tx::{unavailable, Tx, TxError};

/// The channel enqueues notify on PostgreSQL.
pub const NOTIFY_CHANNEL: &str = "oncesend_runs";

/// Every table the store keeps.
pub const TABLES: [&str; 8] = [
    "runs",
    "run_events",
    "deliveries",
    "trigger_keys",
    "flows",
    "tenants",
    "sender_pauses",
    "recipients",
];

/// Tables only PostgreSQL keeps: its conversations' heads, which SQLite
/// keeps as a flag on `runs`, its list of finished runs by finish time,
/// which SQLite reads off an index of `runs`, and its list of ledger rows
/// whose outcome is unknown, which SQLite reads off an index of
/// `deliveries`.
pub const POSTGRES_TABLES: [&str; 3] = ["heads", "finished_runs", "unknown_deliveries"];

/// SQL stores never run without their guards.
const GUARDS: Guards = Guards {
    fencing: true,
    ledger: true,
};

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
    /// Transactions that lost a race and were tried again.
    retries: AtomicU64,
    steps: codec::StepsCache,
}

impl SqlStore {
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

    /// Transactions tried again after losing a race (a serialization
    /// failure, a deadlock, a unique key taken meanwhile).
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Every table this store keeps.
    pub fn tables(&self) -> Vec<&'static str> {
        let mut tables = TABLES.to_vec();
        if self.inner.backend == Backend::Postgres {
            tables.extend(POSTGRES_TABLES);
        }
        tables
    }

    /// The pool, for tests that inspect the tables.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    async fn transaction(&self, ops: &[StoreOp]) -> Tx<Vec<StoreReply>> {
        let sql = statements::of(self.inner.backend);
        let mut tx = self.inner.pool.begin_with(sql.begin).await?;
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
            heads: Default::default(),
            steps: &self.inner.steps,
        };
        let replies = run.apply_all(ops).await?;
        if run.notify && self.inner.backend == Backend::Postgres {
            sqlx::query(statements::postgres::NOTIFY)
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
                    self.inner.retries.fetch_add(1, Ordering::Relaxed);
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

/// The database's clock, in ms since the Unix epoch.
async fn db_now(conn: &mut AnyConnection, backend: Backend) -> Tx<u64> {
    let now: i64 = sqlx::query(statements::of(backend).now)
        .fetch_one(conn)
        .await?
        .try_get(0)?;
    Ok(now.max(0) as u64)
}
