-- Writes runs back. A run that is not its conversation's head is written
-- where its epoch is still the one it was read with; a head's row was
-- locked at load and its fence is its `heads` row (write_heads.sql, in
-- the same transaction, before this), whose epoch the row's own may lag.
-- No index of `runs` names a column written here, so every write, a
-- finish included, stays on its page. A run that finishes is listed in
-- `finished_runs`; one sent on again leaves it. Answers how many runs
-- matched.
WITH written AS (
    UPDATE runs SET status = v.status, next_step = v.next_step,
        run_at_ms = v.run_at_ms, attempts = v.attempts, epoch = v.epoch,
        lease_owner = v.lease_owner, lease_until_ms = v.lease_until_ms,
        reason = v.reason, finished_at_ms = v.finished_at_ms, wait = v.wait, note = v.note
    FROM json_to_recordset($1::json) AS v (id text, read_epoch bigint, head boolean,
        status text, next_step integer, run_at_ms bigint, attempts integer, epoch bigint,
        lease_owner text, lease_until_ms bigint, reason text, finished_at_ms bigint,
        wait text, note text, read_finished_at_ms bigint)
    WHERE runs.id = decode(v.id, 'hex') AND (v.head OR runs.epoch = v.read_epoch)
      AND runs.id = ANY(ARRAY(SELECT decode(x->>'id', 'hex')
                              FROM json_array_elements($1::json) AS x))
    RETURNING runs.seq, v.read_finished_at_ms AS was, v.finished_at_ms AS now_
),
reopened AS (
    DELETE FROM finished_runs f USING written w
    WHERE w.was IS NOT NULL AND w.now_ IS NULL AND f.seq = w.seq
),
finished AS (
    INSERT INTO finished_runs (seq, finished_at_ms)
    SELECT seq, now_ FROM written WHERE now_ IS NOT NULL AND now_ IS DISTINCT FROM was
    ON CONFLICT (seq) DO UPDATE SET finished_at_ms = excluded.finished_at_ms
)
SELECT count(*) FROM written
