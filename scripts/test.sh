#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this):
# formatting, lints for every build, unit and vector tests, a fuzz smoke,
# the client library's tests, benches compile,
# docs, the worker and Spin component builds and their sizes, and the one
# end-to-end suite (and the page in headless Chromium) run twice in front of
# the real local model: against the worker under wrangler dev (workerd), and
# against the Spin component in the wasmtime test host. The two runtimes' timings are printed side by side.
# Installs whatever is missing first (scripts/setup.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
eval "$("$ROOT/scripts/setup.sh")"
source "$ROOT/scripts/lib.sh"

step() { echo; echo "=== $* ==="; }

step "rustfmt"
cargo fmt --all -- --check
step "clippy (native, all targets)"
cargo clippy --all-targets -- -D warnings
step "clippy (workers, wasm32-unknown-unknown)"
cargo clippy --lib --features workers --target wasm32-unknown-unknown -- -D warnings
step "clippy (spin, wasm32-wasip2)"
cargo clippy --lib --features spin --target wasm32-wasip2 -- -D warnings
step "unit, session and vector tests"
cargo test
step "fuzz smoke: every committed crash input and seed, then each target for 30 s (bench/fuzz.sh runs 10 min each)"
(cd fuzz && cargo fmt --check)
bash scripts/fuzz.sh "${FUZZ_SMOKE_SECONDS:-30}"
step "client library (client/) and the page's markdown (page/): node's test runner"
(cd client && node --test 'test/*.test.js')
(cd page && node --test 'test/*.test.js')
step "benches compile"
cargo bench --no-run
step "wasm CPU bench (bench/wasm-cpu) builds and runs once"
# Its own target directory: the crate is a cdylib, so its rlib has no hash
# in its name, and the worker build (feature `workers`) would overwrite the
# one this bench links.
(cd bench/wasm-cpu && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-cpu" cargo build --release --target wasm32-unknown-unknown --quiet)
node bench/wasm-cpu/run.mjs "$CARGO_TARGET_DIR/wasm-cpu/wasm32-unknown-unknown/release/tokenedge_wasm_cpu.wasm" 1
step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
step "worker build"
worker-build --release --features workers
raw=$(stat -c %s build/index_bg.wasm)
gz=$(gzip -9 -c build/index_bg.wasm | wc -c)
echo "wasm size: $raw bytes raw, $gz bytes gzip -9"

step "spin build (the build command in spin.toml)"
build_spin
raw=$(stat -c %s "$SPIN_WASM")
gz=$(gzip -9 -c "$SPIN_WASM" | wc -c)
echo "component size: $raw bytes raw, $gz bytes gzip -9"
# The test host implements the Spin interfaces from the WIT files shipped in
# the spin-sdk crate the component is built with; they must still match.
sdk=$(cargo metadata --format-version 1 --features spin --filter-platform wasm32-wasip2 |
  "$TOKENEDGE_PY" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "spin-sdk"))')
for d in spin-key-value@3.0.0 spin-variables@3.0.0; do
  diff -r "$(dirname "$sdk")/wit/deps/$d" "tests/spin-host/wit/deps/$d"
done
echo "test host WIT matches $(dirname "$sdk")"

