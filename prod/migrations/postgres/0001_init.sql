-- oncesend schema, PostgreSQL.
--
-- One conversation (tenant, recipient) sends one run at a time, in trigger
-- order. Its oldest unfinished run is its head (is_head); only a head may be
-- claimed. The schema itself makes two leased runs in one conversation
-- impossible: a leased run must be the head (runs_leased_is_head), and a
-- conversation has at most one head (runs_one_head).

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
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             BYTEA   NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    flow           TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    steps          TEXT    NOT NULL,
    step_count     INTEGER NOT NULL CHECK (step_count > 0),
    next_step      INTEGER NOT NULL DEFAULT 0,
    status         TEXT    NOT NULL
        CHECK (status IN ('pending', 'leased', 'completed', 'failed', 'cancelled')),
    is_head        BOOLEAN NOT NULL,
    run_at_ms      BIGINT  NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    epoch          BIGINT  NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until_ms BIGINT,
    reason         TEXT,
    trigger_key    TEXT,
    created_at_ms  BIGINT  NOT NULL,
    finished_at_ms BIGINT,
    CONSTRAINT runs_leased_is_head CHECK (status <> 'leased' OR is_head),
    CONSTRAINT runs_head_is_open CHECK (NOT is_head OR status IN ('pending', 'leased')),
    CONSTRAINT runs_lease_when_leased
        CHECK ((status = 'leased') = (lease_owner IS NOT NULL AND lease_until_ms IS NOT NULL))
);

-- At most one head per conversation.
CREATE UNIQUE INDEX runs_one_head ON runs (tenant, recipient) WHERE is_head;
-- The claim's index: heads only, by due time. Its size is the number of
-- conversations with work, not the number of runs.
CREATE INDEX runs_claimable ON runs (run_at_ms, seq) WHERE is_head;
-- Runs queued behind their conversation's head, for promotion.
CREATE INDEX runs_waiting ON runs (tenant, recipient, seq) WHERE status = 'pending' AND NOT is_head;
-- Pruning finished runs.
CREATE INDEX runs_finished ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

-- Runs churn: every step rewrites a row. Vacuum them early and often, and
-- leave room in each page for updates to stay on it.
ALTER TABLE runs SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- The delivery ledger: one row per (run, step) ever begun.
CREATE TABLE deliveries (
    run_id              BYTEA   NOT NULL,
    step                INTEGER NOT NULL,
    state               TEXT    NOT NULL
        CHECK (state IN ('sending', 'sent', 'delivered', 'read', 'failed', 'unknown')),
    deadline_ms         BIGINT,
    retryable           INTEGER,
    epoch               BIGINT  NOT NULL,
    attempts            INTEGER NOT NULL,
    provider_message_id TEXT,
    last_error          TEXT,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX deliveries_unknown ON deliveries (run_id) WHERE state = 'unknown';
ALTER TABLE deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

-- Trigger idempotency keys: one run per (tenant, key).
CREATE TABLE trigger_keys (
    tenant TEXT  NOT NULL,
    key    TEXT  NOT NULL,
    run_id BYTEA NOT NULL,
    PRIMARY KEY (tenant, key)
);
