/* gpu_rows.cu - the per-token stages: canonical chunk <-> centred rows
 * (RoPE undone/redone on keys, means), quantization of the projected
 * coefficients into the plan's groups, bit packing, and dequantization.
 * One thread block per row (token of one stream): a row is D elements of
 * one token, so blocks never share outputs except the packed code bytes,
 * which the pack kernel owns byte by byte. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gpu_internal.h"
#include "gpu_numeric.cuh"
#include "gpu_quant.cuh"

#define ROW_THREADS 256

template <typename RT> __device__ static inline RT kd_to(float v);
template <> __device__ inline __nv_bfloat16 kd_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ inline __half kd_to<__half>(float v) { return __float2half_rn(v); }
__device__ static inline float kd_from(__nv_bfloat16 v) { return __bfloat162float(v); }
/* fp16 GEMM operands overflow above 65504: such rows need the bf16 GEMM. */
template <typename RT> __device__ static inline int kd_out_of_range(float v);
template <> __device__ inline int kd_out_of_range<__nv_bfloat16>(float v) { return 0; }
template <> __device__ inline int kd_out_of_range<__half>(float v) { return !(fabsf(v) <= 65504.0f); }
__device__ static inline float kd_from(__half v) { return __half2float(v); }

/* The chunk owning row m: the last chunk whose row_start <= m with T > 0. */
__device__ static inline uint32_t kd_find_chunk(const kvtc__dchunk *ch, uint32_t n, uint64_t m)
{
    uint32_t lo = 0, hi = n;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (ch[mid].row_start <= m)
            lo = mid;
        else
            hi = mid;
    }
    while (lo > 0 && (ch[lo].T == 0 || ch[lo].row_start > m))
        lo--;
    return lo;
}

struct kd_rowgeo {
    uint32_t layers, kvh, hdim, dtype, rope_style, D, hd;
};

__device__ static inline void kd_pair(const kd_rowgeo &G, uint32_t p, uint32_t *layer,
                                      uint32_t *off_a, uint32_t *off_b, uint32_t *i)
{
    uint32_t half = G.hdim / 2, v = p / half;
    *i = p % half;
    *layer = v / G.kvh;
    uint32_t base = (v % G.kvh) * G.hdim;
    *off_a = base + (G.rope_style == KVTC_ROPE_INTERLEAVED ? 2 * *i : *i);
    *off_b = base + (G.rope_style == KVTC_ROPE_INTERLEAVED ? 2 * *i + 1 : *i + half);
}

template <typename RT>
__global__ void k_rows_in(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
                          const double *inv_freq, const float *mean, RT *rows, int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    size_t es = G.dtype == KVTC_DTYPE_FP32 ? 4 : G.dtype == KVTC_DTYPE_FP8_E4M3 ? 1 : 2;
    RT *row = rows + m * G.D;
    int bad = 0, range = 0;
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    if (rope) {
        double pos = (double)C.first_pos + t;
        for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
            double s, co;
            sincos(pos * inv_freq[i], &s, &co);
            cs[i] = (float)co;
            sn[i] = -(float)s; /* undo: rotate by -angle */
        }
        __syncthreads();
        uint32_t npairs = G.layers * G.kvh * (G.hdim / 2);
        for (uint32_t p = threadIdx.x; p < npairs; p += blockDim.x) {
            uint32_t layer, a, b, i;
            kd_pair(G, p, &layer, &a, &b, &i);
            const uint8_t *src = C.data + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            float x0 = kd_load(G.dtype, src, a), x1 = kd_load(G.dtype, src, b);
            bad |= !isfinite(x0) || !isfinite(x1);
            float y0 = x0 * cs[i] - x1 * sn[i], y1 = x0 * sn[i] + x1 * cs[i];
            uint32_t ja = layer * G.hd + a, jb = layer * G.hd + b;
            float c0 = y0 - mean[ja], c1 = y1 - mean[jb];
            range |= kd_out_of_range<RT>(c0) | kd_out_of_range<RT>(c1);
            row[ja] = kd_to<RT>(c0);
            row[jb] = kd_to<RT>(c1);
        }
    } else {
        for (uint32_t j = threadIdx.x; j < G.D; j += blockDim.x) {
            uint32_t layer = j / G.hd, r = j % G.hd;
            const uint8_t *src = C.data + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            float x = kd_load(G.dtype, src, r);
            bad |= !isfinite(x);
            range |= kd_out_of_range<RT>(x - mean[j]);
            row[j] = kd_to<RT>(x - mean[j]);
        }
    }
    bad = __syncthreads_or(bad);
    range = __syncthreads_or(range);
    if ((bad || range) && threadIdx.x == 0) /* NaN/inf KV cannot be coded faithfully */
        status[c] = bad ? KVTC_EINVAL : KVTC_ENOTSUP;
}

