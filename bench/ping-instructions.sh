#!/usr/bin/env bash
# Instrumentation cost in CPU instructions per request, chokepoint vs the hello-world baseline
# (examples/hello_axum.rs), counted by valgrind's callgrind. Instruction counts do not depend on
# what else the machine is doing, so unlike bench/ping.sh (throughput under wrk) this number is
# repeatable on a shared, noisy machine; it leaves out the kernel's share (the TCP path), which
# both servers pay alike. chokepoint runs at its default log level (RUST_LOG unset: info), as
# users run it.
#
# Each server runs twice under callgrind, answering N1 and then N2 sequential keep-alive
# `GET /api/ping` requests; (instructions(N2) - instructions(N1)) / (N2 - N1) is the cost of one
# request with start-up and shutdown cancelled out. (Start-up is not quite constant: the rate
# limiter's clock calibrates itself for a fixed wall time, a few million instructions either way
# under valgrind, hence the large N2 - N1.)
# Usage: bash bench/ping-instructions.sh [N1 default 1000] [N2 default 6000]
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${1:-1000}
N2=${2:-6000}
source bench/lib.sh
need_tool valgrind valgrind
build_both

work=$(mktemp -d)
trap 'pkill -f "callgrind-out-file=$work/" 2>/dev/null || true; rm -rf "$work"' EXIT

# instructions NAME N BINARY -> prints the total instructions of a run answering N requests
instructions() {
  local name=$1 n=$2 bin=$3 port out
  port=$(free_port)
  out="$work/$name.$n.callgrind"
  DATABASE_URL="sqlite://$work/$name.$n.db?mode=rwc" PORT=$port GRPC_PORT=0 \
    env -u RUST_LOG valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >/dev/null 2>&1 &
  local pid=$!
  wait_200 "http://127.0.0.1:$port/api/ping" 60 || return 1 # valgrind starts slowly
  python3 - "$port" "$n" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", "/api/ping")
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        sys.exit(f"/api/ping answered {resp.status}")
PY
  sleep 0.5
  pkill -TERM -f "callgrind-out-file=$out" || true
  wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$out"
}

per_request() { # name binary
  log "$1: $N1 then $N2 requests under callgrind"
  local a b
  a=$(instructions "$1" "$N1" "$2")
  b=$(instructions "$1" "$N2" "$2")
  awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.0f\n", (b - a) / (n2 - n1) }'
}

hello=$(per_request hello target/release/examples/hello_axum)
chokepoint=$(per_request chokepoint target/release/chokepoint)
python3 - "$chokepoint" "$hello" <<'PY'
import sys
cp, hello = int(sys.argv[1]), int(sys.argv[2])
print("| measure | chokepoint | hello-world axum | hello / chokepoint |")
print("|---|---|---|---|")
print(f"| user-space instructions per /api/ping (callgrind) | {cp:,} | {hello:,} | {hello / cp:.3f} |")
PY
