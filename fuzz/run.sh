#!/usr/bin/env bash
# Fuzzes the sanitizer, the path canonicalizer and the body edits for SECONDS
# each (default 60) with cargo-fuzz (libFuzzer), starting from the checked-in
# seeds in fuzz/seeds/<target>/ (copied to a temporary corpus, so runs leave
# no corpus behind). The targets run side by side, one process each.
#
#   bash fuzz/run.sh        # 60 s per target
#   bash fuzz/run.sh 20     # 20 s per target
#   FUZZ_TOOLCHAIN=stable bash fuzz/run.sh   # `cargo +stable fuzz ...`
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# nightly-only flags, and `--sanitizer none` needs no nightly runtime (safe
# Rust needs no AddressSanitizer; the targets are built optimized with debug
# assertions and overflow checks). cargo-fuzz is installed when missing.
#
# Prints one line per target, `fuzz <target>: N runs, no finding`, then
# `fuzz: P passed, F failed`. A finding (panic, timeout, out of memory) fails
# the run; its input is kept in fuzz/artifacts/<target>/ and the line names it.
set -uo pipefail

SECONDS_EACH=${1:-60}
case "$SECONDS_EACH" in
  '' | *[!0-9]*)
    echo "usage: bash fuzz/run.sh [SECONDS]" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)
ROOT=$(cd .. && pwd)
TARGETS=(sanitize canonical_path edits)

export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
CARGO=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then CARGO+=("+$FUZZ_TOOLCHAIN"); fi
FLAGS=(--sanitizer none --codegen-units 16)

if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz || {
    echo "fuzz: 0 passed, ${#TARGETS[@]} failed (cargo install cargo-fuzz failed)"
    exit 1
  }
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

started=$(date +%s)
if ! "${CARGO[@]}" fuzz build "${FLAGS[@]}" >"$WORK/build.log" 2>&1; then
  tail -60 "$WORK/build.log"
  echo "fuzz: 0 passed, ${#TARGETS[@]} failed (build)"
  exit 1
fi
echo "fuzz: built ${TARGETS[*]} in $(($(date +%s) - started)) s"

pids=()
for target in "${TARGETS[@]}"; do
  mkdir -p "$WORK/corpus/$target" "artifacts/$target"
  cp seeds/"$target"/* "$WORK/corpus/$target"/
  "${CARGO[@]}" fuzz run "${FLAGS[@]}" "$target" "$WORK/corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$WORK/$target.log" 2>&1 &
  pids+=($!)
done

passed=0
failed=0
for i in "${!TARGETS[@]}"; do
  target=${TARGETS[$i]}
  log="$WORK/$target.log"
  wait "${pids[$i]}"
  status=$?
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  # libFuzzer names the input it kept: "Test unit written to <path>".
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if [ -n "$artifact" ]; then
    case "$artifact" in /*) ;; *) artifact="$FUZZ_DIR/$artifact" ;; esac
    artifact=$(realpath -m --relative-to="$ROOT" "$artifact")
  fi
  if [ "$status" -eq 0 ] && [ -z "$artifact" ]; then
    echo "fuzz $target: ${runs:-?} runs, no finding"
    passed=$((passed + 1))
  else
    # The panic message (or libFuzzer's timeout/OOM report), not the noise.
    echo "---- fuzz $target ----"
    { sed -n '/panicked at/,/^stack backtrace:/p' "$log" | grep -v '^stack backtrace:'
      grep -E '^==[0-9]+== ERROR: libFuzzer|^SUMMARY: libFuzzer' "$log"; } | head -40
    echo "----"
    mkdir -p "artifacts/$target"
    cp "$log" "artifacts/$target/last-run.log"
    echo "fuzz $target: full output in fuzz/artifacts/$target/last-run.log"
    if [ -n "$artifact" ]; then
      echo "fuzz $target: FINDING after ${runs:-?} runs, input in $artifact"
      echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer none $target $artifact"
    else
      echo "fuzz $target: failed (exit $status) without a finding; see the output above"
    fi
    failed=$((failed + 1))
  fi
done
echo "fuzz: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
