SELECT tenant, reason, code, since_ms, probe_at_ms, probes, settings
FROM sender_pauses ORDER BY tenant
