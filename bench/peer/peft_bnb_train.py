#!/usr/bin/env python3
"""QLoRA training throughput and device memory of the Hugging Face stack, for comparison with
`warsha bench train`.

The stack is the one the reference work used: transformers + peft + bitsandbytes, the base
quantized to NF4 with double quantization, LoRA adapters, gradient checkpointing, 8-bit AdamW,
micro-batch 1. The model is a Qwen2 of the exact Qwen2-1.5B shape with random weights, so no
download is needed; throughput and memory do not depend on the weights' values.

Two steps, each its own process so that one run's allocations never show in another's peak:

    peft_bnb_train.py prepare DIR            # random bf16 checkpoint of the Qwen2-1.5B shape
    peft_bnb_train.py train DIR --seq 512 --rank 16 --targets all --ckpt 1 --dtype bf16

`train` prints one JSON object: tokens/s over the timed steps, the process's own peak device
memory as NVML reports it for this PID (CUDA context included; sampled every 20 ms by a thread),
and torch's allocator figures beside it.
"""

import argparse
import json
import os
import sys
import threading
import time

QWEN2_1_5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
    use_sliding_window=False,
)
TARGETS = {
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class NvmlPeak:
    """Polls NVML for this process's device memory; the figure includes the CUDA context."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak_mib = None
        self.device_peak_mib = None
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:  # NVML missing: report torch's figures only
            print(f"nvml unavailable: {e}", file=sys.stderr)
            self._nvml = None

    def sample(self):
        if self._nvml is None:
            return
        pid = os.getpid()
        try:
            for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    mib = p.usedGpuMemory / 2**20
                    self.peak_mib = max(self.peak_mib or 0.0, mib)
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            self.device_peak_mib = max(self.device_peak_mib or 0.0, used)
        except Exception:
            pass

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def start(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def prepare(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**QWEN2_1_5B)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(args.dir, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"prepared": args.dir, "params": n}))


def train(args):
    device_mib_before = None
    peak = NvmlPeak()
    if peak._nvml is not None:
        device_mib_before = peak._nvml.nvmlDeviceGetMemoryInfo(peak._handle).used / 2**20
    peak.start()

    import torch
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        args.dir, quantization_config=quant, dtype=compute, device_map={"": 0}
    )
    model.config.use_cache = False
    # The usual QLoRA preparation, as in the reference work's script: norms and embeddings to
    # fp32, inputs that require grad, and (when asked) gradient checkpointing.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(args.ckpt))
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=TARGETS[args.targets],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    load_secs = time.perf_counter() - t_load

    opt = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scaler = torch.amp.GradScaler("cuda") if args.dtype == "fp16" else None
    gen = torch.Generator(device="cpu").manual_seed(1)

    def step():
        ids = torch.randint(0, QWEN2_1_5B["vocab_size"], (1, args.seq), generator=gen).cuda()
        with torch.autocast("cuda", dtype=compute):
            loss = model(input_ids=ids, labels=ids).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    last = None
    for _ in range(args.steps):
        last = step()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak.stop()

    free, total = torch.cuda.mem_get_info()
    result = {
        "tool": "peft+bnb",
        "setting": args.setting,
        "seq": args.seq,
        "rank": args.rank,
        "targets": args.targets,
        "recompute": bool(args.ckpt),
        "dtype": args.dtype,
        "steps": args.steps,
        "tokens_per_s": round(args.seq * args.steps / secs, 1),
        "step_ms": round(1000 * secs / args.steps, 1),
        "peak_device_mib": round(peak.peak_mib) if peak.peak_mib is not None else None,
        "peak_method": "nvml per-process usedGpuMemory, sampled every 20 ms",
        "device_used_delta_peak_mib": (
            round(peak.device_peak_mib - device_mib_before)
            if peak.device_peak_mib is not None and device_mib_before is not None
            else None
        ),
        "torch_max_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
        "torch_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        "trainable_params": trainable,
        "load_s": round(load_secs, 1),
        "final_loss": round(float(last.item()), 4),
        "versions": {
            "torch": torch.__version__,
            "bitsandbytes": bnb.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
        "device_total_mib": round(total / 2**20),
    }
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir")
    t = sub.add_parser("train")
    t.add_argument("dir")
    t.add_argument("--setting", default="")
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32.0)
    t.add_argument("--dropout", type=float, default=0.05)
    t.add_argument("--targets", choices=sorted(TARGETS), default="all")
    t.add_argument("--ckpt", type=int, default=1)
    t.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--json", default="")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
