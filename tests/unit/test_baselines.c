/* The baseline quantizers of the quality benchmark: stored sizes by hand,
 * exactness where the formats are exact, and error ordering on real KV. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../bench/quality/baselines.h"
#include "llama_model.h"
#include "../test_util.h"

static kvtc_layout shape(uint32_t layers, uint32_t kv_heads, uint32_t head_dim)
{
    kvtc_layout l;
    memset(&l, 0, sizeof l);
    l.layers = layers;
    l.kv_heads = kv_heads;
    l.head_dim = head_dim;
    l.dtype = KVTC_DTYPE_FP32;
    l.chunk_tokens = 64;
    return l;
}

static size_t stored(int method, const kvtc_layout *l, uint32_t T)
{
    size_t n = (size_t)l->layers * 2 * T * l->kv_heads * l->head_dim;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = sinf((float)i * 0.37f) * 3.0f;
    size_t b = 0;
    cr_assert_eq(kvtc_bl_roundtrip(method, l, x, T, y, &b), 0);
    free(x);
    free(y);
    return b;
}

Test(baselines, names)
{
    cr_assert_str_eq(kvtc_bl_name(KVTC_BL_FP8), "fp8-e4m3");
    cr_assert_str_eq(kvtc_bl_name(KVTC_BL_INT4), "int4-g32");
    cr_assert_str_eq(kvtc_bl_name(KVTC_BL_KIVI2), "kivi2-g32");
    cr_assert_str_eq(kvtc_bl_name(KVTC_BL_ZSTD), "zstd-bf16");
    cr_assert_null(kvtc_bl_name(0));
}

Test(baselines, sizes_by_hand)
{
    /* 2 layers, 2 heads of 8 (16 channels), 5 tokens */
    kvtc_layout a = shape(2, 2, 8);
    /* 40 (token, head) vectors of 8 e4m3 bytes + an fp16 scale */
    cr_assert_eq(stored(KVTC_BL_FP8, &a, 5), 40 * (8 + 2));
    /* 20 token rows, one group of 16 channels: 8 bytes + scale + zero */
    cr_assert_eq(stored(KVTC_BL_INT4, &a, 5), 20 * (8 + 4));
    /* keys: 16 channels x one group of 5 tokens (10 bits -> 2 bytes, +4);
     * values: 5 tokens x one group of 16 channels (4 bytes, +4); 2 layers */
    cr_assert_eq(stored(KVTC_BL_KIVI2, &a, 5), 2 * (16 * (2 + 4) + 5 * (4 + 4)));

    /* 1 layer, 6 heads of 8 (48 channels: groups of 32 + 16), 40 tokens */
    kvtc_layout b = shape(1, 6, 8);
    cr_assert_eq(stored(KVTC_BL_FP8, &b, 40), 80 * 6 * 10);
    cr_assert_eq(stored(KVTC_BL_INT4, &b, 40), 80 * ((16 + 4) + (8 + 4)));
    /* keys: 48 channels x (32 tokens: 8+4, 8 tokens: 2+4);
     * values: 40 tokens x (32 channels: 8+4, 16 channels: 4+4) */
    cr_assert_eq(stored(KVTC_BL_KIVI2, &b, 40), 48 * (12 + 6) + 40 * (12 + 8));
}

Test(baselines, exact_on_representable_grids)
{
    kvtc_layout l = shape(1, 1, 32);
    float x[2 * 32], y[2 * 32];
    size_t b;
    /* int4: 16 levels 1.0, 1.5, ..., 8.5: fp16 holds zero and scale exactly */
    for (int i = 0; i < 64; i++)
        x[i] = 1.0f + 0.5f * (float)(i % 16);
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_INT4, &l, x, 1, y, &b), 0);
    cr_assert_arr_eq(x, y, sizeof x);
    /* kivi2, values per token: 4 levels */
    for (int i = 0; i < 64; i++)
        x[i] = -2.0f + 0.25f * (float)(i % 4);
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_KIVI2, &l, x, 1, y, &b), 0);
    cr_assert_arr_eq(x + 32, y + 32, 32 * sizeof(float));
    /* fp8: amax 448 gives scale 1; e4m3 values stay, 17 ties to 16 (even),
     * 19 rounds to 20, 0.01 becomes the nearest subnormal multiple of 2^-9 */
    memset(x, 0, sizeof x);
    x[0] = 448.0f; x[1] = -1.5f; x[2] = 17.0f; x[3] = 19.0f; x[4] = 0.01f;
    x[5] = -0.1875f;
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_FP8, &l, x, 1, y, &b), 0);
    cr_assert_eq(y[0], 448.0f);
    cr_assert_eq(y[1], -1.5f);
    cr_assert_eq(y[2], 16.0f);
    cr_assert_eq(y[3], 20.0f);
    cr_assert_eq(y[4], 5.0f / 512.0f);
    cr_assert_eq(y[5], -0.1875f);
    cr_assert_eq(y[40], 0.0f);
}

