SELECT body FROM tenants ORDER BY id
