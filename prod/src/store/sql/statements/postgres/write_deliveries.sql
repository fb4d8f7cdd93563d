-- Ledger rows written, inserted or replaced whole. No index of
-- `deliveries` names a column written here, so an outcome stays on its
-- page. Rows whose outcome is unknown are listed apart
-- (list_unknown.sql), by the same transaction.
INSERT INTO deliveries (run_id, step, state, deadline_ms, retryable, epoch, attempts,
    provider_message_id, last_error, resolved_by, resolved_at_ms, owner)
SELECT decode(v.run_id, 'hex'), v.step, v.state, v.deadline_ms, v.retryable, v.epoch,
    v.attempts, v.provider_message_id, v.last_error, v.resolved_by, v.resolved_at_ms, v.owner
FROM json_to_recordset($1::json) AS v (run_id text, step integer, state text,
    deadline_ms bigint, retryable integer, epoch bigint, attempts integer,
    provider_message_id text, last_error text, resolved_by text, resolved_at_ms bigint,
    owner text)
ON CONFLICT (run_id, step) DO UPDATE SET state = excluded.state,
    deadline_ms = excluded.deadline_ms, retryable = excluded.retryable,
    epoch = excluded.epoch, attempts = excluded.attempts,
    provider_message_id = excluded.provider_message_id,
    last_error = excluded.last_error, resolved_by = excluded.resolved_by,
    resolved_at_ms = excluded.resolved_at_ms, owner = excluded.owner