Test(baselines, rejects_bad_arguments)
{
    kvtc_layout l = shape(1, 1, 8);
    float x[16] = {0}, y[16];
    size_t b;
    cr_assert_eq(kvtc_bl_roundtrip(99, &l, x, 1, y, &b), KVTC_EINVAL);
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_FP8, &l, x, 0, y, &b), KVTC_EINVAL);
    l.layers = 0;
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_FP8, &l, x, 1, y, &b), KVTC_EINVAL);
    l = shape(1, 1, 8);
    cr_assert_eq(kvtc_bl_roundtrip(KVTC_BL_FP8, &l, NULL, 1, y, &b), KVTC_EINVAL);
}

static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&x, &u, 4);
    return x;
}

static double mse(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s / (double)n;
}

Test(baselines, real_kv_error_order_and_zstd_exact)
{
    const char *path = kvtc_test_shared_path("models/stories260K.bin");
    if (!path) {
        cr_skip_test("stories260K.bin not found under KVTC_SHARED: skipping real-KV baselines");
        return;
    }
    kvtc_llama *m;
    kvtc_llama_state *s;
    cr_assert_eq(kvtc_llama_load(path, &m), 0);
    cr_assert_eq(kvtc_llama_state_create(m, &s), 0);
    enum { T = 128 };
    int32_t tok[T + 5];
    cr_assert_eq(kvtc_llama_sample(s, 5, T + 5, tok), 0);
    size_t n = kvtc_llama_kv_floats(m, T);
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    cr_assert_eq(kvtc_llama_export_kv(s, 4, T, x), 0); /* past the sinks */
    kvtc_layout l;
    kvtc_llama_layout(m, T, &l);

    double err[5];
    size_t bytes[5];
    for (int meth = KVTC_BL_FP8; meth <= KVTC_BL_ZSTD; meth++) {
        cr_assert_eq(kvtc_bl_roundtrip(meth, &l, x, T, y, &bytes[meth]), 0);
        err[meth] = mse(x, y, n);
        if (meth == KVTC_BL_ZSTD)
            for (size_t i = 0; i < n; i++)
                cr_assert_eq(y[i], bf16_round(x[i]), "zstd is lossless vs bf16 at %zu", i);
    }
    cr_assert(err[KVTC_BL_FP8] < err[KVTC_BL_INT4], "fp8 %g int4 %g",
              err[KVTC_BL_FP8], err[KVTC_BL_INT4]);
    cr_assert(err[KVTC_BL_INT4] < err[KVTC_BL_KIVI2], "int4 %g kivi2 %g",
              err[KVTC_BL_INT4], err[KVTC_BL_KIVI2]);
    cr_assert(err[KVTC_BL_ZSTD] < err[KVTC_BL_FP8]);
    /* and they compress in the opposite order (vs 2-byte bf16) */
    size_t bf16 = n * 2;
    cr_assert(bytes[KVTC_BL_ZSTD] < bf16);
    cr_assert(bytes[KVTC_BL_ZSTD] > bytes[KVTC_BL_FP8]);
    cr_assert(bytes[KVTC_BL_FP8] > bytes[KVTC_BL_INT4]);
    cr_assert(bytes[KVTC_BL_INT4] > bytes[KVTC_BL_KIVI2]);
    free(x);
    free(y);
    kvtc_llama_state_free(s);
    kvtc_llama_free(m);
}
