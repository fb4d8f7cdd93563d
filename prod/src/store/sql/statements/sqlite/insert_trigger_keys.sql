INSERT INTO trigger_keys (tenant, key, run_id)
SELECT value->>'tenant', value->>'key', unhex(value->>'run_id')
FROM json_each($1)
