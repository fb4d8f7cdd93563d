INSERT INTO sender_pauses (tenant, reason, code, since_ms, probe_at_ms, probes, settings)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant) DO UPDATE SET reason = excluded.reason, code = excluded.code,
    since_ms = excluded.since_ms, probe_at_ms = excluded.probe_at_ms,
    probes = excluded.probes, settings = excluded.settings
