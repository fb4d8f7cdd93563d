SELECT run_id, step, state, deadline_ms, retryable, epoch, attempts,
    provider_message_id, last_error, resolved_by, resolved_at_ms, owner
FROM deliveries WHERE run_id IN (SELECT unhex(value) FROM json_each($1))
ORDER BY run_id, step
