#!/usr/bin/env bash
# schemathesis against the running release binary with its own /openapi.json: generated
# requests (examples, boundary coverage, fuzzing) for every operation, checked for status codes,
# content types, headers and bodies that the spec does not document. Afterwards the process must
# be alive and /api/ping as fast as before the run.
#
# Bounded to keep CI fast: in the generated phases, scripts/ci/fuzz_hooks.py lowers valid-but-slow generated values: sleeps, holds and blocking
# calls of up to a second; out-of-range values are left alone), the route
# groups' request timeouts are 1.5 s, and /lab/events (an endless stream) is not called.
# Admin writes need a token schemathesis does not have: they are checked answering 401.
# `not_a_server_error` is off: 500/502/503/504/507 are documented failure modes here; the
# status-code check still fails any code an operation does not document.
# Usage: scripts/ci/api-fuzz.sh [path/to/chokepoint]   (INSTALL_ONLY=1: install and stop)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/chokepoint}
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-15}
MIN_CASES=${FUZZ_MIN_CASES:-1000}
LOG_TAG=api-fuzz
. scripts/lib/common.sh

VENV=.ci-tools/schemathesis
venv_tool "$VENV" schemathesis "schemathesis==$(sed -n 's/^schemathesis==//p' scripts/requirements-fuzz.txt)"
log "$("$VENV/bin/schemathesis" --version)"
[ "${INSTALL_ONLY:-0}" = 1 ] && exit 0
[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"

. scripts/lib/lab.sh
work=$(mktemp -d)
trap 'stop_lab; rm -rf "$work"' EXIT
start_lab "$BIN" "$work/lab.log" DATABASE_URL="sqlite://$work/lab.db?mode=rwc" \
  REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="fuzz-$$:" ADMIN_TOKEN="fuzz-$$-$RANDOM-token" \
  REQUEST_TIMEOUT_IO_MS=1500 REQUEST_TIMEOUT_DB_MS=1500 REQUEST_TIMEOUT_DOWNSTREAM_MS=1500 \
  REQUEST_TIMEOUT_CPU_MS=1500 DEPLOY_WORK_MS=20 SHUTDOWN_DELAY_MS=0 CPU_COST_MODEL=native || die "the lab did not start"

ping_p50() {
  python3 - "$LAB_URL" <<'PY'
import sys, time, urllib.request
url = sys.argv[1] + "/api/ping"
samples = []
for _ in range(200):
    t = time.perf_counter()
    urllib.request.urlopen(url, timeout=5).read()
    samples.append((time.perf_counter() - t) * 1e3)
samples.sort()
print(f"{samples[len(samples) // 2]:.3f}")
PY
}
before=$(ping_p50)
log "/api/ping p50 before: $before ms"

curl -fsS "$LAB_URL/openapi.json" -o "$work/openapi.json"

set +e
rm -rf target/api-fuzz
# Three passes. The coverage phase sends every boundary value, hooks or not; three operations stay
# slow at their upper bounds whatever the timeouts (a 30 s blocking call or a 10 s inline CPU burn
# parks a runtime thread; a 60 s pool job runs to its 600 s deadline), so they get the generated phases only, where the
# hooks bound them. Everything else gets every phase, in two passes of about equal length (the
# five routes of WAITS, which spend ~100 s waiting on downstream calls, sleeps and timeouts, and
# the rest). The three passes run side by side, each its own process with its own report
# directory: a run mostly waits (~15 s of CPU in 160 s alone), and schemathesis's own --workers
# (threads) crash in hypothesis on this Python (an AST recursion depth mismatch), so the
# parallelism is processes.
SLOW='^/api/(blocking|worker-pool|cpu/burn)$'
WAITS='^/api/(call-downstream|memory-spike|cascade-failure|parallel-io|slow)$'
# Each pass runs in a directory of its own: schemathesis keeps a cache (.schemathesis/, replayed
# by later runs) in the working directory, which concurrent passes must not share and a run must
# not carry over from the last one.
root=$PWD
fuzz() ( # a subshell: its cd stays its own
  mkdir -p "$work/$1"
  cd "$work/$1"
  PYTHONPATH="$root/scripts/ci" SCHEMATHESIS_HOOKS=fuzz_hooks "$root/$VENV/bin/schemathesis" run "$work/openapi.json" --url "$LAB_URL" \
    --checks all --exclude-checks not_a_server_error,positive_data_acceptance \
    --exclude-path /lab/events \
    --max-examples "$MAX_EXAMPLES" --seed 20261123 --workers 1 \
    --request-timeout 20 --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$root/target/api-fuzz/$1" --no-color "${@:2}"
)
status=0
fuzz slow --include-path-regex "$SLOW" --phases examples,fuzzing > "$work/slow.out" 2>&1 &
slow_pid=$!
fuzz waits --include-path-regex "$WAITS" > "$work/waits.out" 2>&1 &
waits_pid=$!
fuzz rest --exclude-path-regex "$SLOW|$WAITS" || status=$?
wait "$waits_pid" || status=$?
wait "$slow_pid" || status=$?
cat "$work/waits.out" "$work/slow.out"
set -e

cases=$(python3 - target/api-fuzz <<'PY'
import glob, json, sys
n = 0
for f in glob.glob(sys.argv[1] + "/*/*.ndjson"):
    for line in open(f):
        ev = json.loads(line)
        # Each finished scenario records the test cases it generated.
        if "ScenarioFinished" in ev:
            n += len(ev["ScenarioFinished"]["recorder"].get("cases", {}))
print(n)
PY
)
log "generated test cases: $cases"
kill -0 "$LAB_PID" 2>/dev/null || { tail -40 "$work/lab.log"; die "the lab died during the run"; }
if grep -q "panicked" "$work/lab.log"; then grep -B2 -A5 panicked "$work/lab.log" | head -40; die "the lab panicked"; fi
after=$(ping_p50)
log "/api/ping p50 after: $after ms"
[ "$status" -eq 0 ] || die "schemathesis found responses the spec does not document (exit $status)"
[ "$cases" -ge "$MIN_CASES" ] || die "only $cases cases were generated (at least $MIN_CASES required)"
awk -v b="$before" -v a="$after" 'BEGIN { m = 3 * b; if (b + 2 > m) m = b + 2; exit !(a <= m) }' ||
  die "/api/ping is slower after the run: $after ms vs $before ms before"
log "0 undocumented responses in $cases cases; the lab is alive and /api/ping is back at baseline"
