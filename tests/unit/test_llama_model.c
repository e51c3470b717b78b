/* The stories260K runner: real weights, real KV. Skips when the model file
 * (../shared/models/stories260K.bin) is absent. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llama_model.h"
#include "../test_util.h"

static kvtc_llama *load_or_skip(void)
{
    const char *path = kvtc_test_shared_path("models/stories260K.bin");
    if (!path) {
        cr_skip_test("stories260K.bin not found under KVTC_SHARED "
                     "(../shared/models): skipping the runner tests");
        return NULL;
    }
    kvtc_llama *m = NULL;
    int rc = kvtc_llama_load(path, &m);
    cr_assert_eq(rc, 0, "load: %s", kvtc_strerror(rc));
    return m;
}

Test(llama_model, header_matches_readme)
{
    kvtc_llama *m = load_or_skip();
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    cr_assert_eq(c->dim, 64);
    cr_assert_eq(c->hidden_dim, 172);
    cr_assert_eq(c->n_layers, 5);
    cr_assert_eq(c->n_heads, 8);
    cr_assert_eq(c->n_kv_heads, 4);
    cr_assert_eq(c->vocab_size, 512);
    cr_assert_eq(c->seq_len, 512);
    cr_assert_eq(c->head_dim, 8);
    cr_assert(c->shared_classifier);
    kvtc_layout lay;
    kvtc_llama_layout(m, 128, &lay);
    cr_assert_eq(lay.layers, 5);
    cr_assert_eq(lay.kv_heads, 4);
    cr_assert_eq(lay.head_dim, 8);
    cr_assert_eq(lay.dtype, KVTC_DTYPE_FP32);
    cr_assert_eq(lay.rope_style, KVTC_ROPE_INTERLEAVED);
    cr_assert_float_eq(lay.rope_theta, 10000.0f, 1e-3);
    cr_assert_eq(kvtc_llama_kv_floats(m, 3), 5 * 2 * 3 * 32);
    kvtc_llama_free(m);
}

Test(llama_model, rejects_bad_files)
{
    kvtc_llama *m = load_or_skip();
    kvtc_llama_free(m);
    const char *path = kvtc_test_shared_path("models/stories260K.bin");
    size_t len = 0;
    unsigned char *buf = kvtc_test_read_file(path, &len);
    cr_assert_not_null(buf);
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/kvtc-llama-XXXXXX", kvtc_test_tmpdir());
    int fd = mkstemp(tmp);
    cr_assert(fd >= 0);
    close(fd);

    /* truncated by one float */
    FILE *f = fopen(tmp, "wb");
    fwrite(buf, 1, len - 4, f);
    fclose(f);
    m = NULL;
    cr_assert_eq(kvtc_llama_load(tmp, &m), KVTC_ECORRUPT);
    cr_assert_null(m);
    /* absurd n_layers */
    int32_t bad = 1 << 20;
    memcpy(buf + 8, &bad, 4);
    f = fopen(tmp, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    cr_assert_eq(kvtc_llama_load(tmp, &m), KVTC_ECORRUPT);
    /* n_kv_heads not dividing n_heads */
    int32_t five = 5, three = 3;
    memcpy(buf + 8, &five, 4);
    memcpy(buf + 16, &three, 4);
    f = fopen(tmp, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    cr_assert_eq(kvtc_llama_load(tmp, &m), KVTC_ECORRUPT);
    /* too short for a header */
    f = fopen(tmp, "wb");
    fwrite(buf, 1, 10, f);
    fclose(f);
    cr_assert_eq(kvtc_llama_load(tmp, &m), KVTC_ECORRUPT);
    cr_assert_eq(kvtc_llama_load("/nonexistent/model.bin", &m), KVTC_EIO);
    unlink(tmp);
    free(buf);
}

static void run_tokens(kvtc_llama_state *s, const int32_t *tok, uint32_t n,
                       float *last_logits, uint32_t vocab)
{
    const float *lg = NULL;
    for (uint32_t t = 0; t < n; t++)
        cr_assert_eq(kvtc_llama_forward(s, tok[t], t, &lg), 0);
    memcpy(last_logits, lg, vocab * sizeof(float));
}

Test(llama_model, deterministic_and_sane_logits)
{
    kvtc_llama *m = load_or_skip();
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    kvtc_llama_state *a, *b;
    cr_assert_eq(kvtc_llama_state_create(m, &a), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &b), 0);
    int32_t tok[64];
    cr_assert_eq(kvtc_llama_sample(a, 7, 64, tok), 0);
    int32_t tok2[64];
    cr_assert_eq(kvtc_llama_sample(b, 7, 64, tok2), 0);
    cr_assert_arr_eq(tok, tok2, sizeof tok, "same seed, same tokens");
    cr_assert_eq(tok[0], KVTC_LLAMA_BOS);
    int32_t tok3[64];
    cr_assert_eq(kvtc_llama_sample(b, 8, 64, tok3), 0);
    cr_assert(memcmp(tok, tok3, sizeof tok) != 0, "another seed, other tokens");

    float *la = malloc(c->vocab_size * sizeof(float));
    float *lb = malloc(c->vocab_size * sizeof(float));
    run_tokens(a, tok, 64, la, c->vocab_size);
    run_tokens(b, tok, 64, lb, c->vocab_size);
    cr_assert_arr_eq(la, lb, c->vocab_size * sizeof(float));
    for (uint32_t i = 0; i < c->vocab_size; i++)
        cr_assert(isfinite(la[i]));
    cr_assert_eq(kvtc_llama_forward(a, (int32_t)c->vocab_size, 0, &(const float *){0}),
                 KVTC_EINVAL);
    cr_assert_eq(kvtc_llama_forward(a, 1, c->seq_len, &(const float *){0}), KVTC_EINVAL);
    free(la);
    free(lb);
    kvtc_llama_state_free(a);
    kvtc_llama_state_free(b);
    kvtc_llama_free(m);
}

