# Shared by the bench/ scripts. Source it after `cd` to the repository root.
# shellcheck source=../scripts/lib/lab.sh
source scripts/lib/lab.sh # free_port, wait_ready (scripts/lib/common.sh)
log() { printf '[bench] %s\n' "$*" >&2; }

# need_tool COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is missing.
need_tool() {
  command -v "$1" >/dev/null && return 0
  log "installing $2 (Debian package)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$2" >/dev/null
}

# Both sides of every comparison, built in the same run.
build_both() {
  log "building chokepoint and the hello-world baseline (release)"
  cargo build --release --locked --bin chokepoint --example hello_axum >&2
}

# wait_200 URL [SECONDS, default 10]: polls every 5 ms (start-up times are measured with it)
# until URL answers 200; fails, saying so, when it has not within about SECONDS.
wait_200() {
  wait_ready "$1" $(( ${2:-10} * 200 )) 0.005 || { echo "no 200 from $1" >&2; return 1; }
}
