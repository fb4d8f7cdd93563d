-- A run whose step's outcome is unknown, or whose next step waits for the
-- previous one's status, is `waiting`: it holds no lease, stays its
-- conversation's head, and is claimed again when its wait (run_at_ms) runs
-- out. `wait` says what it waits for: 'outcome', 'delivered' or 'read'.
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('pending', 'leased', 'waiting', 'completed', 'failed', 'cancelled'));
ALTER TABLE runs DROP CONSTRAINT runs_head_is_open;
ALTER TABLE runs ADD CONSTRAINT runs_head_is_open
    CHECK (NOT is_head OR status IN ('pending', 'leased', 'waiting'));
ALTER TABLE runs ADD COLUMN wait TEXT;
ALTER TABLE runs ADD CONSTRAINT runs_wait_when_waiting CHECK ((status = 'waiting') = (wait IS NOT NULL));
-- What a run did that its flow did not ask for (a step sent without the
-- status it was to wait for).
ALTER TABLE runs ADD COLUMN note TEXT;

-- Who settled an unknown delivery by hand (or asked for a failed step
-- again), and when.
ALTER TABLE deliveries ADD COLUMN resolved_by TEXT;
ALTER TABLE deliveries ADD COLUMN resolved_at_ms BIGINT;
