# Shared by the bench/ scripts. Source it after `cd` to the repository root.
# shellcheck source=../scripts/lib/lab.sh
source scripts/lib/lab.sh # free_port
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
