#!/usr/bin/env bash
# Checks the monitoring files offline:
#   1. `promtool check rules` accepts deploy/prometheus/alerts.yml;
#   2. `promtool test rules` passes deploy/prometheus/alerts_test.yml (the
#      uncertain alert fires on an increase and not without one, ...);
#   3. every rule has a `severity` label and a summary, description and
#      runbook_url whose README (or docs/) anchor exists;
#   4. deploy/grafana/sendonce.json is a dashboard whose panels all read the
#      ${DS_PROMETHEUS} data source variable, with unique ids, and every
#      panel query is valid PromQL (each is checked by promtool as a
#      recording rule, Grafana's $__ variables replaced by durations).
# That every metric the two files name is one the binaries export is a Rust
# test against live processes (worker/tests/e2e/monitoring.rs and
# api/tests/api/operations.rs). Installs Debian's prometheus package (for
# promtool) and python3-yaml when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || fail "$1 is missing; install Debian's $2 package (needs root)"
  echo "installing $2"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
command -v promtool >/dev/null || apt_install promtool prometheus
python3 -c 'import yaml' 2>/dev/null || apt_install PyYAML python3-yaml

rules=deploy/prometheus/alerts.yml
dashboard=deploy/grafana/sendonce.json
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

promtool check rules "$rules" >/dev/null || { promtool check rules "$rules" >&2; fail "promtool check rules rejects $rules"; }
echo "ok: promtool check rules accepts $rules"
promtool test rules deploy/prometheus/alerts_test.yml >"$scratch/test.log" 2>&1 \
  || { cat "$scratch/test.log" >&2; fail "promtool test rules deploy/prometheus/alerts_test.yml"; }
echo "ok: promtool test rules deploy/prometheus/alerts_test.yml"

python3 - "$rules" "$dashboard" "$scratch/dashboard-rules.yml" <<'PY'
import json
import re
import sys

import yaml

rules_file, dashboard_file, out = sys.argv[1:]
fail = []


def anchors(path):
    """GitHub's heading anchors of a Markdown file (duplicates get -1, -2...)."""
    seen, found, fenced = {}, set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} (.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


BASE = "https://github.com/sendonce/sendonce/blob/main/"
docs = {}
groups = yaml.safe_load(open(rules_file, encoding="utf-8"))["groups"]
for group in groups:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        severity = rule.get("labels", {}).get("severity")
        if severity not in ("page", "warning", "info"):
            fail.append(f"{name}: severity {severity!r} is not page, warning or info")
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                fail.append(f"{name}: no {key} annotation")
        url = notes.get("runbook_url", "")
        if not url.startswith(BASE) or "#" not in url:
            fail.append(f"{name}: runbook_url {url!r} is not a heading under {BASE}")
            continue
        path, anchor = url[len(BASE):].split("#", 1)
        if path not in docs:
            try:
                docs[path] = anchors(path)
            except OSError:
                fail.append(f"{name}: runbook_url names {path}, which does not exist")
                continue
        if anchor not in docs[path]:
            fail.append(f"{name}: runbook_url anchor #{anchor} is no heading of {path}")

dashboard = json.load(open(dashboard_file, encoding="utf-8"))
variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    fail.append("the dashboard has no DS_PROMETHEUS data source variable")
ids, exprs = set(), []


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


for panel in panels(dashboard["panels"]):
    title = panel.get("title", "?")
    if panel["id"] in ids:
        fail.append(f"panel {title!r}: id {panel['id']} is not unique")
    ids.add(panel["id"])
    if panel["type"] == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        fail.append(f"panel {title!r}: its data source is not ${{DS_PROMETHEUS}}")
    if not panel.get("targets"):
        fail.append(f"panel {title!r}: no query")
    for target in panel.get("targets", []):
        if target.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            fail.append(f"panel {title!r} {target.get('refId')}: data source is not ${{DS_PROMETHEUS}}")
        if not target.get("expr"):
            fail.append(f"panel {title!r} {target.get('refId')}: no expr")
            continue
        expr = target["expr"]
        for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"), ("$job", ".*")):
            expr = expr.replace(var, value)
        if "$" in expr:
            fail.append(f"panel {title!r}: an unknown variable in {target['expr']!r}")
        exprs.append((title, expr))

# Each query as a recording rule: promtool then parses it as PromQL. JSON
# strings are YAML double-quoted scalars.
with open(out, "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, expr) in enumerate(exprs):
        f.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n")

for f in fail:
    print("FAIL:", f, file=sys.stderr)
sys.exit(1 if fail else 0)
PY
echo "ok: every rule has a severity, a summary, a description and a runbook_url to an existing heading"
promtool check rules "$scratch/dashboard-rules.yml" >"$scratch/check.log" 2>&1 \
  || { cat "$scratch/check.log" >&2; fail "a query of $dashboard is not valid PromQL"; }
echo "ok: $dashboard reads \${DS_PROMETHEUS}, and every panel query is valid PromQL"
