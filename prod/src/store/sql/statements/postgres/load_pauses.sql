SELECT tenant, reason, code, since_ms, probe_at_ms, probes, settings
FROM sender_pauses
WHERE tenant IN (SELECT jsonb_array_elements_text($1::jsonb)) FOR UPDATE
