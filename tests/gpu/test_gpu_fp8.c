/* fp8 (e4m3) projections of the GPU codec (kvtc_gpu_params.enc_gemm /
 * dec_gemm = KVTC_GPU_PROJ_FP8) against the emulation the choice was made
 * with (bench/quality/projx.h). The decode's activation has a static scale
 * (E4M3_STATIC: whitened coefficients x 16), so its emulation is exact up
 * to the bases' rounding path (fp32 -> 16 bits -> e4m3 on the GPU, fp32 ->
 * e4m3 emulated) and the accumulation order: decode-only within 1.3x, as
 * test_gpu_codec.c's 16-bit bound. The encode's activation scale is the
 * batch's amax (E4M3_TENSOR emulates the chunk's), hence 1.5x where the
 * encode is fp8. Plus 2e-5 of the signal energy (16-bit rounding floor).
 * Also: a chunk decodes to the same error alone as in any batch (static
 * scale: nothing shared with batch-mates); fp8-encoded containers decode
 * on the CPU within the bound of (e4m3 enc, fp32 dec); odd sizes (1, 3,
 * 17, 700 tokens, sinks only: the decode's M % 16 tail rows); every output
 * element written (poison); a non-finite chunk fails alone; width % 16 !=
 * 0 is refused. Every test skips without a GPU. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"
#include "projx.h"
#include "test_util.h"

extern int kvtc__gpu_fp8_info(const kvtc_gpu_codec *g, uint64_t *runs, uint64_t *fallbacks);

#define NCH 8
static const uint32_t toks[NCH] = {64, 64, 17, 1, 3, 1, 700, 256};
static const uint32_t pos[NCH] = {0, 64, 128, 300, 1, 0, 1000, 4096};

struct fb {
    kvtc_chunk c[NCH];
    uint8_t *enc[NCH];
    size_t len[NCH];
    void *rec[NCH];
    int32_t st[NCH];
};

static void fb_free(struct fb *b)
{
    for (uint32_t i = 0; i < NCH; i++) {
        free(b->enc[i]);
        free(b->rec[i]);
        b->enc[i] = NULL;
        b->rec[i] = NULL;
    }
}

static kvtc_gpu_codec *ctx(const kvtc_profile *p, uint32_t plan, int enc8, int dec8)
{
    kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_ENC_GEMM | KVTC_GPU_PARAM_FIELD_DEC_GEMM,
                           .enc_gemm = enc8 ? KVTC_GPU_PROJ_FP8 : 0,
                           .dec_gemm = dec8 ? KVTC_GPU_PROJ_FP8 : 0};
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, plan, &prm, &g), 0);
    return g;
}

/* The emulation's mse of chunk c under (enc_fmt, dec_fmt). */
static double px_mse(const kvtc_profile *p, uint32_t plan, uint32_t ef, uint32_t df,
                     const kvtc_chunk *c)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    kvtc_px *x = NULL;
    size_t rb = kvtc_chunk_bytes(l, c->n_tokens), stored = 0;
    void *out = malloc(rb);
    cr_assert_eq(kvtc_px_create(p, plan, ef, df, &x), 0);
    cr_assert_eq(kvtc_px_roundtrip(x, c->data, c->n_tokens, c->first_pos, out, &stored), 0);
    double e = gt_mse(l, c->data, out, c->n_tokens);
    kvtc_px_free(x);
    free(out);
    return e;
}

static void check_bound(const kvtc_profile *p, uint32_t plan, uint32_t ef, uint32_t df,
                        const kvtc_chunk *c, const void *got, double fp16_err, const char *what,
                        uint32_t i)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    double ref = px_mse(p, plan, ef, df, c), err = gt_mse(l, c->data, got, c->n_tokens);
    double energy = gt_energy(l, c->data, c->n_tokens);
    double k = ef == KVTC_PX_E4M3_TENSOR ? 1.5 : 1.3; /* see the top */
    cr_log_info("%s plan %u chunk %u (%u tok): mse %.4g, emulated %.4g, fp16 path %.4g (x%.3f)",
                what, plan, i, c->n_tokens, err, ref, fp16_err, fp16_err > 0 ? err / fp16_err : 0);
    cr_assert(err <= k * ref + 2e-5 * energy + 1e-12,
              "%s plan %u chunk %u: mse %.4g vs emulated e4m3 %.4g (energy %.3g)", what, plan, i,
              err, ref, energy);
    size_t elems = kvtc_chunk_bytes(l, c->n_tokens) / kvtc_dtype_size(l->dtype);
    cr_assert(gt_count_poison(l, got, c->n_tokens) * 1000 <= elems, "%s chunk %u: unwritten", what,
              i);
}

