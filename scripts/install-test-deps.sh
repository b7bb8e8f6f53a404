#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine that has only
# the Rust toolchain, Node, Python and apt. Idempotent: skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo is required (rustup.rs)" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# promtool (Debian's prometheus package) for the alert rules of the shipping tests.
# shellcheck source=deploy/tools.sh
. deploy/tools.sh
ensure_promtool || echo "promtool is missing; the shipping suite's alert checks will fail" >&2
