-- How the latest $1 finished runs ended: the partial index of finished
-- runs read backwards, so the work is bounded by $1, not by the table.
SELECT status, COUNT(*) FROM (
    SELECT status FROM runs WHERE finished_at_ms IS NOT NULL
    ORDER BY finished_at_ms DESC, seq DESC LIMIT $1
) latest GROUP BY status
