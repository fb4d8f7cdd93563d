INSERT INTO recipients (tenant, recipient, suppressed_since_ms, suppressed_reason)
VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, recipient) DO UPDATE SET
    suppressed_since_ms = excluded.suppressed_since_ms,
    suppressed_reason = excluded.suppressed_reason
WHERE recipients.suppressed_since_ms IS NULL
