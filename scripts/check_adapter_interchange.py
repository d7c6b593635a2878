#!/usr/bin/env python3
"""Does an adapter warsha trained behave the same in Hugging Face PEFT and in llama.cpp?

Driven by scripts/check_adapter_interchange.sh, which trains nothing itself:
it takes an adapter already exported both ways (`warsha adapters export ID
--format peft` and `--format gguf`) and the GGUF base it was trained on.

For every prompt (English and Arabic, raw continuation, greedy):

1. warsha: `examples/generation_logits` decodes greedily with and without the
   adapter and saves every logit vector of its inference path (the same loop
   `warsha model generate --raw --greedy` runs; the CLI's tokens are checked
   against it). With the adapter it also follows the base's tokens, so the
   adapter's own effect can be compared along one sequence.
2. transformers + PEFT: the same GGUF dequantized by transformers' GGUF
   loader, the PEFT export applied with `PeftModel.from_pretrained`; logits
   at the same positions of the same token sequences, and PEFT's own greedy
   continuation of the prompt.
3. llama.cpp: `llama-completion` greedy (`--temp 0 --top-k 1`), without and
   with `--lora adapter_model.gguf`, and the adapter load lines from its log;
   with `--llama-logits` (scripts/llama_logits.c built against the same
   llama.cpp) also its logits along our token sequences, with and without
   the GGUF adapter, compared like PEFT's.

warsha keeps the base 4-bit and rounds activations to 8 bits inside the
quantized matmuls (as llama.cpp does); transformers computes in f32 on the
dequantized weights. So the base logits differ by that rounding, and the
measure of the adapter's correctness is how its effect (logits with minus
logits without, on the same tokens) agrees between the two.

Writes OUT/report.json and prints a summary. Exit status 1 when a hard
check fails (PEFT refuses the export, the GGUF adapter does not load, the
adapter's effect disagrees beyond tolerance, or the CLI's tokens differ from
the example's).
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

PROMPTS = [
    ("en", "NM-450 fault code E-17 means"),
    ("en", "Before any work inside the guards of the NM-450 you must"),
    ("ar", "كود العطل E-22 في ماكينة الحقن NM-450 معناه"),
    ("ar", "قبل أي شغل جوه الحماية لازم"),
]

# The adapter's effect on the logits, ours against PEFT's, relative to the
# effect's own size. The base logits already differ by activation rounding
# (~1% of their range); the effect passes through the same rounded
# activations, so a few percent is expected and a wrong adapter (transposed,
# misnamed, mis-scaled) is off by order one.
EFFECT_REL_TOL = 0.10


def run(cmd, env=None, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def ours(example, model, prompt, n, out, adapter=None, follow=None):
    cmd = [example, model, prompt, str(n), out]
    if adapter:
        cmd += ["--adapter", adapter]
    if follow is not None:
        cmd += ["--follow", ",".join(map(str, follow))]
    line = run(cmd).stdout.strip().splitlines()[-1]
    return json.loads(line), load_file(out)["logits"].astype(np.float64)


def cli_tokens(warsha, model, prompt, n, adapter=None):
    cmd = [warsha, "model", "generate", model, "--prompt", prompt, "--raw", "--greedy"]
    cmd += ["--max-tokens", str(n), "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(run(cmd).stdout.strip().splitlines()[-1])["tokens"]


@torch.no_grad()
def ref_logits(model, prompt_ids, tokens, rows):
    """Logits at the positions our rows stand for: the prompt's last and each generated token's."""
    ids = torch.tensor([prompt_ids + tokens], dtype=torch.long)
    full = model(input_ids=ids).logits[0].double().numpy()
    p = len(prompt_ids)
    return full[p - 1 : p - 1 + rows]


@torch.no_grad()
def ref_greedy(model, prompt_ids, n, stops):
    ids = list(prompt_ids)
    out = []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        t = int(torch.argmax(logits))
        if t in stops:
            break
        out.append(t)
        ids.append(t)
    return out


def lead(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(got, want, vocab):
    got, want = got[:, :vocab], want[:, :vocab]
    d = np.abs(got - want)
    scale = np.abs(want).max()
    rel_l2 = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    return {
        "positions": int(got.shape[0]),
        "max_abs": float(d.max()),
        "max_abs_over_max_logit": float(d.max() / scale),
        "max_row_rel_l2": float(rel_l2.max()),
        "argmax_agree": int((got.argmax(1) == want.argmax(1)).sum()),
    }


def margin_at(logits, i):
    top = np.sort(logits[i])[-2:]
    return float(top[1] - top[0])


def llama_cpp(bindir, model, prompt, n, lora=None):
    env = dict(os.environ, LD_LIBRARY_PATH=bindir)
    cmd = [os.path.join(bindir, "llama-completion"), "-m", model, "-p", prompt, "-n", str(n)]
    # One thread: on a loaded machine ggml's spinning worker threads cost more than they give.
    cmd += ["--temp", "0", "--top-k", "1", "-no-cnv", "--no-display-prompt", "-t", "1", "-s", "1", "-v"]
    if lora:
        cmd += ["--lora", lora]
    p = run(cmd, env=env)
    # Info lines only: the debug level lists every adapted tensor.
    lines = [ln for ln in p.stderr.splitlines() if " I " in ln and re.search(r"lora|adapter", ln, re.I)]
    return p.stdout, lines


def llama_logits(tool, bindir, model, prompt_ids, follow, out, lora=None):
    env = dict(os.environ, LD_LIBRARY_PATH=bindir)
    cmd = [tool, model, ",".join(map(str, prompt_ids)), ",".join(map(str, follow)) or "-", out]
    if lora:
        cmd.append(lora)
    p = run(cmd, env=env)
    rows = np.fromfile(out, dtype=np.float32).astype(np.float64)
    return rows.reshape(len(follow) + 1, -1), [ln for ln in p.stderr.splitlines() if ln.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the GGUF base the adapter was trained on")
    ap.add_argument("--peft", required=True, help="directory of `adapters export --format peft`")
    ap.add_argument("--gguf-lora", required=True, help="adapter_model.gguf of `--format gguf`")
    ap.add_argument("--warsha", required=True)
    ap.add_argument("--example", required=True, help="the built generation_logits example")
    ap.add_argument("--llama-bin", help="directory with llama-completion and its libraries")
    ap.add_argument("--llama-logits", help="the built scripts/llama_logits.c (needs --llama-bin)")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(2)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    base_logits = {}
    report = {"model": a.model, "peft": a.peft, "gguf_lora": a.gguf_lora, "prompts": []}
    failures = []

    # Ours first (the base pass of transformers needs no adapter), then PEFT wraps the same module.
    runs = []
    for i, (lang, prompt) in enumerate(PROMPTS):
        o = lambda tag: os.path.join(a.out, f"ours_{i}_{tag}.safetensors")  # noqa: E731
        b_meta, b_log = ours(a.example, a.model, prompt, a.tokens, o("base"))
        l_meta, l_log = ours(a.example, a.model, prompt, a.tokens, o("lora"), adapter=a.peft)
        f_meta, f_log = ours(
            a.example, a.model, prompt, a.tokens, o("lora_on_base"), adapter=a.peft, follow=b_meta["tokens"]
        )
        cli = cli_tokens(a.warsha, a.model, prompt, a.tokens, adapter=a.peft)
        if cli != l_meta["tokens"]:
            failures.append(f"prompt {i}: CLI tokens {cli} differ from the example's {l_meta['tokens']}")
        pids = b_meta["prompt_ids"]
        hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        base_logits[i] = ref_logits(hf, pids, b_meta["tokens"], b_log.shape[0])
        hf_base_on_lora = ref_logits(hf, pids, l_meta["tokens"], l_log.shape[0])
        runs.append((lang, prompt, pids, hf_ids, b_meta, b_log, l_meta, l_log, f_log, hf_base_on_lora, cli))

    stops = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    hf_greedy_base = [ref_greedy(hf, r[2], a.tokens, stops) for r in runs]
    model = PeftModel.from_pretrained(hf, a.peft).eval()
    vocab = len(tok)

    for i, (lang, prompt, pids, hf_ids, b_meta, b_log, l_meta, l_log, f_log, hf_b_l, cli) in enumerate(runs):
        peft_on_lora = ref_logits(model, pids, l_meta["tokens"], l_log.shape[0])
        peft_on_base = ref_logits(model, pids, b_meta["tokens"], f_log.shape[0])
        peft_greedy = ref_greedy(model, pids, a.tokens, stops)
        effect_ours = f_log - b_log[: f_log.shape[0]]
        effect_peft = peft_on_base - base_logits[i][: f_log.shape[0]]
        eff = compare(effect_ours, effect_peft, vocab)
        eff["effect_max_abs"] = float(np.abs(effect_peft[:, :vocab]).max())
        eff["rel_to_effect"] = eff["max_abs"] / max(eff["effect_max_abs"], 1e-12)
        if eff["rel_to_effect"] > EFFECT_REL_TOL:
            failures.append(f"prompt {i}: adapter effect differs by {eff['rel_to_effect']:.3f} of its size")
        g_base = lead(b_meta["tokens"], hf_greedy_base[i])
        g_lora = lead(l_meta["tokens"], peft_greedy)
        entry = {
            "lang": lang,
            "prompt": prompt,
            "prompt_ids": pids,
            "hf_tokenizer_agrees": hf_ids == pids,
            "base": {
                "ours_text": b_meta["text"],
                "transformers_text": tok.decode(hf_greedy_base[i]),
                "greedy_agree": g_base,
                "of": min(len(b_meta["tokens"]), len(hf_greedy_base[i])),
                "logits": compare(b_log, base_logits[i], vocab),
            },
            "adapter": {
                "ours_text": l_meta["text"],
                "peft_text": tok.decode(peft_greedy),
                "cli_tokens_match": cli == l_meta["tokens"],
                "greedy_agree": g_lora,
                "of": min(len(l_meta["tokens"]), len(peft_greedy)),
                "logits": compare(l_log, peft_on_lora, vocab),
                "changed_from_base_tokens": lead(l_meta["tokens"], b_meta["tokens"]),
            },
            "adapter_effect": eff,
        }
        for side, got, want, g in (("base", b_log, base_logits[i], g_base), ("adapter", l_log, peft_on_lora, g_lora)):
            if g < entry[side]["of"] and g < got.shape[0]:
                entry[side]["margin_at_divergence"] = {
                    "ours": margin_at(got, g),
                    "reference": margin_at(want, g),
                }
        report["prompts"].append(entry)

    if a.llama_bin:
        lc = []
        for lang, prompt in PROMPTS:
            plain, _ = llama_cpp(a.llama_bin, a.model, prompt, a.tokens)
            with_lora, log = llama_cpp(a.llama_bin, a.model, prompt, a.tokens, lora=a.gguf_lora)
            lc.append({"prompt": prompt, "base": plain, "lora": with_lora, "changed": plain != with_lora})
            report["llama_cpp_lora_log"] = log
        report["llama_cpp"] = lc
        if not any(re.search(r"loaded \d+ tensors from lora file", ln) for ln in report["llama_cpp_lora_log"]):
            failures.append("llama.cpp printed no adapter load line")
        for e, l in zip(report["prompts"], lc):
            e["llama_cpp"] = l
            ours_l, ours_b = e["adapter"]["ours_text"], e["base"]["ours_text"]
            l["lora_equals_ours"] = l["lora"] == ours_l
            l["base_equals_ours"] = l["base"] == ours_b
            l["lora_common_prefix_chars"] = len(os.path.commonprefix([l["lora"], ours_l]))
            l["base_common_prefix_chars"] = len(os.path.commonprefix([l["base"], ours_b]))

    if a.llama_logits and a.llama_bin:
        for i, (e, r) in enumerate(zip(report["prompts"], runs)):
            pids, b_meta, b_log, l_meta, l_log, f_log = r[2], r[4], r[5], r[6], r[7], r[8]
            o = lambda tag: os.path.join(a.out, f"llama_{i}_{tag}.f32")  # noqa: E731
            n_b, n_l = b_log.shape[0], l_log.shape[0]
            lb, _ = llama_logits(a.llama_logits, a.llama_bin, a.model, pids, b_meta["tokens"][: n_b - 1], o("base"))
            ll, log = llama_logits(
                a.llama_logits, a.llama_bin, a.model, pids, l_meta["tokens"][: n_l - 1], o("lora"), a.gguf_lora
            )
            n_f = f_log.shape[0]
            lf, _ = llama_logits(
                a.llama_logits, a.llama_bin, a.model, pids, b_meta["tokens"][: n_f - 1], o("lora_on_base"), a.gguf_lora
            )
            effect_ours = f_log - b_log[:n_f]
            effect_lcp = lf - lb[:n_f]
            eff = compare(effect_ours, effect_lcp, vocab)
            eff["effect_max_abs"] = float(np.abs(effect_lcp[:, :vocab]).max())
            eff["rel_to_effect"] = eff["max_abs"] / max(eff["effect_max_abs"], 1e-12)
            e["llama_cpp_logits"] = {
                "base": compare(b_log, lb, vocab),
                "adapter": compare(l_log, ll, vocab),
                "adapter_effect": eff,
            }
            report["llama_cpp_logits_log"] = log
            if eff["rel_to_effect"] > EFFECT_REL_TOL:
                failures.append(
                    f"prompt {i}: llama.cpp's adapter effect differs by {eff['rel_to_effect']:.3f} of its size"
                )

    report["failures"] = failures
    with open(os.path.join(a.out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, ensure_ascii=False, indent=1)
    summarize(report)
    sys.exit(1 if failures else 0)


def summarize(r):
    for e in r["prompts"]:
        print(f"\n[{e['lang']}] {e['prompt']!r}  (tokenizers agree: {e['hf_tokenizer_agrees']})")
        for side, ref in (("base", "transformers_text"), ("adapter", "peft_text")):
            s = e[side]
            lg = s["logits"]
            print(
                f"  {side:8} greedy {s['greedy_agree']}/{s['of']}  max|dlogit| {lg['max_abs']:.4f}"
                f" ({lg['max_abs_over_max_logit']:.2e} of max|logit|, row rel L2 <= {lg['max_row_rel_l2']:.2e})"
                f"  argmax {lg['argmax_agree']}/{lg['positions']}"
            )
            print(f"           ours: {s['ours_text']!r}\n           ref:  {s[ref]!r}")
        f = e["adapter_effect"]
        print(
            f"  effect   max|effect| {f['effect_max_abs']:.3f}, ours vs PEFT max|d| {f['max_abs']:.4f}"
            f" = {f['rel_to_effect']:.3f} of it"
        )
        if "llama_cpp_logits" in e:
            c = e["llama_cpp_logits"]
            for side in ("base", "adapter"):
                lg = c[side]
                print(
                    f"  llama.cpp {side:8} max|dlogit| {lg['max_abs']:.4f} ({lg['max_abs_over_max_logit']:.2e}"
                    f" of max|logit|)  argmax {lg['argmax_agree']}/{lg['positions']}"
                )
            f = c["adapter_effect"]
            print(
                f"  llama.cpp effect max|effect| {f['effect_max_abs']:.3f}, ours vs llama.cpp max|d|"
                f" {f['max_abs']:.4f} = {f['rel_to_effect']:.3f} of it"
            )
        if "llama_cpp" in e:
            l = e["llama_cpp"]
            print(f"  llama.cpp base: {l['base']!r}\n  llama.cpp lora: {l['lora']!r}")
    if "llama_cpp_lora_log" in r:
        print("\nllama.cpp adapter log:\n  " + "\n  ".join(r["llama_cpp_lora_log"]))
    print("\nfailures:", r["failures"] or "none")


if __name__ == "__main__":
    main()