/* GPU encode with g into b (statuses must be 0). */
static void encode_all(kvtc_gpu_codec *g, const kvtc_layout *l, struct fb *b)
{
    gt_gpu_encode(g, l, b->c, NCH, b->enc, b->len, b->st);
    for (uint32_t i = 0; i < NCH; i++)
        cr_assert_eq(b->st[i], 0, "encode status %d chunk %u", b->st[i], i);
}

Test(gpu_fp8, paths_within_emulated_bound)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 64, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 2048, 11);
    for (uint32_t plan = 0; plan < kvtc_profile_plan_count(p); plan++) {
        struct fb base, b8;
        memset(&base, 0, sizeof base);
        memset(&b8, 0, sizeof b8);
        for (uint32_t i = 0; i < NCH; i++)
            base.c[i] = b8.c[i] = (kvtc_chunk){gt_chunk(&l, toks[i], pos[i], 50 + i), toks[i],
                                               pos[i], 0};
        /* fp16 reference path: GPU -> GPU */
        kvtc_gpu_codec *g16 = ctx(p, plan, 0, 0), *ge = ctx(p, plan, 1, 0), *gd = ctx(p, plan, 0, 1),
                       *gb = ctx(p, plan, 1, 1);
        double e16[NCH];
        encode_all(g16, &l, &base);
        gt_gpu_decode(g16, &l, base.c, NCH, base.enc, base.len, base.rec, base.st);
        for (uint32_t i = 0; i < NCH; i++) {
            cr_assert_eq(base.st[i], 0);
            e16[i] = gt_mse(&l, base.c[i].data, base.rec[i], toks[i]);
        }
        /* fp8 encode -> fp16 GPU decode, and -> CPU decode (fp32) */
        encode_all(ge, &l, &b8);
        gt_gpu_decode(g16, &l, b8.c, NCH, b8.enc, b8.len, b8.rec, b8.st);
        kvtc_decoder *dec = NULL;
        cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
        for (uint32_t i = 0; i < NCH; i++) {
            cr_assert_eq(b8.st[i], 0);
            check_bound(p, plan, KVTC_PX_E4M3_TENSOR, KVTC_PX_BF16, &b8.c[i], b8.rec[i], e16[i],
                        "fp8 enc -> fp16 dec", i);
            size_t rb = kvtc_chunk_bytes(&l, toks[i]);
            void *out = malloc(rb);
            memset(out, 0xA5, rb);
            cr_assert_eq(kvtc_decode(dec, b8.enc[i], b8.len[i], out, rb, NULL), 0,
                         "CPU rejects fp8-encoded chunk %u", i);
            check_bound(p, plan, KVTC_PX_E4M3_TENSOR, KVTC_PX_FP32, &b8.c[i], out, e16[i],
                        "fp8 enc -> CPU dec", i);
            free(out);
            free(b8.rec[i]);
            b8.rec[i] = NULL;
        }
        kvtc_decoder_free(dec);
        /* fp16 encode -> fp8 decode */
        gt_gpu_decode(gd, &l, base.c, NCH, base.enc, base.len, b8.rec, b8.st);
        for (uint32_t i = 0; i < NCH; i++) {
            cr_assert_eq(b8.st[i], 0);
            check_bound(p, plan, KVTC_PX_BF16, KVTC_PX_E4M3_STATIC, &base.c[i], b8.rec[i],
                        e16[i], "fp16 enc -> fp8 dec", i);
            free(b8.rec[i]);
            b8.rec[i] = NULL;
        }
        /* both */
        for (uint32_t i = 0; i < NCH; i++) {
            free(b8.enc[i]);
            b8.enc[i] = NULL;
        }
        encode_all(gb, &l, &b8);
        gt_gpu_decode(gb, &l, b8.c, NCH, b8.enc, b8.len, b8.rec, b8.st);
        for (uint32_t i = 0; i < NCH; i++) {
            cr_assert_eq(b8.st[i], 0);
            check_bound(p, plan, KVTC_PX_E4M3_TENSOR, KVTC_PX_E4M3_STATIC, &b8.c[i], b8.rec[i],
                        e16[i], "fp8 both", i);
        }
        /* the fp8 GEMMs ran (a fallback to 16 bits is legal but logged) */
        kvtc_gpu_codec *all[] = {ge, gd, gb};
        for (int k = 0; k < 3; k++) {
            uint64_t runs = 0, fb = 0;
            cr_assert_eq(kvtc__gpu_fp8_info(all[k], &runs, &fb), 0);
            cr_log_info("plan %u ctx %d: fp8 GEMM calls %llu, fallbacks %llu", plan, k,
                        (unsigned long long)runs, (unsigned long long)fb);
            cr_assert(runs > 0, "no fp8 GEMM ran (fallbacks %llu)", (unsigned long long)fb);
        }
        kvtc_gpu_codec_free(g16);
        kvtc_gpu_codec_free(ge);
        kvtc_gpu_codec_free(gd);
        kvtc_gpu_codec_free(gb);
        for (uint32_t i = 0; i < NCH; i++)
            free((void *)base.c[i].data);
        fb_free(&base);
        fb_free(&b8);
    }
    kvtc_profile_free(p);
}

