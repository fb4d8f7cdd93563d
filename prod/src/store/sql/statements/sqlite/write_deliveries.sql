-- `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
INSERT INTO deliveries (run_id, step, state,
    deadline_ms, retryable, epoch, attempts, provider_message_id, last_error, resolved_by,
    resolved_at_ms)
SELECT unhex(value->>'run_id'), value->>'step', value->>'state', value->>'deadline_ms',
    value->>'retryable', value->>'epoch', value->>'attempts',
    value->>'provider_message_id', value->>'last_error', value->>'resolved_by',
    value->>'resolved_at_ms'
FROM json_each($1) WHERE true
ON CONFLICT (run_id, step) DO UPDATE SET state = excluded.state,
    deadline_ms = excluded.deadline_ms, retryable = excluded.retryable,
    epoch = excluded.epoch, attempts = excluded.attempts,
    provider_message_id = excluded.provider_message_id,
    last_error = excluded.last_error, resolved_by = excluded.resolved_by,
    resolved_at_ms = excluded.resolved_at_ms
