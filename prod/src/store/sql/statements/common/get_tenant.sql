SELECT body FROM tenants WHERE id = $1
