SELECT id FROM runs WHERE tenant = $1 AND recipient = $2
AND status IN ('pending', 'leased', 'waiting') ORDER BY id
