//! Every fixed SQL text the store runs, one `.sql` file each under
//! `statements/`: `common/` for texts both databases take as they are,
//! `postgres/` and `sqlite/` for the rest. Files are included whole at
//! compile time (leading `--` comments and all) and trimmed of surrounding
//! whitespace. A `{marker}` in a file is a part built per call; the file's
//! comment says what replaces it. `benches/pgbench/run.sh` runs some of the
//! PostgreSQL files as they are.

use super::Backend;

/// A file under `statements/`, as a `&'static str`.
macro_rules! sql {
    ($path:literal) => {
        include_str!(concat!("statements/", $path)).trim_ascii()
    };
}

/// Texts both databases take as they are.
pub(super) mod common {
    pub const PING: &str = sql!("common/ping.sql");
    /// `{table}`: a table name from [`super::super::TABLES`].
    pub const DROP_TABLE: &str = sql!("common/drop_table.sql");
    pub const DROP_VIEW: &str = sql!("common/drop_view.sql");
    pub const GET_FLOW: &str = sql!("common/get_flow.sql");
    pub const LIST_FLOWS: &str = sql!("common/list_flows.sql");
    pub const FLOW_EXISTS: &str = sql!("common/flow_exists.sql");
    pub const PUT_FLOW: &str = sql!("common/put_flow.sql");
    pub const GET_TENANT: &str = sql!("common/get_tenant.sql");
    pub const TENANT_EXISTS: &str = sql!("common/tenant_exists.sql");
    pub const PUT_TENANT: &str = sql!("common/put_tenant.sql");
    pub const LIST_TENANTS: &str = sql!("common/list_tenants.sql");
    pub const LIST_PAUSED_SENDERS: &str = sql!("common/list_paused_senders.sql");
    pub const WRITE_PAUSE: &str = sql!("common/write_pause.sql");
    pub const DELETE_PAUSE: &str = sql!("common/delete_pause.sql");
    pub const SUPPRESS: &str = sql!("common/suppress.sql");
    pub const OPEN_RUNS_OF_RECIPIENT: &str = sql!("common/open_runs_of_recipient.sql");
    pub const UNSUPPRESS: &str = sql!("common/unsuppress.sql");
    pub const GET_RECIPIENT: &str = sql!("common/get_recipient.sql");
    pub const LIST_SUPPRESSED: &str = sql!("common/list_suppressed.sql");
    pub const OTHER_OPEN_RUNS: &str = sql!("common/other_open_runs.sql");
    /// `{where}` and `{limit}`: see the file.
    pub const LIST_RUNS: &str = sql!("common/list_runs.sql");
    /// `{ids}`: one placeholder per run id.
    pub const PRUNE_DELIVERIES: &str = sql!("common/prune_deliveries.sql");
    /// `{ids}`: one placeholder per run id.
    pub const PRUNE_RUNS: &str = sql!("common/prune_runs.sql");
    /// `{ids}`: one placeholder per run id.
    pub const PRUNE_RUN_EVENTS: &str = sql!("common/prune_run_events.sql");
    pub const INSERT_RUN_EVENT: &str = sql!("common/insert_run_event.sql");
    pub const LOAD_RUN_EVENTS: &str = sql!("common/load_run_events.sql");
    /// `{keys}`: one pair of placeholders per trigger key.
    pub const PRUNE_TRIGGER_KEYS: &str = sql!("common/prune_trigger_keys.sql");
}

