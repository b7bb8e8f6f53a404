#!/usr/bin/env bash
# Runs every guestgate test suite. This is the README's test command and what
# CI runs. Suites that need system packages install them first when missing
# (Debian, as root). Each suite can also run alone; see docs/tests.md.
#
#   bash scripts/test.sh            # everything
#   FUZZ_SECONDS=10 bash scripts/test.sh   # shorter fuzzing
set -uo pipefail
cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
FAILED_SUITES=()
LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT

step() { printf '\n==> %s\n' "$*"; }

# run_suite NAME COMMAND...: runs a suite, shows its output, and adds the
# counts from its last "summary: N passed, M failed" line (or, without one,
# from all its "<part>: N passed, M failed" lines) to the totals. A suite
# that exits non-zero counts as at least one failure even if it printed none.
run_suite() {
  local name=$1 log="$LOG_DIR/${1// /-}.log" status p f lines
  shift
  step "$name"
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  # A suite's own "summary:" line already adds up its parts.
  lines=$(grep -E '^summary: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
  [ -n "$lines" ] || lines=$(grep -E ': [0-9]+ passed, [0-9]+ failed$' "$log" || true)
  p=$(grep -Eo '[0-9]+ passed' <<<"$lines" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed' <<<"$lines" | awk '{s+=$1} END {print s+0}')
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  if [ "$status" -ne 0 ]; then FAILED_SUITES+=("$name"); fi
}

# cargo prints one "test result" line per test binary; sum them.
cargo_tests() {
  local log="$LOG_DIR/cargo-raw.log" status p f
  cargo test --locked 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  p=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
  echo "cargo test: ${p} passed, ${f} failed"
  return "$status"
}

lint() {
  cargo fmt --all -- --check && cargo clippy --locked --all-targets -- -D warnings \
    && echo "lint: 1 passed, 0 failed"
}

step "install test dependencies (if missing)"
bash scripts/install-test-deps.sh || { echo "installing test dependencies failed" >&2; exit 1; }

run_suite "format and lint" lint
run_suite "unit, integration and property tests" cargo_tests
run_suite "fuzzing (sanitizer, path canonicalizer, body edits)" bash fuzz/run.sh "${FUZZ_SECONDS:-60}"
run_suite "real clients (vendor SDKs, browser widget)" bash tests/clients/run.sh
run_suite "shipping (container, manifests)" bash deploy/test.sh

printf '\n'
if [ "${#FAILED_SUITES[@]}" -gt 0 ]; then
  echo "failed suites: ${FAILED_SUITES[*]}"
fi
echo "summary: ${PASSED} passed, ${FAILED} failed"
[ "$FAILED" -eq 0 ] && [ "${#FAILED_SUITES[@]}" -eq 0 ]
