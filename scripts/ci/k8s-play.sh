#!/usr/bin/env bash
# Plays the Kubernetes manifests with `podman kube play` inside a private network namespace:
# renders k8s/overlays/{fragile,hardened,oom,replicas} as kubectl would, adapts what podman 4.3
# cannot express (scripts/machine/kube-adapt.py: Services become network aliases, `$(VAR)` args are
# expanded as the kubelet does, probes are dropped, one pod per replica; the Secret becomes a
# podman secret) and runs the pods on the image scripts/ci/container-test.sh built and the stand-in
# postgres and redis images. Asserts: the app ready on PostgreSQL; ConfigMap and Secret values in
# /admin/config; 401 without the token and 200 with it; the 512Mi limit; hardened's profile;
# the replicas overlay's three app pods and PostgreSQL's max_connections 40; the OOM lesson
# (overlays/oom: the leak is a kernel OOM kill). Prints what podman could not express.
# Usage: scripts/ci/k8s-play.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/common.sh
. scripts/machine/podman.sh
netns=cp-play-$$
net=cp-play-$$
work=$(mktemp -d)
TOKEN=workshop-token-change-me
in_ns() { nsenter --net="/run/netns/$netns" "$@"; }
pods=()
secrets=()
teardown() {
  local p
  for p in "${pods[@]}"; do
    in_ns podman pod rm -f -t 0 "$p" >/dev/null 2>>"$work/teardown.log" \
      || in_ns podman pod rm -f "$p" >/dev/null 2>>"$work/teardown.log" || true
    ! podman pod exists "$p" || die "could not remove pod $p: $(tail -3 "$work/teardown.log")"
  done
  for s in "${secrets[@]}"; do podman secret rm "$s" >/dev/null 2>&1 || true; done
  pods=(); secrets=()
}
cleanup() {
  teardown
  podman network rm -f "$net" >/dev/null 2>&1 || true
  ip netns del "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

podman_setup
WANT_SERVICES=1 standin_bases
podman image exists localhost/chokepoint:dev || bash scripts/ci/container-test.sh
use_kustomize
ip netns add "$netns"
ip -n "$netns" link set lo up
podman network create "$net" >/dev/null

pod_ip() { # pod name -> its address on $net
  local infra
  infra=$(podman pod inspect --format '{{.InfraContainerID}}' "$1")
  podman inspect --format "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$infra"
}

play() { # overlay: renders, adapts and plays it; the app pods' addresses in APPS
  local overlay=$1 dir=$work/$1 f alias app replica
  render "k8s/overlays/$overlay" > "$work/$overlay.yaml" || die "rendering $overlay failed"
  python3 scripts/machine/kube-adapt.py "$work/$overlay.yaml" "$dir"
  for f in "$dir"/secret-*.yaml; do
    local s; s=$(basename "$f" .yaml); s=${s#secret-}
    podman secret create "$s" "$f" >/dev/null && secrets+=("$s")
  done
  APPS=()
  # Dependencies first; the app retries PostgreSQL anyway (DB_STARTUP_TIMEOUT).
  local cms=()
  for f in "$dir"/configmap-*.yaml; do cms+=(--configmap "$f"); done
  while IFS=$'\t' read -r f alias app replica; do
    in_ns podman kube play --network "$net:alias=$alias" "${cms[@]}" "$dir/$f" \
      > "$work/play-$overlay-$f.log" 2>&1 || { cat "$work/play-$overlay-$f.log"; die "kube play $overlay/$f failed"; }
    local pod
    pod=$(podman pod inspect --format '{{.Name}}' "$(grep -A1 '^Pod:' "$work/play-$overlay-$f.log" | tail -1)")
    pods+=("$pod")
    [ "$app" = chokepoint ] && [ "$replica" = 1 ] && APP_POD=$pod
    [ "$app" = postgres ] && PG_POD=$pod
    [ "$app" = chokepoint ] && APPS+=("$(pod_ip "$pod")") || true
  done < <(sort -t$'\t' -k3,3 -r "$dir/plan.tsv" | awk -F'\t' '$3!="chokepoint"'; awk -F'\t' '$3=="chokepoint"' "$dir/plan.tsv")
  for ip in "${APPS[@]}"; do
    in_ns bash -c "$(declare -f wait_ready); wait_ready http://$ip:8000/ready 600 0.2" \
      || { podman logs "$APP_POD-chokepoint" 2>&1 | tail -15; die "$overlay: the app at $ip never became ready"; }
  done
  log "$overlay: ${#pods[@]} pods played; ${#APPS[@]} app pod(s) ready on PostgreSQL"
}
get() { in_ns curl -fsS "$@"; }
config_value() { # ip jq-filter-on-the-config
  get "http://$1:8000/admin/config" | jq -r "$2"
}

# ---- fragile (the base) ----------------------------------------------------------------------
play fragile
ip=${APPS[0]}
grep -q '"postgres"' <<< "$(get "http://$ip:8000/ready")" || die "fragile: /ready does not name PostgreSQL"
[ "$(config_value "$ip" '.startup_only.database_url.value')" = postgres://postgres@postgres:5432/chokepoint ] \
  || die "fragile: DATABASE_URL from the ConfigMap not in /admin/config"
[ "$(config_value "$ip" '.startup_only.memory_leak_limit_mb.value')" = 384 ] || die "fragile: MEMORY_LEAK_LIMIT_MB=384 not applied"
[ "$(config_value "$ip" '.knobs.db_max_overflow | "\(.source)\(.value)"')" = startup10 ] || die "fragile: DB_MAX_OVERFLOW=10 from the ConfigMap not applied"
[ "$(config_value "$ip" '.startup_only.admin_token.value')" = "(set)" ] || die "fragile: the Secret's ADMIN_TOKEN not applied"
patch() { in_ns curl -s -o /dev/null -w '%{http_code}' -XPATCH "http://$ip:8000/admin/config" \
  -H 'content-type: application/json' -d '{"db_pool_timeout_ms":2000}' "$@"; }
[ "$(patch)" = 401 ] || die "fragile: a change without the token was not refused"
[ "$(patch -H "authorization: Bearer $TOKEN")" = 200 ] || die "fragile: a change with the Secret's token failed"
mem=$(podman inspect --format '{{.HostConfig.Memory}}' "$APP_POD-chokepoint")
[ "$mem" = 536870912 ] || die "fragile: the app's memory limit is $mem, not 512Mi"
grep -q '^process_memory_limit_bytes 536870912' <<< "$(get "http://$ip:8000/metrics")" || die "fragile: the app does not see its 512Mi limit"
log "fragile: ConfigMap (DATABASE_URL, MEMORY_LEAK_LIMIT_MB=384, DB_MAX_OVERFLOW=10) and Secret in /admin/config; 401 without the token, 200 with it; limit 512Mi seen by the app"
teardown

# ---- hardened ---------------------------------------------------------------------------------
play hardened
[ "$(config_value "${APPS[0]}" '.profile_at_startup')" = hardened ] || die "hardened: the profile is not hardened"
log "hardened: PROFILE=hardened from the overlay's generated ConfigMap"
teardown

# ---- replicas ---------------------------------------------------------------------------------
play replicas
[ ${#APPS[@]} = 3 ] || die "replicas: ${#APPS[@]} app pods, not 3"
max=$(podman exec "$PG_POD-postgres" psql -U postgres -tAc 'SHOW max_connections')
[ "$max" = 40 ] || die "replicas: PostgreSQL max_connections is $max, not 40"
log "replicas: 3 app pods ready; PostgreSQL max_connections $max"
teardown

# ---- oom --------------------------------------------------------------------------------------
play oom
ip=${APPS[0]}
pid=$(podman inspect --format '{{.State.Pid}}' "$APP_POD-chokepoint")
codes=""
for _ in $(seq 1 80); do
  c=$(in_ns curl -s -o /dev/null -w '%{http_code}' -m 10 "http://$ip:8000/api/memory-leak?size_mb=10") || c=000
  codes+="$c "
  [ "$c" = 200 ] || break
done
kernel=$(dmesg 2>/dev/null | grep -E "Memory cgroup out of memory: Killed process $pid " | tail -1 || true)
[ -n "$kernel" ] || die "oom: no kernel OOM kill of the app (pid $pid) after: $(echo $codes | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
log "oom: MEMORY_LEAK_LIMIT_MB=2048 over the 512Mi limit: kernel OOM kill after $(echo $codes | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
teardown

log "not checked (podman cannot express it; see k8s/README.md):"
sort -u "$work"/*/not-checked.txt | sed 's/^/    /'
log "ok"
