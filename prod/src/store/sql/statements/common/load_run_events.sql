-- A run's events ($1 its id), oldest first.
SELECT body FROM run_events WHERE run_id = $1 ORDER BY id
