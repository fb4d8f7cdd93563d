SELECT last_inbound_ms, suppressed_since_ms, suppressed_reason
FROM recipients WHERE tenant = $1 AND recipient = $2
