#!/usr/bin/env bash
# The full chaos run: builds release binaries, then runs sendonce-chaos
# (1,000 posts, 4 workers, 60 s of worker kills, worker pauses of 0.5 to 3
# leases every ~1.5 s, one SMTP server pause, one Postgres pause and one Redis
# kill and restart by default; any flag is passed on, see `--help`). Prints
# one summary line and exits non-zero listing the violations, if any.
#
# Needs redis-server on PATH (or REDIS_SERVER) and the Postgres server
# binaries (initdb, pg_ctl: /usr/lib/postgresql/*/bin, or PG_BIN): the run
# starts a private Postgres cluster, since it pauses Postgres with SIGSTOP.
# Usage: scripts/chaos.sh [--posts N] [--workers N] [--pause-every-ms N] ...
set -euo pipefail
cd "$(dirname "$0")/.."

command -v "${REDIS_SERVER:-redis-server}" >/dev/null \
  || { echo "chaos: redis-server not found; install it or set REDIS_SERVER" >&2; exit 1; }
pg_bin="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)}"
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  command -v initdb >/dev/null \
    || { echo "chaos: initdb not found; install the Postgres server or set PG_BIN" >&2; exit 1; }
fi

cargo build --release --locked -p sendonce-api -p sendonce-worker -p sendonce-testkit \
  -p sendonce-chaos --bins
exec target/release/sendonce-chaos "$@"
