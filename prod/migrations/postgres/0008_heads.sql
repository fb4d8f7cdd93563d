-- The claimable heads leave `runs` for a narrow table of their own.
--
-- Until now a conversation's head was a flag on its run (is_head), with
-- four partial indexes naming it. Every finish and every promotion changed
-- the flag, so neither could stay a heap-only update: each wrote a new
-- version of a ~300-byte row and an entry in every index of `runs`, three
-- row versions and about seventeen index entries per one-step run.
--
-- Now `heads` holds, for each conversation with unfinished runs, which run
-- is its head and that run's claim state: status, epoch, lease, due time
-- and wait. While a run is its conversation's head, those columns of its
-- `runs` row are stale and `heads` is the truth (`runs_now` overlays them);
-- the run's row takes them back when it finishes. So a claim writes one
-- narrow row, a finish updates the run's row in place, and a promotion
-- replaces one narrow row. The primary key makes two heads in one
-- conversation impossible, as runs_one_head did.
CREATE TABLE heads (
    tenant         TEXT   NOT NULL,
    recipient      TEXT   NOT NULL,
    seq            BIGINT NOT NULL,
    run_at_ms      BIGINT NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('pending', 'leased', 'waiting')),
    epoch          BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until_ms BIGINT,
    wait           TEXT,
    PRIMARY KEY (tenant, recipient),
    CONSTRAINT heads_lease_when_leased
        CHECK ((status = 'leased') = (lease_owner IS NOT NULL AND lease_until_ms IS NOT NULL)),
    CONSTRAINT heads_wait_when_waiting CHECK ((status = 'waiting') = (wait IS NOT NULL))
);
-- The claim's index, by due time. A claim changes neither column, so it
-- stays on its page (and half of each page is left free for it).
CREATE INDEX heads_due ON heads (run_at_ms, seq);
ALTER TABLE heads SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

INSERT INTO heads (tenant, recipient, seq, run_at_ms, status, epoch, lease_owner,
    lease_until_ms, wait)
SELECT tenant, recipient, seq, run_at_ms, status, epoch, lease_owner, lease_until_ms, wait
FROM runs WHERE is_head;

-- Promotion finds a conversation's oldest unfinished run here. Its
-- predicate names finished_at_ms, which only a finish changes.
CREATE INDEX runs_open ON runs (tenant, recipient, seq) WHERE finished_at_ms IS NULL;
DROP INDEX runs_one_head;
DROP INDEX runs_claimable;
DROP INDEX runs_waiting;
ALTER TABLE runs DROP CONSTRAINT runs_leased_is_head;
ALTER TABLE runs DROP CONSTRAINT runs_head_is_open;
ALTER TABLE runs DROP COLUMN is_head;

-- Runs as they stand: a head's claim state from `heads`.
CREATE VIEW runs_now AS
SELECT r.seq, r.id, r.tenant, r.flow, r.recipient, r.steps, r.step_count, r.next_step,
    coalesce(h.status, r.status) AS status,
    coalesce(h.run_at_ms, r.run_at_ms) AS run_at_ms,
    r.attempts,
    coalesce(h.epoch, r.epoch) AS epoch,
    CASE WHEN h.seq IS NULL THEN r.lease_owner ELSE h.lease_owner END AS lease_owner,
    CASE WHEN h.seq IS NULL THEN r.lease_until_ms ELSE h.lease_until_ms END AS lease_until_ms,
    r.reason, r.trigger_key, r.created_at_ms, r.finished_at_ms,
    CASE WHEN h.seq IS NULL THEN r.wait ELSE h.wait END AS wait,
    r.note,
    h.seq IS NOT NULL AS is_head
FROM runs r
LEFT JOIN heads h ON h.tenant = r.tenant AND h.recipient = r.recipient AND h.seq = r.seq;
