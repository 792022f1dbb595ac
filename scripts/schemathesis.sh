#!/usr/bin/env bash
# Runs schemathesis against the real API binary: a throwaway database and
# Redis key prefix, a fresh secret and a token holding every scope. Fails on
# any 5xx answer and any answer the OpenAPI document does not describe
# (status, content type, body schema). Needs TEST_REDIS_URL and
# TEST_DATABASE_ADMIN_URL pointing at running services (scripts/test.sh sets
# them) and python3 with venv; installs schemathesis into target/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-40}"
: "${TEST_REDIS_URL:?set TEST_REDIS_URL}" "${TEST_DATABASE_ADMIN_URL:?set TEST_DATABASE_ADMIN_URL}"

venv=target/schemathesis-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "schemathesis.sh: needs python3 with venv" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q --locked --bin sendonce-api

run_id="schemathesis_$$_$(date +%s)"
database_url="${TEST_DATABASE_ADMIN_URL%/*}/$run_id"
api_pid=""
cleanup() {
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
  psql "$TEST_DATABASE_ADMIN_URL" -qc "drop database if exists $run_id with (force)" >/dev/null 2>&1 || true
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$TEST_REDIS_URL" --scan --pattern "{$run_id}:*" | xargs -r redis-cli -u "$TEST_REDIS_URL" del >/dev/null || true
  fi
}
trap cleanup EXIT
psql "$TEST_DATABASE_ADMIN_URL" -qc "create database $run_id" >/dev/null

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export API_ADDR="127.0.0.1:$port" METRICS_ADDR=127.0.0.1:0 DATABASE_URL="$database_url" REDIS_URL="$TEST_REDIS_URL" \
  REDIS_KEY_PREFIX="$run_id" LOG_FORMAT=json RUST_LOG=warn
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export JWT_SECRET
token="$(target/debug/sendonce-api token --sub schemathesis --ttl 1h)"
target/debug/sendonce-api >"target/schemathesis-api.log" 2>&1 &
api_pid=$!

# schemathesis keeps a cache in its working directory: keep it under target/.
mkdir -p target/schemathesis
cd target/schemathesis
"../../$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --wait-for-schema 30 \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --seed "${SCHEMATHESIS_SEED:-20261123}" \
  --generation-database none \
  --workers 1 \
  --no-color
