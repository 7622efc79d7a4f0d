#!/usr/bin/env bash
# What a refused 50 MB upload costs each runtime (bench/refusals.py): a
# request with no key, and one with a key whose chunked body passes
# MAX_BODY_BYTES (1 MiB); on bare workerd (wrangler dev's local proxy
# turns an answer given before the body was read into a 500) and on the
# Spin test host. Results go to docs/BENCHMARKS.md.
#
#   bench/refusals.sh
# Then what asking the per-key limits record adds to each request
# (bench/limits_cost.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
# No model needed: nothing here reaches the upstream.
UPSTREAM=http://127.0.0.1:9
(cd "$ROOT" && worker-build --release --features workers >/dev/null)
start_workerd 28787 "UPSTREAM_URL=$UPSTREAM" "API_KEYS=bench-key"
workerd_pid=${_pids[-1]}
build_spin >/dev/null
start_spin 28797 "UPSTREAM_URL=$UPSTREAM" "UPSTREAM_ORIGIN=$UPSTREAM" "API_KEYS=bench-key"
spin_pid=${_pids[-1]}
"$TOKENEDGE_PY" "$ROOT/bench/refusals.py" --url http://127.0.0.1:28787 --pid "$workerd_pid" --key bench-key --label workerd
"$TOKENEDGE_PY" "$ROOT/bench/refusals.py" --url http://127.0.0.1:28797 --pid "$spin_pid" --key bench-key --label spin

# The limits record's round trip: the same deployments with limits set
# (high enough never to refuse) against the ones above.
start_workerd 28788 "UPSTREAM_URL=$UPSTREAM" "API_KEYS=bench-key" "RATE_LIMIT_RPM=100000000" "MAX_STREAMS_PER_KEY=100000"
start_spin 28798 "UPSTREAM_URL=$UPSTREAM" "UPSTREAM_ORIGIN=$UPSTREAM" "API_KEYS=bench-key" \
  "RATE_LIMIT_RPM=100000000" "MAX_STREAMS_PER_KEY=100000"
"$TOKENEDGE_PY" "$ROOT/bench/limits_cost.py" --plain http://127.0.0.1:28787 --limited http://127.0.0.1:28788 --key bench-key --label workerd
"$TOKENEDGE_PY" "$ROOT/bench/limits_cost.py" --plain http://127.0.0.1:28797 --limited http://127.0.0.1:28798 --key bench-key --label spin