/// PostgreSQL's own texts.
pub(super) mod postgres {
    pub const BEGIN: &str = sql!("postgres/begin.sql");
    pub const NOW: &str = sql!("postgres/now.sql");
    pub const NOTIFY: &str = sql!("postgres/notify.sql");
    pub const PLAN_CACHE_MODE: &str = sql!("postgres/plan_cache_mode.sql");
    pub const LOCK_CONVERSATIONS: &str = sql!("postgres/lock_conversations.sql");
    pub const AUTOVACUUM: &str = sql!("postgres/autovacuum.sql");
    /// `{schema}`: a checked schema name.
    pub const CREATE_SCHEMA: &str = sql!("postgres/create_schema.sql");
    /// `{schema}`: a checked schema name.
    pub const SEARCH_PATH: &str = sql!("postgres/search_path.sql");
    pub const CLAIM: &str = sql!("postgres/claim.sql");
    pub const SET_NOTE: &str = sql!("postgres/set_note.sql");
    pub const FIND_SUPPRESSED: &str = sql!("postgres/find_suppressed.sql");
    pub const FIND_SUPPRESSED_LOCKED: &str = sql!("postgres/find_suppressed_locked.sql");
    pub const LOAD_RUNS: &str = sql!("postgres/load_runs.sql");
    pub const LOAD_RUNS_LOCKED: &str = sql!("postgres/load_runs_locked.sql");
    pub const LOAD_DELIVERIES: &str = sql!("postgres/load_deliveries.sql");
    pub const LOAD_DELIVERIES_LOCKED: &str = sql!("postgres/load_deliveries_locked.sql");
    pub const WRITE_RUNS: &str = sql!("postgres/write_runs.sql");
    pub const WRITE_HEADS: &str = sql!("postgres/write_heads.sql");
    pub const STATS: &str = sql!("postgres/stats.sql");
    pub const WRITE_DELIVERIES: &str = sql!("postgres/write_deliveries.sql");
    pub const LIST_UNKNOWN: &str = sql!("postgres/list_unknown.sql");
    pub const UNLIST_UNKNOWN: &str = sql!("postgres/unlist_unknown.sql");
    pub const PROMOTE: &str = sql!("postgres/promote.sql");
    pub const REOPENED_NOT_HEADS: &str = sql!("postgres/reopened_not_heads.sql");
    pub const COUNT_FINISHED: &str = sql!("postgres/count_finished.sql");
    pub const PRUNABLE_RUNS: &str = sql!("postgres/prunable_runs.sql");
    /// `{seqs}`: one placeholder per run seq.
    pub const PRUNE_FINISHED: &str = sql!("postgres/prune_finished.sql");
    /// `{ids}`: one placeholder per run id.
    pub const PRUNE_UNKNOWN: &str = sql!("postgres/prune_unknown.sql");
    pub const COUNT_UNKNOWN: &str = sql!("postgres/count_unknown.sql");
    pub const FIND_TRIGGER_KEYS: &str = sql!("postgres/find_trigger_keys.sql");
    pub const FIND_RUNS: &str = sql!("postgres/find_runs.sql");
    pub const LOCK_HEADS: &str = sql!("postgres/lock_heads.sql");
    pub const INSERT_RUNS: &str = sql!("postgres/insert_runs.sql");
    pub const INSERT_TRIGGER_KEYS: &str = sql!("postgres/insert_trigger_keys.sql");
    pub const LOAD_PAUSES: &str = sql!("postgres/load_pauses.sql");
    pub const RECORD_INBOUND: &str = sql!("postgres/record_inbound.sql");
}

/// SQLite's own texts.
pub(super) mod sqlite {
    pub const BEGIN: &str = sql!("sqlite/begin.sql");
    pub const NOW: &str = sql!("sqlite/now.sql");
    /// Run on every new connection, in this order.
    pub const PRAGMAS: [&str; 3] = [
        sql!("sqlite/journal_mode.sql"),
        sql!("sqlite/synchronous.sql"),
        sql!("sqlite/busy_timeout.sql"),
    ];
    pub const CLAIM: &str = sql!("sqlite/claim.sql");
    pub const FIND_SUPPRESSED: &str = sql!("sqlite/find_suppressed.sql");
    pub const FIND_SUPPRESSED_LOCKED: &str = sql!("sqlite/find_suppressed_locked.sql");
    pub const LOAD_RUNS: &str = sql!("sqlite/load_runs.sql");
    pub const LOAD_DELIVERIES: &str = sql!("sqlite/load_deliveries.sql");
    pub const WRITE_RUNS: &str = sql!("sqlite/write_runs.sql");
    pub const STATS: &str = sql!("sqlite/stats.sql");
    pub const WRITE_DELIVERIES: &str = sql!("sqlite/write_deliveries.sql");
    pub const PROMOTE: &str = sql!("sqlite/promote.sql");
    pub const COUNT_FINISHED: &str = sql!("sqlite/count_finished.sql");
    pub const COUNT_UNKNOWN: &str = sql!("sqlite/count_unknown.sql");
    pub const PRUNABLE_RUNS: &str = sql!("sqlite/prunable_runs.sql");
    pub const FIND_TRIGGER_KEYS: &str = sql!("sqlite/find_trigger_keys.sql");
    pub const FIND_RUNS: &str = sql!("sqlite/find_runs.sql");
    pub const LOCK_HEADS: &str = sql!("sqlite/lock_heads.sql");
    pub const INSERT_RUNS: &str = sql!("sqlite/insert_runs.sql");
    pub const INSERT_TRIGGER_KEYS: &str = sql!("sqlite/insert_trigger_keys.sql");
    pub const LOAD_PAUSES: &str = sql!("sqlite/load_pauses.sql");
    pub const RECORD_INBOUND: &str = sql!("sqlite/record_inbound.sql");
}

