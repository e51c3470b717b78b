/* gpu_test_util.h - helpers of the GPU tests: skip without a GPU,
 * synthetic KV with a low-rank structure behind RoPE, device buffers,
 * batched GPU encode/decode with host copies of the results. */
#ifndef KVTC_TESTS_GPU_UTIL_H
#define KVTC_TESTS_GPU_UTIL_H

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kvtc_codec.h"
#include "kvtc_gpu.h"

#define GPU_OR_SKIP()                                                                        \
    do {                                                                                     \
        if (!kvtc_gpu_available())                                                           \
            cr_skip_test("no CUDA device here (cudaGetDeviceCount failed or 0): GPU test "   \
                         "skipped; run make test-gpu on a GPU machine");                     \
    } while (0)

#define CUDA_OK(e) cr_assert_eq((e), cudaSuccess, "%s: %s", #e, cudaGetErrorString(e))

/* Layout of the synthetic tests. */
kvtc_layout gt_layout(uint32_t layers, uint32_t heads, uint32_t hdim, uint32_t dtype,
                      uint32_t rope_style);
/* A canonical chunk of n tokens at first_pos in l.dtype, from a fixed
 * low-rank model (seeded), keys rotated by RoPE. Caller frees. */
void *gt_chunk(const kvtc_layout *l, uint32_t n, uint32_t first_pos, uint64_t seed);
/* A calibrator fed `tokens` synthetic tokens (slab_weights may be NULL). */
kvtc_calibrator *gt_calibrator(const kvtc_layout *l, uint32_t tokens, uint64_t seed,
                               const float *slab_weights);
/* CPU profile from `tokens` synthetic tokens (targets 4, 8, 16). */
kvtc_profile *gt_profile(const kvtc_layout *l, uint32_t tokens, uint64_t seed);
/* Mean squared difference of two canonical chunks (as floats). */
double gt_mse(const kvtc_layout *l, const void *a, const void *b, uint32_t n);
/* Mean square of a chunk (signal energy). */
double gt_energy(const kvtc_layout *l, const void *a, uint32_t n);
/* Elements of a chunk still all 0xA5 bytes (the poison outputs start as). */
size_t gt_count_poison(const kvtc_layout *l, const void *a, uint32_t n);

/* GPU batch encode of host chunks; containers come back to the host:
 * out[i] malloc'ed, len[i], status[i]. */
void gt_gpu_encode(kvtc_gpu_codec *g, const kvtc_layout *l, const kvtc_chunk *chunks,
                   uint32_t n, uint8_t **out, size_t *len, int32_t *status);
/* GPU batch decode of host containers into host chunks (poisoned first
 * with 0xA5); expected n_tokens/first_pos/flags from chunks. */
void gt_gpu_decode(kvtc_gpu_codec *g, const kvtc_layout *l, const kvtc_chunk *chunks, uint32_t n,
                   uint8_t *const *src, const size_t *len, void **dst, int32_t *status);

#endif