MODEL_PORT=18081
EMBEDDINGS_PORT=18090
CUT_PORT=18082
CUT_PORT_2=18083
keys="e2e-key-1,e2e-key-2,e2e-key-link"
limit_keys="limit-a,limit-b,limit-c"
REPORT="$TOKENEDGE_LOGS/e2e-timing.jsonl"
: >"$REPORT"
e2e() { # RUNTIME URL DEAD_URL FAULTS_URL NOKV_URL NOKEYS_URL
  TOKENEDGE_RUNTIME=$1 TOKENEDGE_URL=$2 TOKENEDGE_DEAD_URL=$3 TOKENEDGE_FAULTS_URL=$4 TOKENEDGE_NOKV_URL=$5 \
    TOKENEDGE_NOKEYS_URL=$6 TOKENEDGE_LIMITED_URL=$7 TOKENEDGE_KV_DUMP=${KV_DUMP:-} TOKENEDGE_KV_WRITES=${KV_WRITES:-} \
    TOKENEDGE_KEY=e2e-key-2 TOKENEDGE_KEY2=e2e-key-1 \
    TOKENEDGE_LINK_KEY=e2e-key-link MODEL_URL="http://127.0.0.1:$MODEL_PORT" TOKENEDGE_REPORT="$REPORT" \
    "$TOKENEDGE_PY" -m pytest -v -s tests/e2e
  # The Responses API with the official JavaScript SDK.
  TOKENEDGE_RUNTIME=$1 TOKENEDGE_URL=$2 TOKENEDGE_FAULTS_URL=$4 TOKENEDGE_KEY=e2e-key-2 \
    node --test tests/e2e/responses.test.mjs
  # The WebSocket transport (Workers; 501 and the fetch fallback on Spin).
  TOKENEDGE_RUNTIME=$1 TOKENEDGE_URL=$2 TOKENEDGE_KEY=e2e-key-2 MODEL_URL="http://127.0.0.1:$MODEL_PORT" \
    node --test tests/e2e/socket.test.mjs
  # The page at / in headless Chromium (screenshots in the logs folder).
  TOKENEDGE_RUNTIME=$1 TOKENEDGE_URL=$2 TOKENEDGE_KEY=e2e-key-2 MODEL_URL="http://127.0.0.1:$MODEL_PORT" \
    TOKENEDGE_LOGS="$TOKENEDGE_LOGS" node --test tests/browser/page.test.mjs
  # A smoke of the browser benchmark (bench/browser.sh runs it in full).
  node bench/browser.mjs --model "http://127.0.0.1:$MODEL_PORT" --target "$1=$2" --key e2e-key-2 \
    --rounds 1 --long-tokens 64
}
start_model "$MODEL_PORT"
start_embeddings "$EMBEDDINGS_PORT"
embeddings="http://127.0.0.1:$EMBEDDINGS_PORT"
# Cuts streams whose request contains "cut-me" (on both of its ports), or a
# "cut-once-<token>" the first time; passes the rest to the model.
"$TOKENEDGE_PY" tests/e2e/cut_proxy.py --port "$CUT_PORT" --port "$CUT_PORT_2" --upstream "127.0.0.1:$MODEL_PORT" >"$TOKENEDGE_LOGS/cut-proxy.log" 2>&1 &
_pids+=($!)
# Three replicas: one dead, two behind the cutting proxy (a stream cut on
# one fails over to the other); and a KV store that does not exist.
faults="http://127.0.0.1:9, http://127.0.0.1:$CUT_PORT, http://127.0.0.1:$CUT_PORT_2"

step "end-to-end on workerd (wrangler dev) with the local model"
# The instances whose tests read X-Cache and Server-Timing show them.
debug=(--var DEBUG_HEADERS:on)
# A generation whose client left goes on 2 s (not 30): the disconnect and
# limits tests see it stop soon after.
grace=(--var RESUME_GRACE_SECS:2)
start_wrangler 18787 19229 "${grace[@]}" --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT" --var "API_KEYS:$keys" "${debug[@]}" \
  --var "EMBEDDINGS_URL:$embeddings"
# The same worker with its upstream on a port nothing listens on.
start_wrangler 18788 19230 --var "UPSTREAM_URL:http://127.0.0.1:9" --var "API_KEYS:$keys"
# Its embeddings endpoint is a port nothing listens on.
start_wrangler 18789 19231 "${grace[@]}" --var "UPSTREAM_URL:$faults" --var "API_KEYS:$keys" "${debug[@]}" \
  --var "EMBEDDINGS_URL:http://127.0.0.1:9"
start_wrangler 18790 19232 "${grace[@]}" --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT" --var "API_KEYS:$keys" --var "KV_STORE:MISSING" "${debug[@]}" \
  --var "EMBEDDINGS_URL:$embeddings"
