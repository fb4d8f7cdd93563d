-- Built per chunk: the ids marker becomes one placeholder per run id.
DELETE FROM runs WHERE id IN ({ids})
