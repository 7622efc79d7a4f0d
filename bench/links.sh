#!/usr/bin/env bash
# Link-emulation benchmark (run as root on Linux): the client in its own
# network namespace behind a veth pair shaped with tc tbf, plus a userspace
# delay proxy for the RTT (this kernel has no netem). The worker runs under
# wrangler dev; the upstream is a replay of a recorded real llama.cpp stream
# at 50 tok/s, 100 tok/s and unpaced, plus one run against the real model.
#
#   sudo bench/links.sh [repeats]     (default 3; prints a markdown table)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/links.sh needs root (network namespaces, tc)" >&2; exit 1; }
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"

teardown() {
  stop_services
  ip netns del tecli 2>/dev/null || true
  ip link del te0 2>/dev/null || true
}
trap teardown EXIT
teardown

ip netns add tecli
ip link add te0 type veth peer name te1
ip link set te1 netns tecli
ip addr add 10.77.0.1/24 dev te0
ip link set te0 up
ip netns exec tecli ip addr add 10.77.0.2/24 dev te1
ip netns exec tecli ip link set te1 up
ip netns exec tecli ip link set lo up
# No offloads: the counters and the shaper see real packet sizes.
command -v ethtool >/dev/null || apt-get install -y -qq ethtool >/dev/null 2>&1 || true
ethtool -K te0 tso off gso off gro off 2>/dev/null || true
ip netns exec tecli ethtool -K te1 tso off gso off gro off 2>/dev/null || true

REPLAY_PORT=38090
"$TOKENEDGE_PY" "$ROOT/bench/links.py" replay "$REPLAY_PORT" "$ROOT/bench/traces/llamacpp_chat_300.sse" \
  >"$TOKENEDGE_LOGS/replay.log" 2>&1 &
_pids+=($!)
wait_http "http://127.0.0.1:$REPLAY_PORT/v1/models" 30
start_model 38081
start_wrangler 38787 39229 --var "UPSTREAM_URL:http://127.0.0.1:$REPLAY_PORT" --var "API_KEYS:" --var "AUTH:off"
start_wrangler 38788 39230 --var "UPSTREAM_URL:http://127.0.0.1:38081" --var "API_KEYS:" --var "AUTH:off"

"$TOKENEDGE_PY" "$ROOT/bench/links.py" run "$REPLAY_PORT" 39000 39001 "${1:-3}" \
  127.0.0.1:38787 127.0.0.1:38788
