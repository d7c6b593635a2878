/*
 * llama.cpp's logits along a given token sequence, with or without a LoRA
 * adapter, for scripts/check_adapter_interchange.py.
 *
 *   llama_logits MODEL.gguf PROMPT_IDS FOLLOW_IDS OUT.f32 [LORA.gguf]
 *
 * PROMPT_IDS and FOLLOW_IDS are comma-separated token ids (FOLLOW_IDS may be
 * "-" for none). The prompt is decoded as one batch and the followed tokens
 * one at a time, as a greedy generation would feed them. OUT receives
 * 1 + len(FOLLOW_IDS) rows of n_vocab little-endian f32: the logits after the
 * prompt, then after each followed token. The adapter is applied at scale
 * 1.0, so llama.cpp's own alpha / r from the file's metadata is what scales it.
 * The KV cache is f32 (not llama.cpp's f16 default) so that on an f32 base
 * the logits are compared without an extra rounding step.
 *
 * Build: cc -O2 -o llama_logits llama_logits.c -I LLAMA/include -I LLAMA/ggml/include -L BIN -lllama
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static int parse_ids(const char *s, llama_token *out, int cap) {
    int n = 0;
    if (strcmp(s, "-") == 0) return 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || n == cap) return -1;
        out[n++] = (llama_token)v;
        s = (*end == ',') ? end + 1 : end;
    }
    return n;
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    /* Keep llama.cpp's adapter lines and its warnings and errors; drop the rest. */
    if (level >= GGML_LOG_LEVEL_WARN || strstr(text, "lora") || strstr(text, "adapter"))
        fputs(text, stderr);
}

static bool silent_progress(float progress, void *user) {
    (void)progress;
    (void)user;
    return true;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s MODEL PROMPT_IDS FOLLOW_IDS OUT.f32 [LORA]\n", argv[0]);
        return 2;
    }
    enum { CAP = 4096 };
    static llama_token prompt[CAP], follow[CAP];
    int np = parse_ids(argv[2], prompt, CAP), nf = parse_ids(argv[3], follow, CAP);
    if (np <= 0 || nf < 0) {
        fprintf(stderr, "bad token id list\n");
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.progress_callback = silent_progress;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(np + nf + 8);
    cp.n_batch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = 1;
    /* llama.cpp keeps K and V in f16 by default; f32 leaves only the weights' own rounding. */
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    if (argc == 6) {
        struct llama_adapter_lora *lora = llama_adapter_lora_init(model, argv[5]);
        if (!lora) {
            fprintf(stderr, "adapter %s did not load\n", argv[5]);
            return 1;
        }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &lora, 1, &scale) != 0) return 1;
    }
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE *out = fopen(argv[4], "wb");
    if (!out) return 1;
    if (llama_decode(ctx, llama_batch_get_one(prompt, np)) != 0) return 1;
    fwrite(llama_get_logits_ith(ctx, -1), sizeof(float), (size_t)nv, out);
    for (int i = 0; i < nf; i++) {
        if (llama_decode(ctx, llama_batch_get_one(&follow[i], 1)) != 0) return 1;
        fwrite(llama_get_logits_ith(ctx, -1), sizeof(float), (size_t)nv, out);
    }
    fclose(out);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
