#!/usr/bin/env bash
# What a user sees in a real browser (headless Chromium), the model server
# directly vs tokenedge on bare workerd, under wrangler dev and on Spin, in
# one interleaved run: first and last character painted, identity and gzip,
# cache hits; then long tasks on the demo page during a 1,000-token answer.
# Results go to docs/BENCHMARKS.md.
#
#   bench/browser.sh [rounds]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
eval "$("$ROOT/scripts/setup.sh" browser)"
source "$ROOT/scripts/lib.sh"
MODEL=http://127.0.0.1:28081
start_model 28081
(cd "$ROOT" && worker-build --release --features workers >&2)
# Bare workerd has no KV namespace: no cache hits there.
start_workerd 28786 "UPSTREAM_URL=$MODEL" "AUTH=off" "CORS_ORIGINS=*" "DEBUG_HEADERS=on" "UPSTREAM_DIALECT=llama.cpp"
start_wrangler 28787 29229 --var "UPSTREAM_URL:$MODEL" --var "AUTH:off" --var "DEBUG_HEADERS:on"
build_spin
start_spin 28797 "UPSTREAM_URL=$MODEL" "UPSTREAM_ORIGIN=$MODEL" "AUTH=off" "DEBUG_HEADERS=on"
node "$ROOT/bench/browser.mjs" --model "$MODEL" --rounds "${1:-10}" --strict \
  --target "workerd=http://127.0.0.1:28786" --target "wrangler-dev=http://127.0.0.1:28787" \
  --target "spin=http://127.0.0.1:28797"
