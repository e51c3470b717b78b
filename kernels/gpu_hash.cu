/* gpu_hash.cu - XXH3-64 of many device byte ranges at once (the
 * container's section and header checksums). A long input's 1 KiB blocks
 * are summed in parallel, a warp each (k_block_sums); then a block per
 * input runs the 8 independent lanes of the scramble chain from shared
 * memory, and the tail (k_finish). xxh3_core.h holds the arithmetic,
 * checked against libxxhash on the CPU. */
#include <stdlib.h>

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

/* Warp per 1 KiB block. Lane 8q+i reads the 8-byte words at 256j + 8 lane
 * (j = 0..3): word i of stripe 4j+q, as kvtc__xxh3_stripe_lane wants it, and
 * its partner word i^1 comes from lane ^ 1. Four coalesced 8-byte loads per
 * lane, all issued before any use: the earlier version staged the block
 * through shared memory a byte (or 4) per load, one load after the other,
 * and took ~90 us for ~50 MB on an H100. A block at an odd address (the
 * payload follows variable-size tables) reads the aligned words around it
 * and shifts; the word past the block's end, which only lane 31 of the
 * last round needs r < 8 bytes of, is read byte by byte so nothing past
 * the block is touched. */
__global__ void __launch_bounds__(256)
    k_block_sums(const kvtc__seg *seg, const uint64_t *slot_start, uint32_t n, uint64_t total,
                 uint64_t *bsum)
{
    __shared__ uint64_t sec64[KVTC_XXH3_SECRET_SIZE / 8];
    for (uint32_t i = threadIdx.x; i < KVTC_XXH3_SECRET_SIZE / 8; i += blockDim.x)
        sec64[i] = kvtc__rd64(c_secret + 8 * i);
    __syncthreads();
    uint32_t w = threadIdx.x / 32, lane = threadIdx.x & 31;
    uint64_t slot = (uint64_t)blockIdx.x * 8 + w;
    if (slot >= total)
        return; /* warp-uniform, as the two below */
    uint32_t s = kd_find_seg(slot_start, n, slot);
    uint64_t b = slot - slot_start[s], len = seg[s].len;
    if (len <= 240 || b >= kvtc__xxh3_nblocks(len))
        return;
    const uint8_t *p = seg[s].p + b * KVTC_XXH3_BLOCK;
    uint32_t r = (uint32_t)((uintptr_t)p & 7);
    const uint64_t *a = (const uint64_t *)(p - r);
    uint64_t lo[4], v[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        lo[j] = __ldg(a + 32 * j + lane);
    if (r == 0) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            v[j] = lo[j];
    } else {
        uint64_t end = 0; /* bytes p+1024-r .. p+1023: the r bytes lane 31 of j = 3 lacks */
        if (lane == 31)
            for (uint32_t k = 0; k < r; k++)
                end |= (uint64_t)p[KVTC_XXH3_BLOCK - r + k] << (8 * k);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint64_t hi = __shfl_down_sync(0xffffffffu, lo[j], 1);
            uint64_t nx = __shfl_sync(0xffffffffu, j < 3 ? lo[j < 3 ? j + 1 : j] : 0, 0);
            if (lane == 31)
                hi = j < 3 ? nx : end;
            v[j] = (lo[j] >> (8 * r)) | (hi << (64 - 8 * r));
        }
    }
    /* lane = accumulator i (lane % 8) x stripes 4j + lane/8 */
    uint32_t i = lane % 8, q = lane / 8;
    uint64_t acc = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        uint64_t other = __shfl_xor_sync(0xffffffffu, v[j], 1);
        uint64_t k = v[j] ^ sec64[4 * j + q + i];
        acc += other + (uint64_t)(uint32_t)k * (k >> 32);
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 8);
    acc += __shfl_xor_sync(0xffffffffu, acc, 16);
    if (lane < 8)
        bsum[slot * 8 + i] = acc;
}

/* Block per segment. The 8 lanes' scramble chains are serial by nature (a
 * step per 1 KiB block); what made them slow (421 us for a 1.6 MB payload,
 * ~260 ns a step) was a global load in every step. Now the block's other
 * warps stage the next FIN_R blocks' sums into shared memory (double
 * buffered) while lanes 0..7 of warp 0 chain through the current ones, so
 * a step is the scramble's own latency (~20 cycles). */
