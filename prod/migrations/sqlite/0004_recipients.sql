-- What each tenant knows of a recipient: when they last wrote (their
-- 24-hour customer-service window) and whether they opted out. While
-- suppressed_since_ms is set, triggers to them are refused and their
-- unfinished runs were cancelled.
CREATE TABLE recipients (
    tenant              TEXT   NOT NULL,
    recipient           TEXT   NOT NULL,
    last_inbound_ms     BIGINT,
    suppressed_since_ms BIGINT,
    suppressed_reason   TEXT,
    PRIMARY KEY (tenant, recipient)
);
CREATE INDEX recipients_suppressed ON recipients (tenant, recipient)
    WHERE suppressed_since_ms IS NOT NULL;
