#!/usr/bin/env bash
# Local stand-ins for the two images docker/Dockerfile starts FROM, built only from Debian's
# packages and tagged with the exact names the Dockerfile uses, so the Dockerfile is built as users
# build it and podman never tries a pull (there is no registry here):
#   docker.io/library/rust:<RUST_VERSION>-slim-bookworm   debootstrap minbase + gcc + this machine's
#                                                         Rust toolchain (same version as the ARG)
#   gcr.io/distroless/cc-debian12:nonroot                 dpkg -x of libc6, libgcc-s1, libssl3,
#                                                         ca-certificates, tzdata, netbase; user
#                                                         nonroot (65532), /tmp 1777
# Both carry this machine's CA bundle (/etc/ssl/certs/ca-certificates.crt): here crates.io is
# reached through a TLS-inspecting egress only the host trusts.
# Each carries the label org.chokepoint.stand-in; an image of that name WITHOUT the label is a real
# one and is left alone. Built once and kept in podman's storage (about 2 min when cold).
# Usage: scripts/machine/standin-bases.sh [--rebuild]     (WANT_SERVICES=1: also the compose services)
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG_TAG=standin-bases
. scripts/lib/common.sh
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(realpath scripts/machine/containers.conf)}
STAMP=4 # bump when what the stand-ins contain changes
SVC_STAMP=5 # the same, for the compose services' stand-ins
REBUILD=${1:-}

rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' docker/Dockerfile)
RUST_IMG="docker.io/library/rust:${rust_version}-slim-bookworm"
RUNTIME_IMG="gcr.io/distroless/cc-debian12:nonroot"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# present: 0 = ours and current, 1 = build it, 2 = a real image of that name (leave it)
present() {
  podman image exists "$1" || return 1
  local label
  label=$(podman image inspect --format '{{index .Labels "org.chokepoint.stand-in"}}' "$1")
  [ -n "$label" ] && [ "$label" != "<no value>" ] || return 2
  [ "$label" = "$STAMP" ] && [ "$REBUILD" != --rebuild ] && return 0
  return 1
}

work=$(mktemp -d /var/tmp/standin.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ---- the build image ---------------------------------------------------------------------------
set +e; present "$RUST_IMG"; state=$?; set -e
if [ $state = 1 ]; then
  rustc_v=$(rustc --version | awk '{print $2}')
  case "$rustc_v" in "$rust_version"|"$rust_version".*) ;; *)
    die "the Dockerfile asks for Rust $rust_version, this machine has $rustc_v" ;; esac
  toolchain=$(rustc --print sysroot)
  log "building $RUST_IMG: debootstrap minbase bookworm + gcc, Rust $rustc_v from $toolchain"
  t0=$(date +%s)
  debootstrap --variant=minbase --include=gcc,libc6-dev,binutils,ca-certificates \
    bookworm "$work/root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; die "debootstrap failed"; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  # The machine's trust store: this sandbox reaches crates.io through a TLS-inspecting egress
  # whose CA only the host trusts (a real rust image on a real network needs nothing of this).
  cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$work/root/usr/local/rust" "$work/root/usr/local/cargo/bin"
  # The toolchain without its docs; cargo and rustc on the PATH as the official image has them.
  for d in bin lib libexec etc; do cp -a "$toolchain/$d" "$work/root/usr/local/rust/"; done
  for b in cargo rustc rustdoc; do ln -s "/usr/local/rust/bin/$b" "$work/root/usr/local/cargo/bin/$b"; done
  tar -C "$work/root" -cf "$work/rust.tar" .
  podman import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change "ENV RUST_VERSION=$rustc_v" \
    --change "LABEL org.chokepoint.stand-in=$STAMP" \
    --change 'CMD ["bash"]' \
    "$work/rust.tar" "$RUST_IMG" >/dev/null
  rm -rf "$work/root" "$work/rust.tar"
  log "built $RUST_IMG in $(( $(date +%s) - t0 )) s"
elif [ $state = 2 ]; then
  log "$RUST_IMG is a real image: used as it is"
fi

