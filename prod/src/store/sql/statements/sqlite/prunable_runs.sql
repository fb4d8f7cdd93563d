-- Finished runs past the cutoff $1, oldest seq first, at most $2.
SELECT id, tenant, trigger_key, seq FROM runs
WHERE finished_at_ms IS NOT NULL AND finished_at_ms < $1
ORDER BY seq LIMIT $2
