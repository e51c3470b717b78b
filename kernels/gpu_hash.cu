/* gpu_hash.cu - XXH3-64 of many device byte ranges at once (the
 * container's section and header checksums). A long input's 1 KiB blocks
 * are summed in parallel, a warp each (k_block_sums); then one warp per
 * input runs the 8 independent lanes of the scramble chain and the tail
 * (k_finish). xxh3_core.h holds the arithmetic, checked against libxxhash
 * on the CPU. */
#include "gpu_internal.h"
#include "xxh3_core.h"

static __constant__ uint8_t c_secret[KVTC_XXH3_SECRET_SIZE] = KVTC_XXH3_SECRET_BYTES;

__device__ static inline uint32_t kd_find_seg(const uint64_t *slot_start, uint32_t n, uint64_t slot)
{
    uint32_t lo = 0, hi = n; /* last i with slot_start[i] <= slot */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (slot_start[mid] <= slot)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

__global__ void k_block_sums(const kvtc__seg *seg, const uint64_t *slot_start, uint32_t n,
                             uint64_t total, uint64_t *bsum)
{
    __shared__ uint8_t sec[KVTC_XXH3_SECRET_SIZE];
    __shared__ uint8_t buf[8][KVTC_XXH3_BLOCK];
    for (uint32_t i = threadIdx.x; i < KVTC_XXH3_SECRET_SIZE; i += blockDim.x)
        sec[i] = c_secret[i];
    __syncthreads();
    uint32_t w = threadIdx.x / 32, lane = threadIdx.x & 31;
    uint64_t slot = (uint64_t)blockIdx.x * 8 + w;
    if (slot >= total)
        return;
    uint32_t s = kd_find_seg(slot_start, n, slot);
    uint64_t b = slot - slot_start[s], len = seg[s].len;
    if (len <= 240 || b >= kvtc__xxh3_nblocks(len))
        return;
    const uint8_t *p = seg[s].p + b * KVTC_XXH3_BLOCK;
    uint8_t *mine = buf[w];
    if (((uintptr_t)p & 3) == 0) {
        for (uint32_t k = lane; k < KVTC_XXH3_BLOCK / 4; k += 32)
            ((uint32_t *)mine)[k] = ((const uint32_t *)p)[k];
    } else {
        for (uint32_t k = lane; k < KVTC_XXH3_BLOCK; k += 32)
            mine[k] = p[k];
    }
    __syncwarp();
    /* lane = accumulator i (lane % 8) x stripes lane/8, +4, +8, +12 */
    int i = lane % 8;
    uint64_t acc = 0;
    for (uint32_t st = lane / 8; st < KVTC_XXH3_STRIPES; st += 4)
        acc += kvtc__xxh3_stripe_lane(mine + 64 * st, sec + 8 * st, i);
    acc += __shfl_xor_sync(0xffffffffu, acc, 8);
    acc += __shfl_xor_sync(0xffffffffu, acc, 16);
    if (lane < 8)
        bsum[slot * 8 + i] = acc;
}

__global__ void k_finish(const kvtc__seg *seg, const uint64_t *slot_start, uint32_t n,
                         const uint64_t *bsum, uint64_t *out)
{
    __shared__ uint8_t sec[KVTC_XXH3_SECRET_SIZE];
    for (uint32_t i = threadIdx.x; i < KVTC_XXH3_SECRET_SIZE; i += blockDim.x)
        sec[i] = c_secret[i];
    __syncthreads();
    uint32_t s = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (s >= n)
        return;
    const uint8_t *p = seg[s].p;
    uint64_t len = seg[s].len;
    if (len <= 240) {
        if (lane == 0)
            out[s] = kvtc__xxh3_short(p, (size_t)len, sec);
        return;
    }
    int i = lane % 8;
    uint64_t acc = kvtc__xxh3_init_lane(i), nb = kvtc__xxh3_nblocks(len);
    const uint64_t *bs = bsum + slot_start[s] * 8;
    if (lane < 8) {
#pragma unroll 8
        for (uint64_t b = 0; b < nb; b++)
            acc = kvtc__xxh3_chain(acc, bs[b * 8 + i], sec, i);
        acc = kvtc__xxh3_tail_lane(acc, p, len, sec, i);
    }
    uint64_t a[8];
    for (int k = 0; k < 8; k++)
        a[k] = __shfl_sync(0xffffffffu, acc, k);
    if (lane == 0)
        out[s] = kvtc__xxh3_merge(a, len, sec);
}

int kvtc__hash_segments(const kvtc__seg *seg, const uint64_t *slot_start, uint32_t n,
                        uint64_t total_slots, uint64_t *bsum, uint64_t *out, cudaStream_t s)
{
    if (!n)
        return 0;
    if (total_slots) {
        k_block_sums<<<(unsigned)((total_slots + 7) / 8), 256, 0, s>>>(seg, slot_start, n,
                                                                    total_slots, bsum);
        int rc = kvtc__cuda_err(cudaGetLastError(), "hash blocks");
        if (rc)
            return rc;
    }
    k_finish<<<(n + 7) / 8, 256, 0, s>>>(seg, slot_start, n, bsum, out);
    return kvtc__cuda_err(cudaGetLastError(), "hash finish");
}
