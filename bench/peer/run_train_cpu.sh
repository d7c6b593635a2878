#!/bin/sh
# Side-by-side CPU training benchmark: warsha (candle) and PyTorch+peft on the
# same GGUF model and settings, one after the other in one go. Writes JSON
# lines to stdout. Usage: bench/peer/run_train_cpu.sh MODEL.gguf [SEQ] [RANK] [STEPS] [PYTHON]
set -eu
MODEL=${1:?model .gguf}
SEQ=${2:-256}
RANK=${3:-16}
STEPS=${4:-5}
PY=${5:-python3}
BIN=${WARSHA_BIN:-target/release/warsha}
"$BIN" bench train --model "$MODEL" --seq "$SEQ" --rank "$RANK" --steps "$STEPS" --json
"$BIN" bench train --model "$MODEL" --seq "$SEQ" --rank "$RANK" --steps "$STEPS" --recompute --json
"$PY" "$(dirname "$0")/torch_lora_train.py" --model "$MODEL" --seq "$SEQ" --rank "$RANK" --steps "$STEPS"
