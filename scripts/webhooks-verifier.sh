#!/usr/bin/env bash
# Installs the Python `standardwebhooks` package (PyPI) into a venv under
# target/, for the e2e tests that verify the worker's webhook signatures
# with an implementation other than its own (worker/tests/e2e/webhooks.rs
# finds it there, or at STANDARDWEBHOOKS_PYTHON). Installs python3-venv
# through apt when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

STANDARDWEBHOOKS_VERSION=1.0.1
venv=target/standardwebhooks-venv

installed() {
  "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("standardwebhooks") != sys.argv[1])' \
    "$STANDARDWEBHOOKS_VERSION" 2>/dev/null
}

if ! installed; then
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "webhooks-verifier.sh: needs python3 with venv" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
fi
"$venv/bin/python" -c "from standardwebhooks.webhooks import Webhook"
echo "standardwebhooks $STANDARDWEBHOOKS_VERSION: $venv/bin/python"
