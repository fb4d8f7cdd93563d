INSERT INTO trigger_keys (tenant, key, run_id)
SELECT k.tenant, k.key, decode(k.run_id, 'hex')
FROM json_to_recordset($1::json) AS k (tenant text, key text, run_id text)
