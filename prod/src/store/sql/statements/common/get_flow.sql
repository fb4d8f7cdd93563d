SELECT body FROM flows WHERE tenant = $1 AND id = $2