template <typename RT>
__global__ void k_rows_out(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
                           const double *inv_freq, const float *mean, const RT *rows,
                           const int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    if (status[c])
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    size_t es = G.dtype == KVTC_DTYPE_FP32 ? 4 : G.dtype == KVTC_DTYPE_FP8_E4M3 ? 1 : 2;
    const RT *row = rows + m * G.D;
    uint8_t *out = (uint8_t *)C.data;
    if (stream == 0 && G.rope_style != KVTC_ROPE_NONE) {
        double pos = (double)C.first_pos + t;
        for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
            double s, co;
            sincos(pos * inv_freq[i], &s, &co);
            cs[i] = (float)co;
            sn[i] = (float)s;
        }
        __syncthreads();
        uint32_t npairs = G.layers * G.kvh * (G.hdim / 2);
        for (uint32_t p = threadIdx.x; p < npairs; p += blockDim.x) {
            uint32_t layer, a, b, i;
            kd_pair(G, p, &layer, &a, &b, &i);
            uint32_t ja = layer * G.hd + a, jb = layer * G.hd + b;
            float x0 = kd_from(row[ja]) + mean[ja], x1 = kd_from(row[jb]) + mean[jb];
            uint8_t *dst = out + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            kd_store(G.dtype, dst, a, x0 * cs[i] - x1 * sn[i]);
            kd_store(G.dtype, dst, b, x0 * sn[i] + x1 * cs[i]);
        }
    } else {
        for (uint32_t j = threadIdx.x; j < G.D; j += blockDim.x) {
            uint32_t layer = j / G.hd, r = j % G.hd;
            uint8_t *dst = out + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            kd_store(G.dtype, dst, r, kd_from(row[j]) + mean[j]);
        }
    }
}

/* ---- vectorized rows for 16-bit chunks (head_dim % 16 == 0, 16-byte
 * aligned chunks): 8 elements per 16-byte load or store. A unit is 8
 * consecutive elements of one head vector; half-split keys take two units
 * (i..i+7 and i+half..i+half+7), interleaved ones hold 4 whole pairs. ---- */

union kd_v8 {
    uint4 u;
    uint16_t h[8];
};

__device__ static inline float kd_ld16(uint32_t dtype, uint16_t v)
{
    return dtype == KVTC_DTYPE_FP16 ? kd_f16_to_f32(v) : kd_bf16_to_f32(v);
}
__device__ static inline uint16_t kd_st16(uint32_t dtype, float v)
{
    return dtype == KVTC_DTYPE_FP16 ? kd_f32_to_f16(v) : kd_f32_to_bf16(v);
}
template <typename RT> __device__ static inline uint16_t kd_rbits(float v)
{
    RT r = kd_to<RT>(v);
    return *(uint16_t *)&r;
}
template <typename RT> __device__ static inline float kd_rval(uint16_t b)
{
    RT r;
    *(uint16_t *)&r = b;
    return kd_from(r);
}

/* One unit of k_rows_in_vec(2): the 8 (or 2 x 8, half-split keys)
 * elements a (b) of one head vector, RoPE undone, the means ma (mb)
 * subtracted, into the row at column j. Both kernels run this one
 * expression, so their rows are the same bits. */
template <typename RT>
__device__ static inline void kd_unit_in(const kd_rowgeo &G, int rope, int half, const float *cs,
                                         const float *sn, uint32_t w, kd_v8 a, kd_v8 b,
                                         const float *ma, const float *mb, uint16_t *row,
                                         uint32_t j, int *bad, int *range)
{
    kd_v8 oa, ob;
    float xa[8], xb[8];
    for (int e = 0; e < 8; e++)
        xa[e] = kd_ld16(G.dtype, a.h[e]);
    if (half) {
        for (int e = 0; e < 8; e++)
            xb[e] = kd_ld16(G.dtype, b.h[e]);
        uint32_t i0 = w * 8;
        for (int e = 0; e < 8; e++) {
            *bad |= !isfinite(xa[e]) || !isfinite(xb[e]);
            float y0 = xa[e] * cs[i0 + e] - xb[e] * sn[i0 + e];
            float y1 = xa[e] * sn[i0 + e] + xb[e] * cs[i0 + e];
            float c0 = y0 - ma[e], c1 = y1 - mb[e];
            *range |= kd_out_of_range<RT>(c0) | kd_out_of_range<RT>(c1);
            oa.h[e] = kd_rbits<RT>(c0);
            ob.h[e] = kd_rbits<RT>(c1);
        }
        *(uint4 *)(row + j) = oa.u;
        *(uint4 *)(row + j + G.hdim / 2) = ob.u;
        return;
    }
    if (rope) { /* interleaved: 4 pairs (2i, 2i+1) */
        uint32_t i0 = w * 4;
        for (int e = 0; e < 8; e += 2) {
            float x0 = xa[e], x1 = xa[e + 1], c0 = cs[i0 + e / 2], s0 = sn[i0 + e / 2];
            *bad |= !isfinite(x0) || !isfinite(x1);
            xa[e] = x0 * c0 - x1 * s0;
            xa[e + 1] = x0 * s0 + x1 * c0;
        }
    } else {
        for (int e = 0; e < 8; e++)
            *bad |= !isfinite(xa[e]);
    }
    for (int e = 0; e < 8; e++) {
        *range |= kd_out_of_range<RT>(xa[e] - ma[e]);
        oa.h[e] = kd_rbits<RT>(xa[e] - ma[e]);
    }
    *(uint4 *)(row + j) = oa.u;
}

