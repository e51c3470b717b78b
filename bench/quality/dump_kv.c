/* kvtc-dump-kv - real KV for tools and demos: sample a sequence from a
 * llama2.c model and write its KV cache as one canonical chunk file
 * ([layer][k|v][token][kv_head][head_dim], keys after RoPE, first token at
 * position 0); or compare two such files (--diff). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama_model.h"

static int usage(void)
{
    fprintf(stderr,
            "usage: kvtc-dump-kv --model PATH [--seed S] [--tokens N] [--dtype bf16|fp32] --out FILE\n"
            "       kvtc-dump-kv --diff A B --dtype bf16|fp32\n"
            "  Prints the layout spec `kvtc codec calibrate --layout` takes.\n");
    return 2;
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    void *buf = NULL;
    long n;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n)) && fread(buf, 1, (size_t)n, f) == (size_t)n)
        *len = (size_t)n;
    else {
        free(buf);
        buf = NULL;
    }
    if (f)
        fclose(f);
    return buf;
}

static int diff(const char *a_path, const char *b_path, uint32_t dtype)
{
    size_t an = 0, bn = 0, es = kvtc_dtype_size(dtype);
    void *a = slurp(a_path, &an), *b = slurp(b_path, &bn);
    if (!a || !b || an != bn || an % es) {
        fprintf(stderr, "kvtc-dump-kv: cannot compare %s and %s (missing or sizes differ)\n",
                a_path, b_path);
        free(a);
        free(b);
        return 1;
    }
    size_t n = an / es;
    float *fa = malloc(n * sizeof(float)), *fb = malloc(n * sizeof(float));
    kvtc_to_float(dtype, a, fa, n);
    kvtc_to_float(dtype, b, fb, n);
    double err = 0, energy = 0;
    for (size_t i = 0; i < n; i++) {
        err += ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i]);
        energy += (double)fa[i] * fa[i];
    }
    printf("%zu values, relative squared error %.3g (SNR %.1f dB)\n", n, err / energy,
           err > 0 ? 10 * __builtin_log10(energy / err) : 999.0);
    free(fa);
    free(fb);
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *da = NULL, *db = NULL;
    uint64_t seed = 1;
    uint32_t tokens = 256, dtype = KVTC_DTYPE_BF16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            i++;
            dtype = !strcmp(argv[i], "fp32") ? KVTC_DTYPE_FP32 : !strcmp(argv[i], "bf16") ? KVTC_DTYPE_BF16 : 0;
        } else if (!strcmp(argv[i], "--diff") && i + 2 < argc) {
            da = argv[++i];
            db = argv[++i];
        } else
            return usage();
    }
    if (!dtype)
        return usage();
    if (da)
        return diff(da, db, dtype);
    if (!model || !out)
        return usage();
    kvtc_llama *m = NULL;
    kvtc_llama_state *s = NULL;
    int rc = kvtc_llama_load(model, &m);
    if (rc) {
        fprintf(stderr, "kvtc-dump-kv: %s: %s\n", model, kvtc_strerror(rc));
        return 1;
    }
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    if (tokens == 0 || tokens > c->seq_len) {
        fprintf(stderr, "kvtc-dump-kv: --tokens must be 1..%u\n", c->seq_len);
        kvtc_llama_free(m);
        return 2;
    }
    size_t n = kvtc_llama_kv_floats(m, tokens);
    int32_t *tok = malloc((tokens + 1) * sizeof(int32_t));
    float *kv = malloc(n * sizeof(float));
    void *buf = malloc(n * kvtc_dtype_size(dtype));
    FILE *f = NULL;
    if (!tok || !kv || !buf || (rc = kvtc_llama_state_create(m, &s)) ||
        (rc = kvtc_llama_sample(s, seed, tokens + 1, tok)) ||
        (rc = kvtc_llama_export_kv(s, 0, tokens, kv)) || (rc = kvtc_from_float(dtype, kv, buf, n))) {
        fprintf(stderr, "kvtc-dump-kv: %s\n", kvtc_strerror(rc ? rc : KVTC_ENOMEM));
        rc = 1;
    } else if (!(f = fopen(out, "wb")) || fwrite(buf, kvtc_dtype_size(dtype), n, f) != n) {
        fprintf(stderr, "kvtc-dump-kv: %s: %s\n", out, strerror(errno ? errno : EIO));
        rc = 1;
    } else {
        printf("layers=%u,kv_heads=%u,head_dim=%u,dtype=%s,chunk=%u,rope=interleaved,theta=10000\n",
               c->n_layers, c->n_kv_heads, c->head_dim, dtype == KVTC_DTYPE_FP32 ? "fp32" : "bf16",
               tokens);
    }
    if (f && fclose(f) != 0 && !rc) {
        fprintf(stderr, "kvtc-dump-kv: %s: write failed\n", out);
        rc = 1;
    }
    free(tok);
    free(kv);
    free(buf);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
    return rc;
}
