#!/usr/bin/env bash
# End-to-end latency: the local model server directly vs through tokenedge,
# on each runtime (the worker on bare workerd and under wrangler dev, the
# Spin component in the test host), interleaved in one run per runtime and API (chat completions,
# then the Responses API). Results go to docs/BENCHMARKS.md.
#
#   bench/e2e.sh [rounds]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
MODEL=http://127.0.0.1:28081
start_model 28081
start_wrangler 28787 29229 --var "UPSTREAM_URL:$MODEL" --var "AUTH:off"
# The worker wrangler dev just built, on bare workerd (what a deployment
# runs; wrangler dev adds its local proxy and simulators).
start_workerd 28788 "UPSTREAM_URL=$MODEL" "AUTH=off"
build_spin
start_spin 28797 "UPSTREAM_URL=$MODEL" "UPSTREAM_ORIGIN=$MODEL" "AUTH=off"
for runtime in workerd:28788 wrangler-dev:28787 spin:28797; do
  for api in chat responses; do
    "$TOKENEDGE_PY" "$ROOT/bench/e2e_latency.py" --direct "$MODEL" --via "http://127.0.0.1:${runtime#*:}" \
      --rounds "${1:-10}" --label "${runtime%%:*}" --api "$api"
    echo
  done
done