Test(llama_model, export_import_gives_identical_logits)
{
    kvtc_llama *m = load_or_skip();
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    kvtc_llama_state *a, *b;
    cr_assert_eq(kvtc_llama_state_create(m, &a), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &b), 0);
    enum { N = 200 };
    int32_t tok[N + 1];
    cr_assert_eq(kvtc_llama_sample(a, 11, N + 1, tok), 0); /* a holds KV of [0,N) */
    float *kv = malloc(kvtc_llama_kv_floats(m, N) * sizeof(float));
    /* export in two pieces to exercise first != 0 */
    cr_assert_eq(kvtc_llama_export_kv(a, 0, 120, kv), 0);
    float *kv2 = malloc(kvtc_llama_kv_floats(m, N - 120) * sizeof(float));
    cr_assert_eq(kvtc_llama_export_kv(a, 120, N - 120, kv2), 0);
    cr_assert_eq(kvtc_llama_import_kv(b, 0, 120, kv), 0);
    cr_assert_eq(kvtc_llama_import_kv(b, 120, N - 120, kv2), 0);

    const float *la, *lb;
    cr_assert_eq(kvtc_llama_forward(a, tok[N], N, &la), 0);
    cr_assert_eq(kvtc_llama_forward(b, tok[N], N, &lb), 0);
    cr_assert_arr_eq(la, lb, c->vocab_size * sizeof(float), "imported KV, same logits");

    /* and a perturbed prefix changes them: the import is really used */
    kv[7] += 1.0f;
    cr_assert_eq(kvtc_llama_import_kv(b, 0, 120, kv), 0);
    cr_assert_eq(kvtc_llama_forward(b, tok[N], N, &lb), 0);
    cr_assert_eq(kvtc_llama_forward(a, tok[N], N, &la), 0);
    cr_assert(memcmp(la, lb, c->vocab_size * sizeof(float)) != 0);

    cr_assert_eq(kvtc_llama_export_kv(a, c->seq_len - 10, 11, kv), KVTC_EINVAL);
    cr_assert_eq(kvtc_llama_import_kv(b, 0, 0, kv), KVTC_EINVAL);
    free(kv);
    free(kv2);
    kvtc_llama_state_free(a);
    kvtc_llama_state_free(b);
    kvtc_llama_free(m);
}

/* Mean NLL (nats) of tok[1..n) under the model. */
static double mean_nll(kvtc_llama_state *s, const int32_t *tok, uint32_t n, uint32_t vocab)
{
    double *lp = malloc(vocab * sizeof(double)), sum = 0.0;
    for (uint32_t t = 0; t + 1 < n; t++) {
        const float *lg;
        cr_assert_eq(kvtc_llama_forward(s, tok[t], t, &lg), 0);
        kvtc_llama_log_softmax(lg, vocab, lp);
        sum -= lp[tok[t + 1]];
    }
    free(lp);
    return sum / (n - 1);
}

