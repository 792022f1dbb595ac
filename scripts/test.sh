#!/usr/bin/env bash
# Runs every check CI runs: format, lints, then the whole test suite against
# real Redis, Postgres and SMTP. Uses the services at TEST_REDIS_URL and
# TEST_DATABASE_ADMIN_URL when they answer; otherwise installs (Debian) and
# starts private ones, and stops them on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEST_DATABASE_ADMIN_URL="${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
state_dir="$(mktemp -d -t sendonce-test.XXXXXX)"
cleanup() {
  if [ -f "$state_dir/redis.pid" ]; then kill "$(cat "$state_dir/redis.pid")" 2>/dev/null || true; fi
  if [ -d "$state_dir/pg" ]; then runuser -u postgres -- "$pg_bin/pg_ctl" -D "$state_dir/pg" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$state_dir"
}
trap cleanup EXIT

log() { printf '== %s\n' "$*"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "need root to install $*; install them or point TEST_* at running services" >&2
    exit 1
  fi
  [ -n "${apt_updated:-}" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The tests also start private redis-server processes (to restart or flush
# Redis without touching anyone else's), so the binary must exist.
command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
command -v redis-cli >/dev/null || apt_install redis-tools
# The Sentinel failover test starts redis-sentinel processes of its own.
command -v redis-sentinel >/dev/null || { log "installing redis-sentinel"; apt_install redis-sentinel; }

redis_up() { redis-cli -u "$TEST_REDIS_URL" ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  port=56379
  log "no Redis at $TEST_REDIS_URL; starting one on 127.0.0.1:$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$state_dir" --daemonize yes --pidfile "$state_dir/redis.pid" >/dev/null
  export TEST_REDIS_URL="redis://127.0.0.1:$port"
  for _ in $(seq 100); do redis_up && break; sleep 0.1; done
  redis_up || { echo "Redis did not start" >&2; exit 1; }
fi

command -v psql >/dev/null || apt_install postgresql-client
# Tests run the store, the e2e suite and the chaos test through a private
# PgBouncer in transaction mode (testkit/src/pgbouncer.rs).
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { log "installing pgbouncer"; apt_install pgbouncer; }
# The console's browser tests (worker/tests/e2e/console.rs) drive Debian's
# headless Chromium through chromedriver; they fail without them.
command -v chromedriver >/dev/null || { log "installing chromium and chromium-driver"; apt_install chromium chromium-driver; }
# The chaos test runs a private Postgres cluster (to pause it with SIGSTOP),
# so initdb and pg_ctl must exist even when a server already answers.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { log "installing postgresql"; apt_install postgresql; }
pg_up() { psql "$TEST_DATABASE_ADMIN_URL" -qAtc 'select 1' >/dev/null 2>&1; }
if ! pg_up; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    log "installing postgresql"; apt_install postgresql
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  fi
  port=55432
  log "no Postgres at $TEST_DATABASE_ADMIN_URL; starting a private cluster on 127.0.0.1:$port"
  mkdir -p "$state_dir/pg" && chown postgres "$state_dir" "$state_dir/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$state_dir/pg" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$state_dir/pg" -l "$state_dir/pg.log" -w \
    -o "-p $port -k $state_dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  export TEST_DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
  pg_up || { echo "Postgres did not start" >&2; cat "$state_dir/pg.log" >&2; exit 1; }
fi

log "docker-compose.yml (static: no Docker engine here)"
./scripts/check-compose.sh
log "deploy/kubernetes (offline schemas)"
./scripts/check-kubernetes.sh
log "deploy/prometheus and deploy/grafana (promtool)"
./scripts/check-monitoring.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "schemathesis against the running API"; ./scripts/schemathesis.sh
# The chaos test (chaos/tests) starts the API and worker binaries as
# processes; cargo builds a package's own binaries for its tests only.
log "cargo build --bins"
cargo build --workspace --bins --locked
# The webhook e2e tests verify signatures with the Python standardwebhooks
# package too (an implementation other than the worker's).
log "standardwebhooks (Python) for the webhook e2e tests"
./scripts/webhooks-verifier.sh
log "cargo test"
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$state_dir/test.log"
status=${PIPESTATUS[0]}
# The e2e suite and the small chaos run again, every process reaching
# Postgres through a private PgBouncer 1.18 in transaction mode
# (DATABASE_POOLER=transaction; testkit/src/pgbouncer.rs).
log "cargo test: e2e and chaos through PgBouncer (transaction mode)"
TEST_THROUGH_PGBOUNCER=1 cargo test --locked --no-fail-fast -p sendonce-worker --test e2e \
  2>&1 | tee -a "$state_dir/test.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
TEST_THROUGH_PGBOUNCER=1 cargo test --locked --no-fail-fast -p sendonce-chaos --test chaos \
  2>&1 | tee -a "$state_dir/test.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ {passed += $4; failed += $6; ignored += $8}
     END {printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored}' "$state_dir/test.log"
exit "$status"
