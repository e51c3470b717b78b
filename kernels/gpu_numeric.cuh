/* gpu_numeric.cuh - device copies of codec/numeric.c's bit-exact
 * conversions and quant.c's fp16 rounding rules, so the GPU quantizer
 * makes the CPU's choices of shift and scale. */
#ifndef KVTC_KERNELS_GPU_NUMERIC_CUH
#define KVTC_KERNELS_GPU_NUMERIC_CUH

#include <stdint.h>

#define KVTC_F16_MAX 65504.0f

__device__ static inline uint16_t kd_f32_to_f16(float f)
{
    uint32_t x = __float_as_uint(f);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {
        if (ax < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;
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

__device__ static inline float kd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (e == 31)
        return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}

__device__ static inline uint16_t kd_f32_to_bf16(float f)
{
    uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

__device__ static inline float kd_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ static inline uint8_t kd_f32_to_e4m3(float f)
{
    uint32_t x = __float_as_uint(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint8_t)(sign | 0x7fu);
    if (ax >= 0x43e00000u)
        return (uint8_t)(sign | 0x7eu);
    if (ax < 0x3c800000u) {
        float q = rintf(__fmul_rn(__uint_as_float(ax), 512.0f));
        return (uint8_t)(sign | (uint8_t)q);
    }
    uint32_t e = (ax >> 23) - 120, m = ax & 0x7fffffu;
    uint32_t h = (e << 3) | (m >> 20), rem = m & 0xfffffu;
    if (rem > 0x80000u || (rem == 0x80000u && (h & 1)))
        h++;
    if (h > 0x7eu)
        h = 0x7eu;
    return (uint8_t)(sign | h);
}

__device__ static inline float kd_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24, e = (v >> 3) & 0xfu, m = v & 7u;
    if ((v & 0x7fu) == 0x7fu)
        return __uint_as_float(0x7fc00000u);
    if (e == 0) {
        float s = (float)m * (1.0f / 512.0f);
        return sign ? -s : s;
    }
    return __uint_as_float(sign | ((e + 120) << 23) | (m << 20));
}

/* Element i of a chunk of dtype as float. */
__device__ static inline float kd_load(uint32_t dtype, const uint8_t *base, size_t i)
{
    switch (dtype) {
    case KVTC_DTYPE_BF16: return kd_bf16_to_f32(((const uint16_t *)base)[i]);
    case KVTC_DTYPE_FP16: return kd_f16_to_f32(((const uint16_t *)base)[i]);
    case KVTC_DTYPE_FP32: return ((const float *)base)[i];
    default: return kd_e4m3_to_f32(base[i]);
    }
}
__device__ static inline void kd_store(uint32_t dtype, uint8_t *base, size_t i, float v)
{
    switch (dtype) {
    case KVTC_DTYPE_BF16: ((uint16_t *)base)[i] = kd_f32_to_bf16(v); break;
    case KVTC_DTYPE_FP16: ((uint16_t *)base)[i] = kd_f32_to_f16(v); break;
    case KVTC_DTYPE_FP32: ((float *)base)[i] = v; break;
    default: base[i] = kd_f32_to_e4m3(v); break;
    }
}

/* fp16 at or above v (quant.c's f16_round_up). */
__device__ static inline uint16_t kd_f16_round_up(float v)
{
    if (v >= KVTC_F16_MAX)
        return 0x7bffu;
    uint16_t h = kd_f32_to_f16(v);
    if (kd_f16_to_f32(h) < v)
        h++;
    return h;
}

#endif
