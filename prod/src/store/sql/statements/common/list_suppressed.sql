SELECT recipient, suppressed_since_ms, suppressed_reason FROM recipients
WHERE tenant = $1 AND suppressed_since_ms IS NOT NULL AND recipient > $2
ORDER BY recipient LIMIT $3
