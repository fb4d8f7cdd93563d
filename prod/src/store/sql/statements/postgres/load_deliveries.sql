SELECT run_id, step, state, deadline_ms, retryable, epoch, attempts,
    provider_message_id, last_error, resolved_by, resolved_at_ms, owner
FROM deliveries
WHERE run_id = ANY(ARRAY(SELECT decode(x, 'hex') FROM json_array_elements_text($1::json) AS x))
ORDER BY run_id, step
