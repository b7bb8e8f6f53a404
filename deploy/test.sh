#!/usr/bin/env bash
# Shipping tests: Kubernetes/compose manifest validation, then the container
# build-and-run test. Installs what it needs (Debian, root). Non-zero exit if
# either fails.
#
#   bash deploy/test.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
bash "$here/validate-manifests.sh" || rc=1
bash "$here/test-container.sh" || rc=1
exit "$rc"
