-- Writes runs back. A run that is not its conversation's head is written
-- where its epoch is still the one it was read with; a head's row was
-- locked at load and its fence is its `heads` row (write_heads.sql, in
-- the same transaction, before this), whose epoch the row's own may lag.
-- No column written here is indexed, and the one predicate, of runs_open,
-- changes only when a run finishes: the update stays on its page.
UPDATE runs SET status = v.status, next_step = v.next_step,
    run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch,
    lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms,
    reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note
FROM json_to_recordset($1::json) AS v (id text, read_epoch bigint, head boolean,
    status text, next_step integer, run_at_ms bigint, attempts integer, epoch bigint,
    lease_owner text, lease_until_ms bigint, reason text, finished_at_ms bigint,
    wait text, note text)
WHERE runs.id = decode(v.id, 'hex') AND (v.head OR runs.epoch = v.read_epoch)
  AND runs.id = ANY(ARRAY(SELECT decode(x->>'id', 'hex') FROM json_array_elements($1::json) AS x))
