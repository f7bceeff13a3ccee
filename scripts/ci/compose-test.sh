#!/usr/bin/env bash
# Brings up docker/compose.yaml with podman-compose, as `docker compose up` would: app, downstream,
# postgres, redis and Prometheus (local stand-in images built from Debian's packages under the
# compose file's own image names: scripts/machine/standin-bases.sh; Grafana is not packaged by Debian
# and is not started here). Asserts: the app becomes ready on PostgreSQL, Prometheus scrapes it
# (up == 1) and loads every alert rule, and an alert fires under its scenario's load:
# DBPoolAcquireTimeouts, with a pool of 2, a 100 ms acquire timeout and 30 clients holding 1 s.
# The host ports the compose file publishes (8000, 8001, 9090) must be free.
# Usage: scripts/ci/compose-test.sh       (after scripts/ci/container-test.sh built chokepoint:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/common.sh
. scripts/machine/podman.sh
project=chokepoint-ct$$
services=(app downstream postgres redis prometheus)
TOKEN=workshop-token-change-me
work=$(mktemp -d)
loaders=()
cleanup() {
  for p in "${loaders[@]}"; do kill "$p" 2>/dev/null || true; done
  podman-compose -p "$project" -f docker/compose.yaml down -v -t 2 >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

podman_setup
WANT_SERVICES=1 standin_bases
command -v podman-compose >/dev/null || python3 -m pip install -q --disable-pip-version-check \
  "podman-compose==$(sed -n 's/^podman-compose==//p' scripts/requirements-ci.txt)"
command -v podman-compose >/dev/null || die "podman-compose is missing after pip install"
podman image exists localhost/chokepoint:dev || bash scripts/ci/container-test.sh
for port in 8000 8001 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is taken: the compose file publishes it"; fi
done

t0=$(date +%s)
podman-compose -p "$project" -f docker/compose.yaml up -d --no-build "${services[@]}" > "$work/up.log" 2>&1 \
  || { tail -30 "$work/up.log"; die "podman-compose up failed"; }
if ! wait_ready http://127.0.0.1:8000/ready 600 0.2; then
  podman-compose -p "$project" -f docker/compose.yaml logs app 2>&1 | tail -20
  die "the app never became ready"
fi
grep -q '"postgres"' <<< "$(curl -fsS http://127.0.0.1:8000/ready)" || die "/ready does not name PostgreSQL"
retries=$(podman-compose -p "$project" -f docker/compose.yaml logs app 2>/dev/null | grep -c 'database not reachable yet' || true)
log "${services[*]} up; the app ready on PostgreSQL after $(( $(date +%s) - t0 )) s ($retries start-up retries while PostgreSQL initialised)"

prom() { curl -fsS "http://127.0.0.1:9090/api/v1/$1"; }
wait_ready http://127.0.0.1:9090/-/ready 300 0.2 || die "Prometheus never became ready"
scraped() { prom 'query?query=up%7Bjob%3D%22chokepoint%22%7D' | jq -r '.data.result[0].value[1] // "none"'; }
for _ in $(seq 1 60); do [ "$(scraped)" = 1 ] && break; sleep 0.5; done
[ "$(scraped)" = 1 ] || die "Prometheus does not scrape the app (up{job=\"chokepoint\"} = $(scraped))"
rules=$(prom rules | jq '[.data.groups[].rules | length] | add')
want=$(grep -c -- '- alert:' k8s/monitoring/alerts.rules.yml)
[ "$rules" = "$want" ] || die "Prometheus loaded $rules rules, the file has $want"
log "Prometheus $(prom status/buildinfo | jq -r .data.version) scrapes the app (up = 1) and loaded all $rules alert rules"

# The db-pool collapse, made quick: pool 2, acquire timeout 100 ms, 30 clients holding 1 s each.
curl -fsS -XPATCH http://127.0.0.1:8000/admin/config -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"db_pool_size":2,"db_max_overflow":0,"db_pool_timeout_ms":100}' >/dev/null || die "could not set the knobs"
for _ in $(seq 1 30); do
  ( end=$(( $(date +%s) + 150 )); while [ "$(date +%s)" -lt "$end" ]; do
      curl -s -o /dev/null -m 5 "http://127.0.0.1:8000/api/db/hold?ms=1000" || true; done ) &
  loaders+=($!)
done
t0=$(date +%s)
state=none
while [ $(( $(date +%s) - t0 )) -lt 150 ]; do
  state=$(prom alerts | jq -r '[.data.alerts[] | select(.labels.alertname == "DBPoolAcquireTimeouts") | .state][0] // "none"')
  [ "$state" = firing ] && break
  sleep 2
done
[ "$state" = firing ] || die "DBPoolAcquireTimeouts did not fire within 150 s of load (state: $state)"
log "DBPoolAcquireTimeouts firing $(( $(date +%s) - t0 )) s after the load started (its rule: rate > 0 for 30 s)"
log "ok"
