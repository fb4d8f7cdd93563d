-- Who began each step's last send (the lease holder at the time), and the
-- events a run's row and ledger do not keep: lease rescues, holders'
-- writes refused by the fence, sends the ledger answered instead of
-- sending again. Rare by design: the happy path inserts no event. `body`
-- is the event as JSON (at_ms, step, kind and the kind's fields).
ALTER TABLE deliveries ADD COLUMN owner TEXT;
CREATE TABLE run_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id BLOB    NOT NULL,
    at_ms  INTEGER NOT NULL,
    body   TEXT    NOT NULL
);
CREATE INDEX run_events_by_run ON run_events (run_id, id);