#define FIN_R 128u
__global__ void __launch_bounds__(256)
    k_finish(const kvtc__seg *seg, const uint64_t *slot_start, uint32_t n, const uint64_t *bsum,
             uint64_t *out)
{
    __shared__ uint8_t sec[KVTC_XXH3_SECRET_SIZE];
    __shared__ uint64_t buf[2][FIN_R * 8];
    uint32_t t = threadIdx.x, s = blockIdx.x;
    for (uint32_t i = t; i < KVTC_XXH3_SECRET_SIZE; i += blockDim.x)
        sec[i] = c_secret[i];
    __syncthreads();
    if (s >= n)
        return;
    const uint8_t *p = seg[s].p;
    uint64_t len = seg[s].len;
    if (len <= 240) { /* block-uniform */
        if (t == 0)
            out[s] = kvtc__xxh3_short(p, (size_t)len, sec);
        return;
    }
    uint64_t nb = kvtc__xxh3_nblocks(len), rounds = (nb + FIN_R - 1) / FIN_R;
    const uint64_t *bs = bsum + slot_start[s] * 8;
    uint64_t first = (nb < FIN_R ? nb : FIN_R) * 8;
    for (uint64_t k = t; k < first; k += blockDim.x)
        buf[0][k] = __ldg(bs + k);
    __syncthreads();
    uint64_t acc = t < 8 ? kvtc__xxh3_init_lane((int)t) : 0;
    for (uint64_t rd = 0; rd < rounds; rd++) {
        uint32_t cur = (uint32_t)(rd & 1);
        uint64_t b0 = rd * FIN_R, cnt = nb - b0 < FIN_R ? nb - b0 : FIN_R;
        if (t >= 32) {
            uint64_t n0 = b0 + FIN_R;
            uint64_t ncnt = n0 < nb ? (nb - n0 < FIN_R ? nb - n0 : FIN_R) : 0;
            const uint64_t *from = bs + n0 * 8;
#pragma unroll 4
            for (uint64_t k = t - 32; k < ncnt * 8; k += blockDim.x - 32)
                buf[cur ^ 1][k] = __ldg(from + k);
        } else if (t < 8) {
            const uint64_t *in = buf[cur];
#pragma unroll 8
            for (uint64_t b = 0; b < cnt; b++)
                acc = kvtc__xxh3_chain(acc, in[b * 8 + t], sec, (int)t);
        }
        __syncthreads();
    }
    if (t >= 32)
        return;
    if (t < 8)
        acc = kvtc__xxh3_tail_lane(acc, p, len, sec, (int)t);
    uint64_t a[8];
    for (int k = 0; k < 8; k++)
        a[k] = __shfl_sync(0xffffffffu, acc, k);
    if (t == 0)
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
    k_finish<<<n, 256, 0, s>>>(seg, slot_start, n, bsum, out);
    return kvtc__cuda_err(cudaGetLastError(), "hash finish");
}

/* Test hook (tests/gpu/test_gpu_hash.c; not in a header): XXH3-64 of n
 * device byte ranges p[i], len[i] (host arrays) into out[i] (host), through
 * the same kernels as the containers' checksums. Synchronous on the
 * default stream; 0, or the CUDA failure's KVTC_E* code. */
extern "C" int kvtc__gpu_xxh3_ranges(const uint8_t *const *p, const uint64_t *len, uint32_t n,
                                     uint64_t *out)
{
    kvtc__seg *hseg = (kvtc__seg *)malloc(sizeof(kvtc__seg) * (n + 1));
    uint64_t *hslot = (uint64_t *)malloc(sizeof(uint64_t) * (n + 1)), total = 0;
    kvtc__seg *dseg = NULL;
    uint64_t *dslot = NULL, *dbsum = NULL, *dout = NULL;
    int rc = hseg && hslot ? 0 : KVTC_ENOMEM;
    for (uint32_t i = 0; !rc && i < n; i++) {
        hseg[i] = {p[i], len[i]};
        hslot[i] = total;
        total += kvtc__hash_slots(len[i]);
    }
    if (!rc)
        hslot[n] = total;
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dseg, sizeof(kvtc__seg) * (n + 1)), "hash test");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dslot, sizeof(uint64_t) * (n + 1)), "hash test");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dbsum, 64 * total + 64), "hash test");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dout, sizeof(uint64_t) * (n + 1)), "hash test");
    if (!rc)
        rc = kvtc__cuda_err(
            cudaMemcpy(dseg, hseg, sizeof(kvtc__seg) * n, cudaMemcpyHostToDevice), "hash test");
    if (!rc)
        rc = kvtc__cuda_err(
            cudaMemcpy(dslot, hslot, sizeof(uint64_t) * (n + 1), cudaMemcpyHostToDevice),
            "hash test");
    if (!rc)
        rc = kvtc__hash_segments(dseg, dslot, n, total, dbsum, dout, 0);
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(out, dout, sizeof(uint64_t) * n, cudaMemcpyDeviceToHost),
                            "hash test");
    cudaFree(dseg);
    cudaFree(dslot);
    cudaFree(dbsum);
    cudaFree(dout);
    free(hseg);
    free(hslot);
    return rc;
}
