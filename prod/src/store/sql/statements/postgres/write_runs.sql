-- Writes runs back where their epoch is still the one they were read with.
UPDATE runs SET status = v.status, next_step = v.next_step,
    run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch,
    lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms,
    reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note,
    is_head = (runs.is_head AND v.status IN ('pending', 'leased', 'waiting'))
FROM json_to_recordset($1::json) AS v (id text, read_epoch bigint, status text,
    next_step integer, run_at_ms bigint, attempts integer, epoch bigint,
    lease_owner text, lease_until_ms bigint, reason text, finished_at_ms bigint,
    wait text, note text)
WHERE runs.id = decode(v.id, 'hex') AND runs.epoch = v.read_epoch
  AND runs.id = ANY(ARRAY(SELECT decode(x->>'id', 'hex') FROM json_array_elements($1::json) AS x))