/* The block's RoPE angles (cos, -sin) of token t of chunk C. */
__device__ static inline void kd_angles_in(const kvtc__dchunk &C, uint32_t t, const kd_rowgeo &G,
                                           const double *inv_freq, float *cs, float *sn)
{
    double pos = (double)C.first_pos + t;
    for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
        double sv, cv;
        sincos(pos * inv_freq[i], &sv, &cv);
        cs[i] = (float)cv;
        sn[i] = -(float)sv;
    }
    __syncthreads();
}

template <typename RT>
__global__ void k_rows_in_vec(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
                              const double *inv_freq, const float *mean, RT *rows, int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    int half = rope && G.rope_style == KVTC_ROPE_HALF_SPLIT;
    if (rope)
        kd_angles_in(C, t, G, inv_freq, cs, sn);
    uint16_t *row = (uint16_t *)(rows + m * G.D);
    uint32_t per_vec = G.hdim / 8 / (half ? 2 : 1), units = G.D / G.hdim * per_vec;
    int bad = 0, range = 0;
    for (uint32_t u = threadIdx.x; u < units; u += blockDim.x) {
        uint32_t v = u / per_vec, w = u % per_vec, layer = v / G.kvh;
        uint32_t r = (v % G.kvh) * G.hdim + w * 8; /* first element within the layer */
        const uint16_t *src = (const uint16_t *)C.data +
                              (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd;
        uint32_t j = layer * G.hd + r;
        kd_v8 a, b;
        a.u = *(const uint4 *)(src + r);
        b.u = half ? *(const uint4 *)(src + r + G.hdim / 2) : a.u;
        kd_unit_in<RT>(G, rope, half, cs, sn, w, a, b, mean + j, mean + j + G.hdim / 2, row, j,
                       &bad, &range);
    }
    bad = __syncthreads_or(bad);
    range = __syncthreads_or(range);
    if ((bad || range) && threadIdx.x == 0)
        status[c] = bad ? KVTC_EINVAL : KVTC_ENOTSUP;
}

/* Where unit u of the row reads (src offset s) and writes (column j);
 * w its index within the head vector. */
__device__ static inline void kd_unit_at(const kd_rowgeo &G, const kvtc__dchunk &C, int stream,
                                         uint32_t t, uint32_t per_vec, uint32_t u,
                                         const uint16_t **src, uint32_t *j, uint32_t *w)
{
    uint32_t v = u / per_vec, layer = v / G.kvh;
    *w = u % per_vec;
    uint32_t r = (v % G.kvh) * G.hdim + *w * 8;
    *src = (const uint16_t *)C.data + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd + r;
    *j = layer * G.hd + r;
}

/* k_rows_in_vec with the memory side reworked (encq, issue #3: the rows
 * pass moved 2 GiB in 0.99 ms, 2.2 TB/s against ~2.9 for a copy): the
 * next unit's chunk data is loaded (read-only path) before this unit's
 * arithmetic, so each thread keeps two units' loads in flight, and the
 * means come as float4 (two 16-byte loads per 8 means where the first
 * kernel made eight 4-byte ones, each a cache wavefront per 4 lanes).
 * Two whole units a thread with their means took 100 registers (2 blocks
 * an SM) or spilled at 64; the prefetch takes 78 (3 blocks an SM, the
 * first kernel 48: 5), so PF 0 is the float4 means alone, one unit in
 * flight. Same per-unit arithmetic (kd_unit_in): the same rows. */
template <typename RT, int PF>
__global__ void __launch_bounds__(256, PF ? 3 : 4) /* <= 80 / 64 registers */
k_rows_in_vec2(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
               const double *inv_freq, const float *__restrict__ mean, RT *rows, int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    int half = rope && G.rope_style == KVTC_ROPE_HALF_SPLIT;
    uint16_t *row = (uint16_t *)(rows + m * G.D);
    uint32_t per_vec = G.hdim / 8 / (half ? 2 : 1), units = G.D / G.hdim * per_vec;
    uint32_t hh = G.hdim / 2;
    int bad = 0, range = 0;
    uint32_t u = threadIdx.x, j = 0, w = 0;
    kd_v8 a, b;
    const uint16_t *src;
    if (rope) /* (loads issued before it would be spilled around sincos's call) */
        kd_angles_in(C, t, G, inv_freq, cs, sn);
    if (u < units) {
        kd_unit_at(G, C, stream, t, per_vec, u, &src, &j, &w);
        a.u = __ldg((const uint4 *)src);
        b.u = half ? __ldg((const uint4 *)(src + hh)) : a.u;
    }
    for (; u < units; u += blockDim.x) {
        uint32_t un = u + blockDim.x, jn = 0, wn = 0;
        kd_v8 na, nb;
        na.u = nb.u = make_uint4(0, 0, 0, 0);
        if (PF && un < units) {
            kd_unit_at(G, C, stream, t, per_vec, un, &src, &jn, &wn);
            na.u = __ldg((const uint4 *)src);
            nb.u = half ? __ldg((const uint4 *)(src + hh)) : na.u;
        }
        float ma[8], mb[8];
        const float4 *m4 = (const float4 *)(mean + j);
        float4 m0 = __ldg(m4), m1 = __ldg(m4 + 1);
        ma[0] = m0.x, ma[1] = m0.y, ma[2] = m0.z, ma[3] = m0.w;
        ma[4] = m1.x, ma[5] = m1.y, ma[6] = m1.z, ma[7] = m1.w;
        if (half) {
            const float4 *h4 = (const float4 *)(mean + j + hh);
            float4 h0 = __ldg(h4), h1 = __ldg(h4 + 1);
            mb[0] = h0.x, mb[1] = h0.y, mb[2] = h0.z, mb[3] = h0.w;
            mb[4] = h1.x, mb[5] = h1.y, mb[6] = h1.z, mb[7] = h1.w;
        }
        kd_unit_in<RT>(G, rope, half, cs, sn, w, a, b, ma, mb, row, j, &bad, &range);
        if (PF) {
            a = na;
            b = nb;
            j = jn;
            w = wn;
        } else if (un < units) {
            kd_unit_at(G, C, stream, t, per_vec, un, &src, &j, &w);
            a.u = __ldg((const uint4 *)src);
            b.u = half ? __ldg((const uint4 *)(src + hh)) : a.u;
        }
    }
    bad = __syncthreads_or(bad);
    range = __syncthreads_or(range);
    if ((bad || range) && threadIdx.x == 0)
        status[c] = bad ? KVTC_EINVAL : KVTC_ENOTSUP;
}

template <typename RT>
__global__ void k_rows_out_vec(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
                               const double *inv_freq, const float *mean, const RT *rows,
                               const int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    if (status[c])
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    int half = rope && G.rope_style == KVTC_ROPE_HALF_SPLIT;
    if (rope) {
        double pos = (double)C.first_pos + t;
        for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
            double sv, cv;
            sincos(pos * inv_freq[i], &sv, &cv);
            cs[i] = (float)cv;
            sn[i] = (float)sv;
        }
        __syncthreads();
    }
    const uint16_t *row = (const uint16_t *)(rows + m * G.D);
    uint32_t per_vec = G.hdim / 8 / (half ? 2 : 1), units = G.D / G.hdim * per_vec;
    for (uint32_t u = threadIdx.x; u < units; u += blockDim.x) {
        uint32_t v = u / per_vec, w = u % per_vec, layer = v / G.kvh;
        uint32_t r = (v % G.kvh) * G.hdim + w * 8;
        uint16_t *dst = (uint16_t *)C.data + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd;
        uint32_t j = layer * G.hd + r;
        kd_v8 a, b, oa, ob;
        float xa[8], xb[8];
        a.u = *(const uint4 *)(row + j);
        for (int e = 0; e < 8; e++)
            xa[e] = kd_rval<RT>(a.h[e]) + mean[j + e];
        if (half) {
            b.u = *(const uint4 *)(row + j + G.hdim / 2);
            uint32_t i0 = w * 8;
            for (int e = 0; e < 8; e++) {
                xb[e] = kd_rval<RT>(b.h[e]) + mean[j + G.hdim / 2 + e];
                oa.h[e] = kd_st16(G.dtype, xa[e] * cs[i0 + e] - xb[e] * sn[i0 + e]);
                ob.h[e] = kd_st16(G.dtype, xa[e] * sn[i0 + e] + xb[e] * cs[i0 + e]);
            }
            *(uint4 *)(dst + r) = oa.u;
            *(uint4 *)(dst + r + G.hdim / 2) = ob.u;
        } else {
            if (rope) {
                uint32_t i0 = w * 4;
                for (int e = 0; e < 8; e += 2) {
                    float x0 = xa[e], x1 = xa[e + 1], c0 = cs[i0 + e / 2], s0 = sn[i0 + e / 2];
                    xa[e] = x0 * c0 - x1 * s0;
                    xa[e + 1] = x0 * s0 + x1 * c0;
                }
            }
            for (int e = 0; e < 8; e++)
                oa.h[e] = kd_st16(G.dtype, xa[e]);
            *(uint4 *)(dst + r) = oa.u;
        }
    }
}

