#!/usr/bin/env bash
# The full chaos run: builds release binaries, then runs sendonce-chaos
# (1,000 posts, 4 workers, 60 s of worker kills and one Redis restart by
# default; any flag is passed on, see `--help`). Prints one summary line and
# exits non-zero listing the violations, if any.
#
# Needs redis-server on PATH (or REDIS_SERVER) and Postgres at
# TEST_DATABASE_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# as for scripts/test.sh. Usage: scripts/chaos.sh [--posts N] [--workers N] ...
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_ADMIN_URL="${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v "${REDIS_SERVER:-redis-server}" >/dev/null \
  || { echo "chaos: redis-server not found; install it or set REDIS_SERVER" >&2; exit 1; }
if command -v psql >/dev/null && ! psql "$TEST_DATABASE_ADMIN_URL" -qAtc 'select 1' >/dev/null 2>&1; then
  echo "chaos: no Postgres answers at TEST_DATABASE_ADMIN_URL" >&2
  exit 1
fi

cargo build --release --locked -p sendonce-api -p sendonce-worker -p sendonce-chaos --bins
exec target/release/sendonce-chaos "$@"
