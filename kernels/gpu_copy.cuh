/* gpu_copy.cuh - a byte range copied by the threads of a block with
 * 16-byte stores, whatever the two addresses' alignments (the container's
 * pieces sit at any byte offset; the slots they come from or go to are
 * aligned). A byte per thread per load cost ~110 us each way for ~50 MB
 * on an H100: every byte load waited for the store before it. Here each
 * thread loads up to 4 aligned 16-byte source granules before storing
 * anything, and a misaligned source is realigned with funnel shifts. */
#ifndef KVTC_KERNELS_GPU_COPY_CUH
#define KVTC_KERNELS_GPU_COPY_CUH

#include <stdint.h>

/* Bytes sr.. sr+15 of the 32 bytes a|b (little-endian words). */
__device__ static inline uint4 kvtc__shift16(uint4 a, uint4 b, uint32_t sr)
{
    uint32_t w0, w1, w2, w3, w4;
    switch (sr >> 2) {
    case 0: w0 = a.x, w1 = a.y, w2 = a.z, w3 = a.w, w4 = b.x; break;
    case 1: w0 = a.y, w1 = a.z, w2 = a.w, w3 = b.x, w4 = b.y; break;
    case 2: w0 = a.z, w1 = a.w, w2 = b.x, w3 = b.y, w4 = b.z; break;
    default: w0 = a.w, w1 = b.x, w2 = b.y, w3 = b.z, w4 = b.w; break;
    }
    uint32_t sh = 8 * (sr & 3); /* 0: funnelshift returns the low word */
    return make_uint4(__funnelshift_r(w0, w1, sh), __funnelshift_r(w1, w2, sh),
                      __funnelshift_r(w2, w3, sh), __funnelshift_r(w3, w4, sh));
}

/* Source bytes [s + 16g, s + 16g + 16): from the two aligned granules
 * around them when both lie inside [lo, hi), else byte by byte (so nothing
 * outside the source range is read). */
__device__ static inline uint4 kvtc__granule(const uint8_t *s, uint64_t g, uint32_t sr,
                                             uintptr_t lo, uintptr_t hi)
{
    if (sr == 0)
        return ((const uint4 *)s)[g];
    const uint4 *a = (const uint4 *)(s - sr) + g;
    if ((uintptr_t)a >= lo && (uintptr_t)(a + 2) <= hi)
        return kvtc__shift16(a[0], a[1], sr);
    uint32_t w[4];
    const uint8_t *p = s + 16 * g;
    for (int k = 0; k < 4; k++)
        w[k] = (uint32_t)p[4 * k] | (uint32_t)p[4 * k + 1] << 8 | (uint32_t)p[4 * k + 2] << 16 |
               (uint32_t)p[4 * k + 3] << 24;
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* Copies n bytes src -> dst (not overlapping) with the nt threads of the
 * calling block, this one being t; every thread must call it with the
 * same arguments. Reads only [src, src + n), writes only [dst, dst + n).
 * No synchronization inside: the caller syncs before reading dst. */
__device__ static inline void kvtc__block_copy(uint8_t *dst, const uint8_t *src, uint64_t n,
                                               uint32_t t, uint32_t nt)
{
    uint64_t h = (16 - ((uintptr_t)dst & 15)) & 15;
    if (h > n)
        h = n;
    if (t < h)
        dst[t] = src[t];
    uint8_t *d = dst + h;
    const uint8_t *s = src + h;
    uint64_t m = (n - h) / 16, tail = (n - h) % 16;
    uint32_t sr = (uint32_t)((uintptr_t)s & 15);
    uintptr_t lo = (uintptr_t)src, hi = (uintptr_t)(src + n);
    for (uint64_t g0 = t; g0 < m; g0 += 4ull * nt) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (g0 + (uint64_t)u * nt < m)
                v[u] = kvtc__granule(s, g0 + (uint64_t)u * nt, sr, lo, hi);
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (g0 + (uint64_t)u * nt < m)
                ((uint4 *)d)[g0 + (uint64_t)u * nt] = v[u];
    }
    if (t < tail)
        d[16 * m + t] = s[16 * m + t];
}

#endif
