SELECT r.tenant, r.recipient FROM recipients r
JOIN json_to_recordset($1::json) AS c (tenant text, recipient text)
  ON r.tenant = c.tenant AND r.recipient = c.recipient
WHERE r.suppressed_since_ms IS NOT NULL ORDER BY r.tenant, r.recipient FOR SHARE OF r