/* The static decode scale's point: a chunk's decode does not depend on
 * what else is in the batch. Each chunk decoded alone (1..700 tokens: M
 * % 16 tail rows alone) and in the batch beside a chunk 40x larger: the
 * same error to 1e-3 (the GEMM's accumulation order may differ with the
 * batch's shape; the activation and its scale do not), the bytes logged.
 * With v13's batch amax the 1-token chunk's error doubled in a batch. */
Test(gpu_fp8, decode_independent_of_batch)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(4, 2, 64, KVTC_DTYPE_BF16, KVTC_ROPE_HALF_SPLIT);
    kvtc_profile *p = gt_profile(&l, 2048, 14);
    uint32_t plan = kvtc_profile_plan_count(p) - 1;
    struct fb b;
    memset(&b, 0, sizeof b);
    for (uint32_t i = 0; i < NCH; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(&l, toks[i], pos[i], 90 + i), toks[i], pos[i], 0};
    /* chunk 7 (256 tokens) 40x larger: its coefficients saturate e4m3
     * (> 28 sigma), its batch-mates must not notice */
    {
        size_t n = kvtc_chunk_bytes(&l, toks[7]) / 2;
        float *f = malloc(n * sizeof *f);
        cr_assert_eq(kvtc_to_float(KVTC_DTYPE_BF16, b.c[7].data, f, n), 0);
        for (size_t j = 0; j < n; j++)
            f[j] *= 40.0f;
        cr_assert_eq(kvtc_from_float(KVTC_DTYPE_BF16, f, (void *)b.c[7].data, n), 0);
        free(f);
    }
    kvtc_gpu_codec *g16 = ctx(p, plan, 0, 0), *gd = ctx(p, plan, 0, 1);
    encode_all(g16, &l, &b);
    gt_gpu_decode(gd, &l, b.c, NCH, b.enc, b.len, b.rec, b.st);
    for (uint32_t i = 0; i < NCH - 1; i++) {
        cr_assert_eq(b.st[i], 0);
        void *one = NULL;
        int32_t st = -1;
        gt_gpu_decode(gd, &l, &b.c[i], 1, &b.enc[i], &b.len[i], &one, &st);
        cr_assert_eq(st, 0);
        size_t rb = kvtc_chunk_bytes(&l, toks[i]), same = 0;
        for (size_t j = 0; j < rb; j++)
            same += ((const uint8_t *)one)[j] == ((const uint8_t *)b.rec[i])[j];
        double ea = gt_mse(&l, b.c[i].data, one, toks[i]);
        double eb = gt_mse(&l, b.c[i].data, b.rec[i], toks[i]);
        cr_log_info("chunk %u (%u tok): mse alone %.5g, in the batch %.5g, bytes equal %.4f", i,
                    toks[i], ea, eb, (double)same / rb);
        cr_assert(fabs(ea - eb) <= 1e-3 * ea + 1e-12,
                  "chunk %u: mse alone %.6g vs in the batch %.6g", i, ea, eb);
        check_bound(p, plan, KVTC_PX_BF16, KVTC_PX_E4M3_STATIC, &b.c[i], one, 0, "alone", i);
        free(one);
    }
    kvtc_gpu_codec_free(g16);
    kvtc_gpu_codec_free(gd);
    for (uint32_t i = 0; i < NCH; i++)
        free((void *)b.c[i].data);
    fb_free(&b);
    kvtc_profile_free(p);
}

