#!/usr/bin/env python3
"""Every metric the dashboard and the alert rules use must exist in the app's /metrics, so a
renamed metric breaks CI, not the workshop.

    python3 scripts/ci/check-metric-names.py http://127.0.0.1:8000

Exercises one request of each scenario (so labelled series exist), scrapes /metrics, extracts
the metric names from every PromQL expression in k8s/monitoring/alerts.rules.yml and
k8s/monitoring/grafana-dashboard.json, and fails listing any name /metrics does not have.
The app must run with REDIS_URL set (the cache metrics exist only then).
"""

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent

# One request per scenario, small and fast.
EXERCISE = [
    ("GET", "/api/ping"),
    ("GET", "/health"),
    ("GET", "/api/cpu-intensive?complexity=5"),
    ("GET", "/api/memory-spike?size_mb=1"),
    ("GET", "/api/db/hold?ms=5"),
    ("GET", "/api/expensive-query?iterations=1"),
    ("GET", "/api/worker-pool?work_ms=5"),
    ("GET", "/api/cold-start?work_ms=5"),
    ("GET", "/api/deliver"),
    ("GET", "/api/cache/items/1"),
    ("POST", "/api/v1/deployments/"),
    ("POST", "/api/upload?mode=stream"),
    ("GET", "/no-such-route"),
]

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}


def metric_names_in(expr: str) -> set:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                       # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                                   # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("("):
            continue                                                  # keyword or function
        names.add(word)
    return names


def expressions():
    rules = yaml.safe_load((ROOT / "k8s/monitoring/alerts.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]
    dash = json.loads((ROOT / "k8s/monitoring/grafana-dashboard.json").read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield f"panel {panel['title']!r}", t["expr"]
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            yield f"annotation {a['name']!r}", a["expr"]


def exposed(base: str) -> set:
    for method, path in EXERCISE:
        req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except urllib.error.HTTPError:
            pass                                                      # 4xx/5xx still count
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    have = exposed(sys.argv[1].rstrip("/"))
    missing, checked = [], set()
    for where, expr in expressions():
        for name in metric_names_in(expr):
            checked.add(name)
            if name not in have:
                missing.append(f"{where}: {name}")
    if not checked:
        sys.exit("no metric names found in the rules and the dashboard: the extraction is broken")
    if missing:
        print("metrics used by the dashboard or the alerts but missing from /metrics:", file=sys.stderr)
        for m in missing:
            print("  " + m, file=sys.stderr)
        sys.exit(1)
    print(f"all {len(checked)} metric names used by the alerts and the dashboard exist in /metrics")


if __name__ == "__main__":
    main()
