#!/usr/bin/env bash
# What GET /stats costs at 10 million jobs (issue 22), and what its counters
# cost an outcome write. Opt-in, like bench/run.sh; not part of the tests.
#
#   bench/stats.sh                        # 10M rows
#   STATS_ROWS=1000000 bench/stats.sh
#
# Starts a private Postgres cluster (initdb in a temporary folder, its own
# port, default durability), migrates it to schema 12, loads STATS_ROWS
# jobs (2,000 of them not finished; the rest sent, failed, uncertain,
# canceled, suppressed; some duplicates, every failed and uncertain one a
# dead letter) in three tenants, then applies
# migrations 13 (timed: it backfills the counters) and 14, prints EXPLAIN (ANALYZE,
# BUFFERS) of the three statements of `Store::stats` (shared/src/store/
# stats.rs; bench/stats.sql holds the same text), and times them as one
# read-only transaction per call, as the endpoint runs them: the median and
# the 95th percentile of STATS_CALLS calls, for one tenant and for all.
# Then pgbench measures outcome writes with 5 clients, with the counter
# rows spread over 16 slots and with one slot (a hot row).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rows=${STATS_ROWS:-10000000}
calls=${STATS_CALLS:-200}
port=${STATS_PG_PORT:-55433}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
fi
stop() {
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c shared_buffers=256MB -c max_wal_size=4GB" start >/dev/null
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)

for f in $(ls migrations/V*.sql | sort -t V -k2 -n); do
    case $f in *V13__* | *V14__*) continue ;; esac
    "${psql[@]}" -f "$f"
done

echo "loading $rows jobs at schema 12 ..."
start=$(date +%s)
"${psql[@]}" <<SQL
INSERT INTO deliveries (tenant, idempotency_key, job_id, state, attempts, fence, task,
                        created_at, updated_at, next_attempt_at, sent_at)
SELECT 'tenant' || (i % 3), 'k' || i, gen_random_uuid(),
       CASE WHEN i <= 2000 THEN (ARRAY['queued', 'retrying', 'processing', 'sending'])[1 + i % 4]
            WHEN i % 100 = 1 THEN 'failed'
            WHEN i % 1000 = 2 THEN 'uncertain'
            WHEN i % 100 = 3 THEN 'canceled'
            WHEN i % 100 = 4 THEN 'suppressed'
            ELSE 'sent' END,
       1, 1,
       CASE (i / 3) % 3 WHEN 0 THEN '{"priority":"high"}'::jsonb
                        WHEN 1 THEN '{}'::jsonb ELSE '{"priority":"low"}'::jsonb END,
       now() - interval '30 days' * random(), now() - interval '1 day' * random(),
       CASE WHEN i % 8 = 1 THEN now() + interval '1 hour' END,
       CASE WHEN i > 2000 THEN now() END
FROM generate_series(1, $rows) AS i;
INSERT INTO duplicate_jobs (job_id, tenant, idempotency_key, duplicate_of, layer)
SELECT gen_random_uuid(), tenant, idempotency_key, job_id, 'l2'
FROM deliveries WHERE idempotency_key LIKE '%7' AND random() < 0.1;
INSERT INTO failed_jobs (job_id, tenant, idempotency_key, task, reason, error, attempts)
SELECT job_id, tenant, idempotency_key, task, state, 'boom', 1
FROM deliveries WHERE state IN ('failed', 'uncertain');
INSERT INTO worker_leases (worker_id, expires_at)
SELECT 'w' || i, now() + interval '1 minute' FROM generate_series(1, 5) AS i;
VACUUM ANALYZE;
SQL
echo "loaded in $(( $(date +%s) - start )) s"

echo "migration 13 on $rows rows ..."
start=$(date +%s%N)
"${psql[@]}" -1 -f migrations/V13__priorities_and_stats.sql
echo "migration 13 took $(( ($(date +%s%N) - start) / 1000000 )) ms"
start=$(date +%s%N)
"${psql[@]}" -1 -f migrations/V14__cheaper_stats.sql
echo "migration 14 took $(( ($(date +%s%N) - start) / 1000000 )) ms"
# Migration 13 leaves every old row `normal`. The live rows take the
# priorities their tasks name (they are what the index scan reads); the
# counters get rows for `high` and `low` too, in every slot, as the
# triggers leave them in a running system after a while.
"${psql[@]}" <<'SQL'
UPDATE deliveries SET priority = task->>'priority'
WHERE state IN ('queued', 'retrying', 'processing', 'sending') AND task ? 'priority';
INSERT INTO job_counts SELECT tenant, p, counted, s, n / 3 FROM job_counts,
unnest(ARRAY['high', 'low']) AS p, generate_series(0, 15) AS s
WHERE priority = 'normal' ON CONFLICT DO NOTHING;
INSERT INTO job_counts SELECT tenant, priority, counted, s, 0 FROM job_counts,
generate_series(1, 15) AS s WHERE priority = 'normal' AND slot = 0;
VACUUM ANALYZE;
SQL

for tenant in "'tenant1'" "NULL"; do
    echo
    echo "== EXPLAIN (ANALYZE, BUFFERS), tenant $tenant =="
    sed "s/\$1/$tenant::text/g" bench/stats.sql | awk -v RS=';' 'NF { print "EXPLAIN (ANALYZE, BUFFERS) " $0 ";" }' \
        | "${psql[@]}" -P pager=off
done

echo
for tenant in "'tenant1'" "NULL"; do
    {
        echo "BEGIN READ ONLY;"
        sed "s/\$1/$tenant::text/g" bench/stats.sql
        echo "COMMIT;"
    } >"$dir/call.sql"
    pgbench -n -h "$dir" -p "$port" -U postgres -c 1 -t "$calls" -f "$dir/call.sql" \
        --log --log-prefix="$dir/lat" postgres | grep '^latency average'
    sort -k3,3n "$dir"/lat* | awk -v t="$tenant" '{ v[NR] = $3 } END {
        printf "stats for tenant %s: median %.2f ms, p95 %.2f ms over %d calls\n",
            t, v[int(NR / 2) + 1] / 1000, v[int(NR * 0.95)] / 1000, NR }'
    rm -f "$dir"/lat*
done

echo
echo "outcome writes, 5 clients, 10 s: the counter's cost"
cat >"$dir/outcome.sql" <<'SQL'
\set i random(2001, 1000000)
BEGIN;
UPDATE deliveries SET state = 'sent', updated_at = now() WHERE idempotency_key = 'k' || :i AND tenant = 'tenant' || (:i % 3);
UPDATE deliveries SET state = 'sending' WHERE idempotency_key = 'k' || :i AND tenant = 'tenant' || (:i % 3);
COMMIT;
SQL
# Each transaction moves one row into `sent` (a counter +1) and out again
# (the counter -1), so it pays the counter twice.
for mode in slots one-row none; do
    case $mode in
    slots) ;;
    # Migration 14's trigger with every session on slot 0.
    one-row) sed -n '/^CREATE OR REPLACE FUNCTION count_delivery/,/^\$\$;/p' \
                 migrations/V14__cheaper_stats.sql | sed 's/pg_backend_pid() % 16/0/' \
                 | "${psql[@]}" ;;
    none) "${psql[@]}" -c "ALTER TABLE deliveries DISABLE TRIGGER USER" ;;
    esac
    tps=$(pgbench -n -h "$dir" -p "$port" -U postgres -c 5 -j 2 -T 10 -f "$dir/outcome.sql" postgres \
        | awk '/^tps/ { print $3 }')
    echo "counter $mode: $tps transactions/s"
done
