-- Built per chunk: the ids marker becomes one placeholder per run id.
DELETE FROM run_events WHERE run_id IN ({ids})
