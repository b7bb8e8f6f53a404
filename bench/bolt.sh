#!/usr/bin/env bash
# BOLT experiment (issue 13, bench/NOTES.md): guestgate's release code laid out
# again by llvm-bolt from a profile of the bench's own load, to measure what the
# instruction-cache misses cost (guestgate's are 2x the floor's for 1.3x its
# instructions). It works on the dynamically linked profiling build, for
# cachegrind's symbols; what ships is deploy/build-binary.sh's static binary,
# laid out the same way from its own training run (deploy/bolt-train.py).
#
#   bash bench/bolt.sh      writes $OUT/guestgate-base and $OUT/guestgate-bolt
#
# guestgate-base is the profiling build (release with symbols) linked with
# --emit-relocs, which BOLT needs; guestgate-bolt is the same binary after
# `llvm-bolt -instrument`, a training run (bench/rules.py's nginx upstream and
# wrk: both routes at c=32 and c=256, TRAIN_SECS each, on loopback) and the
# optimizing pass. Compare them with bench/ab.py, bench/instructions.py, or
# cachegrind's cache simulation. Needs what bench/run.sh installs (nginx, wrk)
# and Debian's bolt-$BOLT_VERSION (default 19), installed here if missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/bench-bolt}"
OUT="${OUT:-$CARGO_TARGET_DIR/bolt}"
# Called by its path in the LLVM tree, llvm-bolt finds its instrumentation runtime
# beside it (../lib); through /usr/bin's versioned link, version 19 looks in /usr/lib.
BOLT_VERSION="${BOLT_VERSION:-19}"
BOLT="/usr/lib/llvm-$BOLT_VERSION/bin/llvm-bolt"
export DURATION="${TRAIN_SECS:-4}"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [ ! -x "$BOLT" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "bolt-$BOLT_VERSION" >&2
fi
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "bolt: $tool missing (bash bench/run.sh installs it)" >&2; exit 1; }
done

echo "bolt: building guestgate (profiling, --emit-relocs) into $CARGO_TARGET_DIR" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--emit-relocs" \
  cargo build --profile profiling --locked --bin guestgate >&2
mkdir -p "$OUT"
cp "$CARGO_TARGET_DIR/profiling/guestgate" "$OUT/guestgate-base"
rm -f "$OUT"/profile.fdata*

"$BOLT" "$OUT/guestgate-base" -instrument -o "$OUT/guestgate-instrumented" \
  -instrumentation-file="$OUT/profile.fdata" >"$OUT/instrument.log" 2>&1

echo "bolt: training on both routes, c=32 and c=256, ${DURATION} s each" >&2
python3 - "$OUT/guestgate-instrumented" <<'EOF'
import os, sys, tempfile
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import rules
work = tempfile.mkdtemp(prefix="guestgate-bolt-")
nginx = rules.start_upstream(work)
try:
    proc = rules.start_guestgate(sys.argv[1], rules.SHORTHAND, work, 1, "1")
    try:
        for route, path in rules.ROUTES:
            rules.check_forward(path)
            for conns in (32, 256):
                rps, _ = rules.run_wrk(path, proc.pid, conns)
                print(f"bolt: trained {route} c={conns}: {rps:.0f} req/s", file=sys.stderr)
    finally:
        # A clean exit writes the profile.
        proc.terminate()
        proc.wait()
finally:
    nginx.terminate()
    nginx.wait()
EOF
[ -s "$OUT/profile.fdata" ] || { echo "bolt: no profile written" >&2; exit 1; }

"$BOLT" "$OUT/guestgate-base" -o "$OUT/guestgate-bolt" -data="$OUT/profile.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack >"$OUT/optimize.log" 2>&1
grep -E 'have non-empty execution profile|splitting separates' "$OUT/optimize.log" >&2 || true
echo "bolt: $OUT/guestgate-base and $OUT/guestgate-bolt" >&2
