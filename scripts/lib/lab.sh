# Shared by the scripts that drive a running lab (k6-smoke, browser-test, api-fuzz).
# Source it, then: start_lab BIN LOGFILE [VAR=value ...]  → sets LAB_PID and LAB_URL
#                  stop_lab                                → SIGTERM, then waits
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start_lab() {
  local bin=$1 logfile=$2
  shift 2
  local port
  port=$(free_port)
  # Its own gRPC port too (GET / names it): labs started side by side never share 50051.
  env PORT="$port" GRPC_PORT="${GRPC_PORT:-0}" RUST_LOG="${RUST_LOG:-error}" "$@" "$bin" >"$logfile" 2>&1 &
  LAB_PID=$!
  LAB_URL="http://127.0.0.1:$port"
  wait_ready "$LAB_URL/ready" && return 0
  cat "$logfile" >&2
  echo "the lab did not become ready on $LAB_URL" >&2
  return 1
}

stop_lab() {
  if [ -n "${LAB_PID:-}" ]; then
    kill "$LAB_PID" 2>/dev/null || true
    wait "$LAB_PID" 2>/dev/null || true
    LAB_PID=""
  fi
}
