-- The console and `GET /v1/runs` list runs newest first by seq, a page at a
-- time (seq < the last one seen). By recipient or by flow, one run in a
-- million may match: without these, a page would walk the whole table
-- backwards to fill. Both name only columns a run is born with, so claims
-- stay heap-only updates on PostgreSQL. Status and tenant have none: the
-- open statuses change on every claim, and tenants are few.
CREATE INDEX runs_by_recipient ON runs (recipient, seq);
CREATE INDEX runs_by_flow ON runs (flow, seq);
