#!/usr/bin/env bash
# Fuzzes the sanitizer and the path canonicalizer for SECONDS each (default
# 60) with cargo-fuzz (libFuzzer), starting from the checked-in seeds.
# Works with the stable toolchain: RUSTC_BOOTSTRAP lets cargo-fuzz use its
# nightly-only flags, and no sanitizer is needed for safe Rust.
#
#   bash fuzz/run.sh 60
#
# A finding fails the run; the crashing input is kept in fuzz/artifacts/.
set -uo pipefail
SECONDS_EACH=${1:-60}
cd "$(dirname "$0")"

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz || exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

targets=(sanitize canonical_path)
if ! cargo fuzz build -O --sanitizer none; then
  echo "fuzz: 0 passed, ${#targets[@]} failed (build)"
  exit 1
fi

passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  corpus="$work/$target"
  mkdir -p "$corpus"
  cp seeds/"$target"/* "$corpus"/
  cargo fuzz run -O --sanitizer none "$target" "$corpus" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
    >"$work/$target.log" 2>&1
  status=$?
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$work/$target.log" | grep -Eo '[0-9]+$' | tail -1)
  if [ "$status" -eq 0 ]; then
    echo "fuzz $target: ${runs:-?} runs in ${SECONDS_EACH} s, no finding"
    passed=$((passed + 1))
  else
    tail -40 "$work/$target.log"
    echo "fuzz $target: FINDING or failure (exit $status); inputs in fuzz/artifacts/$target/"
    failed=$((failed + 1))
  fi
done
echo "fuzz: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
