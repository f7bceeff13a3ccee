#!/usr/bin/env bash
# Does RSS come back after the load? Side by side in one run: the release binary with freed heap
# memory handed back to the OS (MEMORY_TRIM_INTERVAL_MS=5000, the default) and without
# (MEMORY_TRIM_INTERVAL_MS=0: glibc's own behaviour, what the lab did before 2026-11-25).
# Each side: idle baseline RSS, then WAVES waves of CONNS keep-alive connections (one request
# each, then closed), ten buffered 20 MiB uploads, POST /api/clear-memory, and RSS 1 s later.
# Target: after / baseline <= 1.2 with trimming. Usage: bash bench/memory-return.sh [CONNS] [WAVES]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
conns=${1:-5000}
waves=${2:-3}
cargo build --release --locked --bin chokepoint >&2

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

waves_of_connections() { # PORT
  python3 - "$1" "$conns" "$waves" <<'PY'
import socket, sys
port, n, waves = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for _ in range(waves):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(1024)
    for s in socks:
        s.close()
PY
}

one_side() { # TRIM_MS
  local port dir pid base after peak
  port=$(free_port)
  dir=$(mktemp -d)
  ulimit -n 20000
  PORT=$port GRPC_PORT=0 DATABASE_URL="sqlite://$dir/m.db?mode=rwc" MEMORY_TRIM_INTERVAL_MS=$1 \
    target/release/chokepoint serve >/dev/null 2>&1 &
  pid=$!
  wait_200 "http://127.0.0.1:$port/health" 20
  for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$port/api/ping"; done
  sleep 0.5
  base=$(rss_kib $pid)
  waves_of_connections "$port"
  peak=$(rss_kib $pid)
  head -c $((20 * 1024 * 1024)) /dev/zero >"$dir/body"
  for _ in $(seq 10); do
    curl -fs -o /dev/null -H 'Transfer-Encoding: chunked' --data-binary @"$dir/body" \
      "http://127.0.0.1:$port/api/upload?mode=buffer" &
  done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
  [ "$(rss_kib $pid)" -gt "$peak" ] && peak=$(rss_kib $pid)
  curl -fs -o /dev/null -X POST "http://127.0.0.1:$port/api/clear-memory"
  sleep 1
  after=$(rss_kib $pid)
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$dir"
  awk -v t="$1" -v b="$base" -v p="$peak" -v a="$after" \
    'BEGIN { printf "| %s | %.1f | %.1f | %.1f | %.2f |\n", t, b/1024, p/1024, a/1024, a/b }'
}

echo "| MEMORY_TRIM_INTERVAL_MS | baseline MiB | peak MiB | after MiB | after / baseline |"
echo "|---|---|---|---|---|"
one_side 5000
one_side 0
