#!/usr/bin/env bash
# Builds docker/Dockerfile with podman exactly as users build it (local stand-in base images
# under the Dockerfile's own names: scripts/machine/standin-bases.sh) and runs the image the way the
# pod runs it: non-root (65532), read-only root, /tmp a tmpfs, every capability dropped, 512 MiB
# and no swap. Asserts /health, /ready, /metrics, the `healthcheck` subcommand, a clean SIGTERM
# (exit 0), the OOM lesson (the fragile leak is a kernel OOM kill, exit 137; MEMORY_BUDGET_MB
# answers 507 instead and the container lives), and the binary's size (stripped, <= 30 MB).
# The image is built first by scripts/ci/container-build.sh (the Dockerfile as users build it), or,
# with IMAGE_BUILT=1, taken as CI's background build left it.
# Usage: scripts/ci/container-test.sh        (IMAGE=localhost/chokepoint:dev by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/common.sh
. scripts/machine/podman.sh
IMAGE=${IMAGE:-localhost/chokepoint:dev}
MAX_BINARY_MB=30
name=chokepoint-ct-$$
work=$(mktemp -d)
cleanup() {
  podman rm -f --ignore -t 0 "$name" "$name-oom" "$name-cap" "$name-budget" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

podman_setup
if [ "${IMAGE_BUILT:-}" = 1 ]; then
  # CI built it in the background (scripts/ci/container-build.sh) from this very tree.
  podman image exists "$IMAGE" || die "IMAGE_BUILT=1 but there is no $IMAGE"
else
  bash scripts/ci/container-build.sh
fi

podman create --name "$name-size" "$IMAGE" >/dev/null
podman cp "$name-size:/usr/local/bin/chokepoint" "$work/bin"
podman rm "$name-size" >/dev/null
bin_bytes=$(stat -c %s "$work/bin")
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $(( image_bytes / 1048576 )) MiB, of which the binary $(( bin_bytes / 1048576 )) MiB"
# (.debug_gdb_scripts is an allocated section rustc adds; strip rightly keeps it.)
if readelf -S "$work/bin" | grep -qE '\.debug_(info|line|str|abbrev|ranges)'; then die "the binary in the image carries debug sections"; fi
[ "$bin_bytes" -le $(( MAX_BINARY_MB * 1048576 )) ] || die "the binary is $(( bin_bytes / 1048576 )) MiB (> $MAX_BINARY_MB)"

# The pod's security context and limits (k8s/base/app.yaml), in podman's words.
run_like_the_pod() { # name port [podman run options...]
  local n=$1 port=$2; shift 2
  podman run -d --name "$n" --user 65532:65532 --read-only --tmpfs /tmp:rw,size=64m \
    --cap-drop ALL --security-opt no-new-privileges --memory 512m --memory-swap 512m \
    -p "127.0.0.1:$port:8000" "$@" "$IMAGE" >/dev/null
}

port=$(free_port)
t0=$(date +%s%N)
run_like_the_pod "$name" "$port" -e SHUTDOWN_DELAY_MS=0
wait_ready "http://127.0.0.1:$port/ready" 200 0.05 || { podman logs "$name" | tail -20; die "/ready never answered 200"; }
log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms (podman run to /ready 200)"
grep -q '"healthy"' <<< "$(curl -fsS "http://127.0.0.1:$port/health")" || die "/health"
grep -q '"sqlite"' <<< "$(curl -fsS "http://127.0.0.1:$port/ready")" || die "/ready does not name the database"
grep -q '^http_requests_total{' <<< "$(curl -fsS "http://127.0.0.1:$port/metrics")" || die "/metrics has no http_requests_total"
[ "$(podman inspect --format '{{.Config.User}}' "$name")" = 65532:65532 ] || die "not running as 65532"
podman exec "$name" /usr/local/bin/chokepoint healthcheck || die "the healthcheck subcommand failed"
if podman exec "$name" /usr/local/bin/chokepoint healthcheck --path /nope >/dev/null 2>&1; then
  die "the healthcheck subcommand passed on a 404"
fi
log "/health, /ready, /metrics and the healthcheck subcommand answer; user 65532, read-only root"
podman kill --signal TERM "$name" >/dev/null
code=$(timeout 30 podman wait "$name") || die "still running 30 s after SIGTERM"
[ "$code" = 0 ] || { podman logs "$name" | tail -20; die "SIGTERM: exit code $code, not 0"; }
grep -q 'shutdown requested' <<< "$(podman logs "$name" 2>&1)" || die "no shutdown line in the log"
log "SIGTERM: clean exit 0"

# The OOM lesson. Fragile: the memory endpoints' safety cap (1 GiB) is above the 512 MiB limit,
# so the leak grows the process until the kernel kills it.
leak() { # port -> prints the status codes of up to 80 leaks of 10 MiB, stops at the first failure
  local code
  for _ in $(seq 1 80); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "http://127.0.0.1:$1/api/memory-leak?size_mb=10") || code=000
    echo "$code"
    case "$code" in 200) ;; *) return 0 ;; esac
  done
}
port=$(free_port)
run_like_the_pod "$name-oom" "$port"
wait_ready "http://127.0.0.1:$port/ready" 200 0.05 || die "the OOM container did not start"
pid=$(podman inspect --format '{{.State.Pid}}' "$name-oom")
codes=$(leak "$port" | sort | uniq -c | tr '\n' ' ')
code=$(timeout 30 podman wait "$name-oom") || die "the fragile leak did not end the container: $codes"
oom=$(podman inspect --format '{{.State.OOMKilled}}' "$name-oom")
# podman 4.3 on this cgroup-v1 host does not always see the OOM event (OOMKilled=false); the
# kernel's own line names the process it killed.
kernel=$(dmesg 2>/dev/null | grep -E "Memory cgroup out of memory: Killed process $pid " | tail -1 || true)
[ "$code" = 137 ] || die "expected a kernel OOM kill (exit 137), got exit $code ($codes)"
[ "$oom" = true ] || [ -n "$kernel" ] || die "exit 137 but neither podman (OOMKilled=$oom) nor the kernel log says OOM"
log "fragile leak: kernel OOM kill, exit 137 (podman OOMKilled=$oom; kernel: ${kernel#*] }) after: $codes"

# A memory cap below the limit refuses with 507 before the kernel kills anything, and the
# container lives: the manifests' base (MEMORY_LEAK_LIMIT_MB=384, as in k8s/base) and the cure
# (MEMORY_BUDGET_MB=256, the hardened profile's budget).
refuses_with_507() { # suffix VAR=value
  local n=$name-$1 port codes
  port=$(free_port)
  run_like_the_pod "$n" "$port" -e "$2"
  wait_ready "http://127.0.0.1:$port/ready" 200 0.05 || die "$2: the container did not start"
  codes=$(leak "$port" | sort | uniq -c | tr '\n' ' ')
  grep -q ' 507' <<< "$codes" || die "$2: expected a 507, got $codes"
  [ "$(podman inspect --format '{{.State.Running}}' "$n")" = true ] || die "$2: the container died"
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null || die "$2: /health after the 507"
  log "$2: 507 and still serving after: $codes"
}
refuses_with_507 cap MEMORY_LEAK_LIMIT_MB=384
refuses_with_507 budget MEMORY_BUDGET_MB=256
log "ok"
