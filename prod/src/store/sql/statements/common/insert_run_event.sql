-- One event of a run ($1 id, $2 at_ms, $3 the event as JSON); rare, so
-- one statement each.
INSERT INTO run_events (run_id, at_ms, body) VALUES ($1, $2, $3)
