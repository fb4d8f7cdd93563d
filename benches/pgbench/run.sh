#!/usr/bin/env bash
# The raw-SQL floor beside `cargo bench -p oncesend-benches --bench sql`:
# pgbench running the PostgreSQL store's own claim and write-back
# statements on the same schema, one client, prepared statements, at
# batch 1, 10 and 100. Prints runs/s per batch.
#
#   bash benches/pgbench/run.sh [postgres://postgres@127.0.0.1:5432/test]
#
# The pgbench script is assembled here, on every run, from the very files
# the store includes (prod/src/store/sql/statements/postgres/*.sql): their
# comment lines dropped, each `$n` placeholder replaced by a pgbench
# variable (-M prepared binds each variable as a parameter, as the store
# binds its values), a `;` or `\gset` appended. One round is the store's
# two transactions for a claim and its completion:
#   1. begin, read the database clock, claim (the claim statement as it is,
#      its final SELECT made a CTE whose outer SELECT builds, from the
#      claimed rows, the JSON the store builds client-side), commit;
#   2. begin, read the clock, lock the runs (and their heads), write the
#      heads back (they leave: their runs finished), write the runs back
#      completed, promote the next run of each conversation, commit.
set -euo pipefail
cd "$(dirname "$0")"
DB=${1:-${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
SCHEMA=pgbench_oncesend
STATEMENTS=../../prod/src/store/sql/statements/postgres
export PGOPTIONS="-c search_path=$SCHEMA -c plan_cache_mode=force_custom_plan"

# statement NAME [VARIABLE for $1] [for $2] …: the store's file NAME.sql,
# comments dropped, its placeholders replaced by these pgbench variables.
statement() {
    local file=$STATEMENTS/$1.sql n=0 subst=(-e '')
    shift
    [ -f "$file" ] || { echo "run.sh: no statement $file" >&2; exit 1; }
    for var in "$@"; do
        n=$((n + 1))
        subst+=(-e "s/\\\$$n\\b/:$var/g")
    done
    sed -e '/^[[:space:]]*--/d' "${subst[@]}" "$file"
    if grep -v '^[[:space:]]*--' "$file" | sed "${subst[@]}" | grep -q '\$[0-9]'; then
        echo "run.sh: $file has a placeholder left unbound" >&2
        exit 1
    fi
}

script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
    statement begin; echo ';'
    statement now; echo '\gset'
    echo '\set until :now_ms + 30000'
    # The claim is a WITH of its own (data-modifying CTEs must stay at the
    # top): its final SELECT becomes one more CTE, `claimed`.
    statement claim now_ms batch owner until |
        sed -e 's/^SELECT r\.seq,/, claimed AS (SELECT r.seq,/'
    echo ')'
    cat <<'SQL'
SELECT json_agg(encode(id, 'hex'))::text AS ids,
       json_agg(json_build_object('tenant', tenant, 'recipient', recipient, 'after', seq))::text
           AS conversations,
       json_agg(json_build_object(
           'tenant', tenant, 'recipient', recipient, 'seq', seq, 'read_epoch', epoch,
           'keep', FALSE, 'status', 'completed', 'epoch', epoch, 'lease_owner', NULL,
           'lease_until_ms', NULL, 'run_at_ms', run_at_ms, 'wait', NULL))::text AS heads,
       json_agg(json_build_object(
           'id', encode(id, 'hex'), 'read_epoch', epoch, 'head', TRUE, 'status', 'completed',
           'next_step', 2, 'run_at_ms', run_at_ms, 'attempts', 0, 'epoch', epoch,
           'lease_owner', NULL, 'lease_until_ms', NULL, 'reason', NULL,
           'finished_at_ms', CAST(:now_ms AS BIGINT), 'wait', NULL, 'note', NULL,
           'read_finished_at_ms', NULL))::text AS writes
FROM claimed
SQL
    echo '\gset'
    echo 'COMMIT;'
    statement begin; echo ';'
    statement now; echo '\gset'
    statement load_runs_locked ids; echo ';'
    statement write_heads heads; echo ';'
    statement write_runs writes; echo ';'
    statement promote conversations; echo ';'
    echo 'COMMIT;'
} > "$script"

psql "$DB" -qX -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA"
for migration in ../../prod/migrations/postgres/*.sql; do
    psql "$DB" -qX -v ON_ERROR_STOP=1 -f "$migration"
done

for batch in 1 10 100; do
    rounds=$((10000 / batch))
    psql "$DB" -qX -v ON_ERROR_STOP=1 -c "
        INSERT INTO runs (id, tenant, flow, recipient, steps, step_count, next_step, status,
                          run_at_ms, attempts, epoch, created_at_ms)
        SELECT decode(md5($batch || ':' || g), 'hex'), 'default', 'bench',
               '+55' || (11000000000 + $batch * 100000 + g)::text,
               '[{\"text\":\"first\",\"delay_ms\":0},{\"text\":\"second\",\"delay_ms\":0}]',
               2, 0, 'pending', 0, 0, 0, 0
        FROM generate_series(1, $((rounds * batch))) g" \
        -c "INSERT INTO heads (tenant, recipient, seq, run_at_ms, status, epoch)
            SELECT tenant, recipient, seq, run_at_ms, 'pending', 0 FROM runs
            WHERE finished_at_ms IS NULL" \
        -c "VACUUM ANALYZE runs" -c "VACUUM ANALYZE heads"
    tps=$(pgbench "$DB" -n -M prepared -c 1 -t "$rounds" -D batch="$batch" -D owner=pgbench -f "$script" \
          | awk '/^tps/ {print $3}')
    left=$(psql "$DB" -qXAt -c "SELECT count(*) FROM runs WHERE status <> 'completed'")
    if [ "$left" != 0 ]; then
        echo "pgbench batch=$batch: $left runs were not completed; the script did not do its work" >&2
        exit 1
    fi
    echo "pgbench batch=$batch rounds=$rounds tps=$tps runs_per_s=$(awk -v t="$tps" -v b="$batch" 'BEGIN {printf "%.0f", t * b}')"
done
psql "$DB" -qX -c "SET client_min_messages = warning" -c "DROP SCHEMA $SCHEMA CASCADE"
