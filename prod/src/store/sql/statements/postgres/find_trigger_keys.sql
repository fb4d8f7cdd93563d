SELECT t.tenant, t.key, t.run_id FROM trigger_keys t
JOIN json_to_recordset($1::json) AS k (tenant text, key text)
  ON t.tenant = k.tenant AND t.key = k.key
