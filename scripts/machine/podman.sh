# Sourced by the container scripts (container-test.sh, k8s-play.sh, compose-test.sh).
#   podman_setup        installs podman, buildah, debootstrap from Debian if missing; points
#                       CONTAINERS_CONF at scripts/machine/containers.conf
#   standin_bases       makes sure the images docker/Dockerfile starts FROM exist locally
#                       (built by scripts/machine/standin-bases.sh when missing; kept between runs)
# Needs common.sh sourced first.
podman_setup() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v curl >/dev/null || missing+=(curl)
  command -v runc >/dev/null || missing+=(runc)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  [ "$(id -u)" = 0 ] || die "podman here runs as root (rootless podman cannot set up this sandbox's namespaces)"
  export CONTAINERS_CONF
  CONTAINERS_CONF=$(realpath scripts/machine/containers.conf)
  podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' >/dev/null \
    || die "podman does not run here (podman info failed)"
}

standin_bases() {
  bash scripts/machine/standin-bases.sh || die "the stand-in base images could not be built"
}
