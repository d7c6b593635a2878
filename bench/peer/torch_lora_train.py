#!/usr/bin/env python3
"""Peer measurement for `warsha bench train`: LoRA training throughput and
peak RSS with PyTorch + transformers + peft on the same GGUF model
(dequantized to f32 by transformers' GGUF loader) and the same settings:
one fixed random row of `--seq` ids, micro-batch 1, LoRA r/alpha/dropout on
the given projections, AdamW, one untimed warm-up step, then `--steps`
timed optimizer steps. Prints one JSON object.

    python3 torch_lora_train.py --model SmolLM2-135M-Instruct.Q4_1.gguf --seq 256 --rank 16
"""
import argparse
import json
import os
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a .gguf file")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (recompute)")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(a.model))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    load_secs = time.time() - t0
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
             "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    targets = [names[t.strip()] for t in a.targets.split(",")]
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout,
                     target_modules=targets, task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, cfg)
    if a.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, vocab, (1, a.seq + 1), generator=g)
    inp, tgt = ids[:, :-1], ids[:, 1:]

    def step():
        t = time.time()
        out = model(input_ids=inp)
        logits = out.logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), time.time() - t

    first, warm = step()
    secs = []
    t0 = time.time()
    last = first
    for _ in range(a.steps):
        last, s = step()
        secs.append(s)
    total = time.time() - t0
    print(json.dumps({
        "peer": "pytorch+transformers+peft",
        "torch": torch.__version__,
        "threads": a.threads,
        "model": a.model,
        "seq": a.seq,
        "rank": a.rank,
        "targets": a.targets,
        "checkpointing": a.checkpointing,
        "steps": a.steps,
        "load_secs": load_secs,
        "warmup_step_secs": warm,
        "step_secs": secs,
        "tokens_per_s": a.steps * a.seq / total,
        "loss_first": first,
        "loss_last": last,
        "lora_params": sum(p.numel() for p in params),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
