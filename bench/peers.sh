#!/usr/bin/env bash
# tokenedge against its peers and the runtime's floor, in one interleaved
# run in front of a replay upstream (bench/peers/replay.mjs: 64 tokens 20 ms
# apart), measured by a raw-socket client (bench/peers/load.mjs) at several
# concurrencies: direct; tokenedge on bare workerd (the `workerd` binary
# wrangler ships, config from wrangler.toml; with its defaults, and with
# `RESUME=off`), under `wrangler dev`, and on
# Spin (the test host); Portkey's gateway and LiteLLM's proxy (pinned,
# installed by scripts/setup.sh peers); four JavaScript workers on bare
# workerd (bench/peers/floor.js: the body untouched; through a
# TransformStream; read chunk by chunk into a pull ReadableStream; read
# chunk by chunk and written into an IdentityTransformStream) and two Rust
# ones on tokenedge's toolchain that only relay (bench/peers/floor-rust: a
# Rust task driving the worker crate's streams; a JavaScript loop calling
# into wasm once per chunk, the shape of tokenedge's Workers adapter);
# and direct again (the A/A null row). Results go to docs/BENCHMARKS.md.
#
#   bench/peers.sh [rounds] [concurrencies]     # default: 5 1,8,32,128
#   PEERS=off bench/peers.sh 1 1,8              # without Portkey and LiteLLM (CI's smoke)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh" node)"
eval "$("$ROOT/scripts/setup.sh" spin)"
[ "${PEERS:-on}" = off ] || eval "$("$ROOT/scripts/setup.sh" peers)"
source "$ROOT/scripts/lib.sh"
mkdir -p "$TOKENEDGE_LOGS"
ROUNDS=${1:-5}
CS=${2:-1,8,32,128}
REPLAY=http://127.0.0.1:28090

node "$ROOT/bench/peers/replay.mjs" --port 28090 >"$TOKENEDGE_LOGS/replay.log" 2>&1 &
_pids+=($!)
wait_http "$REPLAY/health" 30

# A floor worker on bare workerd: start_floor PORT js SHAPE (one of
# bench/peers/floor.js's shapes) or start_floor PORT rust SHAPE (the relay
# built from bench/peers/floor-rust: relay or sync); sets FLOOR_PID.
start_floor() {
  local port=$1 dir="$TOKENEDGE_LOGS/floor-$1" modules bindings
  mkdir -p "$dir"
  bindings="(name = \"UPSTREAM\", text = \"$REPLAY\"), (name = \"SHAPE\", text = \"$3\")"
  if [ "$2" = js ]; then
    cp "$ROOT/bench/peers/floor.js" "$dir/worker.js"
    modules='(name = "worker.js", esModule = embed "worker.js")'
  else
    cp "$ROOT/bench/peers/floor-rust/build/index.js" "$ROOT/bench/peers/floor-rust/build/index_bg.wasm" "$dir/"
    modules='(name = "index.js", esModule = embed "index.js"), (name = "index_bg.wasm", wasm = embed "index_bg.wasm")'
  fi
  cat >"$dir/config.capnp" <<CAPNP
using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [(name = "main", worker = .worker),
    (name = "internet", network = (allow = ["public", "private", "local"]))],
  sockets = [(name = "http", address = "127.0.0.1:$port", http = (), service = "main")],
);
const worker :Workerd.Worker = (
  modules = [$modules],
  compatibilityDate = "$(sed -n 's/^compatibility_date = "\(.*\)"$/\1/p' "$ROOT/wrangler.toml")",
  bindings = [$bindings],
  globalOutbound = "internet",
);
CAPNP
  (cd "$dir" && exec workerd serve config.capnp </dev/null >"$TOKENEDGE_LOGS/floor-$port.log" 2>&1) &
  _pids+=($!)
  FLOOR_PID=$!
}

