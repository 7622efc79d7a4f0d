#!/usr/bin/env bash
# CPU of a 1000-token stream through the core inside a wasm runtime (Node's
# V8, the engine workerd embeds), gzip vs identity, from the release wasm.
#
#   bench/wasm_cpu.sh [runs]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
cd "$ROOT/bench/wasm-cpu"
# Its own target directory: the worker build would overwrite the tokenedge
# rlib it links (a cdylib's rlib has no hash in its name).
export CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-cpu"
cargo build --release --target wasm32-unknown-unknown --quiet
node run.mjs "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/tokenedge_wasm_cpu.wasm" "${1:-50}"
