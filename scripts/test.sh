#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this):
# formatting, lints for every build, unit and vector tests, benches compile,
# docs, the worker build and its size, and the end-to-end suite against the
# worker under wrangler dev (workerd) in front of the real local model.
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
step "unit, session and vector tests"
cargo test
step "benches compile"
cargo bench --no-run
step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
step "worker build"
worker-build --release --features workers
raw=$(stat -c %s build/index_bg.wasm)
gz=$(gzip -9 -c build/index_bg.wasm | wc -c)
echo "wasm size: $raw bytes raw, $gz bytes gzip -9"

step "end-to-end on workerd (wrangler dev) with the local model"
MODEL_PORT=18081
start_model "$MODEL_PORT"
keys="e2e-key-1,e2e-key-2,e2e-key-link"
start_wrangler 18787 19229 --var "UPSTREAM_URL:http://127.0.0.1:$MODEL_PORT" --var "API_KEYS:$keys"
# The same worker with its upstream on a port nothing listens on.
start_wrangler 18788 19230 --var "UPSTREAM_URL:http://127.0.0.1:9" --var "API_KEYS:$keys"
TOKENEDGE_URL=http://127.0.0.1:18787 TOKENEDGE_DEAD_URL=http://127.0.0.1:18788 \
  TOKENEDGE_KEY=e2e-key-2 TOKENEDGE_LINK_KEY=e2e-key-link MODEL_URL="http://127.0.0.1:$MODEL_PORT" TOKENEDGE_RUNTIME=workerd \
  "$TOKENEDGE_PY" -m pytest -v -s tests/e2e
