-- The heads of the conversations an enqueue adds runs to, locked FOR
-- SHARE against a concurrent finish, in the order of their runs' ids:
-- the order a write-back locks runs and their heads in
-- (load_runs_locked.sql). In any other order each could hold a head the
-- other waits for; under load an enqueue lost that deadlock twelve times
-- in a row and gave up.
-- $1 [{"tenant","recipient"}]; answers the conversations that have a head.
SELECT h.tenant, h.recipient FROM heads h JOIN runs r ON r.seq = h.seq
WHERE (h.tenant, h.recipient) IN (
    SELECT c.tenant, c.recipient
    FROM json_to_recordset($1::json) AS c (tenant text, recipient text))
ORDER BY r.id FOR SHARE OF h
