#!/usr/bin/env bash
# The sendonce benchmark. Starts a private Redis, a private Postgres cluster
# (default durability), an SMTP sink (postfix's smtp-sink), the release API
# and workers, measures each phase BENCH_RUNS times and prints one table of
# medians, next to the machine's own limits measured in the same run.
#
#   bench/run.sh                 # 3 runs of each phase, 10 s each
#   BENCH_RUNS=1 BENCH_SECS=5 bench/run.sh
#   BENCH_BIN_DIR=/tmp/old bench/run.sh    # binaries built elsewhere (A/B)
#
# Installs what is missing (Debian, root): wrk, postfix (smtp-sink),
# redis-server/redis-tools, postgresql(-contrib) for pgbench, and oha with
# cargo into target/bench-tools. Every phase has a deadline; a phase that
# misses it stops the run with a message saying which and why.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=${BENCH_RUNS:-3}
secs=${BENCH_SECS:-10}
drain_tasks=${BENCH_DRAIN_TASKS:-20000}
drain_deadline=${BENCH_DRAIN_DEADLINE_SECS:-300}
# Webhook endpoints subscribed to every outcome during the drain: each
# email's event then also writes one delivery row per endpoint. The
# workers do not dispatch them (WEBHOOK_DISPATCH=false): this measures what
# writing the outbox costs the drain, not a receiver.
webhook_endpoints=${BENCH_WEBHOOK_ENDPOINTS:-0}
# The level users run by default (issue 21): what logging costs is part of
# the figure. BENCH_RUST_LOG=warn measures without it.
log_filter=${BENCH_RUST_LOG:-info}

state=$(mktemp -d -t sendonce-bench.XXXXXX)
pids=() workers=()
cleanup() {
  for pid in "${pids[@]}" "${workers[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "${pg_bin:-}" ] && [ -d "$state/pg" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$state/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2}'; }
# Polls `cmd` until it succeeds or `secs` pass; `what` names it in the error.
wait_for() {
  local what=$1 limit=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what did not happen within ${limit}s"
    sleep 0.1
  done
}

# --- tools ----------------------------------------------------------------
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to install $*; install them first"
  [ -n "${apt_updated:-}" ] || { apt-get update -qq; apt_updated=1; }
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v wrk >/dev/null || apt_install wrk
command -v smtp-sink >/dev/null || apt_install postfix
command -v redis-server >/dev/null || apt_install redis-server
command -v redis-benchmark >/dev/null || apt_install redis-tools
command -v python3 >/dev/null || apt_install python3
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -x "${pg_bin:-/nonexistent}/initdb" ] || { apt_install postgresql; pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1); }
command -v pgbench >/dev/null || [ -x "$pg_bin/pgbench" ] || apt_install postgresql-contrib
pgbench=$(command -v pgbench || echo "$pg_bin/pgbench")
oha=$root/target/bench-tools/bin/oha
if [ ! -x "$oha" ]; then
  say "building oha into target/bench-tools (once)"
  cargo install --locked --quiet --root "$root/target/bench-tools" oha
fi

if [ -n "${BENCH_BIN_DIR:-}" ]; then
  # Measure binaries built elsewhere (an A/B against another commit).
  bin_dir=$(cd "$BENCH_BIN_DIR" && pwd)
else
  say "building release binaries"
  cargo build --release --locked --quiet --bins
  bin_dir=$root/target/release
fi
api_bin=$bin_dir/sendonce-api
worker_bin=$bin_dir/sendonce-worker
[ -x "$api_bin" ] && [ -x "$worker_bin" ] || die "no sendonce-api and sendonce-worker in $bin_dir"

# --- services -------------------------------------------------------------
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$state" --daemonize no --logfile "$state/redis.log" &
pids+=($!)
wait_for "redis-server start" 10 redis-cli -p "$redis_port" ping
redis=(redis-cli -p "$redis_port")

pg_port=$(free_port)
mkdir -p "$state/pg" && chown postgres "$state" "$state/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$state/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$state/pg" -l "$state/pg.log" -w \
  -o "-p $pg_port -k $state -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null \
  || die "Postgres did not start: $(tail -n3 "$state/pg.log")"
pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
psql_q() { psql "$pg_url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

smtp_port=$(free_port)
smtp-sink -u nobody -t 30 "127.0.0.1:$smtp_port" 1024 2>"$state/smtp-sink.log" &
pids+=($!)
wait_for "smtp-sink start" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$smtp_port"

export DATABASE_URL=$pg_url REDIS_URL="redis://127.0.0.1:$redis_port" REDIS_KEY_PREFIX=bench
export JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export LOG_FORMAT=json RUST_LOG=$log_filter
api_port=$(free_port)
API_ADDR=127.0.0.1:$api_port METRICS_ADDR=127.0.0.1:0 "$api_bin" >"$state/api.log" 2>&1 &
api_pid=$!
pids+=($api_pid)
api=http://127.0.0.1:$api_port
wait_for "the API answering /healthz" 30 curl -sf "$api/healthz"
token=$("$api_bin" token --sub bench --scope jobs:write --ttl 1h)
export BENCH_TOKEN=$token

# Resets Redis and the tables between phases, so each starts empty.
reset_state() {
  "${redis[@]}" flushall >/dev/null
  psql_q "TRUNCATE deliveries, duplicate_jobs, failed_jobs" >/dev/null
  # The webhook outbox (migration 9; absent when measuring older binaries).
  psql_q "TRUNCATE events CASCADE" >/dev/null 2>&1 || true
  # Emptied together with Postgres, Redis lost nothing: without its epoch
  # the workers would push the drain's backlog again (docs/exactly-once.md,
  # "Acceptance").
  "${redis[@]}" set '{bench}:epoch' bench >/dev/null
  # Each phase starts from a checkpoint: otherwise it pays for the WAL and
  # dirty pages of the phases before it (a checkpoint, and the full-page
  # images that follow one, in the middle of a drain).
  psql_q "CHECKPOINT" >/dev/null
}
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }
# Runs "$@" and writes where the cores went meanwhile to $state/cpu.last.
# With cpu_items set, also the ms of CPU per item in $state/cpu.per-item.
with_cpu() {
  "$root/bench/cpu.py" snap >"$state/cpu.before"
  "$@"
  "$root/bench/cpu.py" snap >"$state/cpu.after"
  "$root/bench/cpu.py" diff "$state/cpu.before" "$state/cpu.after" ${cpu_items:-} >"$state/cpu.out"
  sed -n 1p "$state/cpu.out" >"$state/cpu.last"
  sed -n 2p "$state/cpu.out" >"$state/cpu.per-item"
}
# wrk against `path` with `connections` and `script`; the output goes to
# $state/wrk.out, and any non-2xx answer stops the run.
run_wrk() {
  local path=$1 connections=$2 script=$3
  wrk -t2 -c"$connections" -d"${secs}s" -s "$root/bench/$script" "$api$path" >"$state/wrk.out"
  if grep -q "Non-2xx" "$state/wrk.out"; then die "$path answered errors under load:
$(cat "$state/wrk.out")"; fi
}

