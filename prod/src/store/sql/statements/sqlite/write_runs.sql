-- Writes runs back where their epoch is still the one they were read with.
-- Each row is turned into JSONB once (the materialized `v`): json_each
-- hands an object out as text, and every `->>` on that text would render
-- and parse the whole object again, thirteen times a row.
WITH v AS MATERIALIZED (SELECT jsonb(value) AS j FROM json_each($1))
UPDATE runs SET status = w.status, next_step = w.next_step,
    run_at_ms = w.run_at_ms, attempts = w.attempts, epoch = w.epoch,
    lease_owner = w.lease_owner, lease_until_ms = w.lease_until_ms,
    reason = w.reason, finished_at_ms = w.finished_at_ms, wait = w.wait, note = w.note,
    is_head = (runs.is_head AND w.status IN ('pending', 'leased', 'waiting'))
FROM (SELECT unhex(j->>'id') AS id, j->>'read_epoch' AS read_epoch,
        j->>'status' AS status, j->>'next_step' AS next_step,
        j->>'run_at_ms' AS run_at_ms, j->>'attempts' AS attempts,
        j->>'epoch' AS epoch, j->>'lease_owner' AS lease_owner,
        j->>'lease_until_ms' AS lease_until_ms, j->>'reason' AS reason,
        j->>'finished_at_ms' AS finished_at_ms, j->>'wait' AS wait,
        j->>'note' AS note
      FROM v) AS w
WHERE runs.id = w.id AND runs.epoch = w.read_epoch