/* Direct decode, keys: the GEMM wrote token t's keys unrotated (mean
 * included) into the chunk; rotate them in place by +angle. One block per
 * row, 16-byte units as k_rows_out_vec. fp32 math, one rounding back to
 * the chunk's dtype (the GEMM's output was already one). */
__global__ void k_rope_inplace(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G,
                               const double *inv_freq, const int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    if (status[c])
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int half = G.rope_style == KVTC_ROPE_HALF_SPLIT;
    double pos = (double)C.first_pos + t;
    for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
        double sv, cv;
        sincos(pos * inv_freq[i], &sv, &cv);
        cs[i] = (float)cv;
        sn[i] = (float)sv;
    }
    __syncthreads();
    uint32_t per_vec = G.hdim / 8 / (half ? 2 : 1), units = G.D / G.hdim * per_vec;
    for (uint32_t u = threadIdx.x; u < units; u += blockDim.x) {
        uint32_t v = u / per_vec, w = u % per_vec, layer = v / G.kvh;
        uint32_t r = (v % G.kvh) * G.hdim + w * 8;
        uint16_t *dst = (uint16_t *)C.data + ((size_t)layer * 2 * C.n_tokens + t) * G.hd;
        kd_v8 a, b, oa, ob;
        float xa[8];
        a.u = *(const uint4 *)(dst + r);
        for (int e = 0; e < 8; e++)
            xa[e] = kd_ld16(G.dtype, a.h[e]);
        if (half) {
            b.u = *(const uint4 *)(dst + r + G.hdim / 2);
            uint32_t i0 = w * 8;
            for (int e = 0; e < 8; e++) {
                float xb = kd_ld16(G.dtype, b.h[e]);
                oa.h[e] = kd_st16(G.dtype, xa[e] * cs[i0 + e] - xb * sn[i0 + e]);
                ob.h[e] = kd_st16(G.dtype, xa[e] * sn[i0 + e] + xb * cs[i0 + e]);
            }
            *(uint4 *)(dst + r) = oa.u;
            *(uint4 *)(dst + r + G.hdim / 2) = ob.u;
        } else {
            uint32_t i0 = w * 4;
            for (int e = 0; e < 8; e += 2) {
                float x0 = xa[e], x1 = xa[e + 1], c0 = cs[i0 + e / 2], s0 = sn[i0 + e / 2];
                oa.h[e] = kd_st16(G.dtype, x0 * c0 - x1 * s0);
                oa.h[e + 1] = kd_st16(G.dtype, x0 * s0 + x1 * c0);
            }
            *(uint4 *)(dst + r) = oa.u;
        }
    }
}

