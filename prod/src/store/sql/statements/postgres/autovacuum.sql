-- Whether the server vacuums on its own: the pruner deletes finished runs,
-- and only a vacuum makes their space usable again.
SELECT current_setting('autovacuum') AS autovacuum