Test(gpu_fp8, nonfinite_chunk_fails_alone)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 2, 32, KVTC_DTYPE_FP16, KVTC_ROPE_INTERLEAVED);
    kvtc_profile *p = gt_profile(&l, 1024, 12);
    uint32_t plan = kvtc_profile_plan_count(p) - 1;
    struct fb b;
    memset(&b, 0, sizeof b);
    for (uint32_t i = 0; i < NCH; i++)
        b.c[i] = (kvtc_chunk){gt_chunk(&l, toks[i], pos[i], 70 + i), toks[i], pos[i], 0};
    /* chunk 1: an inf and a NaN among its coded tokens (fp16 bits) */
    uint16_t *bad = (uint16_t *)b.c[1].data;
    bad[100] = 0x7c00;
    bad[777] = 0x7e00;
    kvtc_gpu_codec *g = ctx(p, plan, 1, 1);
    gt_gpu_encode(g, &l, b.c, NCH, b.enc, b.len, b.st);
    cr_assert_eq(b.st[1], KVTC_EINVAL, "non-finite chunk: status %d", b.st[1]);
    for (uint32_t i = 0; i < NCH; i++) {
        if (i == 1)
            continue;
        cr_assert_eq(b.st[i], 0, "chunk %u: status %d", i, b.st[i]);
    }
    /* the others decode within the bound (the poisoned chunk left out of
     * the activation's amax) */
    kvtc_chunk ok[NCH - 1];
    uint8_t *src[NCH - 1];
    size_t len[NCH - 1];
    void *rec[NCH - 1];
    int32_t st[NCH - 1];
    for (uint32_t i = 0, j = 0; i < NCH; i++)
        if (i != 1) {
            ok[j] = b.c[i];
            src[j] = b.enc[i];
            len[j++] = b.len[i];
        }
    gt_gpu_decode(g, &l, ok, NCH - 1, src, len, rec, st);
    for (uint32_t j = 0; j < NCH - 1; j++) {
        cr_assert_eq(st[j], 0);
        check_bound(p, plan, KVTC_PX_E4M3_TENSOR, KVTC_PX_E4M3_STATIC, &ok[j], rec[j], 0,
                    "poisoned batch", j);
        free(rec[j]);
    }
    kvtc_gpu_codec_free(g);
    for (uint32_t i = 0; i < NCH; i++)
        free((void *)b.c[i].data);
    fb_free(&b);
    kvtc_profile_free(p);
}

Test(gpu_fp8, width_not_multiple_of_16_refused)
{
    GPU_OR_SKIP();
    kvtc_layout l = gt_layout(2, 3, 6, KVTC_DTYPE_FP32, KVTC_ROPE_NONE); /* width 36 */
    kvtc_profile *p = gt_profile(&l, 512, 13);
    kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_DEC_GEMM, .dec_gemm = KVTC_GPU_PROJ_FP8};
    kvtc_gpu_codec *g = NULL;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &prm, &g), KVTC_ENOTSUP);
    prm.dec_gemm = KVTC_GPU_PROJ_DIRECT + 1;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &prm, &g), KVTC_EINVAL);
    /* a field this library does not know: refused, not ignored */
    kvtc_gpu_params newer = {.field_mask = (uint64_t)KVTC_GPU_PARAM_FIELD_DEC_GEMM << 1};
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &newer, &g), KVTC_EINVAL);
    /* fp32 chunks: no direct decode (it needs 16-bit rows of 16-byte units) */
    prm.dec_gemm = KVTC_GPU_PROJ_DIRECT;
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &prm, &g), KVTC_ENOTSUP);
    prm.dec_gemm = 0; /* 16-bit both ways still fine */
    cr_assert_eq(kvtc_gpu_codec_create(p, 0, &prm, &g), 0);
    kvtc_gpu_codec_free(g);
    kvtc_profile_free(p);
}
