INSERT INTO runs (id, tenant, flow, recipient, steps, step_count,
    next_step, status, is_head, run_at_ms, attempts, epoch, trigger_key,
    created_at_ms)
SELECT decode(x->>'id', 'hex'), x->>'tenant', x->>'flow', x->>'recipient',
    x->>'steps', (x->>'step_count')::integer, 0, 'pending',
    (x->>'is_head')::boolean, (x->>'run_at_ms')::bigint, 0, 0,
    x->>'trigger_key', (x->>'created_at_ms')::bigint
FROM json_array_elements($1::json) WITH ORDINALITY AS e (x, n) ORDER BY n
