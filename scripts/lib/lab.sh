# Shared by the scripts that drive a running lab (k6-smoke, browser-test, api-fuzz).
# Source it, then: start_lab BIN LOGFILE [VAR=value ...]  → sets LAB_PID and LAB_URL
#                  stop_lab                                → SIGTERM, then waits
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_lab() {
  local bin=$1 logfile=$2
  shift 2
  local port
  port=$(free_port)
  env PORT="$port" RUST_LOG="${RUST_LOG:-error}" "$@" "$bin" >"$logfile" 2>&1 &
  LAB_PID=$!
  LAB_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "$LAB_URL/ready" && return 0
    kill -0 "$LAB_PID" 2>/dev/null || break
    sleep 0.1
  done
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
