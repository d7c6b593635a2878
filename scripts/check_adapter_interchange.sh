#!/usr/bin/env bash
# Train (or take) an adapter on a GGUF base, export it as PEFT and as a
# llama.cpp GGUF LoRA, and check that Hugging Face PEFT and llama.cpp apply
# it as warsha does (scripts/check_adapter_interchange.py; docs/EVAL.md has
# the figures).
#
#   scripts/check_adapter_interchange.sh MODEL.gguf OUT_DIR [DATA_DIR ADAPTER_ID]
#
# Without DATA_DIR and ADAPTER_ID, a fresh data dir under OUT_DIR ingests
# assets/demo and trains STEPS (default 40) optimizer steps on CPU with the
# demo's settings. With them, that data dir's adapter is exported; its
# configuration must name MODEL (set WARSHA_CONFIG as for any command).
#
# Environment:
#   PYTHON     an interpreter with torch, transformers, peft, gguf, safetensors, numpy
#              (CPU wheels are enough); default python3
#   LLAMA_CPP  a llama.cpp source tree built with CMake (build/bin holds
#              llama-completion and libllama); optional: without it only PEFT is checked
#   STEPS      optimizer steps when training here (default 40)
#   TOKENS     greedy tokens per prompt (default 24)
#   DENSE      1 (default): also run the check on MODEL dequantized to f32, where
#              nothing is rounded and the sides must agree to 1e-3; 0: skip it
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || [ $# -eq 4 ] || { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
MODEL=$(realpath "$1")
OUT=$(realpath -m "$2")
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

cargo build --release --bin warsha --example generation_logits
WARSHA=$PWD/target/release/warsha
EXAMPLE=$PWD/target/release/examples/generation_logits

if [ $# -eq 4 ]; then
    DATA=$(realpath "$3")
    ID=$4
else
    DATA=$OUT/data
    ID=
    export WARSHA_CONFIG=$OUT/warsha.toml
    cat >"$WARSHA_CONFIG" <<EOF
[paths]
data_dir = "$DATA"
[ingest]
drop_folder = "$OUT/drop"
[model]
path = "$MODEL"
device = "cpu"
[train]
seq_len = 256
micro_batch = 1
grad_accum = 2
lr = 1e-3
warmup_steps = 6
checkpoint_every = 20
EOF
    rm -rf "$OUT/docs" && cp -r assets/demo "$OUT/docs"
    "$WARSHA" ingest "$OUT/docs" >/dev/null
    "$WARSHA" train --steps "${STEPS:-40}" --json | tail -1 >"$OUT/train.json"
    ID=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["outcome"]["adapter_id"])' "$OUT/train.json")
fi

rm -rf "$OUT/peft" "$OUT/gguf"
"$WARSHA" --data-dir "$DATA" adapters export "$ID" --format peft --out "$OUT/peft"
"$WARSHA" --data-dir "$DATA" adapters export "$ID" --format gguf --out "$OUT/gguf"

LLAMA_ARGS=()
if [ -n "${LLAMA_CPP:-}" ]; then
    BIN=$LLAMA_CPP/build/bin
    cc -O2 -o "$OUT/llama_logits" scripts/llama_logits.c -I "$LLAMA_CPP/include" \
        -I "$LLAMA_CPP/ggml/include" -L "$BIN" -lllama -lggml -lggml-base
    LLAMA_ARGS=(--llama-bin "$BIN" --llama-logits "$OUT/llama_logits")
fi

check() {
    "$PYTHON" scripts/check_adapter_interchange.py --peft "$OUT/peft" \
        --gguf-lora "$OUT/gguf/adapter_model.gguf" --warsha "$WARSHA" --example "$EXAMPLE" \
        --tokens "${TOKENS:-24}" "${LLAMA_ARGS[@]}" "$@"
}
status=0
check --model "$MODEL" --out "$OUT" || status=1
if [ "${DENSE:-1}" = 1 ]; then
    "$PYTHON" scripts/check_adapter_interchange.py --model "$MODEL" --dequantize-to "$OUT/base-f32.gguf"
    check --model "$OUT/base-f32.gguf" --dense --out "$OUT/dense" || status=1
    rm -f "$OUT/base-f32.gguf"
fi
exit $status