# ---- the runtime image -------------------------------------------------------------------------
set +e; present "$RUNTIME_IMG"; state=$?; set -e
if [ $state = 1 ]; then
  log "building $RUNTIME_IMG from Debian packages"
  t0=$(date +%s)
  mkdir -p "$work/debs" "$work/rt"
  (cd "$work/debs" && apt-get -o APT::Sandbox::User=root download libc6 libgcc-s1 libssl3 ca-certificates tzdata netbase >/dev/null) \
    || die "apt-get download failed"
  for deb in "$work/debs"/*.deb; do dpkg -x "$deb" "$work/rt"; done
  rt=$work/rt
  rm -rf "$rt/usr/share/doc" "$rt/usr/share/man" "$rt/usr/share/lintian" "$rt/usr/share/locale"
  # ca-certificates ships the certificates; the bundle is what its postinst would generate.
  mkdir -p "$rt/etc/ssl/certs" "$rt/tmp" "$rt/home/nonroot" "$rt/root"
  # The bundle ca-certificates' postinst would generate; the machine's own, as for the build image.
  cp /etc/ssl/certs/ca-certificates.crt "$rt/etc/ssl/certs/ca-certificates.crt"
  chmod 1777 "$rt/tmp"
  chown 65532:65532 "$rt/home/nonroot"
  cat > "$rt/etc/passwd" <<'PW'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PW
  cat > "$rt/etc/group" <<'GR'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GR
  tar -C "$rt" -cf "$work/rt.tar" .
  podman import \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL org.chokepoint.stand-in=$STAMP" \
    "$work/rt.tar" "$RUNTIME_IMG" >/dev/null
  log "built $RUNTIME_IMG in $(( $(date +%s) - t0 )) s"
elif [ $state = 2 ]; then
  log "$RUNTIME_IMG is a real image: used as it is"
fi
# ---- the compose stack's services (scripts/ci/compose-test.sh), with `--services` ----------------
# postgres:16-alpine, redis:7-alpine and prom/prometheus:v2.53.0, stood in for by Debian's
# PostgreSQL 15, Redis 7.0 and Prometheus 2.42 in one debootstrap root, each imported under its
# name with the official image's entrypoint behaviour (scripts/machine/standin/*-entrypoint.sh).
if [ "${WANT_SERVICES:-}" = 1 ]; then
  want=()
  for img in docker.io/library/postgres:16-alpine docker.io/library/redis:7-alpine docker.io/prom/prometheus:v2.53.0; do
    set +e; STAMP=$SVC_STAMP present "$img"; state=$?; set -e
    [ $state = 1 ] && want+=("$img")
    [ $state = 2 ] && log "$img is a real image: used as it is"
  done
  if [ ${#want[@]} -gt 0 ]; then
    log "building ${want[*]}: debootstrap minbase bookworm + postgresql-15, redis-server, prometheus"
    t0=$(date +%s)
    debootstrap --variant=minbase --include=postgresql-15,redis-server,prometheus,gosu \
      bookworm "$work/svc" "$MIRROR" > "$work/debootstrap-svc.log" 2>&1 \
      || { tail -20 "$work/debootstrap-svc.log"; die "debootstrap (services) failed"; }
    rm -rf "$work/svc/var/cache/apt/archives/"*.deb "$work/svc/var/lib/apt/lists/"* "$work/svc/usr/share/doc"
    install -m 0755 scripts/machine/standin/postgres-entrypoint.sh "$work/svc/usr/local/bin/docker-entrypoint.sh"
    install -m 0755 scripts/machine/standin/redis-entrypoint.sh "$work/svc/usr/local/bin/redis-entrypoint.sh"
    mkdir -p "$work/svc/prometheus" "$work/svc/var/run/postgresql"
    # Debian's build keeps its data in /var/lib/prometheus/metrics2 unless told otherwise.
    chown -R 65534:65534 "$work/svc/prometheus" "$work/svc/var/lib/prometheus"
    chroot "$work/svc" chown postgres:postgres /var/run/postgresql
    tar -C "$work/svc" -cf "$work/svc.tar" .
    common=(--change "LABEL org.chokepoint.stand-in=$SVC_STAMP")
    for img in "${want[@]}"; do
      case "$img" in
        *postgres*) podman import "${common[@]}" \
            --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV PGDATA=/var/lib/postgresql/data' \
            --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' --change 'CMD ["postgres"]' \
            --change 'EXPOSE 5432' "$work/svc.tar" "$img" >/dev/null ;;
        *redis*) podman import "${common[@]}" \
            --change 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]' --change 'CMD ["redis-server"]' \
            --change 'EXPOSE 6379' "$work/svc.tar" "$img" >/dev/null ;;
        *prometheus*) podman import "${common[@]}" \
            --change 'USER 65534' --change 'WORKDIR /prometheus' \
            --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
            --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
            --change 'EXPOSE 9090' "$work/svc.tar" "$img" >/dev/null ;;
      esac
    done
    log "built ${want[*]} in $(( $(date +%s) - t0 )) s"
  fi
fi
log "stand-ins ready: $RUST_IMG, $RUNTIME_IMG${WANT_SERVICES:+, and the compose services}"
