#!/usr/bin/env bash
# guestgate benchmark (issues 5 and 13): one command.
#
#   bench/run.sh            full run (about 22 min of measuring, plus the builds:
#                           about 27 min in all with a warm target dir, 45 from clean)
#   QUICK=1 bench/run.sh    short run (~6-7 min once built)
#
# Installs what it needs (Debian: nginx, linux-perf (the profile section), valgrind (the instructions section), libnginx-mod-http-js (njs),
# libnginx-mod-http-echo, libnginx-mod-http-ndk + libnginx-mod-http-lua +
# lua-cjson (the nginx+lua row), haproxy, wrk; crates.io: oha for the
# fixed-rate latency run), builds guestgate as the image ships it
# (deploy/build-binary.sh: static glibc, laid out by BOLT; GUESTGATE_BIN=path
# measures another build) and the floor (bench/floor, a minimal hyper proxy:
# rows 8 to 12; laid out by BOLT the same way, bench/floor/bolt.sh) into target/bench, then runs bench/bench.py, which starts everything on loopback,
# measures, and writes bench/results/<date>-<host>.md (and prints it).
#
# Knobs (environment): QUICK=1, ROUNDS, DURATION (s), CONNS (e.g. 1,32,256),
# FIXED_ROUNDS (default 5) and FIXED_SECS (default 5) for the fixed-rate latency,
# PIN=0 (no core pinning), NJS_MODE=js_set|fetch, SKIP_CRITERION=1,
# NO_OHA=1 (do not install oha), MULTICORE=0 (skip the 2-worker section),
# PROFILE=0 (no profile section: perf on guestgate's profiling build and the
# floor at c=32; PROFILE_SECS), ABLATION=0 (no instructions section: valgrind
# counts what each of guestgate's features costs, bench/ablation.py; ABLATION_BIN
# measures another build of bench/ablation.patch, ABLATION_TARGET_DIR is where it builds),
# MC_CONNS (its concurrencies, default 32,256), NO_FLOOR=1 (do not build or
# measure the floor rows), FLOOR_BIN (another floor binary to measure, e.g. the
# plain release build; by default bench/floor/bolt.sh lays it out with BOLT like guestgate's),
# BENCH_PORT_BASE (default 18081, uses 15 ports),
# CARGO_TARGET_DIR (default target/bench; builds and binaries both use it).
set -euo pipefail

BENCH_STARTED="${BENCH_STARTED:-$(date +%s)}"
export BENCH_STARTED
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/bench}"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

missing=()
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
[ -e /usr/lib/nginx/modules/ndk_http_module.so ] || missing+=(libnginx-mod-http-ndk)
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing+=(libnginx-mod-http-lua)
# cjson for LuaJIT (the lua 5.1 ABI): /usr/lib/<multiarch>/lua/5.1/cjson.so
compgen -G '/usr/lib/*/lua/5.1/cjson.so' >/dev/null || missing+=(lua-cjson)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
# BOLT for deploy/build-binary.sh (which installs it too, but only as root) and bench/floor/bolt.sh.
if [ -z "${GUESTGATE_BIN:-}" ] || { [ "${NO_FLOOR:-0}" != 1 ] && [ -z "${FLOOR_BIN:-}" ]; }; then
  [ -x /usr/lib/llvm-22/bin/llvm-bolt ] || missing+=(bolt-22)
fi
[ "${PROFILE:-1}" != 1 ] || command -v perf >/dev/null || missing+=(linux-perf)
[ "${ABLATION:-1}" != 1 ] || command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [ "${NO_OHA:-0}" != 1 ] && ! command -v oha >/dev/null; then
  echo "bench: installing oha from crates.io (once; a few minutes)" >&2
  cargo install oha --locked >&2
fi

# 1,000 idle connections and 256-connection runs need file descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${GUESTGATE_BIN:-}" ]; then
  echo "bench: building the binary the image ships (deploy/build-binary.sh: static, BOLT) into $CARGO_TARGET_DIR" >&2
  GUESTGATE_BIN="$(CARGO_TARGET_DIR="$CARGO_TARGET_DIR/static" bash "$ROOT/deploy/build-binary.sh" "$CARGO_TARGET_DIR/image")"
  export GUESTGATE_BIN
fi
if [ "${PROFILE:-1}" = 1 ]; then
  echo "bench: building guestgate (profiling: release with symbols) for the profile section" >&2
  cargo build --profile profiling --locked --bin guestgate >&2
fi
if [ "${ABLATION:-1}" = 1 ] && [ -z "${ABLATION_BIN:-}" ]; then
  echo "bench: building guestgate with bench/ablation.patch (a switch per feature) for the instructions section" >&2
  # A patch that no longer applies to the code costs the section, not the run.
  if ! ABLATION_BIN="$(python3 "$ROOT/bench/ablation.py" --build)"; then
    echo "bench: bench/ablation.patch did not apply or build: no instructions section" >&2
    ABLATION_BIN="failed: bench/ablation.patch did not apply or build (bench/run.sh's output says why)"
  fi
  export ABLATION_BIN
fi
if [ "${NO_FLOOR:-0}" != 1 ] && [ -z "${FLOOR_BIN:-}" ]; then
  echo "bench: building the floor (bench/floor) laid out by BOLT like guestgate (bench/floor/bolt.sh)" >&2
  FLOOR_BIN="$(bash "$ROOT/bench/floor/bolt.sh")"
  export FLOOR_BIN
fi
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
  cargo bench --locked --bench sanitize --no-run >&2
fi

exec python3 "$ROOT/bench/bench.py"
