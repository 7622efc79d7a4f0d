#!/usr/bin/env bash
# The KV store's effect on time to first token, through the worker under
# wrangler dev with the local model: exact hit, prefix hit and miss, and a
# long prompt cold vs after /v1/prefetch. Results go to docs/BENCHMARKS.md.
#
#   bench/cache.sh [rounds]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
MODEL=http://127.0.0.1:28081
start_model 28081
start_wrangler 28787 29229 --var "UPSTREAM_URL:$MODEL" --var "API_KEYS:" --var "AUTH:off" --var "DEBUG_HEADERS:on"
"$TOKENEDGE_PY" "$ROOT/bench/cache.py" --via http://127.0.0.1:28787 --model-url "$MODEL" --rounds "${1:-5}"
