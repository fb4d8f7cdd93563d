-- Locks nothing: the one writer already holds the database.
SELECT tenant, recipient FROM runs
WHERE is_head AND (tenant, recipient) IN (
    SELECT value->>'tenant', value->>'recipient' FROM json_each($1))