/// The statements both databases have, each in its own text.
pub(super) struct Statements {
    pub begin: &'static str,
    pub now: &'static str,
    pub find_suppressed: &'static str,
    pub find_suppressed_locked: &'static str,
    pub load_runs: &'static str,
    pub load_runs_locked: &'static str,
    pub load_deliveries: &'static str,
    pub load_deliveries_locked: &'static str,
    pub write_deliveries: &'static str,
    /// List and unlist ledger rows whose outcome is unknown (none where a
    /// partial index of `deliveries` lists them).
    pub list_unknown: Option<&'static str>,
    pub unlist_unknown: Option<&'static str>,
    pub promote: &'static str,
    /// Counts the runs sent on again that did not become their
    /// conversation's head (none where one writer already excludes the
    /// enqueue that could take the place).
    pub reopened_not_heads: Option<&'static str>,
    pub find_trigger_keys: &'static str,
    pub find_runs: &'static str,
    /// Taken before an enqueue reads anything (none where one writer
    /// already excludes every other).
    pub lock_conversations: Option<&'static str>,
    pub lock_heads: &'static str,
    pub insert_runs: &'static str,
    pub insert_trigger_keys: &'static str,
    pub load_pauses: &'static str,
    pub record_inbound: &'static str,
    pub stats: &'static str,
    pub count_finished: &'static str,
    pub count_unknown: &'static str,
    pub prunable_runs: &'static str,
}

static POSTGRES: Statements = Statements {
    begin: postgres::BEGIN,
    now: postgres::NOW,
    find_suppressed: postgres::FIND_SUPPRESSED,
    find_suppressed_locked: postgres::FIND_SUPPRESSED_LOCKED,
    load_runs: postgres::LOAD_RUNS,
    load_runs_locked: postgres::LOAD_RUNS_LOCKED,
    load_deliveries: postgres::LOAD_DELIVERIES,
    load_deliveries_locked: postgres::LOAD_DELIVERIES_LOCKED,
    write_deliveries: postgres::WRITE_DELIVERIES,
    list_unknown: Some(postgres::LIST_UNKNOWN),
    unlist_unknown: Some(postgres::UNLIST_UNKNOWN),
    promote: postgres::PROMOTE,
    reopened_not_heads: Some(postgres::REOPENED_NOT_HEADS),
    find_trigger_keys: postgres::FIND_TRIGGER_KEYS,
    find_runs: postgres::FIND_RUNS,
    lock_conversations: Some(postgres::LOCK_CONVERSATIONS),
    lock_heads: postgres::LOCK_HEADS,
    insert_runs: postgres::INSERT_RUNS,
    insert_trigger_keys: postgres::INSERT_TRIGGER_KEYS,
    load_pauses: postgres::LOAD_PAUSES,
    record_inbound: postgres::RECORD_INBOUND,
    stats: postgres::STATS,
    count_finished: postgres::COUNT_FINISHED,
    count_unknown: postgres::COUNT_UNKNOWN,
    prunable_runs: postgres::PRUNABLE_RUNS,
};

static SQLITE: Statements = Statements {
    begin: sqlite::BEGIN,
    now: sqlite::NOW,
    find_suppressed: sqlite::FIND_SUPPRESSED,
    find_suppressed_locked: sqlite::FIND_SUPPRESSED_LOCKED,
    // The one writer already holds the whole database.
    load_runs: sqlite::LOAD_RUNS,
    load_runs_locked: sqlite::LOAD_RUNS,
    load_deliveries: sqlite::LOAD_DELIVERIES,
    load_deliveries_locked: sqlite::LOAD_DELIVERIES,
    write_deliveries: sqlite::WRITE_DELIVERIES,
    list_unknown: None,
    unlist_unknown: None,
    promote: sqlite::PROMOTE,
    reopened_not_heads: None,
    find_trigger_keys: sqlite::FIND_TRIGGER_KEYS,
    find_runs: sqlite::FIND_RUNS,
    lock_conversations: None,
    lock_heads: sqlite::LOCK_HEADS,
    insert_runs: sqlite::INSERT_RUNS,
    insert_trigger_keys: sqlite::INSERT_TRIGGER_KEYS,
    load_pauses: sqlite::LOAD_PAUSES,
    record_inbound: sqlite::RECORD_INBOUND,
    stats: sqlite::STATS,
    count_finished: sqlite::COUNT_FINISHED,
    count_unknown: sqlite::COUNT_UNKNOWN,
    prunable_runs: sqlite::PRUNABLE_RUNS,
};

/// `backend`'s texts.
pub(super) fn of(backend: Backend) -> &'static Statements {
    match backend {
        Backend::Postgres => &POSTGRES,
        Backend::Sqlite => &SQLITE,
    }
}

/// Replaces a file's `{marker}`, which must be there.
pub(super) fn fill(sql: &str, marker: &str, with: &str) -> String {
    let marker = format!("{{{marker}}}");
    assert!(sql.contains(&marker), "the statement has no {marker}");
    sql.replace(&marker, with)
}
