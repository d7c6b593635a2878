#!/usr/bin/env python3
"""Reference fixtures for warsha's PEFT interchange tests (tests/adapters_peft.rs).

Run once, by hand, where torch, transformers, peft, safetensors and gguf are
installed (CPU wheels are enough); the outputs are committed so the Rust tests
need no Python:

    python scripts/make_peft_fixtures.py            # 1. tiny models, PEFT-saved adapters, PEFT logits
    WARSHA_WRITE_PEFT_FIXTURES=1 cargo test --test adapters_peft   # 2. our export of a known adapter
    python scripts/make_peft_fixtures.py            # 3. PEFT loads our export: pins its logits

For each architecture (qwen2 with tied embeddings and q/k/v biases; llama
with a separate output matrix) it writes under tests/fixtures/peft/<arch>/:

  model.gguf            the random tiny model (hidden 64, 2 layers, 4 heads / 2 KV
                        heads, vocab 128), weights f16, so that warsha loads them
                        dense (no 4-bit quantization) and the comparison is exact
                        up to f32 arithmetic order. llama q/k rows are permuted the
                        way llama.cpp's converter does, as in any llama GGUF.
  ids.json              the token ids the logits are for (2 sequences x 12)
  logits_base.safetensors   transformers' logits without an adapter
  peft_saved/           an adapter saved by PEFT's save_pretrained, every LoRA
                        matrix random and non-zero (r=4, alpha=8, all 7 projections)
  logits_peft.safetensors   PEFT's logits with that adapter applied
  ours/                 (written by the Rust test, step 2) warsha's PEFT export of
                        an adapter with exactly representable values
  logits_ours.safetensors   PEFT's logits with warsha's export loaded by
                        PeftModel.from_pretrained (step 3)
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import gguf
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "peft")
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 128, 64, 128, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = [[1, 17, 42, 99, 3, 64, 5, 127, 8, 33, 71, 12], [2, 2, 90, 45, 45, 6, 100, 18, 0, 77, 31, 9]]


def config(arch):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
    )
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **common)
    return LlamaConfig(tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **common)


def make_model(arch, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(arch), attn_implementation="eager").float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
        # Round through f16 so that the f16 GGUF holds exactly these weights.
        for p in model.parameters():
            p.copy_(p.half().float())
    model.eval()
    return model


def permute_llama(w, heads):
    # llama.cpp's converter interleaves the two rotary halves of each head's rows.
    out, inp = w.shape
    return w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def write_gguf(arch, model, path):
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(VOCAB)
    f16 = lambda a: a.astype(np.float16)
    f32 = lambda a: a.astype(np.float32)
    w.add_tensor("token_embd.weight", f16(sd["model.embed_tokens.weight"]))
    w.add_tensor("output_norm.weight", f32(sd["model.norm.weight"]))
    if "lm_head.weight" in sd and arch == "llama":
        w.add_tensor("output.weight", f16(sd["lm_head.weight"]))
    names = dict(q_proj="attn_q", k_proj="attn_k", v_proj="attn_v", o_proj="attn_output")
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", f32(sd[p + "input_layernorm.weight"]))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", f32(sd[p + "post_attention_layernorm.weight"]))
        for hf, gg in names.items():
            t = sd[p + f"self_attn.{hf}.weight"]
            if arch == "llama" and hf in ("q_proj", "k_proj"):
                t = permute_llama(t, HEADS if hf == "q_proj" else KV_HEADS)
            w.add_tensor(f"blk.{i}.{gg}.weight", f16(t))
            bias = sd.get(p + f"self_attn.{hf}.bias")
            if bias is not None:
                w.add_tensor(f"blk.{i}.{gg}.bias", f32(bias))
        for hf, gg in dict(gate_proj="ffn_gate", up_proj="ffn_up", down_proj="ffn_down").items():
            w.add_tensor(f"blk.{i}.{gg}.weight", f16(sd[p + f"mlp.{hf}.weight"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float().contiguous()


def main():
    for seed, arch in enumerate(["qwen2", "llama"], start=11):
        d = os.path.join(ROOT, arch)
        os.makedirs(d, exist_ok=True)
        model = make_model(arch, seed)
        write_gguf(arch, model, os.path.join(d, "model.gguf"))
        with open(os.path.join(d, "ids.json"), "w") as f:
            json.dump(IDS, f)
        save_file({"logits": logits(model)}, os.path.join(d, "logits_base.safetensors"))

        # A PEFT adapter with every matrix random and non-zero.
        lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        peft_model = get_peft_model(make_model(arch, seed), lcfg)
        torch.manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.3 * torch.randn_like(p))
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(d, "peft_saved"))
        # The generated model card is boilerplate; the fixture is the two adapter files.
        os.remove(os.path.join(d, "peft_saved", "README.md"))
        save_file({"logits": logits(peft_model)}, os.path.join(d, "logits_peft.safetensors"))

        ours = os.path.join(d, "ours")
        if os.path.isfile(os.path.join(ours, "adapter_model.safetensors")):
            loaded = PeftModel.from_pretrained(make_model(arch, seed), ours)
            loaded.eval()
            save_file({"logits": logits(loaded)}, os.path.join(d, "logits_ours.safetensors"))
            print(f"{arch}: PEFT loaded warsha's export from {ours}")
        else:
            print(f"{arch}: no export in {ours} yet (step 2), skipped logits_ours", file=sys.stderr)
    print("fixtures written under", os.path.normpath(ROOT))


if __name__ == "__main__":
    main()
