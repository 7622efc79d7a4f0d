#!/usr/bin/env bash
# The long fuzzing trial: every target (or those named) for 10 minutes each,
# one after another on one core. CI runs the same script for 30 s per target
# (scripts/test.sh); this is the run whose executions and coverage the docs
# quote.
#
#   bench/fuzz.sh                 # all seven targets, ~70 min
#   bench/fuzz.sh session         # one
set -euo pipefail
exec bash "$(dirname "$0")/../scripts/fuzz.sh" "${FUZZ_SECONDS:-600}" "$@"
