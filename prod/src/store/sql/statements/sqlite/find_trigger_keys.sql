SELECT t.tenant, t.key, t.run_id FROM json_each($1) AS k
JOIN trigger_keys t
  ON t.tenant = k.value->>'tenant' AND t.key = k.value->>'key'
