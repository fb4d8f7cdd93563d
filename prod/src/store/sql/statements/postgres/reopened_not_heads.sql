-- Runs this transaction sent on again that do not head their conversation.
-- Each was let go on because no other run of its conversation was
-- unfinished, as far as this transaction could see; if one is not the
-- head now, an enqueue made a newer run the head meanwhile (its promotion
-- found the place taken), and the run would wait behind that newer run
-- and be passed over once it finished. The transaction is then tried
-- again, and sees the new run.
-- $1 [{tenant, recipient, seq}]; answers how many.
SELECT count(*) FROM json_to_recordset($1::json) AS c (tenant text, recipient text, seq bigint)
WHERE NOT EXISTS (
    SELECT 1 FROM heads h
    WHERE h.tenant = c.tenant AND h.recipient = c.recipient AND h.seq = c.seq)
