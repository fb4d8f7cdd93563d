SELECT id FROM runs WHERE id IN (SELECT unhex(value) FROM json_each($1))
