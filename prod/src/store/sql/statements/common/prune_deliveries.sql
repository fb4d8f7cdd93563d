-- Built per chunk: the ids marker becomes one placeholder per run id.
DELETE FROM deliveries WHERE run_id IN ({ids})
