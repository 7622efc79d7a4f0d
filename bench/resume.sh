#!/usr/bin/env bash
# Resume trials on both runtimes against a recorded real stream replayed by
# tests/e2e/cut_proxy.py (no model needed): a client cut at random bytes
# reattaches until the end, TRIALS times per coding (500 by default: 1,000
# per runtime; wrangler dev a tenth), then a fifth as many on a slower
# replay, for readers that come back while the answer is under way. Prints one JSON line per runtime and coding, and the Spin
# store's record writes per stream (from 20 more trials on an instance whose
# store logs its writes: that log slows every write, so it is kept off the
# timed runs).
#
#   bench/resume.sh [trials-per-coding]
#
# Workers figures come from bare workerd (the worker and its STREAMS
# Durable Object, which keeps the records), then `wrangler dev` to show what
# its proxy adds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
trap stop_services EXIT
TRIALS=${1:-500}
cd "$ROOT"
build_spin >/dev/null
worker-build --release --features workers >/dev/null 2>&1
"$TOKENEDGE_PY" tests/e2e/cut_proxy.py --port 18082 --upstream 127.0.0.1:9 >"$TOKENEDGE_LOGS/cut-proxy.log" 2>&1 &
_pids+=($!)
start_spin 18797 "UPSTREAM_URL=http://127.0.0.1:18082" "UPSTREAM_ORIGIN=http://127.0.0.1:18082" "API_KEYS=bench-key"
export SPIN_HOST_KV_DUMP="$TOKENEDGE_LOGS/spin-keys.txt"
start_spin 18798 "UPSTREAM_URL=http://127.0.0.1:18082" "UPSTREAM_ORIGIN=http://127.0.0.1:18082" "API_KEYS=bench-key"
unset SPIN_HOST_KV_DUMP
start_workerd 18790 "UPSTREAM_URL=http://127.0.0.1:18082" "API_KEYS=bench-key" "UPSTREAM_DIALECT=llama.cpp"
start_workerd 18791 "UPSTREAM_URL=http://127.0.0.1:18082" "API_KEYS=bench-key" "UPSTREAM_DIALECT=llama.cpp" "RESUME=off"
start_wrangler 18787 19229 --var "UPSTREAM_URL:http://127.0.0.1:18082" --var "API_KEYS:bench-key"
# What handing a generation to its stream's owner and keeping its record
# cost a stream, against the same worker with RESUME=off (bare workerd).
"$TOKENEDGE_PY" bench/e2e_latency.py --direct http://127.0.0.1:18791 --via http://127.0.0.1:18790 \
  --key bench-key --rounds "${ROUNDS:-40}" --label "workerd, replayed stream" --names "resume off,resume on (owner)" \
  --prompt "replay-vector: ttft"
for coding in identity gzip; do
  "$TOKENEDGE_PY" bench/resume.py --url http://127.0.0.1:18790 --trials "$TRIALS" --coding "$coding" --label workerd
done
for coding in identity gzip; do
  "$TOKENEDGE_PY" bench/resume.py --url http://127.0.0.1:18797 --trials "$TRIALS" --coding "$coding" --label spin
done
"$TOKENEDGE_PY" bench/resume.py --url http://127.0.0.1:18798 --trials 20 --coding identity --label spin-logged >/dev/null
streams=$(grep -c '^stream:v1:st_[0-9a-f]*$' "$TOKENEDGE_LOGS/spin-keys.txt.writes" || true)
distinct=$(grep '^stream:v1:st_[0-9a-f]*$' "$TOKENEDGE_LOGS/spin-keys.txt.writes" | sort -u | wc -l)
echo "{\"label\":\"spin\",\"record_writes\":$streams,\"streams\":$distinct}"
# wrangler dev: what its proxy adds (a tenth of the trials).
for coding in identity gzip; do
  "$TOKENEDGE_PY" bench/resume.py --url http://127.0.0.1:18787 --trials "$((TRIALS / 10 + 2))" --coding "$coding" --label wrangler-dev
done
# Readers that come back while the answer is under way (25 ms per event):
# time to the first replayed byte and to the first live event.
for url in workerd:18790 spin:18797; do
  "$TOKENEDGE_PY" bench/resume.py --url "http://127.0.0.1:${url#*:}" --trials "$((TRIALS / 5 + 2))" --coding gzip \
    --label "${url%%:*}-live" --slow
done
