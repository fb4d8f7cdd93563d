-- Makes the oldest waiting run of each listed conversation its head, where
-- it has none. SQLite's one writer needs no re-check: everything it meant
-- to promote, it did.
UPDATE runs SET is_head = TRUE
WHERE status = 'pending' AND NOT is_head AND seq IN (
    SELECT (SELECT w.seq FROM runs w
            WHERE w.tenant = c.tenant AND w.recipient = c.recipient
              AND w.status = 'pending' AND NOT w.is_head
            ORDER BY w.seq LIMIT 1)
    FROM (SELECT value->>'tenant' AS tenant, value->>'recipient' AS recipient
          FROM json_each($1)) AS c
    WHERE NOT EXISTS (SELECT 1 FROM runs h
                      WHERE h.tenant = c.tenant AND h.recipient = c.recipient
                        AND h.is_head))