# --- machine limits -------------------------------------------------------
say "machine limits: redis-benchmark LPUSH, pgbench claim+sent, pgbench acceptance"
lpush=() pgb=() pga=()
for _ in $(seq "$runs"); do
  lpush+=("$(redis-benchmark -p "$redis_port" -t lpush -n 200000 -c 50 -d 400 --csv \
    | awk -F'"' '$2 == "LPUSH" {print $4}')")
  pgb+=("$("$pgbench" -n -h 127.0.0.1 -p "$pg_port" -U postgres -c 16 -j 2 -T "$secs" \
    -f "$root/bench/claim.sql" postgres 2>/dev/null \
    | awk '/^tps/ {print $3; exit}')")
  # The group commit's statement: 64 jobs per INSERT, 4 batches in flight.
  # Binaries from before durable acceptance (an A/B) leave a schema without
  # its columns: the figure is then empty, not a failed run.
  pga+=("$("$pgbench" -n -h 127.0.0.1 -p "$pg_port" -U postgres -c 4 -j 2 -T "$secs" \
    -f "$root/bench/accept.sql" postgres 2>/dev/null \
    | awk '/^tps/ {printf "%d", $3 * 64; exit}' || true)")
  reset_state
done

# --- API: saturation and fixed rate ---------------------------------------
body='{"to":"Ada <ada@example.com>","subject":"Welcome","text":"Hello from the benchmark!"}'
say "API: POST /addJob at saturation (wrk, ${secs}s)"
sat=()
for _ in $(seq "$runs"); do
  with_cpu run_wrk /addJob 64 add_job.lua
  cpu_sat=$(cat "$state/cpu.last")
  sat+=("$(awk '/^Requests\/sec/ {print $2}' "$state/wrk.out")")
  reset_state
done

oha_json() {
  "$oha" --no-tui --output-format json --latency-correction -z "${secs}s" -q "$1" -c 64 \
    -m POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "$body" "$api/addJob"
}
# Prints "p50 p99 p99.9" in ms, or fails if any request did not succeed.
oha_latency() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r.get("statusCodeDistribution", {})
bad = {k: v for k, v in codes.items() if not k.startswith("2")}
# Requests still in flight when the duration ends are cut by oha itself.
errors = {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}
if bad or errors:
    sys.exit("requests failed: %s %s" % (bad, errors))
p = r["latencyPercentiles"]
print(" ".join("%.3f" % (p[k] * 1000) for k in ("p50", "p99", "p99.9")))'
}
say "API: latency at 5000 req/s offered (oha, ${secs}s)"
p50=() p99=() p999=()
for _ in $(seq "$runs"); do
  read -r a b c < <(oha_json 5000 | oha_latency) || die "the fixed-rate run failed"
  p50+=("$a") p99+=("$b") p999+=("$c")
  reset_state
done

say "API: POST /addJobs, 1000 jobs a request (wrk, ${secs}s)"
batch=()
for _ in $(seq "$runs"); do
  with_cpu run_wrk /addJobs 4 add_jobs.lua
  cpu_batch=$(cat "$state/cpu.last")
  batch+=("$(awk '/^Requests\/sec/ {printf "%.0f\n", $2 * 1000}' "$state/wrk.out")")
  reset_state
done
api_rss=$(peak_rss_mib "$api_pid")

# --- drain ----------------------------------------------------------------
python3 - "$drain_tasks" >"$state/fill.json" <<'EOF'
import json, sys
job = {"to": "Ada <ada@example.com>", "subject": "Drain", "text": "Hello from the benchmark!"}
print(json.dumps({"jobs": [job] * min(1000, int(sys.argv[1]))}))
EOF
fill_queue() {
  local n=0
  while [ $n -lt "$drain_tasks" ]; do
    curl -sf -o /dev/null "$api/addJobs" -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' --data-binary "@$state/fill.json" \
      || die "filling the queue failed"
    n=$((n + 1000))
  done
}
webhook_dispatch=true
if [ "$webhook_endpoints" -gt 0 ]; then
  webhook_dispatch=false
  hook_token=$("$api_bin" token --sub bench --scope webhooks:write --ttl 1h)
  for i in $(seq "$webhook_endpoints"); do
    curl -sf -o /dev/null "$api/webhooks" -H "Authorization: Bearer $hook_token" \
      -H 'Content-Type: application/json' \
      --data "{\"url\": \"https://hooks.example.com/bench/$i\"}" \
      || die "creating webhook endpoint $i failed"
  done
