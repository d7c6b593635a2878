#!/bin/sh
# Side-by-side CPU inference benchmark: `warsha bench infer` and llama.cpp's
# `llama-bench` on the same GGUF files, 128 prompt tokens and 64 generated tokens,
# interleaved twice so both see the same background load.
# Usage: bench/peer/run_infer_cpu.sh LLAMA_BENCH MODEL.gguf [MODEL.gguf ...]
# LLAMA_BENCH is the llama-bench binary (its shared libraries beside it).
set -eu
LB=${1:?path to llama-bench}
shift
BIN=${WARSHA_BIN:-target/release/warsha}
THREADS=${THREADS:-2}
LIBDIR=$(dirname "$LB")
for round in 1 2; do
  for model in "$@"; do
    echo "# round $round, $model, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    LD_LIBRARY_PATH="$LIBDIR" "$LB" -m "$model" -t "$THREADS" -p 128 -n 64 -r 3 -o jsonl 2>/dev/null
    RAYON_NUM_THREADS="$THREADS" "$BIN" bench infer --model "$model" --json
  done
done
