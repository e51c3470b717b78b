/* bench/quality/projx.c, the projection-format experiment of the quality
 * harnesses: its fp32 path must be the codec itself (bit-identical output,
 * the same container size), so what its bf16/e4m3 paths measure is the
 * projection's arithmetic and nothing else. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc_codec.h"
#include "../../bench/quality/projx.h"

#define LAYERS 4
#define HEADS 2
#define HDIM 16
#define CHUNK 64
#define RANK 8

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double gauss(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    double u1 = ((rng >> 11) + 1.0) / 9007199254740993.0;
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    double u2 = (rng >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

static const kvtc_layout LAYOUT = {.layers = LAYERS, .kv_heads = HEADS, .head_dim = HDIM,
                                   .dtype = KVTC_DTYPE_BF16, .chunk_tokens = CHUNK,
                                   .rope_style = KVTC_ROPE_HALF_SPLIT, .rope_theta = 10000.0f};
static float mix[RANK][2 * LAYERS * HEADS * HDIM];

/* A bf16 chunk of n tokens: low-rank rows plus noise, layers of different
 * magnitude (so per-tensor and per-row scales differ), a mean offset. */
static void *make_chunk(uint32_t n)
{
    size_t tw = (size_t)HEADS * HDIM, elems = (size_t)n * 2 * LAYERS * tw;
    float *f = malloc(elems * sizeof(float));
    void *raw = malloc(elems * 2);
    cr_assert(f && raw);
    for (uint32_t t = 0; t < n; t++) {
        double z[RANK];
        for (int r = 0; r < RANK; r++)
            z[r] = gauss() * (RANK - r);
        for (uint32_t sl = 0; sl < 2 * LAYERS; sl++)
            for (size_t j = 0; j < tw; j++) {
                double v = 0.3 + 0.05 * gauss();
                for (int r = 0; r < RANK; r++)
                    v += z[r] * mix[r][sl * tw + j];
                f[((size_t)sl * n + t) * tw + j] = (float)(v * (1 + sl));
            }
    }
    cr_assert_eq(kvtc_from_float(KVTC_DTYPE_BF16, f, raw, elems), 0);
    free(f);
    return raw;
}

static kvtc_profile *calibrated(void)
{
    for (int r = 0; r < RANK; r++)
        for (size_t j = 0; j < sizeof mix[0] / sizeof mix[0][0]; j++)
            mix[r][j] = (float)gauss();
    float w[2 * LAYERS];
    for (int i = 0; i < 2 * LAYERS; i++)
        w[i] = 0.5f + 0.25f * (float)i; /* weights fold into the GPU-style bases */
    kvtc_calib_params prm = {.slab_weights = w};
    kvtc_calibrator *cal = NULL;
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_calibrator_create(&LAYOUT, &prm, &cal), 0);
    for (uint32_t c = 0; c < 24; c++) {
        void *raw = make_chunk(CHUNK);
        cr_assert_eq(kvtc_calibrator_add(cal, raw, CHUNK, c * CHUNK), 0);
        free(raw);
    }
    const float targets[] = {4, 8};
    cr_assert_eq(kvtc_calibrator_finish(cal, targets, 2, &p), 0);
    kvtc_calibrator_free(cal);
    return p;
}

static double rel_dev(const void *a, const void *b, size_t elems)
{
    float *x = malloc(elems * sizeof(float)), *y = malloc(elems * sizeof(float));
    cr_assert(x && y);
    kvtc_to_float(KVTC_DTYPE_BF16, a, x, elems);
    kvtc_to_float(KVTC_DTYPE_BF16, b, y, elems);
    double d = 0, s = 0;
    for (size_t i = 0; i < elems; i++) {
        d += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        s += (double)x[i] * x[i];
    }
    free(x);
    free(y);
    return d / s;
}

