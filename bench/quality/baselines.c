/* baselines.c - the quantizers kvtc is compared against. Each one really
 * rounds its scales to fp16 (what it would store) before dequantizing, and
 * stored_bytes counts payload bits rounded up to bytes per group plus every
 * scale and zero point, so ratios are what a real store would achieve. */
#include "baselines.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define GROUP 32          /* int4 and KIVI group size */
#define ZSTD_LEVEL 19
#define FP8_MAX 448.0f    /* largest finite e4m3 (e4m3fn: no infinities) */
#define FP16_MAX 65504.0f

const char *kvtc_bl_name(int method)
{
    switch (method) {
    case KVTC_BL_FP8: return "fp8-e4m3";
    case KVTC_BL_INT4: return "int4-g32";
    case KVTC_BL_KIVI2: return "kivi2-g32";
    case KVTC_BL_ZSTD: return "zstd-bf16";
    default: return NULL;
    }
}

/* Round to the nearest value of a binary float format with mant_bits
 * explicit mantissa bits and smallest normal exponent min_exp (subnormals
 * below it), saturating at max: fp16 and e4m3 both fit this shape. Ties go
 * to even through rintf in the default rounding mode. */
static float round_fmt(float x, int mant_bits, int min_exp, float max)
{
    if (x == 0.0f || isnan(x))
        return isnan(x) ? 0.0f : x;
    float a = fabsf(x);
    if (a >= max)
        return copysignf(max, x);
    int e;
    frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    int E = e - 1 < min_exp ? min_exp : e - 1;
    float quantum = ldexpf(1.0f, E - mant_bits);
    float r = rintf(a / quantum) * quantum;
    if (r > max)
        r = max;
    return copysignf(r, x);
}

static float to_fp16(float x) { return round_fmt(x, 10, -14, FP16_MAX); }
static float to_e4m3(float x) { return round_fmt(x, 3, -6, FP8_MAX); }

static uint16_t bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if (isnan(x))
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float bf16_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* Asymmetric uniform quantization of n values at stride to levels
 * 0..(2^bits - 1) with an fp16 zero (the minimum) and an fp16 scale. */
static void quant_asym(const float *x, float *out, size_t n, size_t stride, int bits)
{
    float lo = x[0], hi = x[0];
    for (size_t i = 1; i < n; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    float levels = (float)((1 << bits) - 1);
    float zero = to_fp16(lo);
    float scale = to_fp16((hi - zero) / levels);
    for (size_t i = 0; i < n; i++) {
        float q = 0.0f;
        if (scale > 0.0f) {
            q = rintf((x[i * stride] - zero) / scale);
            q = q < 0.0f ? 0.0f : (q > levels ? levels : q);
        }
        out[i * stride] = zero + q * scale;
    }
}

/* Bytes of one group of n values at bits each, plus fp16 scale and zero. */
static size_t group_bytes(size_t n, int bits)
{
    return (n * (size_t)bits + 7) / 8 + 4;
}

static void fp8_vector(const float *x, float *out, size_t n)
{
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float scale = to_fp16(amax / FP8_MAX);
    if (scale == 0.0f && amax > 0.0f)
        scale = ldexpf(1.0f, -24); /* smallest fp16 subnormal */
    for (size_t i = 0; i < n; i++)
        out[i] = scale > 0.0f ? to_e4m3(x[i] / scale) * scale : 0.0f;
}

static int run_zstd(const float *x, float *out, size_t n, size_t *stored)
{
    int rc = 0;
    size_t raw = n * 2, cap = ZSTD_compressBound(raw);
    uint16_t *b = malloc(raw);
    uint16_t *back = malloc(raw);
    void *z = malloc(cap);
    if (!b || !back || !z) {
        rc = KVTC_ENOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        b[i] = bf16_bits(x[i]);
    size_t zl = ZSTD_compress(z, cap, b, raw, ZSTD_LEVEL);
    if (ZSTD_isError(zl)) {
        rc = KVTC_EIO;
        goto cleanup;
    }
    /* Decode for real: the reconstruction is what comes out of zstd. */
    size_t dl = ZSTD_decompress(back, raw, z, zl);
    if (ZSTD_isError(dl) || dl != raw) {
        rc = KVTC_ECORRUPT;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = bf16_float(back[i]);
    *stored = zl;
cleanup:
    free(b);
    free(back);
    free(z);
    return rc;
}

int kvtc_bl_roundtrip(int method, const kvtc_layout *layout, const float *chunk,
                      uint32_t n_tokens, float *out, size_t *stored_bytes)
{
    if (!layout || !chunk || !out || !stored_bytes || !kvtc_bl_name(method))
        return KVTC_EINVAL;
    /* Own bounds check rather than kvtc_layout_check: only the shape matters
     * here (chunks are float32 whatever layout->dtype says). */
    if (layout->layers == 0 || layout->layers > KVTC_MAX_LAYERS ||
        layout->kv_heads == 0 || layout->kv_heads > KVTC_MAX_KV_HEADS ||
        layout->head_dim == 0 || layout->head_dim > KVTC_MAX_HEAD_DIM ||
        n_tokens == 0 || n_tokens > KVTC_MAX_CHUNK_TOKENS ||
        (size_t)layout->layers * layout->kv_heads * layout->head_dim > KVTC_MAX_ROW_WIDTH)
        return KVTC_EINVAL;

    size_t L = layout->layers, hd = layout->head_dim, T = n_tokens;
    size_t C = (size_t)layout->kv_heads * hd; /* channels of one token, one layer */
    size_t total = L * 2 * T * C, bytes = 0;

    switch (method) {
    case KVTC_BL_ZSTD:
        return run_zstd(chunk, out, total, stored_bytes);
    case KVTC_BL_FP8:
        /* one scale per (token, head): head_dim e4m3 bytes + fp16 scale */
        for (size_t v = 0; v < total; v += hd) {
            fp8_vector(chunk + v, out + v, hd);
            bytes += hd + 2;
        }
        break;
    case KVTC_BL_INT4:
        /* groups of 32 consecutive channels of one token's layer K or V */
        for (size_t r = 0; r < L * 2 * T; r++) {
            for (size_t g = 0; g < C; g += GROUP) {
                size_t n = C - g < GROUP ? C - g : GROUP;
                quant_asym(chunk + r * C + g, out + r * C + g, n, 1, 4);
                bytes += group_bytes(n, 4);
            }
        }
        break;
    case KVTC_BL_KIVI2:
        /* KIVI's full-precision window of the most recent tokens is left
         * out: here every token passed is stored KV, none is live. */
        for (size_t l = 0; l < L; l++) {
            const float *k = chunk + (2 * l) * T * C, *v = k + T * C;
            float *ko = out + (2 * l) * T * C, *vo = ko + T * C;
            /* keys per channel: their outliers live in fixed channels */
            for (size_t c = 0; c < C; c++) {
                for (size_t t = 0; t < T; t += GROUP) {
                    size_t n = T - t < GROUP ? T - t : GROUP;
                    quant_asym(k + t * C + c, ko + t * C + c, n, C, 2);
                    bytes += group_bytes(n, 2);
                }
            }
            /* values per token, groups of 32 channels */
            for (size_t t = 0; t < T; t++) {
                for (size_t g = 0; g < C; g += GROUP) {
                    size_t n = C - g < GROUP ? C - g : GROUP;
                    quant_asym(v + t * C + g, vo + t * C + g, n, 1, 2);
                    bytes += group_bytes(n, 2);
                }
            }
        }
        break;
    }
    *stored_bytes = bytes;
    return 0;
}
