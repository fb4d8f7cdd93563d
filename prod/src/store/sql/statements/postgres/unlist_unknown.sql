-- Ledger rows whose unknown outcome became known, no longer listed.
-- $1 [{run_id, step}]
DELETE FROM unknown_deliveries u
USING json_to_recordset($1::json) AS k (run_id text, step integer)
WHERE u.run_id = decode(k.run_id, 'hex') AND u.step = k.step