Test(llama_model, sampled_text_is_likely_random_tokens_are_not)
{
    kvtc_llama *m = load_or_skip();
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    kvtc_llama_state *s;
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    enum { N = 256 };
    int32_t tok[N], rnd[N];
    cr_assert_eq(kvtc_llama_sample(s, 3, N, tok), 0);
    srand(3);
    rnd[0] = KVTC_LLAMA_BOS;
    for (int i = 1; i < N; i++)
        rnd[i] = rand() % (int)c->vocab_size;
    double nll_model = mean_nll(s, tok, N, c->vocab_size);
    double nll_rand = mean_nll(s, rnd, N, c->vocab_size);
    /* uniform over 512 tokens is ln 512 = 6.24 nats; a trained model's own
     * samples sit far below, and random ids far above */
    cr_assert(nll_model < 4.0, "model samples: %.3f nats", nll_model);
    cr_assert(nll_rand > log(512.0), "random tokens: %.3f nats", nll_rand);
    cr_assert(nll_rand > nll_model + 3.0, "random %.3f vs model %.3f", nll_rand, nll_model);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}

/* The codec's RoPE inverse, on the runner's cached keys, must give back the
 * keys the runner computed before rotating them: same style (interleaved
 * pairs), same theta, same positions. */
Test(llama_model, codec_rope_inverse_matches_runner)
{
    kvtc_llama *m = load_or_skip();
    const kvtc_llama_config *c = kvtc_llama_get_config(m);
    kvtc_llama_state *s;
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    enum { FIRST = 300, N = 150 };
    int32_t tok[FIRST + N + 1];
    cr_assert_eq(kvtc_llama_sample(s, 21, FIRST + N + 1, tok), 0);
    size_t nf = kvtc_llama_kv_floats(m, N);
    float *rot = malloc(nf * sizeof(float)), *plain = malloc(nf * sizeof(float));
    cr_assert_eq(kvtc_llama_export_kv(s, FIRST, N, rot), 0);
    cr_assert_eq(kvtc_llama_export_kv_norope(s, FIRST, N, plain), 0);
    kvtc_layout lay;
    kvtc_llama_layout(m, N, &lay);

    size_t per_tok = c->n_kv_heads, nvec = (size_t)N * per_tok;
    uint32_t *pos = malloc(nvec * sizeof(uint32_t));
    for (size_t v = 0; v < nvec; v++)
        pos[v] = FIRST + (uint32_t)(v / per_tok);
    double worst = 0, worst_fwd = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        float *k = rot + (size_t)(2 * l) * N * c->kv_dim;
        const float *k0 = plain + (size_t)(2 * l) * N * c->kv_dim;
        const float *v_rot = rot + (size_t)(2 * l + 1) * N * c->kv_dim;
        const float *v_plain = plain + (size_t)(2 * l + 1) * N * c->kv_dim;
        cr_assert_arr_eq(v_rot, v_plain, (size_t)N * c->kv_dim * sizeof(float),
                         "values carry no RoPE");
        float *fwd = malloc((size_t)N * c->kv_dim * sizeof(float));
        memcpy(fwd, k0, (size_t)N * c->kv_dim * sizeof(float));
        kvtc_rope_apply(&lay, fwd, nvec, pos, 0);
        for (size_t j = 0; j < (size_t)N * c->kv_dim; j++)
            worst_fwd = fmax(worst_fwd, fabs((double)fwd[j] - k[j]));
        kvtc_rope_apply(&lay, k, nvec, pos, 1);
        for (size_t j = 0; j < (size_t)N * c->kv_dim; j++)
            worst = fmax(worst, fabs((double)k[j] - k0[j]));
        free(fwd);
    }
    /* keys reach ~10: a few float ulps of rounding, nothing like a wrong angle */
    cr_assert(worst < 1e-4, "inverse RoPE off by %g", worst);
    cr_assert(worst_fwd < 1e-4, "forward RoPE off by %g", worst_fwd);
    /* and the rotation is real: at these positions rotated != plain */
    cr_assert_eq(kvtc_llama_export_kv(s, FIRST, N, rot), 0);
    cr_assert(memcmp(rot, plain, (size_t)N * c->kv_dim * sizeof(float)) != 0);
    free(pos);
    free(rot);
    free(plain);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}
