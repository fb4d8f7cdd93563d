-- A finish leaves `runs`' indexes alone.
--
-- Until now two indexes of `runs` named finished_at_ms: runs_finished (for
-- pruning and the console's finished counts) and runs_open, whose
-- predicate held the unfinished runs (for promotion and the queue
-- figures). So the one write every run ends with, its finish, could not
-- be a heap-only update: it added an entry to every index of `runs`.
--
-- Now `finished_runs` lists the finished runs by finish time, one narrow
-- row each, written in the same statement as the finish (and removed when
-- an operator sends a run on again, or when pruning deletes it). Promotion
-- walks a conversation's runs through runs_by_recipient, starting after
-- the head that finished: a head is its conversation's oldest unfinished
-- run, so everything still to send comes after it. No index of `runs`
-- names a column a claim, a step or a finish writes.
CREATE TABLE finished_runs (
    seq            BIGINT PRIMARY KEY,
    finished_at_ms BIGINT NOT NULL
);
CREATE INDEX finished_runs_by_time ON finished_runs (finished_at_ms, seq);

INSERT INTO finished_runs (seq, finished_at_ms)
SELECT seq, finished_at_ms FROM runs WHERE finished_at_ms IS NOT NULL;

DROP INDEX runs_finished;
DROP INDEX runs_open;
