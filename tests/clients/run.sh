#!/usr/bin/env bash
# Real clients through guestgate: the vendor's Node SDKs, curl, Node fetch, the
# vendor's Python SDK and the example widget in headless Chromium, each against
# a loopback vendor-like upstream; and for the WebSocket rules the example
# Messenger page in Chromium, Node's built-in WebSocket and Python's
# `websockets` against a loopback Web-Messaging-like upstream. See
# tests/clients/README.md.
#
#   bash tests/clients/run.sh
#
# Installs what it needs when missing (npm ci, a venv from requirements.txt,
# Debian's chromium and curl via apt-get as root), builds guestgate the way
# `cargo test` does (so after `cargo test` nothing is rebuilt; unless
# GUESTGATE_BIN names a binary), runs the Node tests with `node --test` and the
# Python test with pytest, and ends with the line
# `summary: N passed, M failed`; exits non-zero on any failure. Everything the
# tests create in the temp dir (configs, homes, the browser profile) and any
# process they leave running is removed at the end.
set -euo pipefail

CLIENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$CLIENTS/../.." && pwd)"
cd "$CLIENTS"

step() { printf '\n==> clients: %s\n' "$*"; }

# Loopback only: no proxy may sit between the clients and guestgate.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1
# playwright-core drives Debian's Chromium; it must never fetch a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "clients: need root to apt-get install $*" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"
}

step "system packages"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; else echo "chromium and curl present"; fi

step "node packages (package-lock.json)"
if [ -d node_modules ] && npm ls --all >/dev/null 2>&1 \
  && cmp -s package-lock.json node_modules/.package-lock.json.src 2>/dev/null; then
  echo "node_modules up to date"
else
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.package-lock.json.src
fi

step "python venv (requirements.txt)"
if [ -x .venv/bin/python ] && cmp -s requirements.txt .venv/requirements.txt.installed 2>/dev/null; then
  echo ".venv up to date"
else
  rm -rf .venv
  if ! python3 -m venv .venv; then
    apt_install python3-venv
    rm -rf .venv
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/requirements.txt.installed
fi

if [ -n "${GUESTGATE_BIN:-}" ]; then
  step "guestgate: using GUESTGATE_BIN (no build)"
else
  # `cargo test` builds the binary for the integration tests with the
  # dev-dependencies' features unified in, so its artifacts differ from a
  # plain `cargo build`'s: building it the same way makes this step a no-op
  # after `cargo test` (scripts/test.sh runs that first). If a test target
  # does not compile, the binary alone still can.
  step "build guestgate (cargo test --no-run, as cargo test builds it)"
  if ! (cd "$ROOT" && cargo test --locked --no-run); then
    echo "clients: test targets do not build; building the binary alone" >&2
    (cd "$ROOT" && cargo build --locked --bin guestgate)
  fi
  TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
  export GUESTGATE_BIN="$TARGET_DIR/debug/guestgate"
fi
echo "GUESTGATE_BIN=$GUESTGATE_BIN"

LOGS="$(mktemp -d /tmp/guestgate-clients-run.XXXXXX)"
# The tests' own temp files go below $RUN_TMP (Node, Python and Chromium use TMPDIR).
RUN_TMP="$LOGS/tmp"
mkdir -p "$RUN_TMP"
# Stops what a crashed or timed-out test left running: only processes whose
# command line names this run's temp dir (guestgate gets --config from there).
# shellcheck disable=SC2317  # called from the EXIT trap
stop_leftovers() {
  local d pid cmd
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [ "$pid" = "$$" ] && continue
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    case "$cmd" in
      *"$RUN_TMP/"*)
        echo "clients: stopping leftover process $pid: $cmd" >&2
        kill -9 "$pid" 2>/dev/null || true
        ;;
    esac
  done
}
trap 'stop_leftovers; rm -rf "$LOGS"' EXIT
status=0

step "node tests (node --test)"
# Node's built-in WebSocket (node/messenger-node.test.js) is a global from
# Node 22 on; Node 20 and 21 have it behind a flag.
node_flags=()
if [ "$(node -p 'typeof WebSocket')" != function ]; then
  node_flags+=(--experimental-websocket)
  echo "node $(node --version): using ${node_flags[*]} for the built-in WebSocket"
fi
set +e
TMPDIR="$RUN_TMP" node ${node_flags[@]+"${node_flags[@]}"} --test --test-concurrency=1 --test-timeout=180000 node/*.test.js 2>&1 | tee "$LOGS/node.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "python tests (pytest)"
TMPDIR="$RUN_TMP" .venv/bin/python -m pytest -v -p no:cacheprovider python/ 2>&1 | tee "$LOGS/python.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e

node_pass=$(sed -n 's/^# pass \([0-9][0-9]*\)$/\1/p' "$LOGS/node.log" | tail -1)
node_fail=$(sed -n 's/^# fail \([0-9][0-9]*\)$/\1/p' "$LOGS/node.log" | tail -1)
py_line=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$LOGS/python.log" | tail -1 || true)
py_pass=$(grep -Eo '[0-9]+ passed' <<<"$py_line" | grep -Eo '[0-9]+' || echo 0)
py_fail=$(( $(grep -Eo '[0-9]+ failed' <<<"$py_line" | grep -Eo '[0-9]+' || echo 0) + $(grep -Eo '[0-9]+ errors?' <<<"$py_line" | grep -Eo '[0-9]+' || echo 0) ))
passed=$(( ${node_pass:-0} + py_pass ))
failed=$(( ${node_fail:-0} + py_fail ))
# A suite that failed without reporting counts (crash, no output) still fails the run.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi

echo "screenshots: $CLIENTS/.artifacts/"
echo "summary: ${passed} passed, ${failed} failed"
exit "$status"
