#!/usr/bin/env bash
# Runs the scripts that need PostgreSQL the way their scenarios need it: load-tests/slow-link.js
# and load-tests/poisoned-pool.js with LINK_PROXY=true (each slows the PostgreSQL link in its
# setup and clears it in its teardown), and load-tests/pool-too-big.js with the burst report's
# "raise the pool" advice (DB_POOL_SIZE=64 DB_MAX_OVERFLOW=0). The release binary against a fresh
# database on the PostgreSQL at 127.0.0.1:5432, once per profile and script (a fresh process
# each), SMOKE=1 unless SMOKE=0 is given. All must hold their thresholds.
# Usage: scripts/ci/k6-slow-link.sh [path/to/chokepoint]   (SCRIPTS="pool-too-big" runs a subset)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/release/chokepoint}")
LOG_TAG=k6-slow-link
. scripts/lib/lab.sh
[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"
command -v k6 >/dev/null || die "k6 not found (scripts/ci/k6-smoke.sh installs it)"
command -v psql >/dev/null || die "psql not found (PostgreSQL's client)"
PGURL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
psql "$PGURL" -Atqc 'select 1' >/dev/null 2>&1 ||
  die "PostgreSQL is not answering at $PGURL (scripts/ensure-services.sh starts it)"

db="k6_sick_link_$$"
work=$(mktemp -d)
cleanup() {
  stop_lab
  psql "$PGURL" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$PGURL" -qc "create database $db" >/dev/null

failed=()
for script in ${SCRIPTS:-slow-link poisoned-pool pool-too-big}; do
  case $script in
    pool-too-big) lab_env=(DB_POOL_SIZE=64 DB_MAX_OVERFLOW=0) ;;
    *) lab_env=(LINK_PROXY=true) ;;
  esac
  for profile in fragile hardened; do
    start_lab "$BIN" "$work/$profile-$script.log" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
      "${lab_env[@]}" PROFILE="$profile" || die "the lab did not start"
    start=$(date +%s)
    if k6 run --quiet --no-usage-report -e SMOKE="${SMOKE:-1}" -e PROFILE="$profile" -e BASE_URL="$LAB_URL" \
         "load-tests/$script.js" > "$work/k6-$profile-$script.log" 2>&1; then
      log "$profile $script: thresholds held ($(( $(date +%s) - start )) s)"
    else
      log "$profile $script: FAILED ($(( $(date +%s) - start )) s)"
      grep -v "Request Failed" "$work/k6-$profile-$script.log" | tail -40
      failed+=("$profile/$script")
    fi
    grep -E "✓|✗" "$work/k6-$profile-$script.log" | head -8 || true
    stop_lab
  done
done
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
log "${SCRIPTS:-slow-link poisoned-pool pool-too-big}: held their thresholds in fragile and hardened"
