/* gpu_inflate.cu - one warp per DEFLATE piece, its lane 0 decoding the
 * piece serially with its tables in shared memory (inflate_core.h). A
 * Huffman stream is one dependency chain, so what bounds a piece is the
 * latency of one lookup per symbol (measured ~240 cycles per symbol on an
 * H100: lookup, 64-bit shifts and branches, all dependent); the batch's
 * ~750 pieces per GiB all run at once on 132 SMs. One warp per block keeps pieces spread evenly
 * over the SMs. */
#include <cuda_runtime.h>

#include "gpu_inflate.h"
#include "inflate_core.h"

extern "C" {
#include "kvtc_errors.h"
}

__global__ void __launch_bounds__(32)
    k_inflate(const void *const *src, const size_t *src_len, void *const *dst,
              const size_t *dst_len, uint64_t n, const uint32_t *group, int32_t *status,
              kvtc__inflate_stats *stats)
{
    __shared__ kvtc__inflate_ws ws;
    uint64_t i = blockIdx.x + (uint64_t)blockIdx.y * gridDim.x;
    if (threadIdx.x != 0 || i >= n)
        return;
    if (group && status[group[i]])
        return; /* the container already failed: its pieces are moot */
    size_t len = src_len[i], cap = dst_len[i];
    int rc = len > UINT32_MAX ? KVTC_INFL_EINPUT
             : cap > KVTC_INFL_MAX_OUT
                 ? KVTC_INFL_EARG
                 : kvtc__inflate((const uint8_t *)src[i], (uint32_t)len, (uint8_t *)dst[i],
                                 (uint32_t)cap, &ws, stats ? &stats[i] : NULL);
    if (!group)
        status[i] = rc;
    else if (rc)
        atomicCAS((int *)&status[group[i]], 0, KVTC_ECORRUPT);
}

extern "C" int kvtc__inflate_batch(const void *const *src, const size_t *src_len,
                                   void *const *dst, const size_t *dst_len, uint64_t n,
                                   const uint32_t *group, int32_t *status,
                                   kvtc__inflate_stats *stats, kvtc_gpu_stream stream)
{
    if (!n)
        return 0;
    /* grid x up to 65535 blocks per row so any n fits */
    dim3 grid((unsigned)(n < 65535 ? n : 65535), (unsigned)((n + 65534) / 65535));
    k_inflate<<<grid, 32, 0, (cudaStream_t)stream>>>(src, src_len, dst, dst_len, n, group,
                                                      status, stats);
    return cudaGetLastError() == cudaSuccess ? 0 : KVTC_EIO;
}
