-- Open runs only, through the two partial indexes that hold them: the
-- heads, and the runs waiting behind them.
SELECT COUNT(CASE WHEN status = 'pending' THEN 1 END),
       COUNT(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN 1 END),
       COUNT(CASE WHEN status = 'leased' THEN 1 END),
       MIN(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN run_at_ms END),
       COUNT(CASE WHEN status = 'waiting' THEN 1 END)
FROM (SELECT status, run_at_ms FROM runs WHERE is_head
      UNION ALL
      SELECT status, run_at_ms FROM runs
      WHERE status = 'pending' AND NOT is_head AND finished_at_ms IS NULL) o
