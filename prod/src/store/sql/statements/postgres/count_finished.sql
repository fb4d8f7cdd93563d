-- How the latest $1 finished runs ended: `finished_runs` read backwards
-- by finish time, so the work is bounded by $1, not by the table.
SELECT r.status, COUNT(*) FROM (
    SELECT seq FROM finished_runs ORDER BY finished_at_ms DESC, seq DESC LIMIT $1
) latest JOIN runs r ON r.seq = latest.seq
GROUP BY r.status
