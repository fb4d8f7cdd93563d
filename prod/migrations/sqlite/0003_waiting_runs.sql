-- Waiting runs; see migrations/postgres/0003_waiting_runs.sql. SQLite
-- cannot change a CHECK constraint in place, so `runs` is rebuilt.
CREATE TABLE runs_new (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    flow           TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    steps          TEXT    NOT NULL,
    step_count     INTEGER NOT NULL CHECK (step_count > 0),
    next_step      INTEGER NOT NULL DEFAULT 0,
    status         TEXT    NOT NULL
        CHECK (status IN ('pending', 'leased', 'waiting', 'completed', 'failed', 'cancelled')),
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
    wait           TEXT,
    note           TEXT,
    CONSTRAINT runs_leased_is_head CHECK (status <> 'leased' OR is_head),
    CONSTRAINT runs_head_is_open CHECK (NOT is_head OR status IN ('pending', 'leased', 'waiting')),
    CONSTRAINT runs_lease_when_leased
        CHECK ((status = 'leased') = (lease_owner IS NOT NULL AND lease_until_ms IS NOT NULL)),
    CONSTRAINT runs_wait_when_waiting CHECK ((status = 'waiting') = (wait IS NOT NULL))
);
INSERT INTO runs_new (seq, id, tenant, flow, recipient, steps, step_count, next_step, status,
        is_head, run_at_ms, attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key,
        created_at_ms, finished_at_ms)
    SELECT seq, id, tenant, flow, recipient, steps, step_count, next_step, status, is_head,
        run_at_ms, attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key,
        created_at_ms, finished_at_ms
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE UNIQUE INDEX runs_one_head ON runs (tenant, recipient) WHERE is_head;
CREATE INDEX runs_claimable ON runs (run_at_ms, seq) WHERE is_head;
CREATE INDEX runs_waiting ON runs (tenant, recipient, seq) WHERE status = 'pending' AND NOT is_head;
CREATE INDEX runs_finished ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

ALTER TABLE deliveries ADD COLUMN resolved_by TEXT;
ALTER TABLE deliveries ADD COLUMN resolved_at_ms INTEGER;
