SELECT id, tenant, trigger_key FROM runs
WHERE finished_at_ms IS NOT NULL AND finished_at_ms < $1
ORDER BY seq LIMIT $2
