-- A send's outcome leaves `deliveries`' indexes alone.
--
-- Until now the partial index deliveries_unknown (the ledger rows whose
-- outcome is unknown, for the queue figures) named `state` in its
-- predicate, so every outcome written, sending to sent on every message,
-- could not be a heap-only update: it added an entry to the primary key.
--
-- Now `unknown_deliveries` lists those rows, one narrow row each, written
-- in the same transaction as the ledger when an outcome becomes unknown
-- (and removed when it becomes known, or when pruning deletes the run).
-- No index of `deliveries` names a column an outcome writes.
CREATE TABLE unknown_deliveries (
    run_id BYTEA   NOT NULL,
    step   INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);

INSERT INTO unknown_deliveries (run_id, step)
SELECT run_id, step FROM deliveries WHERE state = 'unknown';

DROP INDEX deliveries_unknown;
