#!/usr/bin/env bash
# WebSocket benchmark: messages per second and guestgate's CPU per message
# through an inspected WebSocket ([[websocket_rules]] on /v1) against the blind
# splice (an upgrade path without rules) and direct to the upstream, in one
# interleaved run on loopback.
#
#   bash bench/websocket/run.sh [RESULTS_FILE]
#
# guestgate runs on core 1 (one worker), the load generator and the
# Web-Messaging-like upstream (bench/websocket/src/main.rs) on core 0. Each
# connection sends a ~300-byte Messenger onMessage frame and waits for the
# answer before the next (closed loop). Knobs: ROUNDS (3), DURATION (5 s),
# CONNS (1,32), BENCH_PORT_BASE (18281, uses 3 ports), CARGO_TARGET_DIR.
# Everything it starts is stopped at the end. Loopback only.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${DURATION:-5}
CONNS=${CONNS:-1,32}
PORT=${BENCH_PORT_BASE:-18281}
UPSTREAM=$PORT PROXY=$((PORT + 1)) ADMIN=$((PORT + 2))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/bench}"
RESULTS=${1:-}

echo "bench/websocket: building guestgate (release) and the load tool" >&2
cargo build --release --locked --bin guestgate >&2
(cd bench/websocket && cargo build --release --locked >&2)
GUESTGATE="$CARGO_TARGET_DIR/release/guestgate"
TOOL="$CARGO_TARGET_DIR/release/guestgate-ws-bench"

WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}

cat >"$WORK/guestgate.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
[upstream]
base_url = "http://127.0.0.1:$UPSTREAM"
[upstreams.webmessaging]
base_url = "http://127.0.0.1:$UPSTREAM"

[[websocket_rules]]
name = "messenger-session"
path = "/v1"
upstream = "webmessaging"
when = { "/action" = "configureSession" }
require = ["/token"]

[[websocket_rules]]
name = "messenger-message"
path = "/v1"
upstream = "webmessaging"
when = { "/action" = "onMessage" }
remove = ["/message/id", "/channel"]
require = ["/token", "/message/type"]
[websocket_rules.allow]
"/message/type" = ["Text", "Event"]
EOF

taskset -c 0 "$TOOL" upstream "127.0.0.1:$UPSTREAM" &
pids+=($!)
wait_port "$UPSTREAM"
env -u GUESTGATE__GUEST_MESSAGES__TO__ID TOKIO_WORKER_THREADS=1 \
  taskset -c 1 "$GUESTGATE" --config "$WORK/guestgate.toml" >"$WORK/guestgate.log" 2>&1 &
GG=$!
pids+=($GG)
wait_port "$PROXY"

# What the upstream received through each path (it echoes it back).
inspected=$("$TOOL" probe "ws://127.0.0.1:$PROXY/v1?deploymentId=d")
spliced=$("$TOOL" probe "ws://127.0.0.1:$PROXY/spliced?deploymentId=d")
case "$inspected" in *client-chosen-id* | *other-queue*) echo "inspected path was not edited: $inspected" >&2; exit 1 ;; esac
case "$spliced" in *client-chosen-id*) ;; *) echo "spliced path changed the frame: $spliced" >&2; exit 1 ;; esac
echo "bench/websocket: /v1 edited (no message.id, no channel), /spliced unchanged" >&2

ticks() { awk '{print $14 + $15}' "/proc/$GG/stat"; }
hz=$(getconf CLK_TCK)
declare -A RATE CPU
IFS=, read -r -a conns <<<"$CONNS"
for round in $(seq "$ROUNDS"); do
  for c in "${conns[@]}"; do
    for target in direct splice inspected; do
      case $target in
        direct) url="ws://127.0.0.1:$UPSTREAM/v1" ;;
        splice) url="ws://127.0.0.1:$PROXY/spliced" ;;
        inspected) url="ws://127.0.0.1:$PROXY/v1" ;;
      esac
      before=$(ticks)
      out=$(taskset -c 0 "$TOOL" load "$url" "$c" "$SECONDS_EACH")
      after=$(ticks)
      messages=$(sed -E 's/.*"messages":([0-9]+).*/\1/' <<<"$out")
      seconds=$(sed -E 's/.*"seconds":([0-9.]+).*/\1/' <<<"$out")
      rate=$(awk -v m="$messages" -v s="$seconds" 'BEGIN {printf "%.0f", m / s}')
      cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v m="$messages" 'BEGIN {printf "%.2f", t / hz / m * 1e6}')
      RATE[$target,$c]+="$rate "
      CPU[$target,$c]+="$cpu "
      printf 'round %s c=%-3s %-9s %8s msg/s %8s us guestgate CPU/message\n' "$round" "$c" "$target" "$rate" "$cpu" >&2
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
{
  echo "| connections | target | messages/s | guestgate CPU us/message | vs direct (msg/s) | vs splice (msg/s) |"
  echo "|---:|---|---:|---:|---:|---:|"
  for c in "${conns[@]}"; do
    direct=$(median <<<"${RATE[direct,$c]}")
    splice=$(median <<<"${RATE[splice,$c]}")
    for target in direct splice inspected; do
      rate=$(median <<<"${RATE[$target,$c]}")
      cpu=$(median <<<"${CPU[$target,$c]}")
      [ "$target" = direct ] && cpu="—"
      printf '| %s | %s | %s | %s | %.2fx | %.2fx |\n' "$c" "$target" "$rate" "$cpu" \
        "$(awk -v a="$rate" -v b="$direct" 'BEGIN {print a / b}')" \
        "$(awk -v a="$rate" -v b="$splice" 'BEGIN {print a / b}')"
    done
  done
} >"$WORK/table.md"
cat "$WORK/table.md"
if [ -n "$RESULTS" ]; then cp "$WORK/table.md" "$RESULTS"; fi
