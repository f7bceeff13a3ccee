#!/usr/bin/env bash
# Runs load-tests/db-replicas.js the way the scenario needs it: three release-binary replicas
# against one private PostgreSQL with max_connections=20 (initdb/pg_ctl in a temp dir), first
# directly (PROFILE=fragile: the server refuses connections, requests fail), then through
# PgBouncer in transaction mode (PROFILE=hardened: no failures). Both must hold their thresholds.
# Usage: scripts/k6-replicas.sh [path/to/chokepoint]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/chokepoint}")
log() { printf '[k6-replicas] %s\n' "$*"; }
die() { printf '[k6-replicas] ERROR: %s\n' "$*" >&2; exit 1; }
[ -x "$BIN" ] || die "$BIN not found"
command -v k6 >/dev/null || die "k6 not found (scripts/k6-smoke.sh installs it)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || die "initdb not found under /usr/lib/postgresql"
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$PGBOUNCER" ] || die "pgbouncer not found (scripts/ensure-services.sh installs it)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
[ "$(id -u)" != 0 ] || chown postgres:postgres "$work"
pids=()
replica_pids=()
URLS=""
pg_port=$(free_port)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -A trust -U postgres --no-sync -D "$work/data" >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 20
fsync = off
CONF
as_pg "$PGBIN/pg_ctl" -w -D "$work/data" -l "$work/server.log" start >/dev/null
psql -qAt -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE lab OWNER app"

start_replicas() { # database_url skip_migrations -> sets URLS (comma-separated base URLs)
  local urls=() port
  for i in 1 2 3; do
    port=$(free_port)
    DATABASE_URL="$1" SKIP_MIGRATIONS="$2" DB_POOL_SIZE=5 DB_MAX_OVERFLOW=5 DB_POOL_TIMEOUT=3 \
      PORT=$port RUST_LOG=error "$BIN" >"$work/replica-$i-$port.log" 2>&1 &
    pids+=($!)
    replica_pids+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  for u in "${urls[@]}"; do
    for _ in $(seq 1 100); do curl -fs -o /dev/null "$u/ready" && break; sleep 0.1; done
    curl -fs -o /dev/null "$u/ready" || die "replica $u did not start"
  done
  URLS=$(IFS=,; echo "${urls[*]}")
}
stop_replicas() { for p in "${replica_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; replica_pids=(); }
refusals() { grep -cE "too many clients already|remaining connection slots are reserved" "$work/server.log" || true; }

run_k6() { # profile urls
  k6 run --quiet --no-usage-report -e SMOKE=1 -e PROFILE="$1" -e BASE_URLS="$2" load-tests/db-replicas.js \
    > "$work/k6-$1.log" 2>&1 || { tail -40 "$work/k6-$1.log"; die "db-replicas.js ($1) did not hold its thresholds"; }
  log "$1: $(grep -E "'rate[<>]" "$work/k6-$1.log" | head -1 | sed 's/^ *//') of requests failed"
}

log "3 replicas × (5 + 5) connections, directly against max_connections=20"
start_replicas "postgres://app@127.0.0.1:$pg_port/lab" false
before=$(refusals)
run_k6 fragile "$URLS"
log "fragile thresholds held; the server refused $(( $(refusals) - before )) connections"
stop_replicas
sleep 1

bouncer_port=$(free_port)
cat > "$work/pgbouncer.ini" <<INI
[databases]
lab = host=127.0.0.1 port=$pg_port dbname=lab user=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = 15
max_db_connections = 15
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = $work/pgbouncer.log
INI
echo '"app" ""' > "$work/userlist.txt"
[ "$(id -u)" != 0 ] || chown postgres:postgres "$work/pgbouncer.ini" "$work/userlist.txt"
as_pg "$PGBOUNCER" "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$bouncer_port") 2>/dev/null && break; sleep 0.1; done
log "the same 3 replicas through PgBouncer (transaction mode, 15 server connections)"
start_replicas "postgres://app@127.0.0.1:$bouncer_port/lab?statement-cache-capacity=0" true
before=$(refusals)
run_k6 hardened "$URLS"
after=$(refusals)
[ "$after" -eq "$before" ] || die "the server refused $(( after - before )) connections behind PgBouncer"
log "hardened thresholds held; no refusal"
