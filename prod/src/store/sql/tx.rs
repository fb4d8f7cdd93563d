//! Why a transaction did not commit, and what its caller is told.

use oncesend_core::store::StoreUnavailable;

/// Why a transaction did not commit.
pub(super) enum TxError {
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

pub(super) type Tx<T> = Result<T, TxError>;

pub(super) fn unavailable(e: sqlx::Error) -> StoreUnavailable {
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
