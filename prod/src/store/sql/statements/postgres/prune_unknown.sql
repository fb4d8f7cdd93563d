DELETE FROM unknown_deliveries WHERE run_id IN ({ids})
