-- A claim rewrites a head's status, epoch and lease. While an index (or an
-- index's predicate) named one of those columns, PostgreSQL could not keep
-- the new row version on its page as a heap-only tuple (HOT): every claim
-- added an entry to every index of `runs`, and the dead ones had to be
-- cleaned out again. runs_waiting named `status`; it now says the same
-- thing with columns a claim never writes. A run is unfinished exactly
-- while finished_at_ms is null, and the constraint below makes that a
-- fact of the schema rather than of the code.
ALTER TABLE runs ADD CONSTRAINT runs_finished_when_terminal
    CHECK ((finished_at_ms IS NULL) = (status IN ('pending', 'leased', 'waiting')));
DROP INDEX runs_waiting;
CREATE INDEX runs_waiting ON runs (tenant, recipient, seq)
    WHERE NOT is_head AND finished_at_ms IS NULL;
-- And room on each page for those versions: a run's row is about 270
-- bytes, so at 80% a page kept room for barely five new versions, and
-- half the claims still could not stay on their page.
ALTER TABLE runs SET (fillfactor = 50);
