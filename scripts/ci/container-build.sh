#!/usr/bin/env bash
# Builds docker/Dockerfile with podman exactly as users build it, from local stand-in base
# images under the Dockerfile's own names (scripts/machine/standin-bases.sh), into $IMAGE.
# container-test.sh runs it first; CI starts it once the host build is done, in the background at
# the lowest CPU and I/O priority (nice 19, ionice idle), so the in-container compile only uses
# what the tests and k6 leave idle, and container-test.sh then takes the built image
# (IMAGE_BUILT=1). The in-container compile reuses cargo's registry and target through cache
# mounts kept by buildah between runs: only a machine's first build is cold.
# Usage: scripts/ci/container-build.sh        (IMAGE=localhost/chokepoint:dev by default)
#        SKIP_SETUP=1: podman is already installed (CI installs it in the foreground, where
#        apt's lock is not contended)
#        LOW_PRIORITY=1: the build's containers get the lowest CPU weight (--cpu-shares 2). nice
#        alone does not reach them: a container has a cgroup of its own, which competes with the
#        host's processes as a peer, whatever the niceness inside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG_TAG=container-build
. scripts/lib/common.sh
. scripts/machine/podman.sh
IMAGE=${IMAGE:-localhost/chokepoint:dev}
if [ "${SKIP_SETUP:-}" = 1 ]; then
  export CONTAINERS_CONF
  CONTAINERS_CONF=$(realpath scripts/machine/containers.conf)
else
  podman_setup
fi
standin_bases
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
log "podman build -f docker/Dockerfile -t $IMAGE ."
priority=()
[ "${LOW_PRIORITY:-}" != 1 ] || priority=(--cpu-shares 2)
podman build --pull=never "${priority[@]}" -f docker/Dockerfile -t "$IMAGE" . > "$work/build.log" 2>&1 \
  || { tail -60 "$work/build.log"; die "the image did not build"; }
log "built $IMAGE in $(( $(date +%s) - t0 )) s"
