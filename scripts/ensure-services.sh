#!/usr/bin/env bash
# Makes sure what the tests need is installed and running:
#   - PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (started if stopped; a hard error
#     if they are not installed at all: tests never skip a real service);
#   - promtool (Debian's `prometheus` package) for `promtool check metrics`;
#   - pgbouncer (Debian's package) and initdb/pg_ctl for the db-replicas test's private cluster.
# Safe to run repeatedly; prints what it does.
set -euo pipefail

. "$(dirname "$0")/lib/common.sh"

# While packages install, /usr/sbin/policy-rc.d stops their daemons from starting (we start
# what we need ourselves). Whatever was there before is put back on every exit path.
policy=/usr/sbin/policy-rc.d
policy_saved=""
restore_policy() {
  if [ -n "$policy_saved" ]; then
    if [ -f "$policy_saved" ]; then as_root mv -f "$policy_saved" "$policy"; else as_root rm -f "$policy"; fi
    policy_saved=""
  fi
}
trap restore_policy EXIT

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  if [ -z "$policy_saved" ]; then
    policy_saved=$(mktemp -u /tmp/policy-rc.d.XXXXXX)
    if [ -e "$policy" ]; then as_root cp -p "$policy" "$policy_saved"; fi
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  restore_policy
}

# --- PostgreSQL --------------------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "PostgreSQL is stopped: starting it"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done # pg_isready, not HTTP
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started (tests need a real server)"
fi
log "PostgreSQL: ready on 127.0.0.1:5432"

# --- Redis -------------------------------------------------------------------------------
redis_up() { command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if ! redis_up; then
  command -v redis-server >/dev/null || die "Redis is not installed (expected redis-server; tests need a real server)"
  log "Redis is stopped: starting it"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
  redis_up || die "Redis is not reachable on 127.0.0.1:6379 and could not be started"
fi
log "Redis: ready on 127.0.0.1:6379"

# --- PgBouncer (the db-replicas cure; the test starts its own instance) ----------------------
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  log "installing pgbouncer (Debian package)"
  apt_install pgbouncer
fi
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null || die "pgbouncer is still missing after installing it"
log "pgbouncer: $( (/usr/sbin/pgbouncer --version 2>/dev/null || pgbouncer --version) | head -n1)"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || die "initdb/pg_ctl not found under /usr/lib/postgresql (the db-replicas test starts a private PostgreSQL)"

# --- promtool ----------------------------------------------------------------------------
if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian package prometheus)"
  apt_install prometheus
fi
command -v promtool >/dev/null || die "promtool is still missing after installing prometheus"
log "promtool: $(promtool --version 2>&1 | head -n1)"

# --- jq (the scripts read the binary's JSON with it) ---------------------------------------
if ! command -v jq >/dev/null; then
  log "installing jq (Debian package)"
  apt_install jq
fi
command -v jq >/dev/null || die "jq is still missing after installing it"
log "jq: $(jq --version)"
