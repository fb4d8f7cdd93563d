-- Built per chunk: the keys marker becomes one (tenant, key) pair of
-- placeholders per key.
WITH k (tenant, key) AS (VALUES {keys})
DELETE FROM trigger_keys WHERE (tenant, key) IN (SELECT tenant, key FROM k)
