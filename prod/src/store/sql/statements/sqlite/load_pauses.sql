SELECT tenant, reason, code, since_ms, probe_at_ms, probes, settings
FROM sender_pauses
WHERE tenant IN (SELECT value FROM json_each($1))
