//! Opening a store: the pool and each connection's settings, the schema,
//! migrations, and the LISTEN connection that wakes workers on enqueues.

use super::statements::{self, common, postgres, sqlite};
use super::tx::unavailable;
use super::{Backend, Inner, SqlOptions, SqlStore, NOTIFY_CHANNEL, POSTGRES_TABLES, TABLES};
use oncesend_core::store::StoreUnavailable;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyConnection;
use sqlx::{Connection, Executor};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::sync::Notify;

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

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
            sqlx::raw_sql(&statements::fill(postgres::CREATE_SCHEMA, "schema", schema))
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
                            for pragma in sqlite::PRAGMAS {
                                conn.execute(pragma).await?;
                            }
                        }
                        Backend::Postgres => {
                            conn.execute(postgres::PLAN_CACHE_MODE).await?;
                            if let Some(schema) = schema {
                                let set =
                                    statements::fill(postgres::SEARCH_PATH, "schema", &schema);
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
                retries: AtomicU64::new(0),
                steps: Default::default(),
            }),
        })
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
        // The view first: it depends on `runs` (and on PostgreSQL `heads`).
        sqlx::raw_sql(&statements::fill(common::DROP_VIEW, "view", "runs_now"))
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        for table in TABLES
            .iter()
            .chain(&POSTGRES_TABLES)
            .chain(&["_sqlx_migrations"])
        {
            sqlx::raw_sql(&statements::fill(common::DROP_TABLE, "table", table))
                .execute(&self.inner.pool)
                .await
                .map_err(unavailable)?;
        }
        self.migrate().await
    }

    /// Answers when the database does.
    /// What an operator should know about the server before relying on
    /// it, one sentence each: PostgreSQL with autovacuum off never reclaims
    /// what the pruner deletes, so `runs` and `deliveries` only grow.
    pub async fn server_warnings(&self) -> Result<Vec<String>, StoreUnavailable> {
        if self.inner.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let autovacuum: String = sqlx::query_scalar(postgres::AUTOVACUUM)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(autovacuum_warning(&autovacuum).into_iter().collect())
    }

    pub async fn ping(&self) -> Result<(), StoreUnavailable> {
        sqlx::query(common::PING)
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// The warning for the server's `autovacuum` setting, if it needs one.
fn autovacuum_warning(setting: &str) -> Option<String> {
    (setting != "on").then(|| {
        format!(
            "PostgreSQL's autovacuum is {setting}: the rows every step rewrites and the runs \
             the pruner deletes stay as dead space, so runs, deliveries and their indexes \
             grow without bound and claims slow down; set autovacuum = on in postgresql.conf \
             (oncesend's tables carry their own, more eager, autovacuum settings) or run \
             VACUUM on runs and deliveries regularly"
        )
    })
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

#[cfg(test)]
mod tests {
    use super::autovacuum_warning;

    #[test]
    fn only_a_server_that_does_not_autovacuum_is_warned_about_and_told_what_to_do() {
        assert_eq!(autovacuum_warning("on"), None);
        let warning = autovacuum_warning("off").expect("off is warned about");
        assert!(warning.contains("autovacuum is off"), "{warning}");
        assert!(warning.contains("set autovacuum = on"), "{warning}");
        assert!(warning.contains("VACUUM"), "{warning}");
    }
}
