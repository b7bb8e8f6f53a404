#!/usr/bin/env bash
# The floor laid out by BOLT the way guestgate's image binary is
# (deploy/build-binary.sh): static glibc, --emit-relocs, instrumented, trained
# on the benchmark's load (bench/floor/bolt_train.py), laid out with the same
# passes, so that it bounds guestgate's binary fairly. bench/run.sh runs it;
# it prints the laid-out floor's path (target/bench/floor-bolt/floor) on stdout.
# Needs bolt-22, nginx and wrk (bench/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LLVM=/usr/lib/llvm-22/bin
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target/bench}"
OUT="$TARGET/floor-bolt"
WORK="$(mktemp -d /tmp/floor-bolt.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# glibc's resolver is left as it is, as in deploy/build-binary.sh.
SKIP='-skip-funcs=__res_context_query(/[0-9]+)?'

echo "floor-bolt: building the floor (static glibc, --emit-relocs)" >&2
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,--emit-relocs" CARGO_PROFILE_RELEASE_STRIP=false \
  CARGO_TARGET_DIR="$TARGET/floor-static" cargo build -q --release --locked --target "$TRIPLE" \
  --manifest-path "$ROOT/bench/floor/Cargo.toml" >&2
BUILT="$TARGET/floor-static/$TRIPLE/release/floor"

"$LLVM/llvm-bolt" "$BUILT" -o "$WORK/instrumented" "$SKIP" -instrument -instrumentation-file=profile.fdata \
  -instrumentation-sleep-time=1 -instrumentation-no-counters-clear -runtime-lib-init-hook=init_array \
  >"$WORK/instrument.log" 2>&1 || { tail -20 "$WORK/instrument.log" >&2; exit 1; }
echo "floor-bolt: training (bench/floor/bolt_train.py)" >&2
python3 "$ROOT/bench/floor/bolt_train.py" "$WORK/instrumented" "$WORK/train"
"$LLVM/merge-fdata" "$WORK"/train/*/profile.fdata >"$WORK/profile.fdata" 2>"$WORK/merge.log"
"$LLVM/llvm-bolt" "$BUILT" -o "$WORK/floor" "$SKIP" -data="$WORK/profile.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack >"$WORK/optimize.log" 2>&1 || { tail -20 "$WORK/optimize.log" >&2; exit 1; }
# Not stripped: the benchmark's profile section names the floor's functions.
mkdir -p "$OUT"
cp "$WORK/floor" "$OUT/floor"
echo "$OUT/floor"
