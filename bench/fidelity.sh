#!/usr/bin/env bash
# Fidelity of the lab: does each knob produce the collapse its arithmetic predicts? Measured side
# by side in one run, against the release binary (targets in docs/fidelity.md):
#   - DB pool saturation throughput vs pool size / hold time         (`chokepoint repro db-pool`, 3 runs)
#   - worker-pool throughput vs workers / work time                  (`chokepoint repro worker-pool`, 3 runs)
#   - the same verdict (knee stage) in all three runs of each
#   - CPU time of `/api/cpu/burn?ms=` vs the ms asked for            (process CPU from /proc)
#   - RSS growth vs memory retained by `/api/memory-leak`            (VmRSS from /proc)
#   - faults: the injected error share, the mean injected delay, and the duplicate rows a
#     response-phase 500 leaves per retried write (p / (1 - p)) vs their rules
# Usage: bash bench/fidelity.sh [stage seconds for repro, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-5}
BIN=target/release/chokepoint
log() { printf '[fidelity] %s\n' "$*" >&2; }
cargo build --release --locked --bin chokepoint >&2
. scripts/lib/lab.sh
work=$(mktemp -d)
trap 'stop_lab; rm -rf "$work"' EXIT
mkdir -p target/fidelity
results=target/fidelity/results.tsv
: > "$results"

for scenario in db-pool worker-pool; do
  for run in 1 2 3; do
    log "$scenario run $run/3 (repro, ${STAGE} s stages)"
    DATABASE_URL="sqlite://$work/$scenario-$run.db?mode=rwc" "$BIN" repro "$scenario" --stage-seconds "$STAGE" \
      --quiet --out "target/fidelity/$scenario-$run" >/dev/null
    python3 - "target/fidelity/$scenario-$run/report.json" "$scenario" "$run" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
v = r["verdict"]
print("\t".join([sys.argv[2], sys.argv[3], f'{r["prediction"]["capacity_rps"]:.1f}', f'{v["measured_capacity_rps"]:.1f}',
                 f'{v["capacity_ratio"]:.3f}', str(v["knee_offered_rps"])]))
PY
  done
done

log "CPU burn and RSS on one lab"
start_lab "$BIN" "$work/lab.log" DATABASE_URL="sqlite://$work/lab.db?mode=rwc" SHUTDOWN_DELAY_MS=0 MEMORY_LEAK_LIMIT_MB=1024
python3 - "$LAB_URL" "$LAB_PID" >>"$results" <<'PY'
import os, sys, time, urllib.request
url, pid = sys.argv[1], sys.argv[2]
tick = os.sysconf("SC_CLK_TCK")
def cpu_s():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick   # utime + stime
def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def get(path):
    urllib.request.urlopen(url + path, timeout=30).read()
for ms in (20, 100):
    n = 4000 // ms  # 4 s of CPU asked for each time
    get(f"/api/cpu/burn?ms={ms}")
    before = cpu_s()
    for _ in range(n):
        get(f"/api/cpu/burn?ms={ms}")
    used = cpu_s() - before
    asked = n * ms / 1000
    print(f"cpu-burn\tms={ms}\t{asked:.2f}\t{used:.2f}\t{used / asked:.3f}\t")
for size in (64, 256):
    urllib.request.urlopen(urllib.request.Request(url + "/api/clear-memory", method="POST")).read()
    time.sleep(0.5)
    before = rss_mib()
    for _ in range(size // 32):
        get("/api/memory-leak?size_mb=32")
    time.sleep(0.5)
    grew = rss_mib() - before
    print(f"rss\t{size} MiB\t{size:.1f}\t{grew:.1f}\t{grew / size:.3f}\t")
PY
log "faults on the same lab"
python3 - "$LAB_URL" "$work/lab.db" >>"$results" <<'PY'
import json, sqlite3, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, db = sys.argv[1], sys.argv[2]
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read(); return r.status
    except urllib.error.HTTPError as e:
        e.read(); return e.code
def rule(group, body):
    assert call("PUT", f"/admin/faults/{group}", body) == 200, body
# error share: 503@30% on /api/ping
rule("other", {"error": "503@30%", "routes": ["/api/ping"]})
n = 2000
share = sum(call("GET", "/api/ping") == 503 for _ in range(n)) / n
print(f"faults-error\t503@30%\t0.300\t{share:.3f}\t{share / 0.3:.3f}\t")
# mean delay: 100ms:50,300ms:50 on /api/fast, 400 requests on 40 threads
rule("other", {"delay": "100ms:50,300ms:50", "routes": ["/api/fast"]})
def timed(_):
    t = time.monotonic(); call("GET", "/api/fast"); return time.monotonic() - t
with ThreadPoolExecutor(40) as pool:
    mean = sum(pool.map(timed, range(400))) / 400
print(f"faults-delay\t100ms:50,300ms:50\t0.200\t{mean:.3f}\t{mean / 0.2:.3f}\t")
# response-phase 500@30% on deployments; a client retries each 500 without a key
assert call("PATCH", "/admin/config", {"deploy_work_ms": 0}) == 200
rule("other", {"response": "500@30%", "routes": ["/api/v1/deployments/"]})
writes = 3000
for i in range(writes):
    while call("POST", "/api/v1/deployments/", {"name": f"fid-{i}"}) == 500:
        pass
call("DELETE", "/admin/faults")
rows = sqlite3.connect(db).execute("SELECT count(*) FROM deployments WHERE name LIKE 'fid-%'").fetchone()[0]
extra = (rows - writes) / writes
print(f"faults-dup\t500@30%\t{0.3 / 0.7:.3f}\t{extra:.3f}\t{extra / (0.3 / 0.7):.3f}\t")
PY
stop_lab

python3 - "$results" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| measure | run | predicted | measured | ratio | verdict (knee at req/s) | within ±10% |")
print("|---|---|---|---|---|---|---|")
ok = True
knees = {}
for r in rows:
    ratio = float(r[4])
    within = abs(ratio - 1) <= 0.10
    ok &= within
    if r[0] in ("db-pool", "worker-pool"):
        knees.setdefault(r[0], set()).add(r[5])
        print(f"| {r[0]} throughput (req/s) | {r[1]} | {r[2]} | {r[3]} | {ratio:.3f} | {r[5]} | {'yes' if within else 'NO'} |")
    elif r[0] == "cpu-burn":
        print(f"| CPU time of /api/cpu/burn?{r[1]} (s) | | {r[2]} | {r[3]} | {ratio:.3f} | | {'yes' if within else 'NO'} |")
    elif r[0] == "faults-error":
        print(f"| faults: share of /api/ping answered 503 by `error: {r[1]}` | | {r[2]} | {r[3]} | {ratio:.3f} | | {'yes' if within else 'NO'} |")
    elif r[0] == "faults-delay":
        print(f"| faults: mean latency of /api/fast under `delay: {r[1]}` (s) | | {r[2]} | {r[3]} | {ratio:.3f} | | {'yes' if within else 'NO'} |")
    elif r[0] == "faults-dup":
        print(f"| faults: duplicate rows per retried write under `response: {r[1]}` | | {r[2]} | {r[3]} | {ratio:.3f} | | {'yes' if within else 'NO'} |")
    else:
        print(f"| RSS growth for {r[1]} retained (MiB) | | {r[2]} | {r[3]} | {ratio:.3f} | | {'yes' if within else 'NO'} |")
for name, k in knees.items():
    same = len(k) == 1
    ok &= same
    print(f"\n{name}: the same verdict in all three runs: {'yes' if same else 'NO'} (knee at {', '.join(sorted(k))} req/s)")
sys.exit(0 if ok else 1)
PY
