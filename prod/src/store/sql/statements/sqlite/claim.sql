-- The due heads, for the one writer (under BEGIN IMMEDIATE) to lease with
-- the shared rules and write back. $1 now_ms, $2 most runs.
SELECT seq, id, tenant, flow, recipient, steps, next_step, status, run_at_ms,
    attempts, epoch, lease_owner, lease_until_ms, reason, trigger_key, created_at_ms,
    finished_at_ms, wait, note, step_count
FROM runs
WHERE is_head AND run_at_ms <= $1
  AND (status IN ('pending', 'waiting') OR lease_until_ms <= $1)
  AND NOT EXISTS (SELECT 1 FROM sender_pauses p WHERE p.tenant = runs.tenant
    AND (p.probe_at_ms IS NULL OR p.probe_at_ms > $1))
ORDER BY run_at_ms, seq LIMIT $2
