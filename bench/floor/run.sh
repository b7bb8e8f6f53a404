#!/usr/bin/env bash
# The floor experiment of bench/NOTES.md: a minimal hyper proxy (bench/floor)
# against nginx proxy_pass and guestgate, on the same setup as bench/run.sh.
# Run bench/run.sh once first (it installs nginx, its modules and wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/bench}"
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "floor: $tool missing; run bash bench/run.sh once" >&2; exit 1; }
done
cargo build --release --locked --bin guestgate >&2
cargo build --release --locked --manifest-path bench/floor/Cargo.toml >&2
exec python3 bench/floor/floor.py "$CARGO_TARGET_DIR/release/floor" "$CARGO_TARGET_DIR/release/guestgate" "${ROUNDS:-3}"