/* Which vectorized encode rows kernel runs: 0 k_rows_in_vec (the first),
 * 1 k_rows_in_vec2 with the next unit prefetched (the default: H100, 1 GiB,
 * same run: rows stage 0.910 ms vs 0.945 for 0 and 0.953 for 2, same
 * bytes), 2 k_rows_in_vec2 with the float4 means alone. Process-wide, for
 * benchmarks (kvtc__gpu_rows_set). */
#define KVTC_GPU_ROWS_IN_DEFAULT 1
static int rows_in_v = KVTC_GPU_ROWS_IN_DEFAULT;

/* Benchmarks: the encode rows kernel of later launches (0, 1 or 2 as
 * above, -1 the default again; the same rows from each). Process-wide and
 * not synchronized with launches on other threads (a bench knob).
 * KVTC_EINVAL on another value. */
extern "C" int kvtc__gpu_rows_set(int v)
{
    if (v < -1 || v > 2)
        return KVTC_EINVAL;
    rows_in_v = v < 0 ? KVTC_GPU_ROWS_IN_DEFAULT : v;
    return 0;
}

static kd_rowgeo geo(const kvtc_gpu_codec *g)
{
    const kvtc_layout *l = &g->p->layout;
    kd_rowgeo G = {l->layers, l->kv_heads, l->head_dim, l->dtype, l->rope_style, g->D, g->hd};
    return G;
}

int kvtc__launch_rows_in(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                         uint32_t n_chunks, uint64_t M, void *rows, int32_t *status, int vec,
                         cudaStream_t s)
{
    if (!M)
        return 0;
    int fp16 = g->params.gemm == KVTC_GPU_GEMM_FP16;
    if (vec && rows_in_v && fp16)
        (rows_in_v == 1 ? k_rows_in_vec2<__half, 1> : k_rows_in_vec2<__half, 0>)
            <<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream, g->inv_freq,
                                                 g->mean[stream], (__half *)rows, status);
    else if (vec && rows_in_v)
        (rows_in_v == 1 ? k_rows_in_vec2<__nv_bfloat16, 1> : k_rows_in_vec2<__nv_bfloat16, 0>)
            <<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream, g->inv_freq,
                                                 g->mean[stream], (__nv_bfloat16 *)rows, status);
    else if (vec && g->params.gemm == KVTC_GPU_GEMM_FP16)
        k_rows_in_vec<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream,
                                                                 g->inv_freq, g->mean[stream],
                                                                 (__half *)rows, status);
    else if (vec)
        k_rows_in_vec<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, g->mean[stream], (__nv_bfloat16 *)rows,
            status);
    else if (g->params.gemm == KVTC_GPU_GEMM_FP16)
        k_rows_in<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream,
                                                             g->inv_freq, g->mean[stream],
                                                             (__half *)rows, status);
    else
        k_rows_in<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, g->mean[stream], (__nv_bfloat16 *)rows,
            status);
    return kvtc__cuda_err(cudaGetLastError(), "rows_in");
}

