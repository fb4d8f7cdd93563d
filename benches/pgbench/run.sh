#!/usr/bin/env bash
# The raw-SQL floor beside `cargo bench -p oncesend-benches --bench sql`:
# pgbench running the PostgreSQL store's claim + complete SQL
# (claim_complete.sql) on the same schema, one client, prepared statements,
# at batch 1, 10 and 100. Prints runs/s per batch.
#
#   bash benches/pgbench/run.sh [postgres://postgres@127.0.0.1:5432/test]
set -euo pipefail
cd "$(dirname "$0")"
DB=${1:-${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
SCHEMA=pgbench_oncesend
export PGOPTIONS="-c search_path=$SCHEMA -c plan_cache_mode=force_custom_plan"

psql "$DB" -qX -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA"
psql "$DB" -qX -v ON_ERROR_STOP=1 -f ../../prod/migrations/postgres/0001_init.sql

for batch in 1 10 100; do
    rounds=$((10000 / batch))
    psql "$DB" -qX -v ON_ERROR_STOP=1 -c "
        INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, next_step, status,
                          is_head, run_at_ms, attempts, epoch, created_at_ms)
        SELECT decode(md5($batch || ':' || g), 'hex'), 'default', 'bench',
               '+55' || (11000000000 + $batch * 100000 + g)::text,
               '[{\"text\":\"first\",\"delay_ms\":0},{\"text\":\"second\",\"delay_ms\":0}]',
               2, 0, 'pending', TRUE, 0, 0, 0, 0
        FROM generate_series(1, $((rounds * batch))) g" -c "VACUUM ANALYZE runs"
    tps=$(pgbench "$DB" -n -M prepared -c 1 -t "$rounds" -D batch="$batch" -f claim_complete.sql \
          | awk '/^tps/ {print $3}')
    left=$(psql "$DB" -qXAt -c "SELECT count(*) FROM runs WHERE status <> 'completed'")
    if [ "$left" != 0 ]; then
        echo "pgbench batch=$batch: $left runs were not completed; the script did not do its work" >&2
        exit 1
    fi
    echo "pgbench batch=$batch rounds=$rounds tps=$tps runs_per_s=$(awk -v t="$tps" -v b="$batch" 'BEGIN {printf "%.0f", t * b}')"
done
psql "$DB" -qX -c "SET client_min_messages = warning" -c "DROP SCHEMA $SCHEMA CASCADE"
