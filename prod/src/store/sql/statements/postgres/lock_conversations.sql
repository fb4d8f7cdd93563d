-- Serializes enqueues into the same conversations, in every process: a
-- transaction-scoped advisory lock per conversation, taken in one order so
-- two enqueues wait for each other at worst, never in a cycle. Without it
-- two enqueues that both find a conversation without a head would both
-- make their run its head, and the one that lost the race for the heads
-- key could hold the older run (under load its whole batch was tried
-- again until it gave up). Write-backs take no such lock.
-- $1 [{"tenant","recipient"}].
SELECT count(pg_advisory_xact_lock(k.class, k.conversation)) FROM (
    SELECT DISTINCT hashtext('oncesend conversation') AS class,
        hashtext(c.tenant || '/' || c.recipient) AS conversation
    FROM json_to_recordset($1::json) AS c (tenant text, recipient text)
    ORDER BY conversation) AS k
