#!/usr/bin/env bash
# Checks deploy/kubernetes offline. Renders the base and the production
# overlay with `kubectl kustomize`, validates every built-in resource of
# each against the Kubernetes schemas (kubernetes-validate, strict: unknown
# fields fail), then checks what no schema sees: the KEDA ScaledObject's
# target, that it does not scale on a Redis list, the env its triggers read, a postgresql trigger to
# wake from zero, the workers' grace period against SHUTDOWN_GRACE_MS and
# SMTP_TIMEOUT_MS, the API's preStop delay, and that every ConfigMap key is
# a setting the README documents. Installs kubectl (Debian) and
# kubernetes-validate (pip) when missing.
set -euo pipefail
cd "$(dirname "$0")/../deploy/kubernetes"

if ! command -v kubectl >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "check-kubernetes: kubectl missing (apt-get install kubectl)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null
fi
command -v kubernetes-validate >/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

for variant in base overlays/production; do
  out="$rendered/$(basename "$variant").yaml"
  kubectl kustomize "$variant" >"$out"
  # ScaledObject has no built-in schema (a warning only, silenced).
  kubernetes-validate --strict --quiet --no-warn "$out"
  python3 - "$out" "$variant" <<'PY'
import re, sys, yaml

out, variant = sys.argv[1], sys.argv[2]
with open(out) as f:
    resources = {d["kind"] + "/" + d["metadata"]["name"]: d
                 for d in yaml.safe_load_all(f) if d}
fail = []
config = resources["ConfigMap/sendonce"]["data"]
worker = resources["Deployment/sendonce-worker"]["spec"]["template"]["spec"]
env = {e["name"]: e["value"] for e in worker["containers"][0]["env"]}
grace_s = worker["terminationGracePeriodSeconds"]
shutdown_ms = int(env["SHUTDOWN_GRACE_MS"])
if grace_s * 1000 < shutdown_ms + 10_000:
    fail.append(f"worker terminationGracePeriodSeconds {grace_s} leaves under 10 s past SHUTDOWN_GRACE_MS {shutdown_ms}")
if int(env["SMTP_TIMEOUT_MS"]) >= shutdown_ms:
    fail.append("worker SMTP_TIMEOUT_MS must be below SHUTDOWN_GRACE_MS, or a graceful stop can cut a transfer")
scaled = resources["ScaledObject/sendonce-worker"]["spec"]
target = "Deployment/" + scaled["scaleTargetRef"]["name"]
if target not in resources:
    fail.append(f"the ScaledObject scales {target}, which is not in the kustomization")
# The Secret is made by hand: its keys are the README's --from-literal ones.
secret = set(re.findall(r"--from-literal=([A-Z_]+)=", open("README.md").read()))
# Every setting in the ConfigMap is one the project README documents.
documented = set(re.findall(r"^\| `([A-Z_]+)` \|", open("../../README.md").read(), re.M))
for key in config:
    if key not in documented:
        fail.append(f"ConfigMap key {key} is not a setting in the README's configuration table")
worker_env = {e["name"] for e in worker["containers"][0].get("env", [])} | set(config) | secret
kinds = set()
for trigger in scaled["triggers"]:
    kinds.add(trigger["type"])
    meta = trigger["metadata"]
    # No one list holds the backlog: pops sort the ready tasks into
    # tenants' lists, so a list length would stop counting at the sort.
    if trigger["type"] == "redis":
        fail.append(f"the ScaledObject watches the Redis list {meta.get('listName')}, which is not the backlog; scale on Postgres")
    for key in ("addressFromEnv", "connectionFromEnv"):
        if key in meta and meta[key] not in worker_env:
            fail.append(f"the ScaledObject reads {meta[key]} from the worker's env, which does not set it")
# The Redis queue alone cannot wake workers from zero: retries and
# re-pushes need a worker's housekeeper, so Postgres must wake one.
if scaled.get("minReplicaCount", 1) == 0 and "postgresql" not in kinds:
    fail.append("minReplicaCount 0 needs the postgresql trigger (unfinished jobs) to wake the workers")
api = resources["Deployment/sendonce-api"]["spec"]["template"]["spec"]
if "preStop" not in api["containers"][0].get("lifecycle", {}):
    fail.append("the API needs a preStop delay so readiness turns before the listener closes")
for f in fail:
    print(f"check-kubernetes ({variant}):", f, file=sys.stderr)
sys.exit(1 if fail else 0)
PY
done
echo "deploy/kubernetes: base and overlays/production valid"
