INSERT INTO flows (tenant, id, body) VALUES ($1, $2, $3)
ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body
