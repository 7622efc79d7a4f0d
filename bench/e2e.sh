#!/usr/bin/env bash
# End-to-end latency: the local model server directly vs through tokenedge
# under wrangler dev, interleaved in one run. Results go to docs/BENCHMARKS.md.
#
#   bench/e2e.sh [rounds]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
start_model 28081
start_wrangler 28787 29229 --var "UPSTREAM_URL:http://127.0.0.1:28081"
"$TOKENEDGE_PY" "$ROOT/bench/e2e_latency.py" --direct http://127.0.0.1:28081 --via http://127.0.0.1:28787 \
  --rounds "${1:-10}" --label workerd