fi
workers=()
# BENCH_FLEET_CONCURRENCY=N splits N tasks in flight among the workers of a
# phase (each gets N / workers); unset, each worker runs the default
# WORKER_CONCURRENCY (32).
fleet_concurrency=${BENCH_FLEET_CONCURRENCY:-}
# The README's sizing rule: the fleet's Postgres connections are sized for
# the server, not per process. BENCH_FLEET_POOL=N splits N connections among
# the workers of a phase (DATABASE_POOL_SIZE = N / workers, at least 1);
# 0 leaves each worker its own default (up to 16, so 80 for 5 workers).
fleet_pool=${BENCH_FLEET_POOL:-16}
start_workers() {
  workers=()
  local per=${WORKER_CONCURRENCY:-32} pool=()
  [ -z "$fleet_concurrency" ] || per=$(( (fleet_concurrency + $1 - 1) / $1 ))
  [ "$fleet_pool" = 0 ] || pool=(DATABASE_POOL_SIZE=$(( fleet_pool / $1 > 0 ? fleet_pool / $1 : 1 )))
  for i in $(seq "$1"); do
    env SMTP_URL=smtp://127.0.0.1:$smtp_port METRICS_ADDR=127.0.0.1:0 \
      WEBHOOK_DISPATCH=$webhook_dispatch WORKER_CONCURRENCY=$per "${pool[@]}" \
      "$worker_bin" >"$state/worker-$i.log" 2>&1 &
    workers+=($!)
  done
}
# Stops the workers (SIGTERM: they drain and exit 0); sets workers_rss to
# the largest peak RSS among them, in MiB.
stop_workers() {
  local r pid
  workers_rss=0
  for pid in "${workers[@]}"; do
    r=$(peak_rss_mib "$pid")
    workers_rss=$(awk -v a="$workers_rss" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
    kill -TERM "$pid"
  done
  for pid in "${workers[@]}"; do
    wait "$pid" || die "a worker exited non-zero: $(tail -n3 "$state"/worker-*.log)"
  done
  workers=()
}
sent_count() { psql_q "SELECT count(*) FROM deliveries WHERE state = 'sent'"; }
# Waits until `n` keys are sent; dies with the queue's state past the deadline.
await_sent() {
  local n=$1 end=$((SECONDS + drain_deadline)) last=-1 now
  while now=$(sent_count); [ "$now" -lt "$n" ]; do
    if [ $SECONDS -ge $end ]; then
      die "drain stalled: $now of $n sent after ${drain_deadline}s; queue $("${redis[@]}" llen '{bench}:queue'), states: $(psql_q "SELECT string_agg(state || '=' || c, ' ') FROM (SELECT state, count(*) c FROM deliveries GROUP BY state) s")"
    fi
    sleep 1  # the rate comes from sent_at; polling less steals less CPU from the drain
  done
}
# Emails per second between the first and the last `sent` commit.
sent_rate() { psql_q "SELECT round((count(*) - 1) / extract(epoch FROM max(sent_at) - min(sent_at)))::int FROM deliveries WHERE state = 'sent'"; }

# Starts $1 workers and waits until the queue is drained.
drain_with() { start_workers "$1"; await_sent "$drain_tasks"; }

declare -A drain rss cpu_drain cpe
for n in 1 5; do
  drain[$n]="" rss[$n]=0 cpe[$n]=""
  for _ in $(seq "$runs"); do
    say "drain: $drain_tasks tasks, $n worker(s)"
    reset_state
    fill_queue
    [ "$("${redis[@]}" llen '{bench}:queue')" = "$drain_tasks" ] || die "the queue does not hold $drain_tasks tasks"
    cpu_items=$drain_tasks with_cpu drain_with "$n"
    cpu_drain[$n]=$(cat "$state/cpu.last")
    cpe[$n]+=" $(cat "$state/cpu.per-item")"
    drain[$n]+=" $(sent_rate)"
    stop_workers
    rss[$n]=$(awk -v a="${rss[$n]}" -v b="$workers_rss" 'BEGIN {print (b > a) ? b : a}')
  done
done

# --- enqueue-to-accepted latency ------------------------------------------
say "enqueue-to-accepted latency at 1000 emails/s, 5 workers (${secs}s)"
e2e50=() e2e99=()
for _ in $(seq "$runs"); do
  reset_state
  start_workers 5
  oha_json 1000 | oha_latency >/dev/null || die "the 1000/s run failed"
  accepted=$(psql_q "SELECT count(*) FROM deliveries")
  await_sent "$accepted"
  read -r a b < <(psql_q "
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM sent_at) * 1000
                 - ('x' || substr(replace(job_id::text, '-', ''), 1, 12))::bit(48)::bigint AS ms
          FROM deliveries WHERE state = 'sent') t" | tr '|' ' ')
  e2e50+=("$a") e2e99+=("$b")
  stop_workers
done

