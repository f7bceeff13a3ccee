#!/usr/bin/env python3
"""Generates the monitoring artefacts from their sources, so they cannot drift apart:

- k8s/monitoring/prometheusrule.yaml  (PrometheusRule for kube-prometheus-stack) from
  k8s/monitoring/alerts.rules.yml      (plain Prometheus rules, checked by promtool);
- k8s/monitoring/grafana-dashboard.json from the panel list below (one row per scenario: the
  metric that shows the collapse first, latency percentiles by route, knob changes as
  annotations).

    python3 scripts/gen-monitoring.py          # write the files
    python3 scripts/gen-monitoring.py --check  # exit 1 if the committed files are stale (CI)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "k8s" / "monitoring"

DS = {"type": "prometheus", "uid": "${datasource}"}


def q(expr, legend=""):
    return {"expr": expr, "legendFormat": legend, "datasource": DS}


def pct(metric, by, q_=0.95):
    return f"histogram_quantile({q_}, sum by ({by}, le) (rate({metric}_bucket[1m])))"


# (row, [(panel title, unit, [targets], description)]): the overview row by its title, then one
# row per group of catalog ids, titled from the catalog (`chokepoint scenarios --json`). Every
# catalog scenario but `healthy` (the overview) must have a row: a new scenario fails --check
# until it gets one.
ROWS = [
    ("Overview: traffic, errors, latency by route", [
        ("Requests/s by route", "reqps", [q('sum by (route) (rate(http_requests_total[1m]))', "{{route}}")],
         "Every route, by its template (never the raw path)."),
        ("5xx ratio by route", "percentunit", [q(
            'sum by (route) (rate(http_requests_total{status=~"5.."}[1m])) / sum by (route) (rate(http_requests_total[1m]))',
            "{{route}}")], "Share of answers that are 5xx."),
        ("Latency p50 / p95 / p99 by route", "s", [
            q(pct("http_request_duration_seconds", "route", 0.5), "p50 {{route}}"),
            q(pct("http_request_duration_seconds", "route", 0.95), "p95 {{route}}"),
            q(pct("http_request_duration_seconds", "route", 0.99), "p99 {{route}}"),
        ], "From the request-duration histogram (buckets to 120 s)."),
        ("In flight", "short", [q("sum by (instance) (http_requests_in_flight)", "{{instance}}")],
         "Requests being served right now: a pile-up shows here first."),
        ("Clients that gave up (499)/s by route", "reqps", [
            q('sum by (route) (rate(http_requests_total{status="499"}[1m]))', "{{route}}")],
         "Requests whose client closed the connection before the answer: a collapse clients time out on."),
    ]),
    (("cpu", "io"), [
        ("Canary latency p95 (/api/ping, /health)", "s", [
            q('histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket{route=~"/api/ping|/health"}[1m])))',
              "{{route}}")], "Fast routes slowed by CPU work on the async workers: the collapse shows here first."),
        ("Process CPU (cores)", "short", [q("rate(process_cpu_seconds_total[1m])", "{{instance}}")], ""),
        ("Offloaded CPU jobs running", "short", [q("sum(cpu_offload_jobs_running)", "running")],
         "cpu_mode=offload: bounded by cpu_max_concurrency."),
        ("Shed / rate-limited / timed out", "reqps", [
            q("sum by (reason) (rate(requests_shed_total[1m]))", "shed {{reason}}"),
            q("sum(rate(requests_rate_limited_total[1m]))", "rate limited"),
            q("sum by (group) (rate(request_timeouts_total[1m]))", "timeout {{group}}"),
        ], "The fixes at work: refused fast instead of queued."),
    ]),
    (("memory",), [
        ("RSS vs limits", "bytes", [
            q("process_resident_memory_bytes", "RSS {{instance}}"),
            q("process_memory_limit_bytes > 0", "container limit {{instance}}"),
            q("memory_limit_bytes", "safety cap {{instance}}"),
        ], "RSS climbing linearly to the cgroup limit ends in an OOMKill."),
        ("Held by the memory endpoints", "bytes", [
            q("sum(memory_retained_bytes)", "retained (leak)"),
            q("sum(memory_spike_bytes)", "spikes"),
        ], ""),
        ("Refused at the cap (507)", "reqps", [q("sum(rate(memory_cap_refusals_total[1m]))", "refusals")], ""),
    ]),
    (("db-pool", "db-replicas"), [
        ("Waiting for a connection", "short", [q("sum by (instance) (db_pool_waiting)", "{{instance}}")],
         "The first sign: waiters > 0 means throughput is pinned at pool / hold time."),
        ("Connections", "short", [
            q("sum by (state) (db_pool_connections)", "{{state}}"),
            q("sum(db_pool_max_connections)", "max"),
        ], "in_use at max with waiters: starved. in_use below max with timeouts: the server refuses (db-replicas)."),
        ("Acquire wait p95", "s", [q(pct("db_pool_acquire_wait_seconds", "instance"), "{{instance}}")],
         "Near the acquire timeout (30 s fragile) the waiters start failing."),
        ("Acquire timeouts/s by replica", "reqps", [q("sum by (instance) (rate(db_pool_acquire_timeouts_total[1m]))", "{{instance}}")],
         "503 db_pool_timeout. Growing with the replica count: db-replicas."),
    ]),
    (("downstream", "retry-storm"), [
        ("Downstream calls in flight", "short", [q("sum(downstream_calls_in_flight)", "in flight")],
         "A slow dependency without timeouts piles calls up here."),
        ("Calls by outcome", "reqps", [q("sum by (outcome) (rate(downstream_calls_total[1m]))", "{{outcome}}")], ""),
        ("Connection pool: in use and waiting", "short", [
            q("sum(downstream_pool_connections_in_use)", "in use"),
            q("sum(downstream_pool_waiting)", "waiting for a connection"),
            q("sum(rate(downstream_pool_timeouts_total[1m]))", "gave up waiting/s"),
        ], "downstream_pool_size connections; past them calls queue (fragile: without limit, the cascade)."),
        ("Attempts per call (retry amplification)", "short", [
            q("sum(rate(downstream_attempts_total[1m])) / sum(rate(downstream_calls_total[1m]))", "attempts / call")],
         "Naive retries multiply the load on the struggling dependency."),
        ("Breaker state and rejections", "short", [
            q("max(circuit_breaker_state)", "state (0 closed, 1 open, 2 half-open)"),
            q("sum(rate(circuit_breaker_rejections_total[1m]))", "rejections/s"),
            q("sum(rate(downstream_bulkhead_rejections_total[1m]))", "bulkhead rejections/s"),
            q("sum(rate(downstream_retries_denied_total[1m]))", "retries denied by budget/s"),
        ], ""),
    ]),
    (("worker-pool",), [
        ("Busy workers and queue", "short", [
            q("sum(worker_pool_busy)", "busy"),
            q("sum(worker_pool_threads)", "threads"),
            q("sum(worker_pool_queue_depth)", "queued"),
        ], ""),
        ("Queue wait p95 vs deadline", "s", [
            q(pct("worker_pool_queue_wait_seconds", "instance"), "p95 wait {{instance}}"),
            q('knob_value{knob="request_deadline_ms"} / 1000', "deadline {{instance}}"),
        ], "Once the wait passes the deadline, every request gets DEADLINE_EXCEEDED."),
        ("Deadline exceeded, wasted work, rejected", "reqps", [
            q("sum(rate(worker_pool_deadline_exceeded_total[1m]))", "deadline exceeded"),
            q("sum(rate(worker_pool_wasted_work_total[1m]))", "wasted work"),
            q("sum(rate(worker_pool_rejected_total[1m]))", "rejected (queue full)"),
        ], ""),
    ]),
    (("cold-start",), [
        ("Workers by state", "short", [q("sum by (state) (cold_start_workers)", "{{state}}")], ""),
        ("Queue and gateway timeouts", "short", [
            q("sum(cold_start_queue_depth)", "queued"),
            q("sum(rate(cold_start_gateway_timeouts_total[1m]))", "gateway timeouts/s"),
            q("sum(rate(cold_start_cold_starts_total[1m]))", "cold starts/s"),
        ], ""),
    ]),
    (("burst",), [
        ("Deployments by outcome", "reqps", [q("sum by (mode, outcome) (rate(deployments_total[1m]))", "{{mode}} {{outcome}}")],
         "sync: timeouts at the 20 s request timeout. async: accepted now, created at database speed."),
        ("Async queue and workers", "short", [
            q("sum(deploy_queue_depth)", "queued"),
            q("sum(deploy_workers_busy)", "busy workers"),
        ], ""),
        ("Transaction time p95 / queue wait p95", "s", [
            q(pct("deploy_transaction_seconds", "instance"), "transaction {{instance}}"),
            q(pct("deploy_queue_wait_seconds", "instance"), "queue wait {{instance}}"),
        ], ""),
    ]),
    (("cache-stampede",), [
        ("Cache reads by result", "reqps", [q("sum by (result) (rate(cache_requests_total[1m]))", "{{result}}")], ""),
        ("Database loads", "short", [
            q("sum(rate(cache_db_loads_total[1m]))", "loads/s"),
            q("sum(cache_loads_in_flight)", "in flight"),
        ], "A stampede: one load per reader. Single-flight: one per key."),
        ("Redis", "short", [
            q("sum by (kind) (rate(redis_errors_total[1m]))", "errors/s {{kind}}"),
            q("sum by (state) (redis_pool_connections)", "pool {{state}}"),
            q("sum(redis_pool_waiting)", "pool waiting"),
        ], ""),
    ]),
    (("faults",), [
        ("Injected faults/s by group and kind", "reqps", [
            q("sum by (group, kind) (rate(faults_injected_total[1m]))", "{{group}} {{kind}}")],
         "Failures made on purpose (rules in /admin/faults, or allowed headers): not real ones."),
        ("Fault rules set", "short", [q("sum by (group, kind) (max by (group, kind) (faults_active))", "{{group}} {{kind}}")],
         "1 while a rule of that kind is set on the group."),
        ("Connections reset by a fault/s", "short", [
            q('sum(rate(http_connections_closed_total{reason="fault_reset"}[1m]))', "resets/s")], ""),
    ]),
    (("slow-link",), [
        ("Link toxics set", "short", [q("sum by (link, toxic) (max by (link, toxic) (link_faults_active))", "{{link}} {{toxic}}")],
         "1 while a toxic is set on a dependency link (LINK_PROXY)."),
        ("Bytes through each link/s", "Bps", [
            q("sum by (link, direction) (rate(link_bytes_total[1m]))", "{{link}} {{direction}}")], ""),
        ("DB pool under a slow link", "short", [
            q("sum(db_pool_waiting)", "waiting"),
            q('sum(db_pool_connections{state="in_use"})', "in use"),
            q("sum(rate(db_pool_acquire_timeouts_total[1m]))", "acquire timeouts/s"),
        ], "+L per round trip: the pool's capacity falls to pool / (hold + round trips × L)."),
    ]),
    (("pool-too-big",), [
        ("CPU-bound queries on the database", "short", [
            q("sum(db_cpu_queries_running)", "running"),
            q('sum(db_pool_connections{state="in_use"})', "connections in use"),
        ], "Past the server's cores x 2 a bigger pool only puts more queries on the same cores (db_cpu_query_slots caps them)."),
        ("CPU-bound query time p95 by phase", "s", [
            q("histogram_quantile(0.95, sum by (phase, le) (rate(db_cpu_query_seconds_bucket[1m])))", "{{phase}}")],
         "wait: in the app for a slot; run: on the database, which grows with the queries sharing its cores."),
    ]),
    (("adaptive-limit",), [
        ("Adaptive concurrency limit by group", "short", [
            q("max by (group) (concurrency_limit)", "limit {{group}}"),
            q('sum(rate(requests_shed_total{reason="concurrency_limit"}[1m]))', "shed/s"),
        ], "concurrency_limit = aimd | gradient: the limit found from latency (no capacity given), and what it refuses."),
        ("Adaptive limit latency", "s", [
            q("max by (group, kind) (concurrency_limit_rtt_seconds)", "{{group}} {{kind}}")],
         "The no-queue baseline and the last window's mean: above 1.1x the baseline the limit comes down."),
    ]),
    (("worker-pool-grpc",), [
        ("gRPC calls/s by code", "reqps", [
            q("sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total[1m]))", "{{grpc_method}} {{grpc_code}}")],
         "DeadlineExceeded climbing with OK falling: the pool is past workers / work time."),
        ("gRPC handling p95", "s", [
            q(pct("grpc_server_handling_seconds", "grpc_method"), "p95 {{grpc_method}}")],
         "Pinned at the deadline in fragile; short in hardened (RESOURCE_EXHAUSTED at once)."),
    ]),
    (("connection-leak",), [
        ("Leaked and long-held connections", "short", [
            q("sum(db_connections_leaked)", "leaked"),
            q('sum by (over) (db_connections_held)', "held over {{over}}"),
        ], "Connections kept past their request (db_leak_ms), and checkouts open longer than 1 s / 10 s / 60 s."),
        ("Oldest hold", "s", [q("max(db_connection_oldest_hold_seconds)", "oldest")],
         "The age of the longest-held pooled connection: a leak climbs without bound."),
        ("Leaks detected/s by route", "short", [
            q("sum by (route) (rate(db_connection_leaks_detected_total[1m]))", "{{route}}")],
         "The leak detector (db_leak_detect_ms) names the route that took the connection."),
        ("Connection hold p95", "s", [q("histogram_quantile(0.95, sum by (le) (rate(db_connection_hold_seconds_bucket[1m])))", "p95")],
         "Checkout to release: the pool's service time, the denominator of its capacity."),
    ]),
    (("poisoned-pool",), [
        ("Poisoned answers/s", "short", [q("sum(rate(db_poisoned_errors_total[1m]))", "25P02/s")],
         "Requests failed on a connection inside an aborted transaction: never, with the release-time guard on."),
        ("Connections rolled back at release/s", "short", [
            q("sum by (action) (rate(db_connections_recovered_total[1m]))", "{{action}}")],
         "The release-time guard at work: each one was a poisoned connection in waiting."),
    ]),
]


def catalog():
    """The scenario catalog from the binary: $CHOKEPOINT_BIN, a built one, or `cargo run`."""
    candidates = [os.environ.get("CHOKEPOINT_BIN"), ROOT / "target/release/chokepoint", ROOT / "target/debug/chokepoint"]
    for binary in candidates:
        if binary and Path(binary).is_file() and os.access(binary, os.X_OK):
            cmd = [str(binary), "scenarios", "--json"]
            break
    else:
        if not shutil.which("cargo"):
            sys.exit("gen-monitoring: no chokepoint binary (set CHOKEPOINT_BIN) and no cargo to build one")
        cmd = ["cargo", "run", "--quiet", "--", "scenarios", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {s["id"]: s for s in json.loads(out)}


def row_titles(scenarios):
    """Each row's title; exits naming any catalog scenario without a row, or a row naming none."""
    titles = []
    covered = {"healthy"}
    for key, _ in ROWS:
        if isinstance(key, str):
            titles.append(key)
            continue
        unknown = [i for i in key if i not in scenarios]
        if unknown:
            sys.exit(f"gen-monitoring: rows name scenarios the catalog does not have: {unknown}")
        covered.update(key)
        titles.append(f"{' & '.join(key)} — {scenarios[key[0]]['title']}")
    missing = sorted(set(scenarios) - covered)
    if missing:
        sys.exit(f"gen-monitoring: catalog scenarios without a dashboard row: {missing} (add them to ROWS)")
    return titles


