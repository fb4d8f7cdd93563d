-- A page of stored flows in key order, through the primary key; ('', '')
-- is before every flow, as no tenant's name is empty.
SELECT tenant, body FROM flows
WHERE (tenant, id) > ($1, $2)
ORDER BY tenant, id LIMIT $3