# --- the table ------------------------------------------------------------
m() { median "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b}'; }
check() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {print ((op == ">=" ? v >= t : v <= t) ? "yes" : "no")}'; }
lp=$(m "${lpush[@]}") pg=$(m "${pgb[@]}") pa=$(m "${pga[@]}")
s=$(m "${sat[@]}") l50=$(m "${p50[@]}") l99=$(m "${p99[@]}") l999=$(m "${p999[@]}")
bt=$(m "${batch[@]}")
# shellcheck disable=SC2086
d1=$(m ${drain[1]}) d5=$(m ${drain[5]}) c1=$(m ${cpe[1]}) c5=$(m ${cpe[5]})
e50=$(m "${e2e50[@]}") e99=$(m "${e2e99[@]}")
wrss=$(awk -v a="${rss[1]}" -v b="${rss[5]}" 'BEGIN {print (b > a) ? b : a}')
cat <<TABLE

sendonce benchmark: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${BENCH_BIN_DIR:+, binaries from $bin_dir}
machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM; load after run: $(cut -d' ' -f1-3 /proc/loadavg)
medians of $runs runs, ${secs}s phases, RUST_LOG=$log_filter; drain from $drain_tasks queued tasks; $webhook_endpoints webhook endpoint(s); tasks in flight: ${fleet_concurrency:+$fleet_concurrency per phase, split among its workers}${fleet_concurrency:-${WORKER_CONCURRENCY:-32} per worker}; Postgres connections: $([ "$fleet_pool" = 0 ] && echo "each worker's default" || echo "$fleet_pool per phase, split among its workers")

| figure | median | runs | target | met | machine limit (same run) | ratio |
|---|---:|---|---|---|---|---:|
| POST /addJob at saturation, req/s | $s | ${sat[*]} | >= 25000 | $(check "$s" ">=" 25000) | redis-benchmark LPUSH $lp/s | $(ratio "$s" "$lp") |
| (durable acceptance) | | | | | pgbench 64-job INSERT, 4 clients: $pa jobs/s | $(ratio "$s" "$pa") |
| POST /addJob p50 @ 5000/s, ms | $l50 | ${p50[*]} | | | | |
| POST /addJob p99 @ 5000/s, ms | $l99 | ${p99[*]} | <= 5 | $(check "$l99" "<=" 5) | | |
| POST /addJob p99.9 @ 5000/s, ms | $l999 | ${p999[*]} | | | | |
| POST /addJobs (1000/request), jobs/s | $bt | ${batch[*]} | >= 100000 | $(check "$bt" ">=" 100000) | redis-benchmark LPUSH $lp/s | $(ratio "$bt" "$lp") |
| (durable acceptance) | | | | | pgbench 64-job INSERT, 4 clients: $pa jobs/s | $(ratio "$bt" "$pa") |
| drain, 1 worker, emails/s | $d1 | ${drain[1]# } | >= 4000 | $(check "$d1" ">=" 4000) | pgbench claim+sent $pg/s | $(ratio "$d1" "$pg") |
| drain, 1 worker, CPU per email (all processes), ms | $c1 | ${cpe[1]# } | <= 0.35 | $(check "$c1" "<=" 0.35) | | |
| drain, 5 workers, emails/s | $d5 | ${drain[5]# } | >= 4000 and >= 1 worker | $(check "$d5" ">=" 4000) | pgbench claim+sent $pg/s | $(ratio "$d5" "$pg") |
| drain, 5 workers, CPU per email (all processes), ms | $c5 | ${cpe[5]# } | <= 0.35 | $(check "$c5" "<=" 0.35) | | |
| enqueue-to-accepted p50 @ 1000/s, ms | $e50 | ${e2e50[*]} | | | | |
| enqueue-to-accepted p99 @ 1000/s, ms | $e99 | ${e2e99[*]} | <= 10 | $(check "$e99" "<=" 10) | | |
| peak RSS, API, MiB | $api_rss | | | | | |
| peak RSS, one worker, MiB | $wrss | | <= 64 | $(check "$wrss" "<=" 64) | | |

Where the cores went (last run of each phase, bench/cpu.py):
- POST /addJob at saturation: $cpu_sat
- POST /addJobs: $cpu_batch
- drain, 1 worker: ${cpu_drain[1]}
- drain, 5 workers: ${cpu_drain[5]}
TABLE
