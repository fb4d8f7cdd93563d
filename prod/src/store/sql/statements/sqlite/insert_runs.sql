-- Each row turned into JSONB once; see write_runs.sql.
WITH v AS MATERIALIZED (SELECT key, jsonb(value) AS j FROM json_each($1))
INSERT INTO runs (id, tenant, flow, recipient, steps, step_count,
    next_step, status, is_head, run_at_ms, attempts, epoch, trigger_key,
    created_at_ms)
SELECT unhex(j->>'id'), j->>'tenant', j->>'flow',
    j->>'recipient', j->>'steps', j->>'step_count', 0, 'pending',
    j->>'is_head', j->>'run_at_ms', 0, 0, j->>'trigger_key',
    j->>'created_at_ms'
FROM v ORDER BY key
