-- One statement. The CTE walks the partial index of heads in due order and
-- locks at most $2 of them, skipping rows another claimer holds; the outer
-- UPDATE re-checks each row as it is now, so a row that changed since the
-- CTE read it is left alone. A leased row taken here had a lapsed lease:
-- its holder and lease end are handed back for the rescue's event.
-- $1 now_ms, $2 most runs, $3 lease owner, $4 lease until (ms).
WITH picked AS (
    SELECT seq, status AS was, wait AS waited, lease_owner AS was_owner,
        lease_until_ms AS was_until_ms FROM runs
    WHERE is_head AND run_at_ms <= $1
      AND (status IN ('pending', 'waiting') OR lease_until_ms <= $1)
      AND NOT EXISTS (SELECT 1 FROM sender_pauses p WHERE p.tenant = runs.tenant
        AND (p.probe_at_ms IS NULL OR p.probe_at_ms > $1))
    ORDER BY run_at_ms, seq
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE runs SET status = 'leased', epoch = runs.epoch + 1,
    lease_owner = $3, lease_until_ms = $4, wait = NULL
FROM picked
WHERE runs.seq = picked.seq AND runs.is_head
  AND ((runs.status IN ('pending', 'waiting') AND runs.run_at_ms <= $1)
    OR (runs.status = 'leased' AND runs.lease_until_ms <= $1))
RETURNING runs.seq, runs.id, runs.tenant, runs.flow, runs.recipient,
    runs.steps, runs.step_count, runs.next_step, runs.epoch, runs.attempts, runs.run_at_ms,
    CASE WHEN picked.was = 'leased' THEN 1 ELSE 0 END AS rescued,
    CASE WHEN picked.was = 'waiting' THEN picked.waited END AS waited,
    picked.was_owner, picked.was_until_ms
