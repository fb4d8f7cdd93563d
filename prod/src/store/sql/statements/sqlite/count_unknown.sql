SELECT COUNT(*) FROM deliveries WHERE state = 'unknown'
