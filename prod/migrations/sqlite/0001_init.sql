-- oncesend schema, SQLite. The same tables and rules as PostgreSQL's; see
-- migrations/postgres/0001_init.sql for why each is there.

CREATE TABLE tenants (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE flows (
    tenant TEXT NOT NULL,
    id     TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE runs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    flow           TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    steps          TEXT    NOT NULL,
    step_count     INTEGER NOT NULL CHECK (step_count > 0),
    next_step      INTEGER NOT NULL DEFAULT 0,
    status         TEXT    NOT NULL
        CHECK (status IN ('pending', 'leased', 'completed', 'failed', 'cancelled')),
    is_head        BOOLEAN NOT NULL,
    run_at_ms      INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    epoch          INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until_ms INTEGER,
    reason         TEXT,
    trigger_key    TEXT,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    CONSTRAINT runs_leased_is_head CHECK (status <> 'leased' OR is_head),
    CONSTRAINT runs_head_is_open CHECK (NOT is_head OR status IN ('pending', 'leased')),
    CONSTRAINT runs_lease_when_leased
        CHECK ((status = 'leased') = (lease_owner IS NOT NULL AND lease_until_ms IS NOT NULL))
);

CREATE UNIQUE INDEX runs_one_head ON runs (tenant, recipient) WHERE is_head;
CREATE INDEX runs_claimable ON runs (run_at_ms, seq) WHERE is_head;
CREATE INDEX runs_waiting ON runs (tenant, recipient, seq) WHERE status = 'pending' AND NOT is_head;
CREATE INDEX runs_finished ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

CREATE TABLE deliveries (
    run_id              BLOB    NOT NULL,
    step                INTEGER NOT NULL,
    state               TEXT    NOT NULL
        CHECK (state IN ('sending', 'sent', 'delivered', 'read', 'failed', 'unknown')),
    deadline_ms         INTEGER,
    retryable           INTEGER,
    epoch               INTEGER NOT NULL,
    attempts            INTEGER NOT NULL,
    provider_message_id TEXT,
    last_error          TEXT,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE INDEX deliveries_unknown ON deliveries (run_id) WHERE state = 'unknown';

CREATE TABLE trigger_keys (
    tenant TEXT NOT NULL,
    key    TEXT NOT NULL,
    run_id BLOB NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
