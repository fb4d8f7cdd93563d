UPDATE recipients SET suppressed_since_ms = NULL, suppressed_reason = NULL
WHERE tenant = $1 AND recipient = $2 AND suppressed_since_ms IS NOT NULL
