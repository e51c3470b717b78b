/* quant.c - KIVI-style uniform quantization of one group of one token's PCA
 * coefficients: int2/int4 with an fp16 shift (the minimum) and scale, or
 * fp8 e4m3 around an fp16 centre with an fp16 scale. The encoder and the
 * planner share this code, so the planner's errors are the encoder's. */
#include <math.h>

#include "internal.h"

#define F16_MAX 65504.0f

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* fp16 at or above v (v >= 0 finite), so a rounded scale still covers the range. */
static uint16_t f16_round_up(float v)
{
    if (v >= F16_MAX)
        return 0x7bffu;
    uint16_t h = kvtc__f32_to_f16(v);
    if (kvtc__f16_to_f32(h) < v)
        h++;
    return h;
}

/* Codes of x[0..n) for a known fp16 shift and scale; the squared error. */
static double quantize_with(uint32_t type, const float *x, uint32_t n, const float *w2,
                            float shf, float scf, uint8_t *codes)
{
    double err = 0;
    float inv = scf > 0 ? 1.0f / scf : 0;
    if (type == KVTC__Q_FP8) {
        for (uint32_t j = 0; j < n; j++) {
            uint8_t q = scf > 0 ? kvtc__f32_to_e4m3((x[j] - shf) * inv) : 0;
            float d = x[j] - (shf + kvtc__e4m3_to_f32(q) * scf);
            codes[j] = q;
            err += (double)d * d * (w2 ? w2[j] : 1.0f);
        }
        return err;
    }
    float levels = (float)((1u << kvtc__qtype_bits(type)) - 1);
    for (uint32_t j = 0; j < n; j++) {
        float qf = scf > 0 ? clampf(nearbyintf((x[j] - shf) * inv), 0, levels) : 0;
        float d = x[j] - (shf + qf * scf);
        codes[j] = (uint8_t)qf;
        err += (double)d * d * (w2 ? w2[j] : 1.0f);
    }
    return err;
}

double kvtc__quantize_group(uint32_t type, const float *x, uint32_t n, const float *w2,
                            uint16_t *shift, uint16_t *scale, uint8_t *codes)
{
    float mn = x[0], mx = x[0];
    for (uint32_t j = 1; j < n; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    mn = clampf(mn, -F16_MAX, F16_MAX);
    mx = clampf(mx, -F16_MAX, F16_MAX);
    if (type == KVTC__Q_FP8) {
        /* centred: e4m3 is symmetric, so spend its range on both sides */
        *shift = kvtc__f32_to_f16(0.5f * mn + 0.5f * mx);
        float shf = kvtc__f16_to_f32(*shift), amax = 0;
        for (uint32_t j = 0; j < n; j++) {
            float a = fabsf(x[j] - shf);
            amax = a > amax ? a : amax;
        }
        *scale = f16_round_up(amax / 448.0f);
    } else {
        *shift = kvtc__f32_to_f16(mn);
        float range = mx - kvtc__f16_to_f32(*shift);
        uint32_t levels = (1u << kvtc__qtype_bits(type)) - 1;
        *scale = range > 0 ? f16_round_up(range / (float)levels) : 0;
    }
    return quantize_with(type, x, n, w2, kvtc__f16_to_f32(*shift), kvtc__f16_to_f32(*scale),
                         codes);
}

double kvtc__quantize_fixed(uint32_t type, const float *x, uint32_t n, const float *w2,
                            uint16_t shift, uint16_t scale, uint8_t *codes)
{
    return quantize_with(type, x, n, w2, kvtc__f16_to_f32(shift), kvtc__f16_to_f32(scale), codes);
}

void kvtc__static_params(uint32_t type, float clip, uint16_t *shift, uint16_t *scale)
{
    if (type == KVTC__Q_FP8) {
        *shift = 0;
        *scale = kvtc__f32_to_f16(clip / 448.0f);
    } else {
        *shift = kvtc__f32_to_f16(-clip);
        *scale = kvtc__f32_to_f16(2.0f * clip / (float)((1u << kvtc__qtype_bits(type)) - 1));
    }
}

int kvtc__dequantize_group(uint32_t type, const uint8_t *codes, uint32_t n,
                           uint16_t shift, uint16_t scale, float *out)
{
    if (!kvtc__f16_is_finite(shift) || !kvtc__f16_is_finite(scale))
        return KVTC_ECORRUPT;
    float shf = kvtc__f16_to_f32(shift), scf = kvtc__f16_to_f32(scale);
    if (type == KVTC__Q_FP8) {
        for (uint32_t j = 0; j < n; j++) {
            if (kvtc__e4m3_is_nan(codes[j]))
                return KVTC_ECORRUPT;
            out[j] = shf + kvtc__e4m3_to_f32(codes[j]) * scf;
        }
        return 0;
    }
    for (uint32_t j = 0; j < n; j++)
        out[j] = shf + (float)codes[j] * scf;
    return 0;
}
