-- Finished runs past the cutoff $1, oldest seq first, at most $2.
SELECT r.id, r.tenant, r.trigger_key, r.seq FROM finished_runs f
JOIN runs r ON r.seq = f.seq
WHERE f.finished_at_ms < $1
ORDER BY f.seq LIMIT $2
