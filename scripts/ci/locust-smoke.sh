#!/usr/bin/env bash
# The reports that used Locust, with Locust (load-tests/locust/), against the release binary in
# both profiles, each run on a fresh process, every time divided by a scale so CI stays short
# (the arithmetic does not depend on it; the full-size commands are in load-tests/README.md):
# - burst.py: 1000 users, no think time, POST /api/v1/deployments/; work and timeout ÷2 (1 s, 10 s),
#   30 s of load. Fragile: most requests fail. Hardened: steady goodput >= 90% of pool / work,
#   nothing lost, and at least fragile's completed deployments.
# - thread_pool.py: 200 gRPC users with client deadlines of 5 s and 30 s, ÷10 (0.5 s, 3 s; 450 ms
#   of work, 6 s of calls followed to their end). Fragile (10 workers): >= 80% DEADLINE_EXCEEDED;
#   Option 1 (200 workers): >= 95% OK; hardened: no DEADLINE_EXCEEDED and at least fragile's OK.
# Locust and grpcio come from PyPI (scripts/requirements-locust.txt), in .ci-tools/locust.
# Usage: scripts/ci/locust-smoke.sh [path/to/chokepoint]   (INSTALL_ONLY=1: install, then stop)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/chokepoint}
LOG_TAG=locust
. scripts/lib/common.sh

VENV=.ci-tools/locust
venv_tool "$VENV" locust -r scripts/requirements-locust.txt
"$VENV/bin/python" -c 'import locust, grpc' || die "$VENV lacks locust or grpcio (remove it to reinstall)"
log "$("$VENV/bin/locust" --version 2>&1 | head -1)"
[ "${INSTALL_ONLY:-0}" = 1 ] && exit 0
[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"

. scripts/lib/lab.sh
work=$(mktemp -d)
trap 'stop_lab; rm -rf "$work"' EXIT
failed=()

# run NAME LOCUSTFILE "LOCUST ARGS" ENV_FOR_LOCUST -- LAB_ENV...
run() {
  local name=$1 file=$2 args=$3 lenv=$4
  shift 5
  start_lab "$BIN" "$work/$name.lab.log" DATABASE_URL="sqlite://$work/$name.db?mode=rwc" RUST_LOG=warn "$@" ||
    die "the lab did not start ($name)"
  # shellcheck disable=SC2086
  if env RESULT="$work/$name.json" $lenv "$VENV/bin/locust" -f "$file" --headless $args -H "$LAB_URL" \
       --only-summary --exit-code-on-error 0 --loglevel WARNING > "$work/$name.log" 2>&1; then
    log "$name: checks held"
  else
    log "$name: FAILED; the lab's warnings and errors:"
    grep -E "WARN|ERROR" "$work/$name.lab.log" | tail -20 || true
    failed+=("$name")
  fi
  awk '/^[a-z-]+ \(/ {show=1; print; next} show && /^  (ok|FAIL) / {print; next} {show=0}' "$work/$name.log"
  grep -E "Traceback|could not run" "$work/$name.log" | head -5 || true
  stop_lab
}

# at_least NAME_HI KEY NAME_LO: the first run's KEY is at least the second's.
at_least() {
  if python3 - "$work/$1.json" "$work/$3.json" "$2" <<'PY'
import json, sys
hi, lo, key = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
get = lambda r: r["codes"].get("OK", 0) if key == "OK" else r[key]
print(f"  {sys.argv[1].rsplit('/', 1)[-1]} {key} {get(hi)} vs {sys.argv[2].rsplit('/', 1)[-1]} {get(lo)}")
sys.exit(0 if get(hi) >= get(lo) else 1)
PY
  then log "$1 >= $3 ($2)"; else log "$1 < $3 ($2): FAILED"; failed+=("$1>=$3"); fi
}

BURST_LAB=(DEPLOY_WORK_MS=1000 DEPLOY_TIMEOUT_MS=10000)
for profile in ${BURST_PROFILES-fragile hardened}; do
  run "burst-$profile" load-tests/locust/burst.py "-u 1000 -r 200 -t 30s --stop-timeout 12" \
    "PROFILE=$profile" -- PROFILE="$profile" "${BURST_LAB[@]}"
done
[ -z "${BURST_PROFILES+x}" ] && at_least burst-hardened completed burst-fragile

for deadline in ${THREAD_POOL_DEADLINES:-0.5 3}; do
  tp="WORK_MS=450 DEADLINE_S=$deadline"
  args="-u 200 -r 200 -t 6s --stop-timeout 5"
  run "thread-pool-$deadline-fragile" load-tests/locust/thread_pool.py "$args" "$tp EXPECT=fragile" -- PROFILE=fragile
  run "thread-pool-$deadline-option1" load-tests/locust/thread_pool.py "$args" "$tp EXPECT=option1" -- PROFILE=fragile WORKER_POOL_SIZE=200
  run "thread-pool-$deadline-hardened" load-tests/locust/thread_pool.py "$args" "$tp EXPECT=hardened REFUSED_PAUSE_S=0.02" -- PROFILE=hardened
  at_least "thread-pool-$deadline-hardened" OK "thread-pool-$deadline-fragile"
done

[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
log "every Locust check held"