Test(quality_projx, fp32_is_the_codec)
{
    kvtc_profile *p = calibrated();
    size_t bytes = kvtc_chunk_bytes(&LAYOUT, CHUNK);
    for (uint32_t plan = 0; plan < 2; plan++) {
        kvtc_encoder *enc = NULL;
        kvtc_decoder *dec = NULL;
        kvtc_px *x = NULL;
        cr_assert_eq(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0);
        cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
        cr_assert_eq(kvtc_px_create(p, plan, KVTC_PX_FP32, KVTC_PX_FP32, &x), 0);
        size_t cap = kvtc_encode_bound(enc, CHUNK);
        void *box = malloc(cap), *want = malloc(bytes), *got = malloc(bytes);
        /* first_pos 0 keeps sinks; a short chunk; a chunk of sinks only */
        const uint32_t firsts[] = {0, 64, 2}, ns[] = {CHUNK, 37, 2};
        for (int i = 0; i < 3; i++) {
            void *raw = make_chunk(ns[i]);
            size_t len = 0, stored = 0, nb = kvtc_chunk_bytes(&LAYOUT, ns[i]);
            kvtc_chunk ch = {.data = raw, .n_tokens = ns[i], .first_pos = firsts[i]};
            cr_assert_eq(kvtc_encode(enc, &ch, box, cap, &len), 0);
            cr_assert_eq(kvtc_decode(dec, box, len, want, bytes, NULL), 0);
            cr_assert_eq(kvtc_px_roundtrip(x, raw, ns[i], firsts[i], got, &stored), 0);
            cr_expect_eq(memcmp(want, got, nb), 0, "plan %u chunk %d differs", plan, i);
            cr_expect_eq(stored, len, "plan %u chunk %d: %zu bytes vs container %zu", plan, i,
                         stored, len);
            free(raw);
        }
        free(box);
        free(want);
        free(got);
        kvtc_px_free(x);
        kvtc_encoder_free(enc);
        kvtc_decoder_free(dec);
    }
    kvtc_profile_free(p);
}

Test(quality_projx, formats_stay_close)
{
    kvtc_profile *p = calibrated();
    size_t bytes = kvtc_chunk_bytes(&LAYOUT, CHUNK), elems = bytes / 2;
    void *raw = make_chunk(CHUNK), *ref = malloc(bytes), *got = malloc(bytes);
    kvtc_px *x = NULL;
    size_t ref_stored = 0, stored = 0;
    cr_assert_eq(kvtc_px_create(p, 1, KVTC_PX_FP32, KVTC_PX_FP32, &x), 0);
    cr_assert_eq(kvtc_px_roundtrip(x, raw, CHUNK, 64, ref, &ref_stored), 0);
    kvtc_px_free(x);
    double err32 = rel_dev(raw, ref, elems);
    for (uint32_t e = 0; e < KVTC_PX_N_FMTS; e++)
        for (uint32_t d = 0; d < KVTC_PX_N_FMTS; d++) {
            cr_assert_eq(kvtc_px_create(p, 1, e, d, &x), 0);
            cr_assert_eq(kvtc_px_roundtrip(x, raw, CHUNK, 64, got, &stored), 0);
            kvtc_px_free(x);
            double err = rel_dev(raw, got, elems), dev = rel_dev(ref, got, elems);
            /* e4m3 carries 3 mantissa bits: a few 1e-3 of the energy, and
             * never more than doubling the codec's own error */
            double lim = (e >= KVTC_PX_E4M3_TENSOR || d >= KVTC_PX_E4M3_TENSOR) ? 2e-2 : 2e-3;
            cr_expect(dev < lim, "%s/%s: dev %.3g", kvtc_px_fmt_name(e), kvtc_px_fmt_name(d),
                      dev);
            cr_expect(err < 2 * err32 + 1e-4, "%s/%s: err %.3g vs fp32 %.3g",
                      kvtc_px_fmt_name(e), kvtc_px_fmt_name(d), err, err32);
            cr_expect(stored > ref_stored * 9 / 10 && stored < ref_stored * 11 / 10);
            if (e == KVTC_PX_FP32 && d == KVTC_PX_FP32)
                cr_expect_eq(dev, 0.0);
        }
    free(raw);
    free(ref);
    free(got);
    kvtc_profile_free(p);
}

