#!/usr/bin/env bash
# Where a training step's time goes on the GPU, for one sequence length: per-phase wall times
# (each phase ends with a device synchronize: WARSHA_LOG=warsha::phases=debug), then, if Nsight
# Compute is there, every kernel's device time summed by kernel name over the first launches of
# a run (load, warm-up step and one step), clocks left as the card has them.
#
# Usage: bench/gpu-profile.sh DIR SEQ [LAUNCHES]   (DIR holds the CUDA build `warsha`; NCU=0 skips ncu)
# Output: $OUT/phases-SEQ.log and $OUT/ncu-SEQ.csv.
set -u
dir="$(cd "$1" && pwd)"
seq="$2"
launches="${3:-12000}"
out="${OUT:-/tmp/warsha-profile}"
mkdir -p "$out"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
args=(bench train --device cuda --shape qwen2-1.5b --seq "$seq" --recompute)
WARSHA_LOG=warsha::phases=debug timeout 150 "$dir/warsha" "${args[@]}" --steps 3 >"$out/phases-$seq.log" 2>&1
echo "phases at seq $seq (last step):"
grep "step phases" "$out/phases-$seq.log" | tail -1 | sed 's/.*step phases: //'
grep -E "throughput|device memory" "$out/phases-$seq.log"
[ "${NCU:-1}" = 0 ] && exit 0
command -v ncu >/dev/null || { echo "no ncu"; exit 0; }
timeout "${NCU_TIMEOUT:-200}" ncu --clock-control none --metrics gpu__time_duration.sum --launch-count "$launches" \
  --print-summary per-kernel --csv "$dir/warsha" "${args[@]}" --steps 1 >"$out/ncu-$seq.csv" 2>"$out/ncu-$seq.err"
echo "ncu exit $?"
python3 - "$out/ncu-$seq.csv" <<'PY'
import csv, sys
rows = {}
try:
    lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
except OSError:
    sys.exit(0)
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r.get("Kernel Name", "?")[:70]
    inv = int(r.get("Invocations", "1") or 1)
    unit = r.get("Metric Unit", "ns")
    v = float((r.get("Average") or r.get("Metric Value") or "0").replace(",", ""))
    v *= {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "nsecond": 1e-6}.get(unit, 1e-6)
    n, t = rows.get(name, (0, 0.0))
    rows[name] = (n + inv, t + v * inv)
total = sum(t for _, t in rows.values())
print(f"kernels: {sum(n for n, _ in rows.values())} launches, {total:.1f} ms device time")
for name, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"{t:9.2f} ms {100*t/max(total,1e-9):5.1f}% {n:7d}x  {name}")
PY
