-- Runs by id, locked in id order, each with its `heads` row when it is
-- its conversation's head, locked too: the same overlay as `runs_now`,
-- which cannot be locked through its outer join.
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms,
    attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key, created_at_ms,
    finished_at_ms, wait, note, is_head
FROM (
    SELECT r.seq, r.id, r.tenant, r.flow, r.recipient, r.steps, r.next_step,
        coalesce(h.status, r.status) AS status,
        coalesce(h.run_at_ms, r.run_at_ms) AS run_at_ms,
        r.attempts,
        coalesce(h.epoch, r.epoch) AS epoch,
        CASE WHEN h.seq IS NULL THEN r.lease_owner ELSE h.lease_owner END AS lease_owner,
        CASE WHEN h.seq IS NULL THEN r.lease_until_ms ELSE h.lease_until_ms END
            AS lease_until_ms,
        r.reason, r.trigger_key, r.created_at_ms, r.finished_at_ms,
        CASE WHEN h.seq IS NULL THEN r.wait ELSE h.wait END AS wait,
        r.note,
        h.seq IS NOT NULL AS is_head
    FROM (SELECT * FROM runs
          WHERE id = ANY(ARRAY(SELECT decode(x, 'hex')
                               FROM json_array_elements_text($1::json) AS x))
          ORDER BY id
          FOR UPDATE) r
    LEFT JOIN LATERAL (
        SELECT * FROM heads
        WHERE heads.tenant = r.tenant AND heads.recipient = r.recipient AND heads.seq = r.seq
        FOR UPDATE) h ON TRUE
) AS now_
ORDER BY id
