SELECT tenant, recipient FROM runs
WHERE is_head AND (tenant, recipient) IN (
    SELECT c.tenant, c.recipient
    FROM json_to_recordset($1::json) AS c (tenant text, recipient text))
ORDER BY id FOR SHARE OF runs
