-- Built per call: the where marker is replaced by nothing or by `WHERE` and the
-- filter's conditions, the limit marker by the placeholder the limit is bound to.
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms,
    attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key, created_at_ms,
    finished_at_ms, wait, note
FROM runs_now {where} ORDER BY seq DESC LIMIT {limit}
