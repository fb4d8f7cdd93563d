-- One round of the PostgreSQL store's claim + advance + complete, as raw
-- SQL for pgbench: the claim's transaction, then the holder's batch (lock
-- the rows, write them back completed, promote, check for headless
-- conversations). :batch is set with -D batch=N.
BEGIN;
SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now \gset
WITH picked AS (
    SELECT seq, status AS was FROM runs
    WHERE is_head AND run_at_ms <= CAST(:now AS BIGINT) AND (status = 'pending' OR lease_until_ms <= CAST(:now AS BIGINT))
    ORDER BY run_at_ms, seq
    LIMIT :batch
    FOR NO KEY UPDATE SKIP LOCKED
), claimed AS (
    UPDATE runs SET status = 'leased', epoch = runs.epoch + 1,
        lease_owner = 'pgbench', lease_until_ms = CAST(:now AS BIGINT) + 30000
    FROM picked
    WHERE runs.seq = picked.seq AND runs.is_head
      AND ((runs.status = 'pending' AND runs.run_at_ms <= CAST(:now AS BIGINT))
        OR (runs.status = 'leased' AND runs.lease_until_ms <= CAST(:now AS BIGINT)))
    RETURNING runs.seq, runs.id, runs.tenant, runs.flow, runs.recipient, runs.steps,
        runs.next_step, runs.epoch, runs.attempts, runs.run_at_ms,
        CASE WHEN picked.was = 'leased' THEN 1 ELSE 0 END AS rescued
)
SELECT string_agg(seq::text, ',') AS ids FROM claimed \gset
COMMIT;
BEGIN;
SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now \gset
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms, attempts, epoch,
       lease_owner, lease_until_ms, reason, trigger_key, created_at_ms, finished_at_ms
FROM runs WHERE seq = ANY (string_to_array(:ids, ',')::bigint[]) ORDER BY id FOR UPDATE;
UPDATE runs SET status = 'completed', next_step = 2, run_at_ms = runs.run_at_ms,
    attempts = 0, epoch = runs.epoch, lease_owner = NULL, lease_until_ms = NULL,
    reason = NULL, finished_at_ms = CAST(:now AS BIGINT),
    is_head = (runs.is_head AND 'completed' IN ('pending', 'leased'))
WHERE seq = ANY (string_to_array(:ids, ',')::bigint[]) AND epoch = runs.epoch;
WITH c (tenant, recipient) AS (
    SELECT tenant, recipient FROM runs WHERE seq = ANY (string_to_array(:ids, ',')::bigint[])
)
UPDATE runs SET is_head = TRUE
WHERE status = 'pending' AND NOT is_head AND seq IN (
    SELECT (SELECT w.seq FROM runs w
            WHERE w.tenant = c.tenant AND w.recipient = c.recipient
              AND w.status = 'pending' AND NOT w.is_head
            ORDER BY w.seq LIMIT 1)
    FROM c WHERE NOT EXISTS (
        SELECT 1 FROM runs h WHERE h.tenant = c.tenant AND h.recipient = c.recipient AND h.is_head));
WITH c (tenant, recipient) AS (
    SELECT tenant, recipient FROM runs WHERE seq = ANY (string_to_array(:ids, ',')::bigint[])
)
SELECT COUNT(*) FROM c
WHERE NOT EXISTS (SELECT 1 FROM runs h WHERE h.tenant = c.tenant AND h.recipient = c.recipient AND h.is_head)
  AND EXISTS (SELECT 1 FROM runs w WHERE w.tenant = c.tenant AND w.recipient = c.recipient
                AND w.status = 'pending' AND NOT w.is_head);
COMMIT;
