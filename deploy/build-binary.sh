#!/usr/bin/env bash
# Builds the binary the container image ships: the release profile, glibc
# linked statically (it runs on `scratch`), then laid out again by BOLT from a
# training run (deploy/bolt-train.py) so the code a request runs sits together,
# and checked on the same load.
# The Dockerfile's builder stage, the shipping tests and bench/run.sh all build
# it here, so they run what ships (bench/NOTES.md has the measurements).
#
#   bash deploy/build-binary.sh [OUT_DIR]    # writes OUT_DIR/guestgate, prints its path
#
# OUT_DIR defaults to target/static/image. A later call reuses OUT_DIR/guestgate
# when cargo's output, these scripts, the BOLT setting and llvm-bolt's version
# are unchanged. Everything else it says goes to stderr.
#
# Environment:
#   BOLT=0             skip BOLT (the same static binary, stripped)
#   BOLT_VERSION=22    Debian's bolt-$BOLT_VERSION, installed when missing (as root;
#                      not with GUESTGATE_SKIP_INSTALL=1, deploy/tools.sh)
#   RUSTFLAGS          added to the static build's flags
#   CARGO_TARGET_DIR   default target/static
#
# BOLT and a static glibc binary (Debian's llvm-bolt 22):
#  - static glibc runs neither DT_INIT nor DT_FINI, so the instrumentation
#    starts from .init_array and writes its counters every second, without
#    clearing them, instead of at exit (a file for each process, merged);
#  - glibc's __res_context_query makes llvm-bolt crash, so it is left as it
#    is; any function BOLT says it cannot rewrite ("Consider adding this
#    function to --skip-funcs", as version 19 does for glibc's printf) is left
#    out too, and BOLT run again.
set -euo pipefail

if [ -n "${1:-}" ]; then
  OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
fi
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=deploy/tools.sh
. deploy/tools.sh
OUT="${OUT:-$(mkdir -p "$ROOT/target/static/image" && cd "$ROOT/target/static/image" && pwd)}"
BOLT="${BOLT:-1}"
BOLT_VERSION="${BOLT_VERSION:-22}"
# Called by its path in the LLVM tree, llvm-bolt finds its instrumentation runtime (../lib).
LLVM_BOLT="/usr/lib/llvm-$BOLT_VERSION/bin/llvm-bolt"
TRIPLE="$(uname -m)-unknown-linux-gnu"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/static}"
# Regular expressions over BOLT's function names (a local function is NAME/N).
SKIP_FUNCS="__res_context_query(/[0-9]+)?"
MAX_SKIPPED=12

log() { printf 'build-binary: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

log "cargo build --release --target $TRIPLE (static glibc, --emit-relocs for BOLT)"
# BOLT needs the symbol table and the relocations; the result is stripped below.
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,--emit-relocs ${RUSTFLAGS:-}" \
  CARGO_PROFILE_RELEASE_STRIP=false \
  cargo build --locked --release --bin guestgate --target "$TRIPLE" >&2
BUILT="$CARGO_TARGET_DIR/$TRIPLE/release/guestgate"

if [ "$BOLT" != 0 ] && [ ! -x "$LLVM_BOLT" ]; then
  log "installing Debian's bolt-$BOLT_VERSION"
  deploy_apt_install --no-install-recommends "bolt-$BOLT_VERSION" \
    || die "$LLVM_BOLT is missing: apt-get install bolt-$BOLT_VERSION (or BOLT=0)"
fi

# What the result depends on besides the build: these scripts and llvm-bolt's version.
SOURCE="$(cat "$BUILT" deploy/build-binary.sh deploy/bolt-train.py | sha256sum | cut -d' ' -f1) bolt=$BOLT"
if [ "$BOLT" != 0 ]; then
  SOURCE="$SOURCE $("$LLVM_BOLT" --version | sed -n 's/.*LLVM version \([^ ]*\).*/\1/p' | head -1)"
fi
if [ -x "$OUT/guestgate" ] && [ "$(cat "$OUT/guestgate.source" 2>/dev/null)" = "$SOURCE" ]; then
  log "$OUT/guestgate is up to date"
  echo "$OUT/guestgate"
  exit 0
fi
rm -f "$OUT/guestgate" "$OUT/guestgate.new" "$OUT/guestgate.source"

if [ "$BOLT" = 0 ]; then
  strip --strip-all -o "$OUT/guestgate" "$BUILT"
else
  WORK="$(mktemp -d /tmp/guestgate-bolt.XXXXXX)"
  trap 'rm -rf "$WORK"' EXIT

  # bolt NAME ARGS...: llvm-bolt on the build with ARGS, leaving out each
  # function it says it cannot rewrite, and trying again.
  bolt() {
    local name=$1 func
    shift
    for _ in $(seq "$MAX_SKIPPED"); do
      if "$LLVM_BOLT" "$BUILT" "$@" -skip-funcs="$SKIP_FUNCS" >"$WORK/$name.log" 2>&1; then
        return 0
      fi
      # The name BOLT gives, without its alias count "(*N)", as a regular expression.
      func="$(sed -n -e 's/.* in function \(.*\)\. Consider adding this function to --skip-funcs.*/\1/p' \
        -e 's/^End of Function "\(.*\)"$/\1/p' "$WORK/$name.log" | tail -1 \
        | sed -e 's/(\*[0-9]*)$//' -e 's/[][\.*^$+?(){}|]/\\&/g')"
      if [ -z "$func" ] || [[ ",$SKIP_FUNCS," == *",$func,"* ]]; then
        tail -20 "$WORK/$name.log" >&2
        die "llvm-bolt ($name) failed"
      fi
      log "leaving $func as it is (BOLT cannot rewrite it)"
      SKIP_FUNCS="$SKIP_FUNCS,$func"
    done
    die "llvm-bolt ($name) still fails after leaving out $SKIP_FUNCS"
  }

  # The profile path is relative: each guestgate process of the training
  # runs in its own directory under $WORK/train and writes its own.
  bolt instrument -o "$WORK/instrumented" -instrument -instrumentation-file=profile.fdata \
    -instrumentation-sleep-time=1 -instrumentation-no-counters-clear -runtime-lib-init-hook=init_array

  log "training (deploy/bolt-train.py)"
  python3 "$ROOT/deploy/bolt-train.py" "$WORK/instrumented" "$WORK/train"
  compgen -G "$WORK/train/*/profile.fdata" >/dev/null || die "the training wrote no profile"
  "$(dirname "$LLVM_BOLT")/merge-fdata" "$WORK"/train/*/profile.fdata >"$WORK/profile.fdata" \
    2>"$WORK/merge.log" || { cat "$WORK/merge.log" >&2; die "merge-fdata failed"; }

  log "laying out the code (llvm-bolt)"
  bolt optimize -o "$WORK/guestgate" -data="$WORK/profile.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=1 -use-gnu-stack
  grep -E 'have non-empty execution profile|splitting separates' "$WORK/optimize.log" >&2 || true
  strip --strip-all -o "$OUT/guestgate.new" "$WORK/guestgate"
  log "checking the result on the same load (deploy/bolt-train.py)"
  python3 "$ROOT/deploy/bolt-train.py" "$OUT/guestgate.new" || die "the BOLT-optimized binary failed the training load"
  mv "$OUT/guestgate.new" "$OUT/guestgate"
fi

"$OUT/guestgate" --version >/dev/null || die "$OUT/guestgate does not run"
echo "$SOURCE" >"$OUT/guestgate.source"
echo "$OUT/guestgate"