(cd "$ROOT" && worker-build --release --features workers >&2)
(cd "$ROOT/bench/peers/floor-rust" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/floor-rust" worker-build --release >&2)
vars=("UPSTREAM_URL=$REPLAY" "AUTH=off" "CACHE_TTL_SECS=0")
start_workerd 28786 "${vars[@]}"
WORKERD_PID=${_pids[-1]}
# The same without resumable streams: no hand-over to a Durable Object.
start_workerd 28784 "${vars[@]}" "RESUME=off"
WORKERD_NORESUME_PID=${_pids[-1]}
start_wrangler 28787 29229 --var "UPSTREAM_URL:$REPLAY" --var "AUTH:off" --var "CACHE_TTL_SECS:0"
# wrangler dev's CPU: its own process (the local proxy) and the workerd it
# started, the newest one now.
WRANGLER_PID="${_pids[-1]},$(pgrep -n -f "workerd serve")"
build_spin
start_spin 28797 "UPSTREAM_URL=$REPLAY" "UPSTREAM_ORIGIN=$REPLAY" "AUTH=off" "CACHE_TTL_SECS=0"
SPIN_PID=${_pids[-1]}
start_floor 28788 js pass
PASS_PID=$FLOOR_PID
start_floor 28789 js transform
TRANSFORM_PID=$FLOOR_PID
start_floor 28780 js pull
PULL_PID=$FLOOR_PID
start_floor 28781 js identity
IDENTITY_PID=$FLOOR_PID
start_floor 28782 rust relay
RUST_PID=$FLOOR_PID
start_floor 28783 rust sync
RUST_SYNC_PID=$FLOOR_PID

targets=(--target "direct=$REPLAY"
  --target "tokenedge-workerd=http://127.0.0.1:28786@$WORKERD_PID"
  --target "tokenedge-workerd-resume-off=http://127.0.0.1:28784@$WORKERD_NORESUME_PID"
  --target "tokenedge-wrangler-dev=http://127.0.0.1:28787@$WRANGLER_PID"
  --target "tokenedge-spin=http://127.0.0.1:28797@$SPIN_PID"
  --target "js-passthrough-workerd=http://127.0.0.1:28788@$PASS_PID"
  --target "js-transformstream-workerd=http://127.0.0.1:28789@$TRANSFORM_PID"
  --target "js-pull-workerd=http://127.0.0.1:28780@$PULL_PID"
  --target "js-identity-workerd=http://127.0.0.1:28781@$IDENTITY_PID"
  --target "rust-relay-workerd=http://127.0.0.1:28782@$RUST_PID"
  --target "rust-sync-workerd=http://127.0.0.1:28783@$RUST_SYNC_PID")
if [ "${PEERS:-on}" != off ]; then
  node "$PORTKEY_START" --port=28791 --headless >"$TOKENEDGE_LOGS/portkey.log" 2>&1 &
  _pids+=($!)
  PORTKEY_PID=$!
  cat >"$TOKENEDGE_LOGS/litellm.yaml" <<YAML
model_list:
  - model_name: replay
    litellm_params:
      model: openai/replay
      api_base: $REPLAY/v1
      api_key: none
YAML
  # Its own cost map only (it would fetch one from the internet), no
  # telemetry, and a master key, without which it does not start.
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_MASTER_KEY=sk-bench-peers \
    "$LITELLM_BIN" --config "$TOKENEDGE_LOGS/litellm.yaml" --host 127.0.0.1 --port 28792 --num_workers 1 \
    >"$TOKENEDGE_LOGS/litellm.log" 2>&1 &
  _pids+=($!)
  LITELLM_PID=$!
  wait_http "http://127.0.0.1:28791/" 60
  wait_http "http://127.0.0.1:28792/health/liveliness" 180
  targets+=(--target "portkey=http://127.0.0.1:28791@$PORTKEY_PID#x-portkey-provider:openai|x-portkey-custom-host:$REPLAY/v1|authorization:Bearer none"
    --target "litellm=http://127.0.0.1:28792@$LITELLM_PID#authorization:Bearer sk-bench-peers")
fi
targets+=(--target "direct-again=$REPLAY")
node "$ROOT/bench/peers/load.mjs" --rounds "$ROUNDS" --c "$CS" "${targets[@]}" --json "$TOKENEDGE_LOGS/peers.json"
echo "raw results: $TOKENEDGE_LOGS/peers.json"
