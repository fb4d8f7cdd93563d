-- Runs as they stand (a head's claim state from `heads`), by id.
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms,
    attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key, created_at_ms,
    finished_at_ms, wait, note, is_head
FROM runs_now
WHERE id = ANY(ARRAY(SELECT decode(x, 'hex') FROM json_array_elements_text($1::json) AS x))
ORDER BY id
