#!/usr/bin/env bash
# Checks deploy/kubernetes offline: every built-in resource against the
# Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and
# the cross-references no schema sees (the KEDA ScaledObject's target and
# queue key, the workers' grace period against SHUTDOWN_GRACE_MS and
# SMTP_TIMEOUT_MS, the env the triggers read, a postgresql trigger to wake
# from zero). Installs kubernetes-validate with pip when missing.
set -euo pipefail
cd "$(dirname "$0")/../deploy/kubernetes"

command -v kubernetes-validate >/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
# Kustomization and ScaledObject have no built-in schema (warnings only).
kubernetes-validate --strict --quiet --no-warn \
  configmap.yaml migrate-job.yaml api.yaml worker.yaml prune-cronjob.yaml

python3 - <<'PY'
import sys, yaml

def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

kust = docs("kustomization.yaml")[0]
resources = {d["kind"] + "/" + d["metadata"]["name"]: d
             for path in kust["resources"] for d in docs(path)}
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
want = "{" + config["REDIS_KEY_PREFIX"] + "}:queue"
# The Secret is made by hand: its keys are the README's --from-literal ones.
import re
secret = set(re.findall(r"--from-literal=([A-Z_]+)=", open("README.md").read()))
worker_env = {e["name"] for e in worker["containers"][0].get("env", [])} | set(config) | secret
kinds = set()
for trigger in scaled["triggers"]:
    kinds.add(trigger["type"])
    meta = trigger["metadata"]
    if trigger["type"] == "redis" and meta["listName"] != want:
        fail.append(f"the ScaledObject watches {meta['listName']}, the queue is {want}")
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
    print("check-kubernetes:", f, file=sys.stderr)
sys.exit(1 if fail else 0)
PY
echo "deploy/kubernetes: valid"
