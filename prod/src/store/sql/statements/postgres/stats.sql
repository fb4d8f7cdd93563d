-- Open runs only: the heads, and the runs waiting behind them (unfinished
-- runs, through runs_open, that are not a head).
SELECT COUNT(CASE WHEN status = 'pending' THEN 1 END),
       COUNT(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN 1 END),
       COUNT(CASE WHEN status = 'leased' THEN 1 END),
       MIN(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN run_at_ms END),
       COUNT(CASE WHEN status = 'waiting' THEN 1 END)
FROM (SELECT status, run_at_ms FROM heads
      UNION ALL
      SELECT r.status, r.run_at_ms FROM runs r
      WHERE r.finished_at_ms IS NULL
        AND NOT EXISTS (SELECT 1 FROM heads h WHERE h.tenant = r.tenant
                          AND h.recipient = r.recipient AND h.seq = r.seq)) o
