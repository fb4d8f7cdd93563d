//! Opening the database a `DATABASE_URL` names.
//!
//! `sqlite://…` (the default) and `postgres://…` select the SQL stores.
//! `memory:` keeps everything in this process, for trials and tests; it
//! cannot be shared by two processes and is lost when the process exits.

use crate::clock::TokioClock;
use crate::coalesce::CoalesceOptions;
use crate::store::group::GroupCommit;
use crate::store::sql::{Backend, SqlClock, SqlOptions, SqlStore};
use crate::store::{MemoryStore, Store};
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{MemStore, StoreOp, StoreReply};

/// The database URL used when none is given.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://oncesend.db?mode=rwc";

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A URL this build cannot open.
    #[error("DATABASE_URL {url:?}: {why}")]
    Unsupported {
        /// The URL, with any password hidden.
        url: String,
        /// Why, and what to do.
        why: String,
    },
    /// The database did not answer, or refused the connection.
    #[error("cannot reach the database at {url}: {why}")]
    Unreachable {
        /// The URL, with any password hidden.
        url: String,
        /// The driver's error.
        why: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the database at {url}: {why}")]
    Migrate {
        /// The URL, with any password hidden.
        url: String,
        /// What failed.
        why: String,
    },
}

impl OpenError {
    /// True when trying again later may succeed (the server is down).
    pub fn is_transient(&self) -> bool {
        !matches!(self, OpenError::Unsupported { .. })
    }
}

/// Hides the password in `postgres://user:secret@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The store behind a `DATABASE_URL`.
#[derive(Clone)]
pub enum Db {
    /// In this process only.
    Memory(MemoryStore),
    /// SQLite or PostgreSQL, with concurrent writes group-committed.
    Sql(GroupCommit<SqlStore>),
}

/// Most writes in one group-committed transaction.
pub const GROUP_MAX_BATCH: usize = 512;

/// How the SQL stores group concurrent writes: SQLite has one writer, so
/// one transaction at a time gathers the most; PostgreSQL overlaps a few
/// so one batch's commit flush does not leave the server idle.
pub fn group_options(backend: Backend) -> CoalesceOptions {
    CoalesceOptions {
        max_batch: GROUP_MAX_BATCH,
        in_flight: match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 3,
        },
    }
}

impl Db {
    /// Opens and migrates the database `url` names, on the database's own
    /// clock. `memory:` keeps everything in this process.
    pub async fn open(url: &str, _clock: TokioClock) -> Result<Self, OpenError> {
        if url == "memory:" || url == "memory://" {
            return Ok(Db::Memory(MemoryStore::new(MemStore::new())));
        }
        if Backend::of_url(url).is_none() {
            return Err(OpenError::Unsupported {
                url: redact(url),
                why: "expected sqlite://PATH?mode=rwc, postgres://USER@HOST/DB or memory:"
                    .to_string(),
            });
        }
        let options = SqlOptions {
            clock: SqlClock::Database,
            listen: true,
            ..SqlOptions::default()
        };
        let store = SqlStore::connect(url, options)
            .await
            .map_err(|e| OpenError::Unreachable {
                url: redact(url),
                why: e.to_string(),
            })?;
        store.migrate().await.map_err(|e| OpenError::Migrate {
            url: redact(url),
            why: e.0,
        })?;
        match store.server_warnings().await {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!(db = %redact(url), "{warning}");
                }
            }
            Err(e) => {
                tracing::warn!(db = %redact(url), error = %e, "cannot read the server's settings")
            }
        }
        let group = group_options(store.backend());
        Ok(Db::Sql(GroupCommit::new(store, group)))
    }

    /// Opens the database, waiting for it with a log line per attempt when
    /// it is down, until it answers or `give_up_after` passes.
    pub async fn open_patiently(
        url: &str,
        clock: TokioClock,
        give_up_after: std::time::Duration,
    ) -> Result<Self, OpenError> {
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut wait = std::time::Duration::from_millis(250);
        loop {
            match Db::open(url, clock.clone()).await {
                Ok(db) => return Ok(db),
                Err(e) if e.is_transient() && tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database unavailable; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the database for a daemon: waits for it as long as it takes,
    /// logging each attempt, unless `shutdown` resolves first (`None`).
    pub async fn open_for_daemon(
        url: &str,
        clock: TokioClock,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Option<Self>, OpenError> {
        const FOREVER: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
        tokio::select! {
            db = Db::open_patiently(url, clock, FOREVER) => db.map(Some),
            _ = shutdown => Ok(None),
        }
    }

    /// True when the data lives only in this process.
    pub fn is_memory(&self) -> bool {
        matches!(self, Db::Memory(_))
    }

    /// `memory`, `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Memory(_) => "memory",
            Db::Sql(s) => s.inner().backend().name(),
        }
    }

    /// Notified when work is enqueued elsewhere (PostgreSQL only).
    pub fn wakeups(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            Db::Memory(_) => None,
            Db::Sql(s) => Some(s.inner().wakeups()),
        }
    }

    /// Brings the schema up to date (nothing to do in memory).
    pub async fn migrate(&self) -> Result<(), StoreUnavailable> {
        match self {
            Db::Memory(_) => Ok(()),
            Db::Sql(s) => s.inner().migrate().await,
        }
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreUnavailable> {
        match self {
            Db::Memory(_) => Ok(()),
            Db::Sql(s) => s.inner().ping().await,
        }
    }

    /// Transactions the enqueue lane of the group commit has begun so far
    /// (0 in memory).
    pub fn enqueue_transactions(&self) -> u64 {
        match self {
            Db::Memory(_) => 0,
            Db::Sql(s) => s.enqueue_batches(),
        }
    }

    /// Transactions the SQL store has committed so far (`None` in memory,
    /// where every call is its own).
    pub fn transactions(&self) -> Option<u64> {
        match self {
            Db::Memory(_) => None,
            Db::Sql(s) => Some(s.inner().transactions()),
        }
    }
}

impl Store for Db {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        match self {
            Db::Memory(s) => s.apply(op).await,
            Db::Sql(s) => s.apply(op).await,
        }
    }

    async fn apply_batch(&self, ops: Vec<StoreOp>) -> Result<Vec<StoreReply>, StoreUnavailable> {
        match self {
            Db::Memory(s) => s.apply_batch(ops).await,
            Db::Sql(s) => s.apply_batch(ops).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }
}