# A key list with no usable key: the gateway must stay closed.
start_wrangler 18791 19233 --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT" --var "API_KEYS:,"
# Per-key limits: 4 requests a minute, one generation at a time.
start_wrangler 18792 19234 "${grace[@]}" --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT" --var "API_KEYS:$limit_keys" \
  --var "RATE_LIMIT_RPM:4" --var "MAX_STREAMS_PER_KEY:1"
e2e workerd http://127.0.0.1:18787 http://127.0.0.1:18788 http://127.0.0.1:18789 http://127.0.0.1:18790 http://127.0.0.1:18791 \
  http://127.0.0.1:18792

step "end-to-end on Spin (the component in the wasmtime test host) with the local model"
# Its store's writes are logged (test_store.py: identical requests write once).
export SPIN_HOST_KV_DUMP="$TOKENEDGE_LOGS/spin-18797-keys.txt"
start_spin 18797 "UPSTREAM_URL=http://127.0.0.1:$MODEL_PORT" "UPSTREAM_ORIGIN=http://127.0.0.1:$MODEL_PORT" "API_KEYS=$keys" DEBUG_HEADERS=on RESUME_GRACE_SECS=2 \
  "EMBEDDINGS_URL=$embeddings" "EMBEDDINGS_ORIGIN=$embeddings"
unset SPIN_HOST_KV_DUMP
# Its store's keys are listed in a file after every change, and its
# prefetch markers live 2 s, so a test can see the store shrink.
export SPIN_HOST_KV_DUMP="$TOKENEDGE_LOGS/spin-18798-keys.txt"
start_spin 18798 "UPSTREAM_URL=http://127.0.0.1:9" "UPSTREAM_ORIGIN=http://127.0.0.1:9" "API_KEYS=$keys" \
  "PREFETCH_WINDOW_SECS=2"
unset SPIN_HOST_KV_DUMP
start_spin 18799 "UPSTREAM_URL=$faults" "UPSTREAM_ORIGIN=http://127.0.0.1:*" "API_KEYS=$keys" DEBUG_HEADERS=on RESUME_GRACE_SECS=2 \
  "EMBEDDINGS_URL=http://127.0.0.1:9" "EMBEDDINGS_ORIGIN=http://127.0.0.1:9"
start_spin 18800 "UPSTREAM_URL=http://127.0.0.1:$MODEL_PORT" "UPSTREAM_ORIGIN=http://127.0.0.1:$MODEL_PORT" "API_KEYS=$keys" "KV_STORE=missing" DEBUG_HEADERS=on RESUME_GRACE_SECS=2 \
  "EMBEDDINGS_URL=$embeddings" "EMBEDDINGS_ORIGIN=$embeddings"
start_spin 18801 "UPSTREAM_URL=http://127.0.0.1:$MODEL_PORT" "UPSTREAM_ORIGIN=http://127.0.0.1:$MODEL_PORT" "API_KEYS=,"
start_spin 18802 "UPSTREAM_URL=http://127.0.0.1:$MODEL_PORT" "UPSTREAM_ORIGIN=http://127.0.0.1:$MODEL_PORT" "API_KEYS=$limit_keys" \
  "RATE_LIMIT_RPM=4" "MAX_STREAMS_PER_KEY=1" RESUME_GRACE_SECS=2
KV_DUMP="$TOKENEDGE_LOGS/spin-18798-keys.txt" KV_WRITES="$TOKENEDGE_LOGS/spin-18797-keys.txt.writes" e2e spin http://127.0.0.1:18797 http://127.0.0.1:18798 http://127.0.0.1:18799 http://127.0.0.1:18800 http://127.0.0.1:18801 \
  http://127.0.0.1:18802

step "end-to-end timings, both runtimes"
"$TOKENEDGE_PY" tests/e2e/report.py "$REPORT"

step "peers benchmark smoke: one round at C=1 and 8, without Portkey and LiteLLM (bench/peers.sh runs it all)"
stop_services
PEERS=off TOKENEDGE_LOGS="$TOKENEDGE_LOGS/peers" bash bench/peers.sh 1 1,8
