/* numeric.c - bit-exact conversions between float and the 16- and 8-bit
 * formats of chunks and quantized groups. Written out by hand so the CPU
 * codec, the fuzzers (clang) and the GPU kernels agree bit for bit. */
#include <math.h>
#include <string.h>

#include "internal.h"

static inline uint32_t bits_of(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
static inline float float_of(uint32_t x) { float f; memcpy(&f, &x, 4); return f; }

uint16_t kvtc__f32_to_f16(float f)
{
    uint32_t x = bits_of(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)                     /* inf or nan */
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u)                     /* >= 65520 rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {                    /* below 2^-14: subnormal */
        if (ax < 0x33000000u)                  /* below 2^-25: zero */
            return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;              /* 14..24 */
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = (ax - 0x38000000u) >> 13, rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float kvtc__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -v : v;
    }
    if (e == 31)
        return float_of(sign | 0x7f800000u | (m << 13));
    return float_of(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t kvtc__f32_to_bf16(float f)
{
    uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float kvtc__bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

/* OCP FP8 E4M3 ("fn"): bias 7, no infinities, S.1111.111 is NaN, max 448. */
uint8_t kvtc__f32_to_e4m3(float f)
{
    uint32_t x = bits_of(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint8_t)(sign | 0x7fu);
    if (ax >= 0x43e00000u)                     /* >= 448: saturate */
        return (uint8_t)(sign | 0x7eu);
    if (ax < 0x3c800000u) {                    /* below 2^-6: subnormal, step 2^-9 */
        float q = nearbyintf(float_of(ax) * 512.0f);
        return (uint8_t)(sign | (uint8_t)q);   /* q == 8 encodes 2^-6 exactly */
    }
    uint32_t e = (ax >> 23) - 120;             /* 127 - 7 */
    uint32_t m = ax & 0x7fffffu;
    uint32_t h = (e << 3) | (m >> 20), rem = m & 0xfffffu;
    if (rem > 0x80000u || (rem == 0x80000u && (h & 1)))
        h++;
    if (h > 0x7eu)
        h = 0x7eu;
    return (uint8_t)(sign | h);
}

float kvtc__e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t e = (v >> 3) & 0xfu, m = v & 7u;
    if ((v & 0x7fu) == 0x7fu)
        return NAN;
    if (e == 0) {
        float s = (float)m * (1.0f / 512.0f);
        return sign ? -s : s;
    }
    return float_of(sign | ((e + 120) << 23) | (m << 20));
}

size_t kvtc_dtype_size(uint32_t dtype)
{
    switch (dtype) {
    case KVTC_DTYPE_BF16:
    case KVTC_DTYPE_FP16: return 2;
    case KVTC_DTYPE_FP32: return 4;
    case KVTC_DTYPE_FP8_E4M3: return 1;
    default: return 0;
    }
}

int kvtc_to_float(uint32_t dtype, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    const uint8_t *b = src;
    switch (dtype) {
    case KVTC_DTYPE_BF16: for (size_t i = 0; i < n; i++) dst[i] = kvtc__bf16_to_f32(h[i]); return 0;
    case KVTC_DTYPE_FP16: for (size_t i = 0; i < n; i++) dst[i] = kvtc__f16_to_f32(h[i]); return 0;
    case KVTC_DTYPE_FP32: memcpy(dst, src, n * sizeof(float)); return 0;
    case KVTC_DTYPE_FP8_E4M3: for (size_t i = 0; i < n; i++) dst[i] = kvtc__e4m3_to_f32(b[i]); return 0;
    default: return KVTC_EINVAL;
    }
}

int kvtc_from_float(uint32_t dtype, const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    uint8_t *b = dst;
    switch (dtype) {
    case KVTC_DTYPE_BF16: for (size_t i = 0; i < n; i++) h[i] = kvtc__f32_to_bf16(src[i]); return 0;
    case KVTC_DTYPE_FP16: for (size_t i = 0; i < n; i++) h[i] = kvtc__f32_to_f16(src[i]); return 0;
    case KVTC_DTYPE_FP32: memcpy(dst, src, n * sizeof(float)); return 0;
    case KVTC_DTYPE_FP8_E4M3: for (size_t i = 0; i < n; i++) b[i] = kvtc__f32_to_e4m3(src[i]); return 0;
    default: return KVTC_EINVAL;
    }
}
