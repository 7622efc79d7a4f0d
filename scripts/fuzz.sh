#!/usr/bin/env bash
# Fuzzes the core with cargo-fuzz (fuzz/): builds the targets once, replays
# every committed crash input (fuzz/regressions/TARGET/) and seed
# (fuzz/seeds/TARGET/), then fuzzes each target for SECONDS on one core,
# keeping the grown corpus outside the repo. Fails on the first crash and
# prints the input (hex) to commit under fuzz/regressions/TARGET/.
#
#   scripts/fuzz.sh 30                 # every target, 30 s each (CI's smoke)
#   scripts/fuzz.sh 600 session        # one target, 10 minutes
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/fuzz"
eval "$("$ROOT/scripts/setup.sh" fuzz)"
CACHE=${TOKENEDGE_CACHE:-$HOME/.cache/tokenedge}
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(sse_parser restream deflate kv_records request session socket)

# -s none: the crate forbids unsafe code, so a sanitizer finds nothing the
# panics do not; -a: debug assertions (overflow checks) on.
FLAGS=(-s none -a --target-dir "$CACHE/fuzz-target")
$TOKENEDGE_FUZZ_CARGO fuzz build "${FLAGS[@]}" >&2
BIN="$CACHE/fuzz-target/x86_64-unknown-linux-gnu/release"

for t in "${TARGETS[@]}"; do
  corpus="$CACHE/fuzz-corpus/$t" artifacts="$CACHE/fuzz-artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  known=()
  for dir in regressions seeds; do
    [ -d "$dir/$t" ] && known+=("$dir/$t")
  done
  if [ ${#known[@]} -gt 0 ]; then
    echo "fuzz $t: replaying ${known[*]}"
    "$BIN/$t" -runs=0 "${known[@]}" >/dev/null 2>"$artifacts/replay.log" || {
      tail -30 "$artifacts/replay.log"; echo "fuzz $t: a committed input fails" >&2; exit 1; }
  fi
  log=$(mktemp "$artifacts/run.XXXXXX.log")
  if ! "$BIN/$t" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" "${known[@]}" >"$log" 2>&1; then
    grep -aE "panicked|^thread" -A3 "$log" | head -20
    crash=$(grep -ao "Test unit written to .*" "$log" | sed 's/Test unit written to //' | tail -1)
    echo "fuzz $t: CRASH, input $crash" >&2
    [ -n "$crash" ] && xxd -p "$crash" | tr -d '\n' >&2 && echo >&2
    exit 1
  fi
  runs=$(grep -ao "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || true)
  last=$(grep -aE "^#[0-9]+[[:space:]].*cov: " "$log" | tail -1 || true)
  cov=$(grep -o "cov: [0-9]*" <<<"$last" || true)
  ft=$(grep -o "ft: [0-9]*" <<<"$last" || true)
  echo "fuzz $t: ${SECONDS_EACH}s, $runs executions, $cov, $ft, corpus $(ls "$corpus" | wc -l) inputs, no crash"
done
