-- One round of the PostgreSQL store's claim + complete, as raw SQL for
-- pgbench (-M prepared, so each :variable is a bound parameter, as the
-- store binds its JSON): the claim's transaction, then the holder's batch
-- (lock the rows, write them back completed, promote the next run of each
-- conversation). The holder's statements are the store's own texts; the
-- JSON the store builds client-side from the locked rows is built here by
-- the claim. :batch is set with -D batch=N.
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
SELECT json_agg(encode(id, 'hex'))::text AS ids,
       json_agg(json_build_object('tenant', tenant, 'recipient', recipient))::text AS conversations,
       json_agg(json_build_object(
           'id', encode(id, 'hex'), 'read_epoch', epoch, 'status', 'completed',
           'next_step', 2, 'run_at_ms', run_at_ms, 'attempts', 0, 'epoch', epoch,
           'lease_owner', NULL, 'lease_until_ms', NULL, 'reason', NULL,
           'finished_at_ms', CAST(:now AS BIGINT)))::text AS writes
FROM claimed \gset
COMMIT;
BEGIN;
SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now \gset
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms, attempts, epoch,
       lease_owner, lease_until_ms, reason, trigger_key, created_at_ms, finished_at_ms
FROM runs
WHERE id = ANY(ARRAY(SELECT decode(x, 'hex') FROM json_array_elements_text(:ids::json) AS x))
ORDER BY id FOR UPDATE;
UPDATE runs SET status = v.status, next_step = v.next_step,
    run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch,
    lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms,
    reason = v.reason, finished_at_ms = v.finished_at_ms,
    is_head = (runs.is_head AND v.status IN ('pending', 'leased'))
FROM json_to_recordset(:writes::json) AS v (id text, read_epoch bigint, status text,
    next_step integer, run_at_ms bigint, attempts integer, epoch bigint,
    lease_owner text, lease_until_ms bigint, reason text, finished_at_ms bigint)
WHERE runs.id = decode(v.id, 'hex') AND runs.epoch = v.read_epoch
  AND runs.id = ANY(ARRAY(SELECT decode(x->>'id', 'hex') FROM json_array_elements(:writes::json) AS x));
WITH wanted AS (
    SELECT (SELECT w.seq FROM runs w
            WHERE w.tenant = c.tenant AND w.recipient = c.recipient
              AND w.status = 'pending' AND NOT w.is_head
            ORDER BY w.seq LIMIT 1) AS seq
    FROM json_to_recordset(:conversations::json) AS c (tenant text, recipient text)
    WHERE NOT EXISTS (SELECT 1 FROM runs h
                      WHERE h.tenant = c.tenant AND h.recipient = c.recipient
                        AND h.is_head)),
promoted AS (
    UPDATE runs SET is_head = TRUE
    WHERE coalesce(status, '') = 'pending' AND is_head IS NOT TRUE
      AND seq = ANY(ARRAY(SELECT seq FROM wanted WHERE seq IS NOT NULL))
    RETURNING 1)
SELECT (SELECT COUNT(*) FROM wanted WHERE seq IS NOT NULL),
       (SELECT COUNT(*) FROM promoted);
COMMIT;
