SELECT count(*) FROM unknown_deliveries
