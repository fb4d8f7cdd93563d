//! SQL stores under bad conditions: a database that is down, one that goes
//! away in the middle of a run and comes back, migrations run twice, and
//! the rule that a PostgreSQL test fails when its server does not answer.

use crate::support;

use oncesend::clock::TokioClock;
use oncesend::db::{Db, OpenError};
use oncesend::store::sql::{SqlClock, SqlOptions, SqlStore};
use oncesend::store::Store;
use oncesend_core::{
    FlowId, NewRun, PlannedStep, Recipient, RunId, StoreOp, StoreReply, TenantId, WorkerId,
};
use sqlx::Row;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn new_run(i: u64) -> NewRun {
    NewRun {
        id: RunId::new(1_000 + i, i),
        tenant: TenantId::default_tenant(),
        flow: FlowId::new("f").unwrap(),
        to: Recipient::parse("+5511913390001").unwrap(),
        steps: vec![
            PlannedStep {
                message: oncesend_core::Message::text("one"),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            },
            PlannedStep {
                message: oncesend_core::Message::text("two"),
                delay_ms: 0,
                after: Default::default(),
                after_timeout_ms: None,
            },
        ],
        trigger_key: None,
    }
}

#[tokio::test]
async fn a_database_that_is_down_is_a_typed_error() {
    // Nothing listens on port 1.
    let err = Db::open(
        "postgres://postgres@127.0.0.1:1/test?connect_timeout=2",
        TokioClock::system(),
    )
    .await
    .err()
    .expect("no server");
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("cannot reach the database"),
        "{err}"
    );

    // A SQLite file in a directory that does not exist.
    let err = Db::open(
        "sqlite:///nonexistent-dir/oncesend.db?mode=rwc",
        TokioClock::system(),
    )
    .await
    .err()
    .expect("no directory");
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err}");

    // A URL of no known database is not worth retrying, and says why.
    let err = Db::open("mysql://x@y/z", TokioClock::system())
        .await
        .err()
        .expect("unsupported");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("expected sqlite://"), "{err}");
}

/// A TCP relay in front of PostgreSQL that can be cut and restored.
struct Relay {
    addr: std::net::SocketAddr,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            target: target.to_string(),
            tasks: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Drops every connection and stops answering.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

#[tokio::test]
async fn postgres_going_away_mid_run_gives_errors_then_recovers() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let (head, rest) = url.split_once('@').expect("postgres://user@host:port/db");
    let (hostport, db) = rest.split_once('/').expect("postgres://user@host:port/db");
    let relay = Relay::start(hostport).await;
    let relayed = format!("{head}@{}/{db}", relay.addr);
    // Set the tables up directly, then work through the relay.
    drop(support::pg_store(&url, "goes_away", SqlClock::Caller, 1).await);
    let store = SqlStore::connect(
        &relayed,
        SqlOptions {
            clock: SqlClock::Caller,
            max_connections: 2,
            schema: Some("goes_away".into()),
            acquire_timeout: Duration::from_secs(2),
            ..SqlOptions::default()
        },
    )
    .await
    .unwrap();
    let reply = store
        .apply(StoreOp::Enqueue {
            run: new_run(1),
            now_ms: 10,
        })
        .await
        .unwrap();
    let run = match reply {
        StoreReply::Enqueued { run, .. } => run,
        other => panic!("{other:?}"),
    };
    let claimed = match store
        .apply(StoreOp::Claim {
            owner: WorkerId::new("w").unwrap(),
            max: 1,
            lease_ms: 60_000,
            now_ms: 20,
        })
        .await
        .unwrap()
    {
        StoreReply::Claimed(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(claimed.len(), 1);
    let advance = StoreOp::Advance {
        run,
        epoch: claimed[0].epoch,
        step: 0,
        delay_ms: None,
        now_ms: 30,
    };

    relay.cut();
    for _ in 0..3 {
        let err = store
            .apply(advance.clone())
            .await
            .expect_err("the database is gone");
        assert!(!err.0.is_empty());
    }

    relay.restore().await;
    // The same write, repeated, lands once: the first try may or may not
    // have been applied, and the answer is the same either way.
    let mut reply = None;
    for _ in 0..20 {
        match store.apply(advance.clone()).await {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(
        reply,
        Some(StoreReply::Advanced {
            cursor: 1,
            released: false
        })
    );
    let again = store.apply(advance).await.unwrap();
    assert_eq!(
        again,
        StoreReply::Advanced {
            cursor: 1,
            released: false
        }
    );
}

async fn schema_of(store: &SqlStore, postgres: bool) -> Vec<String> {
    let sql = if postgres {
        "SELECT table_name || '.' || column_name || ':' || data_type FROM information_schema.columns \
         WHERE table_schema = 'migrate_twice' \
         UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'migrate_twice' \
         UNION ALL SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations"
    } else {
        "SELECT COALESCE(sql, name) FROM sqlite_master \
         UNION ALL SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations"
    };
    let mut rows: Vec<String> = sqlx::query(sql)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}

async fn migrate_twice(store: &SqlStore, postgres: bool) {
    store
        .apply(StoreOp::Enqueue {
            run: new_run(7),
            now_ms: 1,
        })
        .await
        .unwrap();
    let before = schema_of(store, postgres).await;
    assert!(before.len() > 10, "{before:?}");
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(schema_of(store, postgres).await, before);
    let runs = store
        .apply(StoreOp::ListRuns {
            status: None,
            filter: Default::default(),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(matches!(runs, StoreReply::Runs(r) if r.len() == 1));
}

#[tokio::test]
async fn migrating_a_migrated_sqlite_database_changes_nothing() {
    let store = support::sqlite_store("migrate-twice", SqlClock::Caller).await;
    migrate_twice(&store, false).await;
}

#[tokio::test]
async fn migrating_a_migrated_postgres_database_changes_nothing() {
    let Some(url) = support::pg_url() else {
        return;
    };
    let store = support::pg_store(&url, "migrate_twice", SqlClock::Caller, 1).await;
    migrate_twice(&store, true).await;
}

/// Run by the test below in a child process, with `TEST_DATABASE_URL`
/// pointing at a port where nothing answers.
#[tokio::test]
async fn postgres_probe() {
    let Some(url) = support::pg_url() else {
        return;
    };
    support::pg_store(&url, "probe", SqlClock::Caller, 1).await;
}

#[test]
fn a_postgres_test_fails_when_its_server_does_not_answer() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sql_bad_conditions::postgres_probe",
            "--test-threads",
            "1",
        ])
        .env(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/test?connect_timeout=2",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it passed:\n{stdout}\n{stderr}");
    // libtest shows a failed test's panic with its captured output.
    assert!(
        format!("{stdout}{stderr}")
            .contains("TEST_DATABASE_URL is set but PostgreSQL does not answer"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");
}