int kvtc__launch_rows_out(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                          uint32_t n_chunks, uint64_t M, const void *rows,
                          const int32_t *status, int vec, cudaStream_t s)
{
    if (!M)
        return 0;
    if (vec && g->params.gemm == KVTC_GPU_GEMM_FP16)
        k_rows_out_vec<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, g->mean[stream], (const __half *)rows,
            status);
    else if (vec)
        k_rows_out_vec<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, g->mean[stream],
            (const __nv_bfloat16 *)rows, status);
    else if (g->params.gemm == KVTC_GPU_GEMM_FP16)
        k_rows_out<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream,
                                                              g->inv_freq, g->mean[stream],
                                                              (const __half *)rows, status);
    else
        k_rows_out<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, g->mean[stream],
            (const __nv_bfloat16 *)rows, status);
    return kvtc__cuda_err(cudaGetLastError(), "rows_out");
}

int kvtc__launch_rope_inplace(const kvtc_gpu_codec *g, const kvtc__dchunk *ch, uint32_t n_chunks,
                              uint64_t M, const int32_t *status, cudaStream_t s)
{
    if (!M || g->p->layout.rope_style == KVTC_ROPE_NONE)
        return 0;
    k_rope_inplace<<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), g->inv_freq, status);
    return kvtc__cuda_err(cudaGetLastError(), "rope in place");
}

/* ---- quantization, as quant.c does per group and token ---- */

/* A group whose per-token codes fill whole bytes (size * bits % 8 == 0) is
 * packed by the quantizer itself, straight into the symbol bytes: no other
 * token shares its bytes. Only the others go through the codes scratch and
 * k_pack. */
__device__ static inline int kd_direct(const kvtc__dgroup &gr) { return (gr.size * gr.bits) % 8 == 0; }

/* Block per row: small groups a thread each, then large groups a warp each. */
__global__ void k_quant(const kvtc__dchunk *ch, uint32_t nch, const kvtc__dgroup *groups,
                        const uint32_t *small, uint32_t nsmall, const uint32_t *large,
                        uint32_t nlarge, uint32_t ng, const float *coef, uint32_t kp,
                        uint8_t *codes)
{
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = (uint32_t)(m - C.row_start), lane = threadIdx.x & 31;
    const float *x = coef + m * kp;
    uint8_t *out = codes + m * kp;
    uint16_t *sym16 = (uint16_t *)C.sym; /* sym regions are 16-byte aligned */
    for (uint32_t k = threadIdx.x; k < nsmall; k += blockDim.x) {
        uint32_t gi = small[k];
        kvtc__dgroup gr = groups[gi];
        float v[KVTC_GPU_SMALL_GROUP], mn = INFINITY, mx = -INFINITY;
        for (uint32_t j = 0; j < gr.size; j++) {
            v[j] = x[gr.start + j];
            mn = fminf(mn, v[j]);
            mx = fmaxf(mx, v[j]);
        }
        mn = kd_clamp16(mn);
        mx = kd_clamp16(mx);
        uint16_t sh = 0, sc = 0;
        float shf, scf, inv;
        if (gr.dyn == UINT32_MAX) {
            kd_static_params(gr, &shf, &scf, &inv);
        } else if (gr.type == KVTC__Q_FP8) {
            sh = kd_fp8_shift(mn, mx);
            shf = kd_f16_to_f32(sh);
            float amax = 0;
            for (uint32_t j = 0; j < gr.size; j++)
                amax = fmaxf(amax, fabsf(__fsub_rn(v[j], shf)));
            kd_fp8_scale(amax, &sc, &scf, &inv);
        } else {
            kd_int_params(gr.bits, mn, mx, &sh, &sc, &shf, &scf, &inv);
        }
        if (kd_direct(gr)) {
            uint8_t *o = C.sym + C.code_off[gi] + (size_t)t * gr.size * gr.bits / 8;
            uint32_t per = 8 / gr.bits;
            for (uint32_t b = 0; b < gr.size * gr.bits / 8; b++) {
                uint32_t byte = 0;
                for (uint32_t k = 0; k < per; k++)
                    byte |= (uint32_t)kd_code(gr, v[b * per + k], shf, scf, inv) << (gr.bits * k);
                o[b] = (uint8_t)byte;
            }
        } else {
            for (uint32_t j = 0; j < gr.size; j++)
                out[gr.start + j] = kd_code(gr, v[j], shf, scf, inv);
        }
        if (gr.dyn != UINT32_MAX) {
            sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t] = sh;
            sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t] = sc;
        }
    }
    for (uint32_t k = threadIdx.x / 32; k < nlarge; k += blockDim.x / 32) {
        uint32_t gi = large[k];
        kvtc__dgroup gr = groups[gi];
        float mn = INFINITY, mx = -INFINITY;
        for (uint32_t j = lane; j < gr.size; j += 32) {
            float v = x[gr.start + j];
            mn = fminf(mn, v);
            mx = fmaxf(mx, v);
        }
        for (int o = 16; o; o >>= 1) {
            mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        }
        mn = kd_clamp16(mn);
        mx = kd_clamp16(mx);
        uint16_t sh = 0, sc = 0;
        float shf, scf, inv;
        if (gr.dyn == UINT32_MAX) {
            kd_static_params(gr, &shf, &scf, &inv);
        } else if (gr.type == KVTC__Q_FP8) {
            sh = kd_fp8_shift(mn, mx);
            shf = kd_f16_to_f32(sh);
            float amax = 0;
            for (uint32_t j = lane; j < gr.size; j += 32)
                amax = fmaxf(amax, fabsf(__fsub_rn(x[gr.start + j], shf)));
            for (int o = 16; o; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            kd_fp8_scale(amax, &sc, &scf, &inv);
        } else {
            kd_int_params(gr.bits, mn, mx, &sh, &sc, &shf, &scf, &inv);
        }
        if (kd_direct(gr)) {
            uint8_t *o = C.sym + C.code_off[gi] + (size_t)t * gr.size * gr.bits / 8;
            uint32_t per = 8 / gr.bits;
            for (uint32_t b = lane; b < gr.size * gr.bits / 8; b += 32) {
                uint32_t byte = 0;
                for (uint32_t k = 0; k < per; k++)
                    byte |= (uint32_t)kd_code(gr, x[gr.start + b * per + k], shf, scf, inv)
                            << (gr.bits * k);
                o[b] = (uint8_t)byte;
            }
        } else {
            for (uint32_t j = lane; j < gr.size; j += 32)
                out[gr.start + j] = kd_code(gr, x[gr.start + j], shf, scf, inv);
        }
        if (lane == 0 && gr.dyn != UINT32_MAX) {
            sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t] = sh;
            sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t] = sc;
        }
    }
}

