SELECT tenant, recipient FROM heads
WHERE (tenant, recipient) IN (
    SELECT c.tenant, c.recipient
    FROM json_to_recordset($1::json) AS c (tenant text, recipient text))
ORDER BY tenant, recipient FOR SHARE
