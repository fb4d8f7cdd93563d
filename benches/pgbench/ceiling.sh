#!/usr/bin/env bash
# The raw queue ceiling two ways, on the table `pg_ceiling.sh` uses (the
# same columns, partial index and payload), with rows to spare for the
# whole run, 4 clients, batches of 100, synchronous commit as the server
# has it:
#
#   claim-only  the statement `pg_ceiling.sh` times. Its outer UPDATE of
#               the rows its own CTE just claimed sees them as they were
#               before the statement and changes nothing, so each message
#               is one row version: a claim, never a completion.
#   completing  the claim, then the completion of the claimed rows, as two
#               statements of one transaction: two row versions per
#               message, one commit per batch. This is the least a queue
#               that records an outcome can do.
#
#   bash benches/pgbench/ceiling.sh [ROWS] [SECONDS] [DATABASE URL]
#
# Prints rows/s for each and how many rows each left `sent` (claim-only
# leaves none). Runs in a database of its own choosing: a scratch one.
set -euo pipefail
ROWS=${1:-3000000}
SECS=${2:-8}
DB=${3:-${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
psql_() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$DB" "$@"; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"; psql_ -c "DROP TABLE IF EXISTS ceiling_q" >/dev/null 2>&1 || true' EXIT

cat > "$dir/claim_only.sql" <<'SQL'
WITH c AS (UPDATE ceiling_q SET status = 'claimed', lease_owner = gen_random_uuid(),
    lease_until = now() + interval '30s', attempts = attempts + 1
  WHERE id IN (SELECT id FROM ceiling_q WHERE status = 'pending' ORDER BY id
    FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING id)
UPDATE ceiling_q SET status = 'sent' WHERE id IN (SELECT id FROM c);
SQL
cat > "$dir/completing.sql" <<'SQL'
BEGIN;
WITH c AS (UPDATE ceiling_q SET status = 'claimed', lease_owner = gen_random_uuid(),
    lease_until = now() + interval '30s', attempts = attempts + 1
  WHERE id IN (SELECT id FROM ceiling_q WHERE status = 'pending' ORDER BY id
    FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING id)
SELECT coalesce(array_agg(id), '{}')::text AS ids FROM c \gset
UPDATE ceiling_q SET status = 'sent', lease_owner = NULL WHERE id = ANY(:ids::bigint[]);
COMMIT;
SQL

for kind in claim_only completing; do
    psql_ -c "DROP TABLE IF EXISTS ceiling_q;
      CREATE TABLE ceiling_q (id bigserial PRIMARY KEY, recipient text NOT NULL,
        status text NOT NULL DEFAULT 'pending', lease_owner uuid, lease_until timestamptz,
        attempts int NOT NULL DEFAULT 0, payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now());
      CREATE INDEX ceiling_q_pending ON ceiling_q (id) WHERE status = 'pending';
      INSERT INTO ceiling_q (recipient, payload)
        SELECT '55119' || (g % 1000), jsonb_build_object('text', 'hello ' || g)
        FROM generate_series(1, $ROWS) g;"
    psql_ -c "VACUUM ANALYZE ceiling_q" -c "CHECKPOINT"
    out=$(pgbench -n -M prepared -c 4 -j 2 -T "$SECS" -f "$dir/$kind.sql" "$DB" 2>&1)
    tps=$(awk '/^tps/ {print $3; exit}' <<<"$out")
    left=$(psql_ -At -c "SELECT count(*) FILTER (WHERE status = 'pending'),
        count(*) FILTER (WHERE status = 'sent') FROM ceiling_q")
    pending=${left%|*}
    sent=${left#*|}
    if [ "$pending" -eq 0 ]; then
        echo "$kind: the table ran dry; give more ROWS" >&2
        exit 1
    fi
    awk -v k="$kind" -v t="$tps" -v s="$sent" \
        'BEGIN { printf "%-11s rows/s = %.0f (tps %.1f x 100); rows left sent: %d\n", k, t * 100, t, s }'
done