int kvtc__launch_quant(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                       uint32_t n_chunks, uint64_t M, const float *coef, uint8_t *codes,
                       cudaStream_t s)
{
    if (!M || g->g1[stream] == g->g0[stream])
        return 0;
    if (g->qtiles[stream]) /* gpu_quant.cu: quantizes and packs */
        return kvtc__launch_quant_tiles(g, stream, ch, n_chunks, M, coef, s);
    k_quant<<<(unsigned)M, ROW_THREADS, 0, s>>>(
        ch, n_chunks, g->groups, g->glist + g->small0[stream], g->nsmall[stream],
        g->glist + g->large0[stream], g->nlarge[stream], g->ndyn, coef, g->ld[stream],
        codes);
    return kvtc__cuda_err(cudaGetLastError(), "quant");
}

/* Block per (chunk, slice of the stream's groups); each code byte is
 * written once, whole, by one thread, so no two threads share a byte. */
#define PACK_GROUPS 16
__global__ void k_pack(const kvtc__dchunk *ch, const kvtc__dgroup *groups, uint32_t g0,
                       uint32_t g1, const uint8_t *codes, uint32_t kp)
{
    const kvtc__dchunk C = ch[blockIdx.y];
    if (C.T == 0)
        return;
    for (uint32_t gi = g0 + blockIdx.x * PACK_GROUPS; gi < g1 && gi < g0 + (blockIdx.x + 1) * PACK_GROUPS;
         gi++) {
        kvtc__dgroup gr = groups[gi];
        if (kd_direct(gr))
            continue; /* packed by k_quant */
        uint64_t n_el = (uint64_t)C.T * gr.size, nbytes = (n_el * gr.bits + 7) / 8;
        uint8_t *out = C.sym + C.code_off[gi];
        uint32_t per = 8 / gr.bits;
        for (uint64_t b = threadIdx.x; b < nbytes; b += blockDim.x) {
            uint32_t v = 0;
            for (uint32_t k = 0; k < per; k++) {
                uint64_t e = b * per + k;
                if (e >= n_el)
                    break;
                uint64_t t = e / gr.size, j = e - t * gr.size;
                v |= (uint32_t)codes[(C.row_start + t) * kp + gr.start + j] << (gr.bits * k);
            }
            out[b] = (uint8_t)v;
        }
    }
}

int kvtc__launch_pack(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                      uint32_t n_chunks, const uint8_t *codes, cudaStream_t s)
{
    uint32_t ngs = g->g1[stream] - g->g0[stream];
    if (!ngs || !n_chunks || g->qtiles[stream]) /* tiles: packed by the quantizer */
        return 0;
    dim3 grid((ngs + PACK_GROUPS - 1) / PACK_GROUPS, n_chunks);
    k_pack<<<grid, ROW_THREADS, 0, s>>>(ch, g->groups, g->g0[stream], g->g1[stream], codes,
                                        g->ld[stream]);
    return kvtc__cuda_err(cudaGetLastError(), "pack");
}

