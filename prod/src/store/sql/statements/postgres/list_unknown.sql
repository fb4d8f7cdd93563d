-- Ledger rows whose outcome became unknown, listed. (Written apart from
-- the ledger's own statement, and only when there are any: a statement
-- with data-modifying parts took four times as long to plan, on every
-- write.)
-- $1 [{run_id, step}]
INSERT INTO unknown_deliveries (run_id, step)
SELECT decode(k.run_id, 'hex'), k.step
FROM json_to_recordset($1::json) AS k (run_id text, step integer)
ON CONFLICT DO NOTHING
