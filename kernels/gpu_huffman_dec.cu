/* gpu_huffman_dec.cu - the indexed pieces of our encoder decoded with one
 * thread per sub-range (huff_core.h): a block per piece, its thread 0
 * reading the block header (the code lengths, bit by bit: serial by
 * nature), then all threads filling the decode table (a code each) and
 * turning the index into start bits (a block scan) in shared memory, both
 * of which thread 0 did alone before (~0.4 ms of fixed cost per GiB on an
 * H100 while the others waited), then every thread decoding
 * exactly its sub-range's symbols from the bit the index gives it (an
 * 11-bit table plus 16-entry blocks for longer codes: no divergent
 * canonical walk, see huff_core.h). Each
 * checks that it ends where the next sub-range starts (the last: the
 * end-of-block code, then zero padding to the stream's exact end), which
 * makes the result the serial decode's; any mismatch fails the piece.
 * Stored pieces are copied by all threads. */
#include <cuda_runtime.h>

#include "gpu_huffman.h"
#include "huff_core.h"

extern "C" {
#include "kvtc_errors.h"
}

#define DEC_MAX_T (65536u >> KVTC_HC_LOG2_MIN) /* sub-ranges of a full piece */

__device__ static inline void fail(const uint32_t *group, int32_t *status, uint64_t i, int rc)
{
    if (group)
        atomicCAS((int *)&status[group[i]], 0, KVTC_ECORRUPT);
    else
        atomicCAS((int *)&status[i], 0, rc);
}

