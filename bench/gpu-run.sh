#!/usr/bin/env bash
# Runs the GPU training benchmark of warsha and of the Hugging Face peer (transformers + peft +
# bitsandbytes) on one machine, one process per run, so each run's peak device memory is its
# own. Results go to $OUT/runs.jsonl (one JSON object per run), logs beside it.
#
# Usage: bench/gpu-run.sh DIR [ours|peer|all|smoke] [SETTINGS...]
#   DIR holds: warsha (the CUDA build, or warsha.gz), peft_bnb_train.py, peak_mem.py and
#   site/ (bitsandbytes unpacked; torch, transformers and peft come from the machine).
#   SETTINGS default to all six: paper-r8-qkvo-512 r16-all-512 r16-all-512-fp16
#   r16-all-1024 r16-all-2048 r16-all-512-norecompute.
set -u
dir="$(cd "$1" && pwd)"
what="${2:-all}"
shift 2 || shift $#
out="${OUT:-/tmp/warsha-bench}"
mkdir -p "$out"
steps="${STEPS:-20}"
warmup="${WARMUP:-3}"
# Wall-clock cap per run, so one slow setting cannot eat the others' time.
run_timeout="${RUN_TIMEOUT:-150}"
export PYTHONPATH="$dir/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
runs="$out/runs.jsonl"
log="$out/log.txt"

settings=("$@")
if [ ${#settings[@]} -eq 0 ]; then
  settings=(paper-r8-qkvo-512 r16-all-512 r16-all-512-fp16 r16-all-1024 r16-all-2048 r16-all-512-norecompute)
fi

# setting -> rank targets seq recompute dtype
describe() {
  case "$1" in
    paper-r8-qkvo-512) echo "8 qkvo 512 1 bf16" ;;
    r16-all-512) echo "16 all 512 1 bf16" ;;
    r16-all-512-fp16) echo "16 all 512 1 fp16" ;;
    r16-all-2048-fp16) echo "16 all 2048 1 fp16" ;;
    r16-all-1024) echo "16 all 1024 1 bf16" ;;
    r16-all-2048) echo "16 all 2048 1 bf16" ;;
    r16-all-512-norecompute) echo "16 all 512 0 bf16" ;;
    r16-all-512-q4k) echo "16 all 512 1 bf16 q4k" ;;
    *) echo "" ;;
  esac
}

{
  echo "== $(date -u +%FT%TZ) $what ${settings[*]}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv
} | tee -a "$log"

if [ -f "$dir/warsha.gz" ] && [ ! -x "$dir/warsha" ]; then
  gunzip -c "$dir/warsha.gz" >"$dir/warsha" && chmod +x "$dir/warsha"
fi

run_ours() {
  local s="$1" rank targets seq rec dtype quant
  read -r rank targets seq rec dtype quant <<<"$(describe "$s")"
  quant="${quant:-nf4}"
  printf '[model]\nquant = "%s"\n' "$quant" >"/tmp/warsha-$quant.toml"
  local t="q,k,v,o,gate,up,down"
  [ "$targets" = qkvo ] && t="q,k,v,o"
  local args=(bench train --device cuda --shape qwen2-1.5b --seq "$seq" --rank "$rank" --targets "$t"
    --steps "$steps" --json)
  [ "$rec" = 1 ] && args+=(--recompute)
  # The card picks bf16 (compute 8.0 and up); f16 with dynamic loss scaling is what a compute
  # 7.5 card gets, forced here to measure that path.
  [ "$dtype" = fp16 ] && args+=(--dtype f16)
  [ -n "${OURS_EXTRA:-}" ] && args+=(${OURS_EXTRA})
  echo "-- warsha $s: ${args[*]}" | tee -a "$log"
  python3 "$dir/peak_mem.py" --out "$runs" \
    --tag "{\"tool\": \"warsha\", \"setting\": \"$s\", \"seq\": $seq, \"rank\": $rank, \"targets\": \"$targets\", \"recompute\": $([ "$rec" = 1 ] && echo true || echo false), \"quant\": \"$quant\"}" \
    -- timeout "$run_timeout" env WARSHA_CONFIG="/tmp/warsha-$quant.toml" WARSHA_DATA_DIR=/tmp/warsha-data "$dir/warsha" "${args[@]}" 2>>"$log" | tee -a "$log"
}

run_peer() {
  local s="$1" rank targets seq rec dtype quant
  read -r rank targets seq rec dtype quant <<<"$(describe "$s")"
  [ -n "$quant" ] && return
  echo "-- peft+bnb $s" | tee -a "$log"
  python3 "$dir/peak_mem.py" --out "$runs" --tag "{\"tool\": \"peft+bnb\", \"setting\": \"$s\"}" \
    -- timeout "$run_timeout" python3 "$dir/peft_bnb_train.py" train /tmp/qwen2-1.5b-random --setting "$s" --seq "$seq" \
    --rank "$rank" --targets "$targets" --ckpt "$rec" --dtype "$dtype" --warmup "$warmup" --steps "$steps" \
    2>>"$log" | tee -a "$log"
}

if [ "$what" = peer ] || [ "$what" = all ] || [ "$what" = smoke ]; then
  python3 -c 'import torch, transformers, peft, bitsandbytes as b; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__, "bitsandbytes", b.__version__)' 2>&1 | tee -a "$log"
  [ -d /tmp/qwen2-1.5b-random ] || python3 "$dir/peft_bnb_train.py" prepare /tmp/qwen2-1.5b-random 2>>"$log" | tee -a "$log"
fi

for s in "${settings[@]}"; do
  [ -n "$(describe "$s")" ] || { echo "unknown setting $s" | tee -a "$log"; continue; }
  if [ "$what" = ours ] || [ "$what" = all ]; then run_ours "$s"; fi
  if [ "$what" = peer ] || [ "$what" = all ] || [ "$what" = smoke ]; then run_peer "$s"; fi
done

echo "== summary" | tee -a "$log"
python3 - "$runs" <<'EOF' | tee -a "$log"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'tool':10} {'setting':26} {'seq':>5} {'tok/s':>9} {'peak MiB':>9} {'delta MiB':>9} rc")
for r in rows:
    print(f"{r.get('tool',''):10} {r.get('setting',''):26} {r.get('seq',''):>5} {r.get('tokens_per_s','-')!s:>9} "
          f"{r.get('peak_device_mib','-')!s:>9} {r.get('device_used_delta_peak_mib','-')!s:>9} {r.get('exit_code')}")
EOF
