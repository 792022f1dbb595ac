#!/usr/bin/env bash
# Static checks of the compose file (no Docker engine needed):
#   1. `docker-compose config` accepts it;
#   2. the worker service can be scaled: no container_name, no host ports;
#   3. Docker waits for a worker's own graceful shutdown: its
#      stop_grace_period >= SHUTDOWN_GRACE_MS.
# Prints one line per check; on failure, exits non-zero with a one-line reason.
#
# Usage: scripts/check-compose.sh [COMPOSE_FILE]   (default: docker-compose.yml
# at the repository root). Relative paths in the file (build: .) are resolved
# against the repository root, wherever the file itself lies.
set -euo pipefail

file="${1:-docker-compose.yml}"
# Resolve the argument against the caller's directory before moving.
case "$file" in
  /*) ;;
  *) [ -e "$file" ] && file="$PWD/$file" ;;
esac
cd "$(dirname "$0")/.."
root="$PWD"

fail() { echo "FAIL: $*" >&2; exit 1; }

[ -f "$file" ] || fail "no compose file at $file"

apt_install() {
  [ "$(id -u)" = 0 ] || fail "$1 is missing; install Debian's $2 package (needs root)"
  echo "installing $2"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
command -v docker-compose >/dev/null || apt_install docker-compose docker-compose
python3 -c 'import yaml' 2>/dev/null || apt_install PyYAML python3-yaml

compose=(docker-compose --project-directory "$root" -f "$file")

if ! err="$("${compose[@]}" config -q 2>&1)"; then
  fail "docker-compose config rejects $file: $(printf '%s' "$err" | tr '\n' ' ')"
fi
echo "ok: docker-compose config accepts $file"

# The remaining checks read the file as compose resolved it (anchors merged,
# environment as a mapping), so they see what Docker would run.
"${compose[@]}" config | python3 -c '
import re
import sys

import yaml

def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

def duration_ms(text):
    """A compose duration ("30s", "1m30s", "1.5s", "500ms") in milliseconds."""
    units = {"h": 3600000, "m": 60000, "s": 1000, "ms": 1, "us": 1e-3, "ns": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        fail("worker: cannot read stop_grace_period %r as a duration" % text)
    return sum(float(n) * units[u] for n, u in parts)

config = yaml.safe_load(sys.stdin)
worker = (config.get("services") or {}).get("worker")
if worker is None:
    fail("no worker service")

if "container_name" in worker:
    fail("worker: container_name %r stops `--scale worker=N` (names must be unique)"
         % worker["container_name"])
print("ok: worker has no container_name")

if worker.get("ports"):
    fail("worker: publishes host ports %s; `--scale worker=N` needs none"
         " (a fixed one clashes; use expose)" % worker["ports"])
print("ok: worker publishes no host ports")

env = worker.get("environment") or {}
if isinstance(env, list):
    env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
raw_grace = env.get("SHUTDOWN_GRACE_MS")
grace_note = ""
if raw_grace is None:
    # Not set: the worker uses its built-in default (worker/src/config.rs).
    raw_grace, grace_note = "25000", " (default)"
try:
    grace_ms = int(str(raw_grace))
except ValueError:
    fail("worker: SHUTDOWN_GRACE_MS=%r is not a whole number of ms" % raw_grace)
stop = worker.get("stop_grace_period")
stop_note = ""
if stop is None:
    # Not set: Docker sends SIGKILL 10 s after the stop signal.
    stop, stop_note = "10s", " (default)"
stop = str(stop)
stop_ms = duration_ms(stop)
if stop_ms < grace_ms:
    fail("worker: stop_grace_period %s%s (%d ms) < SHUTDOWN_GRACE_MS %d ms%s: Docker would"
         " SIGKILL workers mid-shutdown" % (stop, stop_note, stop_ms, grace_ms, grace_note))
print("ok: worker stop_grace_period %s%s (%d ms) >= SHUTDOWN_GRACE_MS %d ms%s"
      % (stop, stop_note, stop_ms, grace_ms, grace_note))
'
