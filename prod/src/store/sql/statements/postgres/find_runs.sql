SELECT id FROM runs
WHERE id = ANY(ARRAY(SELECT decode(x, 'hex') FROM json_array_elements_text($1::json) AS x))