def dashboard():
    panels = []
    pid = 1
    y = 0
    for title, (_, row) in zip(row_titles(catalog()), ROWS):
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        width = 24 // len(row)
        for i, (ptitle, unit, targets, desc) in enumerate(row):
            for j, t in enumerate(targets):
                t["refId"] = chr(ord("A") + j)
            panels.append({
                "type": "timeseries", "title": ptitle, "id": pid, "description": desc,
                "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": targets,
            })
            pid += 1
        y += 8
    panels.append({"type": "row", "title": "knobs — current values", "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    pid += 1
    y += 1
    panels.append({
        "type": "table", "title": "Knob values", "id": pid, "datasource": DS,
        "description": "Every runtime knob (booleans 0/1; choices by position). Changes are annotated on every panel.",
        "gridPos": {"h": 10, "w": 24, "x": 0, "y": y},
        "targets": [dict(q("max by (knob) (knob_value)", "{{knob}}"), refId="A", instant=True, format="table")],
        "options": {"showHeader": True},
        "fieldConfig": {"defaults": {}, "overrides": []},
    })
    return {
        "uid": "chokepoint",
        "title": "chokepoint — collapses and cures",
        "tags": ["chokepoint"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0,
        }]},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
             "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            {"name": "Knob changes", "enable": True, "iconColor": "orange", "datasource": DS,
             "expr": "changes(config_changes_total[1m]) > 0", "step": "15s",
             "titleFormat": "knobs changed", "textFormat": "{{instance}}: configuration changed through /admin"},
        ]},
        "panels": panels,
    }


def prometheus_rule():
    rules = yaml.safe_load((MON / "alerts.rules.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "chokepoint", "labels": {"release": "kube-prometheus-stack"}},
        "spec": rules,
    }


def render():
    header = ("# GENERATED by scripts/gen-monitoring.py from alerts.rules.yml; edit that file, then run\n"
              "# `python3 scripts/gen-monitoring.py`.\n")
    return {
        MON / "grafana-dashboard.json": json.dumps(dashboard(), indent=2) + "\n",
        MON / "prometheusrule.yaml": header + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120),
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in render().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale generated files (run python3 scripts/gen-monitoring.py):", *stale, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
