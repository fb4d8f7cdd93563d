INSERT INTO runs (id, tenant, flow, recipient, steps, step_count,
    next_step, status, is_head, run_at_ms, attempts, epoch, trigger_key,
    created_at_ms)
SELECT unhex(value->>'id'), value->>'tenant', value->>'flow',
    value->>'recipient', value->>'steps', value->>'step_count', 0, 'pending',
    value->>'is_head', value->>'run_at_ms', 0, 0, value->>'trigger_key',
    value->>'created_at_ms'
FROM json_each($1) ORDER BY key
