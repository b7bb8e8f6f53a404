#!/usr/bin/env bash
# Runs every guestgate test suite. This is the README's test command and what
# CI runs. Suites that need system packages install them first when missing
# (scripts/install-test-deps.sh; Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT

step() { printf '\n==> %s\n' "$*"; }

# Adds the "N passed; M failed" counts printed by cargo test to the totals.
tally_cargo() {
  local p f
  p=$(grep -Eo '[0-9]+ passed' "$1" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed' "$1" | awk '{s+=$1} END {print s+0}')
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
}

step "install test dependencies (if missing)"
bash scripts/install-test-deps.sh

step "format and lint"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

step "unit, integration and property tests"
set +e
cargo test --locked 2>&1 | tee "$LOG_DIR/cargo.log"
status=${PIPESTATUS[0]}
set -e
tally_cargo "$LOG_DIR/cargo.log"
if [ "$status" -ne 0 ]; then
  echo "cargo test failed" >&2
  FAILED=$((FAILED > 0 ? FAILED : 1))
fi

printf '\n'
echo "summary: ${PASSED} passed, ${FAILED} failed"
[ "$FAILED" -eq 0 ]
