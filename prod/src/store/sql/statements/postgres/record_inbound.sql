INSERT INTO recipients (tenant, recipient, last_inbound_ms)
VALUES ($1, $2, $3) ON CONFLICT (tenant, recipient) DO UPDATE SET
last_inbound_ms = GREATEST(COALESCE(recipients.last_inbound_ms, 0), excluded.last_inbound_ms)
