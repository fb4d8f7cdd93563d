-- Open runs only: the heads, and the runs waiting behind them. A head is
-- its conversation's oldest unfinished run, so those are the unfinished
-- runs after it, found through runs_by_recipient.
SELECT COUNT(CASE WHEN status = 'pending' THEN 1 END),
       COUNT(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN 1 END),
       COUNT(CASE WHEN status = 'leased' THEN 1 END),
       MIN(CASE WHEN status = 'pending' AND run_at_ms <= $1 THEN run_at_ms END),
       COUNT(CASE WHEN status = 'waiting' THEN 1 END)
FROM (SELECT status, run_at_ms FROM heads
      UNION ALL
      SELECT r.status, r.run_at_ms FROM heads h
      JOIN runs r ON r.recipient = h.recipient AND r.seq > h.seq AND r.tenant = h.tenant
      WHERE r.finished_at_ms IS NULL) o
