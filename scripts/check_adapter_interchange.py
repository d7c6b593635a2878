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

# The adapter's effect on the logits (with minus without, same tokens), ours
# against the reference's. On the 4-bit base both sides carry activation
# rounding of about 1 logit at worst, in the effect as in the base, so the
# effect is judged as a whole: the least-squares scale that maps ours onto the
# reference (a wrong alpha/r shows here as 2 or 0.5) and the cosine between
# them (a misplaced, transposed or mispermuted matrix decorrelates it).
EFFECT_SCALE_TOL = 0.05
EFFECT_MIN_COSINE = 0.98
# On a dense (dequantized, f32) base nothing is rounded: only summation order differs.
DENSE_LOGIT_TOL = 1e-3


def run(cmd, env=None, check=True):
    # llama.cpp's verbose log prints token pieces, which may split a UTF-8 character.
    p = subprocess.run(cmd, capture_output=True, env=env)
    p.stdout = p.stdout.decode("utf-8", errors="replace")
    p.stderr = p.stderr.decode("utf-8", errors="replace")
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


def effect(ours_with, ours_without, ref_with, ref_without, vocab):
    n = ours_with.shape[0]
    e_o = (ours_with - ours_without[:n])[:, :vocab].ravel()
    e_r = (ref_with - ref_without[:n])[:, :vocab].ravel()
    d = e_o - e_r
    return {
        "positions": n,
        "effect_max_abs": float(np.abs(e_r).max()),
        "effect_rms": float(np.sqrt(np.mean(e_r**2))),
        "diff_max_abs": float(np.abs(d).max()),
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(e_r)),
        "cosine": float(e_o @ e_r / (np.linalg.norm(e_o) * np.linalg.norm(e_r))),
        "fitted_scale": float(e_o @ e_r / (e_o @ e_o)),
    }


def judge(eff, what, dense, failures):
    if dense:
        bad = eff["diff_max_abs"] > DENSE_LOGIT_TOL
    else:
        bad = abs(eff["fitted_scale"] - 1) > EFFECT_SCALE_TOL or eff["cosine"] < EFFECT_MIN_COSINE
    if bad:
        failures.append(
            f"{what}: adapter effect scale {eff['fitted_scale']:.4f}, cosine {eff['cosine']:.4f},"
            f" max |diff| {eff['diff_max_abs']:.2e}"
        )


def dequantize_gguf(src, dst):
    """Write `src` with every tensor as f32: the same weights, nothing left to round."""
    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # The reader gives ggml's dims fastest-first; numpy wants them slowest-first.
        w.add_tensor(t.name, data.reshape(tuple(int(x) for x in reversed(t.shape))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
    ap.add_argument(
        "--dense",
        action="store_true",
        help="MODEL is f32 (see --dequantize-to): demand agreement up to summation order",
    )
    ap.add_argument("--dequantize-to", metavar="F32.gguf", help="only write MODEL dequantized to f32, then exit")
    ap.add_argument("--peft", help="directory of `adapters export --format peft`")
    ap.add_argument("--gguf-lora", help="adapter_model.gguf of `--format gguf`")
    ap.add_argument("--warsha")
    ap.add_argument("--example", help="the built generation_logits example")
    ap.add_argument("--llama-bin", help="directory with llama-completion and its libraries")
    ap.add_argument("--llama-logits", help="the built scripts/llama_logits.c (needs --llama-bin)")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.dequantize_to:
        dequantize_gguf(a.model, a.dequantize_to)
        return
    missing = [k for k in ("peft", "gguf_lora", "warsha", "example", "out") if getattr(a, k) is None]
    if missing:
        ap.error("missing " + ", ".join("--" + k.replace("_", "-") for k in missing))
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(2)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    base_logits = {}
    failures = []
    report = {"model": a.model, "peft": a.peft, "gguf_lora": a.gguf_lora, "prompts": [], "failures": failures}

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
        eff = effect(f_log, b_log, peft_on_base, base_logits[i], vocab)
        judge(eff, f"prompt {i}, PEFT", a.dense, failures)
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
                "leading_tokens_as_base": lead(l_meta["tokens"], b_meta["tokens"]),
            },
            "adapter_effect": eff,
        }
        for side, got, want, g in (("base", b_log, base_logits[i], g_base), ("adapter", l_log, peft_on_lora, g_lora)):
            if g < entry[side]["of"] and g < got.shape[0]:
                entry[side]["margin_at_divergence"] = {
                    "ours": margin_at(got, g),
                    "reference": margin_at(want, g),
                }
        if a.dense:
            for side in ("base", "adapter"):
                if entry[side]["logits"]["max_abs"] > DENSE_LOGIT_TOL:
                    failures.append(f"prompt {i}, {side}: max |dlogit| {entry[side]['logits']['max_abs']:.2e}")
        report["prompts"].append(entry)

    save(report, a.out)
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
            # llama-completion ends its output with a blank line of its own.
            l["lora_equals_ours"] = l["lora"].rstrip() == ours_l.rstrip()
            l["base_equals_ours"] = l["base"].rstrip() == ours_b.rstrip()
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
            eff = effect(f_log, b_log, lf, lb, vocab)
            judge(eff, f"prompt {i}, llama.cpp", a.dense, failures)
            e["llama_cpp_logits"] = {
                "base": compare(b_log, lb, vocab),
                "adapter": compare(l_log, ll, vocab),
                "adapter_effect": eff,
            }
            report["llama_cpp_logits_log"] = log

    save(report, a.out)
    summarize(report)
    sys.exit(1 if failures else 0)


def save(report, out):
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, ensure_ascii=False, indent=1)


def effect_line(f):
    return (
        f"adapter effect: max {f['effect_max_abs']:.3f}, rms {f['effect_rms']:.3f}; ours vs it:"
        f" scale {f['fitted_scale']:.4f}, cosine {f['cosine']:.4f}, rel L2 {f['rel_l2']:.3f},"
        f" max|d| {f['diff_max_abs']:.2e}"
    )


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
        print("  PEFT      " + effect_line(e["adapter_effect"]))
        if "llama_cpp_logits" in e:
            c = e["llama_cpp_logits"]
            for side in ("base", "adapter"):
                lg = c[side]
                print(
                    f"  llama.cpp {side:8} max|dlogit| {lg['max_abs']:.4f} ({lg['max_abs_over_max_logit']:.2e}"
                    f" of max|logit|)  argmax {lg['argmax_agree']}/{lg['positions']}"
                )
            print("  llama.cpp " + effect_line(c["adapter_effect"]))
        if "llama_cpp" in e:
            l = e["llama_cpp"]
            print(f"  llama.cpp base: {l['base']!r}\n  llama.cpp lora: {l['lora']!r}")
    if "llama_cpp_lora_log" in r:
        print("\nllama.cpp adapter log:\n  " + "\n  ".join(r["llama_cpp_lora_log"]))
    print("\nfailures:", r["failures"] or "none")


if __name__ == "__main__":
    main()
