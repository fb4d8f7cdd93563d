-- Makes the oldest waiting run of each listed conversation its head, where
-- it has none; answers how many it meant to promote and how many it did.
-- The update finds its rows by primary key: the re-check is written so it
-- cannot use runs_waiting, whose leading columns are not seq.
WITH wanted AS (
    SELECT (SELECT w.seq FROM runs w
            WHERE w.tenant = c.tenant AND w.recipient = c.recipient
              AND w.status = 'pending' AND NOT w.is_head AND w.finished_at_ms IS NULL
            ORDER BY w.seq LIMIT 1) AS seq
    FROM json_to_recordset($1::json) AS c (tenant text, recipient text)
    WHERE NOT EXISTS (SELECT 1 FROM runs h
                      WHERE h.tenant = c.tenant AND h.recipient = c.recipient
                        AND h.is_head)),
promoted AS (
    UPDATE runs SET is_head = TRUE
    WHERE coalesce(status, '') = 'pending' AND is_head IS NOT TRUE
      AND seq = ANY(ARRAY(SELECT seq FROM wanted WHERE seq IS NOT NULL))
    RETURNING 1)
SELECT (SELECT COUNT(*) FROM wanted WHERE seq IS NOT NULL),
       (SELECT COUNT(*) FROM promoted)
