-- Writes runs back where their epoch is still the one they were read with.
UPDATE runs SET status = v.status, next_step = v.next_step,
    run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch,
    lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms,
    reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note,
    is_head = (runs.is_head AND v.status IN ('pending', 'leased', 'waiting'))
FROM (SELECT unhex(value->>'id') AS id, value->>'read_epoch' AS read_epoch,
        value->>'status' AS status, value->>'next_step' AS next_step,
        value->>'run_at_ms' AS run_at_ms, value->>'attempts' AS attempts,
        value->>'epoch' AS epoch, value->>'lease_owner' AS lease_owner,
        value->>'lease_until_ms' AS lease_until_ms, value->>'reason' AS reason,
        value->>'finished_at_ms' AS finished_at_ms, value->>'wait' AS wait,
        value->>'note' AS note
      FROM json_each($1)) AS v
WHERE runs.id = v.id AND runs.epoch = v.read_epoch
