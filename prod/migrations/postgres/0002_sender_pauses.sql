-- Paused senders: while a tenant has a row here, no send of its runs goes
-- to the provider and claims skip them, except one half-open probe once
-- probe_at_ms (set only for a temporary block) has passed.
CREATE TABLE sender_pauses (
    tenant      TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    code        BIGINT,
    since_ms    BIGINT NOT NULL,
    probe_at_ms BIGINT,
    probes      BIGINT NOT NULL,
    -- For `default`: a fingerprint of the flags' provider settings the
    -- provider refused; an engine started with others lifts the pause.
    settings    TEXT
);
