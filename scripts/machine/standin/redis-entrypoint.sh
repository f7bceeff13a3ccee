#!/bin/bash
# Stand-in for the official redis image's entrypoint (scripts/machine/standin-bases.sh): without a
# config file it turns protected mode off (the container's network is the boundary), as the
# official image does, and runs as the redis user.
set -euo pipefail
# As the official image: flags alone (Kubernetes `args: ["--save", ...]`) mean `redis-server <flags>`.
[ "${1:0:1}" != - ] || set -- redis-server "$@"
if [ "${1:-}" = redis-server ]; then
  shift
  exec gosu redis redis-server --protected-mode no "$@"
fi
exec "$@"
