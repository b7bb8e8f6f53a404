#!/usr/bin/env bash
# Shipping tests: Kubernetes/compose manifest validation, the Grafana
# dashboard and Prometheus alert rules (checked against a live scrape of the
# binary), then the container build-and-run test. Installs what it needs
# (Debian, root). Ends with one line `summary: N passed, M failed` (all parts
# together; each part's own count is shown as `manifests (N passed, M
# failed)`); non-zero exit if any part fails.
#
#   bash deploy/test.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="$(mktemp /tmp/guestgate-deploy-test.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
PASSED=0
FAILED=0
rc=0

# part NAME SCRIPT: runs one part, shows its output with its summary line
# renamed to "NAME (N passed, M failed)" and adds its counts to the totals.
# A part that exits non-zero counts as at least one failure.
part() {
  local name=$1 script=$2 status counts p f start=$SECONDS
  bash "$script" 2>&1 \
    | sed -u -E "s/^summary: ([0-9]+ passed, [0-9]+ failed)$/$name (\1)/" | tee "$LOG"
  status=${PIPESTATUS[0]}
  counts="$(sed -n -E "s/^$name \(([0-9]+) passed, ([0-9]+) failed\)$/\1 \2/p" "$LOG" | tail -1)"
  read -r p f <<<"${counts:-0 0}"
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  [ "$status" -eq 0 ] || rc=1
  echo "$name took $((SECONDS - start)) s"
}

part manifests "$here/validate-manifests.sh"
part observability "$here/validate-observability.sh"
part container "$here/test-container.sh"
echo "summary: $PASSED passed, $FAILED failed"
exit "$rc"