__global__ void __launch_bounds__(DEC_MAX_T)
    k_huff_dec(const void *const *src, const size_t *src_len, void *const *dst,
               const size_t *dst_len, const uint8_t *const *idx, uint64_t n, uint32_t log2_,
               const uint8_t *plog, const uint32_t *group, int32_t *status)
{
    __shared__ kvtc__inflate_ws ws;
    __shared__ kvtc__hd_table tab;
    __shared__ uint32_t start[DEC_MAX_T + 1];
    __shared__ uint32_t st_off[2], st_len[2], st_out[2];
    __shared__ uint32_t wsum[DEC_MAX_T / 32], data_s;
    __shared__ int verdict;
    uint64_t i = blockIdx.x + (uint64_t)blockIdx.y * gridDim.x;
    uint32_t t = threadIdx.x;
    if (i >= n || !idx[i])
        return; /* not indexed: another decoder's */
    const uint8_t *s = (const uint8_t *)src[i], *ix = idx[i];
    uint8_t *d = (uint8_t *)dst[i];
    size_t len_ = src_len[i], cnt_ = dst_len[i];
    uint32_t len = (uint32_t)len_, cnt = (uint32_t)cnt_, log2 = plog ? plog[i] : log2_;
    if (t == 0) {
        int rc = 0;
        uint32_t data = 0;
        if (!group)
            status[i] = 0;
        /* read once, by one thread: another piece of the container may
         * fail it meanwhile, and the block must agree on skipping */
        if (group && status[group[i]])
            rc = 3;
        if (cnt_ == 0 || cnt_ > KVTC_INFL_MAX_OUT || len_ == 0 || len_ > KVTC_HC_MAX_OUT ||
            log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX)
            rc = KVTC_INFL_EARG;
        uint32_t S = rc ? 0 : kvtc__hc_subranges(cnt, log2);
        if (!rc)
            rc = kvtc__hd_setup(s, len, &ws, &data);
        else if (rc == 3)
            S = 0;
        if (rc == 0) {
            data_s = data;
        } else if (rc == 1) {
            /* stored: zero entries, at most two blocks (<= 65535 each) */
            for (uint32_t k = 0; k < S && rc == 1; k++)
                if (kvtc__hd_entry(ix, k))
                    rc = KVTC_INFL_EBLOCK;
            for (uint32_t k = 0; rc == 1; k++) {
                uint32_t o, l, out;
                int fin = kvtc__hd_stored(s, len, cnt, k, &o, &l, &out);
                if (fin < 0 || k >= 2) {
                    rc = fin < 0 ? fin : KVTC_INFL_EBLOCK;
                    break;
                }
                st_off[k] = o, st_len[k] = l, st_out[k] = out;
                if (fin) {
                    if ((rc = kvtc__hd_stored_end(len, cnt, o, l, out)) == 0)
                        rc = 1 + (int)k; /* 1 or 2 blocks */
                    break;
                }
            }
        }
        verdict = rc;
    }
    __syncthreads();
    int v = verdict;
    if (v == 3)
        return; /* its container already failed: the piece is moot */
    if (v < 0) {
        if (t == 0)
            fail(group, status, i, v);
        return;
    }
    if (v > 0) {
        for (int k = 0; k < v; k++)
            for (uint32_t b = t; b < st_len[k]; b += blockDim.x)
                d[st_out[k] + b] = s[st_off[k] + b];
        return;
    }
    uint32_t S = kvtc__hc_subranges(cnt, log2), nt = blockDim.x, lane = t & 31;
    /* the table: zeroed, then a code per thread; start[k] = the first data
     * bit plus the index entries before k: a block scan over runs of
     * consecutive entries (S may exceed the threads when the container's
     * granularity is finer than the launch's) */
    for (uint32_t e = t; e < KVTC_HD_ENTRIES; e += nt)
        kvtc__hd_table_zero(&tab, e);
    uint32_t per = (S + nt - 1) / nt, k0 = t * per < S ? t * per : S;
    uint32_t k1 = k0 + per < S ? k0 + per : S, sum = 0;
    for (uint32_t k = k0; k < k1; k++)
        sum += kvtc__hd_entry(ix, k);
    uint32_t incl = sum;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint32_t x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += x;
    }
    if (lane == 31)
        wsum[t / 32] = incl;
    __syncthreads();
    uint32_t run = data_s + incl - sum;
    for (uint32_t w = 0; w < t / 32; w++)
        run += wsum[w];
    if (t == 0)
        start[0] = data_s;
    for (uint32_t k = k0; k < k1; k++) {
        run += kvtc__hd_entry(ix, k);
        start[k + 1] = run;
    }
    for (uint32_t j = t, nc = kvtc__hd_codes(&ws.lit); j < nc; j += nt)
        kvtc__hd_table_fill(&ws.lit, &tab, j);
    __syncthreads();
    for (uint32_t k = t; k < S; k += blockDim.x) {
        uint32_t count = k + 1 < S ? 1u << log2 : cnt - (k << log2);
        uint64_t end = 0;
        int rc = kvtc__hd_run(&tab, s, len, start[k], count, d + ((size_t)k << log2), &end);
        if (!rc && end != start[k + 1])
            rc = KVTC_INFL_ESHORT;
        if (!rc && k + 1 == S)
            rc = kvtc__hd_tail(&tab, s, len, start[S]);
        if (rc)
            fail(group, status, i, rc);
    }
}

extern "C" int kvtc__huff_decode_batch(const void *const *src, const size_t *src_len,
                                       void *const *dst, const size_t *dst_len,
                                       const uint8_t *const *idx, uint64_t n, uint32_t log2,
                                       const uint8_t *plog, const uint32_t *group,
                                       int32_t *status, kvtc_gpu_stream stream)
{
    if (log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX)
        return KVTC_EINVAL;
    if (!n)
        return 0;
    uint32_t threads = 65536u >> log2;
    dim3 grid((unsigned)(n < 65535 ? n : 65535), (unsigned)((n + 65534) / 65535));
    k_huff_dec<<<grid, threads < 32 ? 32 : threads, 0, (cudaStream_t)stream>>>(
        src, src_len, dst, dst_len, idx, n, log2, plog, group, status);
    return cudaGetLastError() == cudaSuccess ? 0 : KVTC_EIO;
}
