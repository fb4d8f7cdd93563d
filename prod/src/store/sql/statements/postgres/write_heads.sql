-- Heads' claim state written back, each where its epoch is still the one
-- it was read with (the fence); a head whose run finished leaves, and
-- promote.sql puts the conversation's next run in its place. Answers how
-- many heads matched.
-- $1 [{tenant, recipient, seq, read_epoch, keep, status, epoch,
--      lease_owner, lease_until_ms, run_at_ms, wait}]
WITH v AS (
    SELECT * FROM json_to_recordset($1::json) AS v (tenant text, recipient text,
        seq bigint, read_epoch bigint, keep boolean, status text, epoch bigint,
        lease_owner text, lease_until_ms bigint, run_at_ms bigint, wait text)),
kept AS (
    UPDATE heads h SET status = v.status, epoch = v.epoch, lease_owner = v.lease_owner,
        lease_until_ms = v.lease_until_ms, run_at_ms = v.run_at_ms, wait = v.wait
    FROM v
    WHERE v.keep AND h.tenant = v.tenant AND h.recipient = v.recipient
      AND h.seq = v.seq AND h.epoch = v.read_epoch
    RETURNING 1),
gone AS (
    DELETE FROM heads h USING v
    WHERE NOT v.keep AND h.tenant = v.tenant AND h.recipient = v.recipient
      AND h.seq = v.seq AND h.epoch = v.read_epoch
    RETURNING 1)
SELECT (SELECT count(*) FROM kept) + (SELECT count(*) FROM gone)
