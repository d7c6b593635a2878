#!/usr/bin/env bash
# The test suite: fetch the small real model once (cached), then run every
# test in release mode (the numeric tests are slow unoptimized).
set -euo pipefail
cd "$(dirname "$0")/.."
WARSHA_TEST_GGUF="$(bash scripts/fetch-test-model.sh)"
export WARSHA_TEST_GGUF
cargo test --release --no-fail-fast "$@"
