-- One statement, on `heads` alone. The first CTE walks heads_due in due
-- order and locks at most $2 heads, skipping rows another claimer holds;
-- the UPDATE finds each by its physical address (a row this transaction
-- holds locked cannot move; a join on the key would hash all of `heads`)
-- and re-checks it as it is now. A leased head taken here had a lapsed
-- lease: its holder and lease end are handed back for the rescue's event.
-- The runs' rows are only read (by primary key) for what the holder needs.
-- $1 now_ms, $2 most runs, $3 lease owner, $4 lease until (ms).
WITH picked AS (
    SELECT ctid AS row, status AS was, wait AS waited, lease_owner AS was_owner,
        lease_until_ms AS was_until_ms FROM heads
    WHERE run_at_ms <= $1
      AND (status IN ('pending', 'waiting') OR lease_until_ms <= $1)
      AND NOT EXISTS (SELECT 1 FROM sender_pauses p WHERE p.tenant = heads.tenant
        AND (p.probe_at_ms IS NULL OR p.probe_at_ms > $1))
    ORDER BY run_at_ms, seq
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
),
leased AS (
    UPDATE heads SET status = 'leased', epoch = heads.epoch + 1,
        lease_owner = $3, lease_until_ms = $4, wait = NULL
    FROM picked
    WHERE heads.ctid = picked.row
      AND ((heads.status IN ('pending', 'waiting') AND heads.run_at_ms <= $1)
        OR (heads.status = 'leased' AND heads.lease_until_ms <= $1))
    RETURNING heads.seq, heads.epoch, heads.run_at_ms, picked.was, picked.waited,
        picked.was_owner, picked.was_until_ms
)
SELECT r.seq, r.id, r.tenant, r.flow, r.recipient, r.steps, r.step_count, r.next_step,
    l.epoch, r.attempts, l.run_at_ms,
    CASE WHEN l.was = 'leased' THEN 1 ELSE 0 END AS rescued,
    CASE WHEN l.was = 'waiting' THEN l.waited END AS waited,
    l.was_owner, l.was_until_ms
FROM leased l JOIN runs r ON r.seq = l.seq
