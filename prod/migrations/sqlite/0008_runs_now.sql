-- Runs as they stand. On PostgreSQL a head's claim state lives in a table
-- of its own and this view overlays it; here `runs` holds it all, and the
-- statements both databases share read this view.
CREATE VIEW runs_now AS SELECT * FROM runs;
