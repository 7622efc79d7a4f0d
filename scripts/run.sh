#!/usr/bin/env bash
# Runs tokenedge against the local model server, installing whatever is
# missing first. Ctrl-C stops everything.
#
#   scripts/run.sh                 # Workers: wrangler dev (workerd) on http://127.0.0.1:8787
#   scripts/run.sh spin            # Spin: `spin up` if the Spin CLI is installed, else the
#                                  # component in tests/spin-host, on http://127.0.0.1:3000
#   PORT=9000 MODEL_PORT=9001 EMBEDDINGS_PORT=9002 scripts/run.sh [spin]
#
# The semantic cache's embeddings server runs beside the model (port 8090);
# a request asks for the cache with `X-Tokenedge-Cache: semantic`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME=${1:-workers}
case "$RUNTIME" in
  workers) eval "$("$ROOT/scripts/setup.sh")"; PORT=${PORT:-8787} ;;
  spin) eval "$("$ROOT/scripts/setup.sh" spin)"; PORT=${PORT:-3000} ;;
  *) echo "usage: $0 [workers|spin]" >&2; exit 2 ;;
esac
source "$ROOT/scripts/lib.sh"
MODEL_PORT=${MODEL_PORT:-8081}
MODEL="http://127.0.0.1:$MODEL_PORT"
EMBEDDINGS_PORT=${EMBEDDINGS_PORT:-8090}
EMBEDDINGS="http://127.0.0.1:$EMBEDDINGS_PORT"

echo "starting the model server on 127.0.0.1:$MODEL_PORT (logs: $TOKENEDGE_LOGS)"
start_model "$MODEL_PORT"
echo "starting the embeddings server (semantic cache) on 127.0.0.1:$EMBEDDINGS_PORT"
start_embeddings "$EMBEDDINGS_PORT"
if [ "$RUNTIME" = workers ]; then
  echo "building and starting the worker under wrangler dev on 127.0.0.1:$PORT"
  start_wrangler "$PORT" 9229 --var "UPSTREAM_URL:$MODEL" --var "AUTH:off" --var "DEBUG_HEADERS:on" \
    --var "EMBEDDINGS_URL:$EMBEDDINGS"
elif command -v spin >/dev/null; then
  echo "spin build && spin up on 127.0.0.1:$PORT"
  # spin.toml names the component under ./target.
  (cd "$ROOT" && env -u CARGO_TARGET_DIR spin build >&2 && SPIN_VARIABLE_UPSTREAM_URL=$MODEL SPIN_VARIABLE_UPSTREAM_ORIGIN=$MODEL SPIN_VARIABLE_AUTH=off SPIN_VARIABLE_DEBUG_HEADERS=on \
    SPIN_VARIABLE_EMBEDDINGS_URL=$EMBEDDINGS SPIN_VARIABLE_EMBEDDINGS_ORIGIN=$EMBEDDINGS exec spin up --listen "127.0.0.1:$PORT" </dev/null >"$TOKENEDGE_LOGS/spin-$PORT.log" 2>&1) &
  _pids+=($!)
  wait_http "http://127.0.0.1:$PORT/healthz" 600
else
  echo "no Spin CLI on PATH: building the component and serving it in the test host on 127.0.0.1:$PORT"
  build_spin
  start_spin "$PORT" "UPSTREAM_URL=$MODEL" "UPSTREAM_ORIGIN=$MODEL" "AUTH=off" "DEBUG_HEADERS=on" \
    "EMBEDDINGS_URL=$EMBEDDINGS" "EMBEDDINGS_ORIGIN=$EMBEDDINGS"
fi
cat <<TXT

tokenedge ($RUNTIME) is running on http://127.0.0.1:$PORT (Ctrl-C to stop).
Open http://127.0.0.1:$PORT/ in a browser for the demo page.
It is OPEN: no API keys, AUTH=off (a deployment without API_KEYS answers 503),
and its answers say how they were served (DEBUG_HEADERS=on: X-Cache, Server-Timing). Try:

  curl -N http://127.0.0.1:$PORT/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"smollm2","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Tell me about the sea."}]}'

TXT
wait "${_pids[@]}"
