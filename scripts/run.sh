#!/usr/bin/env bash
# Runs tokenedge under `wrangler dev` (workerd) against the local model
# server, installing whatever is missing first. Ctrl-C stops both.
#
#   scripts/run.sh                 # http://127.0.0.1:8787
#   PORT=9000 MODEL_PORT=9001 scripts/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"
PORT=${PORT:-8787}
MODEL_PORT=${MODEL_PORT:-8081}

echo "starting the model server on 127.0.0.1:$MODEL_PORT (logs: $TOKENEDGE_LOGS)"
start_model "$MODEL_PORT"
echo "building and starting the worker under wrangler dev on 127.0.0.1:$PORT"
start_wrangler "$PORT" 9229 --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT"
cat <<TXT

tokenedge is running on http://127.0.0.1:$PORT (Ctrl-C to stop). Try:

  curl -N http://127.0.0.1:$PORT/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"smollm2","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Tell me about the sea."}]}'

TXT
wait "${_pids[@]}"