Test(quality_projx, bad_arguments)
{
    kvtc_profile *p = calibrated();
    kvtc_px *x = NULL;
    uint32_t w = 0, ku[2];
    cr_expect_eq(kvtc_px_create(p, 2, KVTC_PX_FP32, KVTC_PX_FP32, &x), KVTC_EINVAL);
    cr_expect_eq(kvtc_px_create(p, 0, KVTC_PX_N_FMTS, KVTC_PX_FP32, &x), KVTC_EINVAL);
    cr_expect_eq(kvtc_px_create(p, 0, KVTC_PX_FP32, 99, &x), KVTC_EINVAL);
    cr_expect_eq(kvtc_px_create(NULL, 0, KVTC_PX_FP32, KVTC_PX_FP32, &x), KVTC_EINVAL);
    cr_expect_null(kvtc_px_fmt_name(KVTC_PX_N_FMTS));
    cr_assert_eq(kvtc_px_gemm_dims(p, 0, &w, ku), 0);
    cr_expect_eq(w, kvtc_row_width(&LAYOUT));
    cr_expect(ku[0] >= 1 && ku[0] <= w && ku[1] >= 1 && ku[1] <= w);
    cr_expect_eq(kvtc_px_gemm_dims(p, 2, &w, ku), KVTC_EINVAL);
    cr_assert_eq(kvtc_px_create(p, 0, KVTC_PX_E4M3_ROWCOL, KVTC_PX_BF16, &x), 0);
    size_t stored;
    char buf[16];
    cr_expect_eq(kvtc_px_roundtrip(x, buf, 0, 0, buf, &stored), KVTC_EINVAL);
    cr_expect_eq(kvtc_px_roundtrip(x, NULL, 1, 0, buf, &stored), KVTC_EINVAL);
    kvtc_px_free(x);
    kvtc_px_free(NULL);
    kvtc_profile_free(p);
}

/* E4M3_STATIC (the GPU's fp8 decode since v15): a fixed activation scale
 * on the whitened coefficients costs no more than the chunk's own amax
 * scale (e4m3's relative precision is the same across its range; 28 sigma
 * of headroom leaves nothing of KV-like data saturated). */
Test(quality_projx, static_decode_scale_as_good_as_amax)
{
    kvtc_profile *p = calibrated();
    size_t bytes = kvtc_chunk_bytes(&LAYOUT, CHUNK), elems = bytes / 2, stored = 0;
    void *raw = make_chunk(CHUNK), *ref = malloc(bytes), *got = malloc(bytes);
    kvtc_px *x = NULL;
    cr_assert_eq(kvtc_px_create(p, 1, KVTC_PX_FP32, KVTC_PX_FP32, &x), 0);
    cr_assert_eq(kvtc_px_roundtrip(x, raw, CHUNK, 64, ref, &stored), 0);
    kvtc_px_free(x);
    double dev[2];
    const uint32_t fmt[2] = {KVTC_PX_E4M3_TENSOR, KVTC_PX_E4M3_STATIC};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(kvtc_px_create(p, 1, KVTC_PX_FP32, fmt[i], &x), 0);
        cr_assert_eq(kvtc_px_roundtrip(x, raw, CHUNK, 64, got, &stored), 0);
        kvtc_px_free(x);
        dev[i] = rel_dev(ref, got, elems);
    }
    cr_expect_str_eq(kvtc_px_fmt_name(KVTC_PX_E4M3_STATIC), "e4m3s");
    cr_expect(dev[1] > 0 && dev[1] < 1.5 * dev[0] + 1e-6, "static %.3g vs amax %.3g", dev[1],
              dev[0]);
    free(raw);
    free(ref);
    free(got);
    kvtc_profile_free(p);
}
