-- Gives each listed conversation that has no head its oldest unfinished
-- run after `after` as head: after its head finished (`after` is that
-- head's seq: a head is its conversation's oldest unfinished run, so the
-- rest come after it), or when a finished run was sent on again (`after`
-- is just before it). The walk goes through runs_by_recipient. The
-- candidate is locked FOR SHARE: under read committed a run a concurrent
-- transaction finished meanwhile fails the re-check and the next one is
-- taken. A head a concurrent enqueue just gave the conversation stays
-- (its run is newer than any seen here).
-- $1 [{tenant, recipient, after}]; answers with the number of heads made.
INSERT INTO heads (tenant, recipient, seq, run_at_ms, status, epoch, lease_owner,
    lease_until_ms, wait)
SELECT c.tenant, c.recipient, n.seq, n.run_at_ms, n.status, n.epoch, n.lease_owner,
    n.lease_until_ms, n.wait
FROM json_to_recordset($1::json) AS c (tenant text, recipient text, after bigint)
CROSS JOIN LATERAL (
    SELECT w.seq, w.run_at_ms, w.status, w.epoch, w.lease_owner, w.lease_until_ms, w.wait
    FROM runs w
    WHERE w.recipient = c.recipient AND w.seq > c.after AND w.tenant = c.tenant
      AND w.finished_at_ms IS NULL
    ORDER BY w.seq LIMIT 1
    FOR SHARE) n
WHERE NOT EXISTS (SELECT 1 FROM heads h WHERE h.tenant = c.tenant AND h.recipient = c.recipient)
ON CONFLICT (tenant, recipient) DO NOTHING
