#!/usr/bin/env bash
# Runs load-tests/db-replicas.js the way the scenario needs it: three release-binary replicas
# against one private PostgreSQL with max_connections=20 (initdb/pg_ctl in a temp dir), first
# directly (PROFILE=fragile: the server refuses connections, requests fail), then through
# PgBouncer in transaction mode (PROFILE=hardened: no failures). Both must hold their thresholds.
# Then every database endpoint through the same PgBouncer (scripts/lib/db-endpoints.k6.js): no 5xx.
# Usage: scripts/ci/k6-replicas.sh [path/to/chokepoint]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/release/chokepoint}")
. scripts/lib/common.sh
[ -x "$BIN" ] || die "$BIN not found"
command -v k6 >/dev/null || die "k6 not found (scripts/ci/k6-smoke.sh installs it)"
PG=scripts/lib/private-pg.sh # the fixture tests/scenarios/db_replicas.rs uses too

work=$(mktemp -d)
pids=()
replica_pids=()
URLS=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash $PG bouncer-stop "$work" || true
  bash $PG stop "$work" immediate 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

pg_port=$(bash $PG start "$work" 20)

start_replicas() { # database_url skip_migrations -> sets URLS (comma-separated base URLs)
  local urls=() port
  for i in 1 2 3; do
    port=$(free_port)
    DATABASE_URL="$1" SKIP_MIGRATIONS="$2" DB_POOL_SIZE=5 DB_MAX_OVERFLOW=5 DB_POOL_TIMEOUT=3 \
      REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="k6-replicas-$$:" \
      PORT=$port GRPC_PORT=0 RUST_LOG=error "$BIN" >"$work/replica-$i-$port.log" 2>&1 &
    pids+=($!)
    replica_pids+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  for u in "${urls[@]}"; do
    wait_ready "$u/ready" || die "replica $u did not start"
  done
  URLS=$(IFS=,; echo "${urls[*]}")
}
stop_replicas() { for p in "${replica_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; replica_pids=(); }
refusals() { bash $PG refusals "$work"; }

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

bouncer_port=$(bash $PG bouncer "$work" "$pg_port" 15)
log "the same 3 replicas through PgBouncer (transaction mode, 15 server connections)"
start_replicas "postgres://app@127.0.0.1:$bouncer_port/lab?statement-cache-capacity=0" true
before=$(refusals)
run_k6 hardened "$URLS"
after=$(refusals)
[ "$after" -eq "$before" ] || die "the server refused $(( after - before )) connections behind PgBouncer"
log "hardened thresholds held; no refusal"

# Every database endpoint, not only /api/db/hold, through the same PgBouncer (transaction mode,
# no max_prepared_statements: Debian's 1.18): with sqlx's statement cache off nothing may fail.
k6 run --quiet --no-usage-report -e BASE_URLS="$URLS" scripts/lib/db-endpoints.k6.js \
  > "$work/k6-endpoints.log" 2>&1 || { grep -E "level=error|✗" "$work/k6-endpoints.log" | sort | uniq -c | sort -rn | head -20; tail -30 "$work/k6-endpoints.log"; die "a database endpoint failed behind PgBouncer"; }
log "every database endpoint answered 2xx behind PgBouncer $(pgbouncer --version 2>/dev/null | head -1 | awk '{print $NF}'): $(grep -E 'checks_succeeded' "$work/k6-endpoints.log" | sed 's/^ *//' | tr -s ' .')"