/* ---- dequantization: block per row; small groups a thread, large a warp ---- */

template <typename RT>
__device__ static inline int kd_dequant_el(const kvtc__dgroup &gr, const uint8_t *in, uint32_t t,
                                           uint32_t j, float shf, float scf, RT *x)
{
    uint64_t bit = ((uint64_t)t * gr.size + j) * gr.bits;
    uint32_t q = (in[bit / 8] >> (bit % 8)) & ((1u << gr.bits) - 1);
    float v;
    int bad = 0;
    if (gr.type == KVTC__Q_FP8) {
        bad = (q & 0x7f) == 0x7f;
        v = shf + kd_e4m3_to_f32((uint8_t)q) * scf;
    } else {
        v = shf + (float)q * scf;
    }
    x[gr.start + j] = kd_to<RT>(v);
    return bad;
}

template <typename RT>
__global__ void k_dequant(const kvtc__dchunk *ch, uint32_t nch, const kvtc__dgroup *groups,
                          const uint32_t *small, uint32_t nsmall, const uint32_t *large,
                          uint32_t nlarge, uint32_t ng, RT *coef, uint32_t kp, uint32_t ones,
                          int32_t *status)
{
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = (uint32_t)(m - C.row_start), lane = threadIdx.x & 31;
    RT *x = coef + m * kp;
    for (uint32_t j = threadIdx.x; j < kp; j += blockDim.x)
        x[j] = kd_to<RT>(0.0f); /* dropped components */
    __syncthreads();
    if (ones && threadIdx.x == 0) /* direct decode: the mean's coefficients */
        x[ones] = x[ones + 1] = kd_to<RT>(1.0f);
    int bad = 0;
    const uint16_t *sym16 = (const uint16_t *)C.sym;
    for (uint32_t k = threadIdx.x; k < nsmall; k += blockDim.x) {
        uint32_t gi = small[k];
        kvtc__dgroup gr = groups[gi];
        int dyn = gr.dyn != UINT32_MAX;
        uint16_t sh = dyn ? sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t] : gr.sshift;
        uint16_t sc = dyn ? sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t] : gr.sscale;
        if ((sh & 0x7c00u) == 0x7c00u || (sc & 0x7c00u) == 0x7c00u) {
            bad = 1;
            continue;
        }
        float shf = kd_f16_to_f32(sh), scf = kd_f16_to_f32(sc);
        for (uint32_t j = 0; j < gr.size; j++)
            bad |= kd_dequant_el(gr, C.sym + C.code_off[gi], t, j, shf, scf, x);
    }
    for (uint32_t k = threadIdx.x / 32; k < nlarge; k += blockDim.x / 32) {
        uint32_t gi = large[k];
        kvtc__dgroup gr = groups[gi];
        int dyn = gr.dyn != UINT32_MAX;
        uint16_t sh = dyn ? sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t] : gr.sshift;
        uint16_t sc = dyn ? sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t] : gr.sscale;
        if ((sh & 0x7c00u) == 0x7c00u || (sc & 0x7c00u) == 0x7c00u) {
            bad = 1;
            continue;
        }
        float shf = kd_f16_to_f32(sh), scf = kd_f16_to_f32(sc);
        for (uint32_t j = lane; j < gr.size; j += 32)
            bad |= kd_dequant_el(gr, C.sym + C.code_off[gi], t, j, shf, scf, x);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0)
        atomicCAS((int *)&status[c], 0, KVTC_ECORRUPT);
}

int kvtc__launch_dequant(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                         uint32_t n_chunks, uint64_t M, void *coef, int32_t *status, int direct,
                         cudaStream_t s)
{
    if (!M || !g->kp[stream])
        return 0;
    if (g->qtiles[stream])
        return direct ? kvtc__launch_dequant_tiles_direct(g, stream, ch, n_chunks, M, coef, status,
                                                          s)
                      : kvtc__launch_dequant_tiles(g, stream, ch, n_chunks, M, coef, status, s);
    const uint32_t *sm = g->glist + g->small0[stream], *lg = g->glist + g->large0[stream];
    /* direct: the operand type is the chunk's, the row stride ldd and the
     * mean's two coefficients at kp, kp+1 */
    uint32_t ld = direct ? g->ldd[stream] : g->ld[stream], ones = direct ? g->kp[stream] : 0;
    int f16 = direct ? g->dir_type == CUDA_R_16F : g->params.gemm == KVTC_GPU_GEMM_FP16;
    if (f16)
        k_dequant<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, g->groups, sm, g->nsmall[stream], lg, g->nlarge[stream],
            g->ndyn, (__half *)coef, ld, ones, status);
    else
        k_dequant<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, g->groups, sm, g->nsmall[stream], lg, g->nlarge[stream],
            g->ndyn, (__nv_bfloat16 *)coef, ld, ones, status);
    return kvtc__cuda_err(cudaGetLastError(), "dequant");
}
