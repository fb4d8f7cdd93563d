//! Opening the database a `DATABASE_URL` names.
//!
//! `memory:` keeps everything in this process (for `oncesend up` trials and
//! tests); it cannot be shared by two processes. `sqlite://…` and
//! `postgres://…` select the SQL stores.

use crate::clock::TokioClock;
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
}

impl Db {
    /// Opens (and, for SQL, migrates) the database `url` names.
    pub async fn open(url: &str, _clock: TokioClock) -> Result<Self, OpenError> {
        if url == "memory:" || url == "memory://" {
            return Ok(Db::Memory(MemoryStore::new(MemStore::new())));
        }
        let why = if url.starts_with("sqlite:") || url.starts_with("postgres") {
            "the SQL stores are not in this build yet; use DATABASE_URL=memory: to try oncesend in one process (`oncesend up`)".to_string()
        } else {
            "expected sqlite://PATH?mode=rwc, postgres://USER@HOST/DB or memory:".to_string()
        };
        Err(OpenError::Unsupported {
            url: redact(url),
            why,
        })
    }

    /// True when the data lives only in this process.
    pub fn is_memory(&self) -> bool {
        matches!(self, Db::Memory(_))
    }

    /// Brings the schema up to date (nothing to do in memory).
    pub async fn migrate(&self) -> Result<(), StoreUnavailable> {
        Ok(())
    }
}

impl Store for Db {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        match self {
            Db::Memory(s) => s.apply(op).await,
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
