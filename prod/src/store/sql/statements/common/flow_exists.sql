SELECT 1 FROM flows WHERE tenant = $1 AND id = $2
