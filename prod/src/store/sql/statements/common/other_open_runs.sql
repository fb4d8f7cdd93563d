SELECT id FROM runs WHERE tenant = $1 AND recipient = $2 AND id <> $3
AND status IN ('pending', 'leased', 'waiting')
