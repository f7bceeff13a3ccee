#!/usr/bin/env bash
# Opens every page chokepoint serves (/lab, /docs) in a real headless Chromium (Debian's
# chromium package, driven by playwright-core from npm) against the release binary, and fails
# on a console error or a failed assertion (tests/browser/lab.test.mjs). Screenshots go to
# target/browser/.
# Usage: scripts/ci/browser-test.sh [path/to/chokepoint]   (INSTALL_ONLY=1: install and stop)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/chokepoint}
LOG_TAG=browser
. scripts/lib/common.sh

if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi
command -v chromium >/dev/null || die "chromium is missing after apt-get install chromium"
command -v node >/dev/null || die "node is missing (the machine's Node.js runs playwright-core)"
(cd tests/browser && npm ci --silent --no-audit --no-fund) || die "npm ci in tests/browser failed"
log "$(chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
[ "${INSTALL_ONLY:-0}" = 1 ] && exit 0
[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"

. scripts/lib/lab.sh
work=$(mktemp -d)
trap 'stop_lab; rm -rf "$work"' EXIT
token="browser-$$-$RANDOM"
start_lab "$BIN" "$work/lab.log" DATABASE_URL="sqlite://$work/lab.db?mode=rwc" ADMIN_TOKEN="$token" SHUTDOWN_DELAY_MS=0 \
  LINK_PROXY=true ||
  die "the lab did not start"
if BASE_URL="$LAB_URL" ADMIN_TOKEN="$token" CHROMIUM="$(command -v chromium)" ARTIFACTS=target/browser \
     node tests/browser/lab.test.mjs; then
  log "every page passed"
else
  tail -30 "$work/lab.log" >&2
  die "browser test failed (screenshots in target/browser/)"
fi
