-- New runs, in the order given (their seq grows in that order), and a
-- `heads` row for each that heads its conversation. A conversation can
-- have gained a head since the enqueue looked (lock_heads.sql): a head it
-- waited for finished and the write-back that finished it promoted the
-- next run, in a row that statement did not see. That run is older than
-- these, so it stays the head and the new run waits behind it.
WITH x AS (
    SELECT e.x, e.n FROM json_array_elements($1::json) WITH ORDINALITY AS e (x, n)),
inserted AS (
    INSERT INTO runs (id, tenant, flow, recipient, steps, step_count,
        next_step, status, run_at_ms, attempts, epoch, trigger_key, created_at_ms)
    SELECT decode(x->>'id', 'hex'), x->>'tenant', x->>'flow', x->>'recipient',
        x->>'steps', (x->>'step_count')::integer, 0, 'pending',
        (x->>'run_at_ms')::bigint, 0, 0, x->>'trigger_key', (x->>'created_at_ms')::bigint
    FROM x ORDER BY n
    RETURNING seq, id, tenant, recipient, run_at_ms)
INSERT INTO heads (tenant, recipient, seq, run_at_ms, status, epoch)
SELECT i.tenant, i.recipient, i.seq, i.run_at_ms, 'pending', 0
FROM inserted i JOIN x ON decode(x.x->>'id', 'hex') = i.id
WHERE (x.x->>'is_head')::boolean
ON CONFLICT (tenant, recipient) DO NOTHING
