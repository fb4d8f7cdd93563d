-- Each row turned into JSONB once; see write_runs.sql. `WHERE true` keeps
-- SQLite from reading ON CONFLICT as a join constraint.
WITH v AS MATERIALIZED (SELECT jsonb(value) AS j FROM json_each($1))
INSERT INTO deliveries (run_id, step, state,
    deadline_ms, retryable, epoch, attempts, provider_message_id, last_error, resolved_by,
    resolved_at_ms, owner)
SELECT unhex(j->>'run_id'), j->>'step', j->>'state', j->>'deadline_ms',
    j->>'retryable', j->>'epoch', j->>'attempts',
    j->>'provider_message_id', j->>'last_error', j->>'resolved_by',
    j->>'resolved_at_ms', j->>'owner'
FROM v WHERE true
ON CONFLICT (run_id, step) DO UPDATE SET state = excluded.state,
    deadline_ms = excluded.deadline_ms, retryable = excluded.retryable,
    epoch = excluded.epoch, attempts = excluded.attempts,
    provider_message_id = excluded.provider_message_id,
    last_error = excluded.last_error, resolved_by = excluded.resolved_by,
    resolved_at_ms = excluded.resolved_at_ms, owner = excluded.owner
