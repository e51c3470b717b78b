/* gpu_quant.cuh - the per-(token, group) quantization math of quant.c on
 * the GPU, shared by the row-per-block kernels (gpu_rows.cu) and the tiled
 * ones (gpu_quant.cu) so both write the CPU codec's bytes exactly. */
#ifndef KVTC_KERNELS_GPU_QUANT_CUH
#define KVTC_KERNELS_GPU_QUANT_CUH

#include "gpu_internal.h"
#include "gpu_numeric.cuh"

/* Shift and scale of a group from its min/max (and, for fp8, the largest
 * distance from the shift, which the caller computes after the shift). */
__device__ static inline void kd_int_params(uint32_t bits, float mn, float mx, uint16_t *sh,
                                            uint16_t *sc, float *shf, float *scf, float *inv)
{
    float levels = (float)((1u << bits) - 1);
    *sh = kd_f32_to_f16(mn);
    *shf = kd_f16_to_f32(*sh);
    float range = __fsub_rn(mx, *shf);
    *sc = range > 0 ? kd_f16_round_up(__fdiv_rn(range, levels)) : 0;
    *scf = kd_f16_to_f32(*sc);
    *inv = *scf > 0 ? __fdiv_rn(1.0f, *scf) : 0;
}
__device__ static inline uint16_t kd_fp8_shift(float mn, float mx)
{
    return kd_f32_to_f16(__fadd_rn(__fmul_rn(0.5f, mn), __fmul_rn(0.5f, mx)));
}
__device__ static inline void kd_fp8_scale(float amax, uint16_t *sc, float *scf, float *inv)
{
    *sc = kd_f16_round_up(__fdiv_rn(amax, 448.0f));
    *scf = kd_f16_to_f32(*sc);
    *inv = *scf > 0 ? __fdiv_rn(1.0f, *scf) : 0;
}
__device__ static inline uint8_t kd_code(const kvtc__dgroup &gr, float x, float shf, float scf,
                                         float inv)
{
    if (gr.type == KVTC__Q_FP8)
        return scf > 0 ? kd_f32_to_e4m3(__fmul_rn(__fsub_rn(x, shf), inv)) : 0;
    float q = scf > 0 ? rintf(__fmul_rn(__fsub_rn(x, shf), inv)) : 0;
    return (uint8_t)fminf(fmaxf(q, 0.0f), (float)((1u << gr.bits) - 1));
}
/* Static groups: the plan's pair (quant.c's quantize_fixed). */
__device__ static inline void kd_static_params(const kvtc__dgroup &gr, float *shf, float *scf,
                                               float *inv)
{
    *shf = kd_f16_to_f32(gr.sshift);
    *scf = kd_f16_to_f32(gr.sscale);
    *inv = *scf > 0 ? __fdiv_rn(1.0f, *scf) : 0;
}
__device__ static inline float kd_clamp16(float v) { return fminf(fmaxf(v, -KVTC_F16_MAX), KVTC_F16_MAX); }

#endif
