SELECT r.tenant, r.recipient, r.suppressed_since_ms, r.suppressed_reason
FROM json_each($1) AS c JOIN recipients r
  ON r.tenant = c.value->>'tenant' AND r.recipient = c.value->>'recipient'
WHERE r.suppressed_since_ms IS NOT NULL
