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

/* The block's RoPE angles of token t of chunk C: (cos, -sin) to undo the
 * rotation (encode), (cos, sin) to redo it. */
__device__ static inline void kd_angles(const kvtc__dchunk &C, uint32_t t, const kd_rowgeo &G,
                                        const double *inv_freq, int undo, float *cs, float *sn)
{
    double pos = (double)C.first_pos + t;
    for (uint32_t i = threadIdx.x; i < G.hdim / 2; i += blockDim.x) {
        double sv, cv;
        sincos(pos * inv_freq[i], &sv, &cv);
        cs[i] = (float)cv;
        sn[i] = undo ? -(float)sv : (float)sv;
    }
    __syncthreads();
}

/* The rotation of one RoPE pair by the angle (c, s), every rounding
 * spelled out: the compiler may fuse a * b - c * d either way round, and
 * did so differently in the scalar and vectorized kernels, so their rows
 * differed in the last bit (interleaved keys, session 11); each kernel
 * rotates through this one function. */
__device__ static inline void kd_rot(float x0, float x1, float c, float s, float *y0, float *y1)
{
    *y0 = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
    *y1 = __fmaf_rn(x0, s, __fmul_rn(x1, c));
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
        kd_angles(C, t, G, inv_freq, 1, cs, sn);
        uint32_t npairs = G.layers * G.kvh * (G.hdim / 2);
        for (uint32_t p = threadIdx.x; p < npairs; p += blockDim.x) {
            uint32_t layer, a, b, i;
            kd_pair(G, p, &layer, &a, &b, &i);
            const uint8_t *src = C.data + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            float x0 = kd_load(G.dtype, src, a), x1 = kd_load(G.dtype, src, b);
            bad |= !isfinite(x0) || !isfinite(x1);
            float y0, y1;
            kd_rot(x0, x1, cs[i], sn[i], &y0, &y1);
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
        kd_angles(C, t, G, inv_freq, 0, cs, sn);
        uint32_t npairs = G.layers * G.kvh * (G.hdim / 2);
        for (uint32_t p = threadIdx.x; p < npairs; p += blockDim.x) {
            uint32_t layer, a, b, i;
            kd_pair(G, p, &layer, &a, &b, &i);
            uint32_t ja = layer * G.hd + a, jb = layer * G.hd + b;
            float x0 = kd_from(row[ja]) + mean[ja], x1 = kd_from(row[jb]) + mean[jb];
            uint8_t *dst = out + (((size_t)layer * 2 + stream) * C.n_tokens + t) * G.hd * es;
            float y0, y1;
            kd_rot(x0, x1, cs[i], sn[i], &y0, &y1);
            kd_store(G.dtype, dst, a, y0);
            kd_store(G.dtype, dst, b, y1);
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

/* One unit of k_rows_in_vec: the 8 (or 2 x 8, half-split keys) elements a
 * (b) of one head vector, RoPE undone, the means ma (mb) subtracted, into
 * the row at column j: k_rows_in's expression, so the same bits. */
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
            float y0, y1;
            kd_rot(xa[e], xb[e], cs[i0 + e], sn[i0 + e], &y0, &y1);
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
            kd_rot(x0, x1, c0, s0, &xa[e], &xa[e + 1]);
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

/* One unit of k_rows_out_vec: the row's 8 (or 2 x 8, half-split keys)
 * elements at column j (a) and j + hdim / 2 (b), the means added, RoPE
 * redone, into the chunk at dst (and dst + hdim / 2): k_rows_out's
 * expression, so the same bits. */
template <typename RT>
__device__ static inline void kd_unit_out(const kd_rowgeo &G, int rope, int half, const float *cs,
                                          const float *sn, uint32_t w, kd_v8 a, kd_v8 b,
                                          const float *ma, const float *mb, uint16_t *dst)
{
    kd_v8 oa, ob;
    float xa[8];
    for (int e = 0; e < 8; e++)
        xa[e] = kd_rval<RT>(a.h[e]) + ma[e];
    if (half) {
        uint32_t i0 = w * 8;
        for (int e = 0; e < 8; e++) {
            float xb = kd_rval<RT>(b.h[e]) + mb[e];
            float y0, y1;
            kd_rot(xa[e], xb, cs[i0 + e], sn[i0 + e], &y0, &y1);
            oa.h[e] = kd_st16(G.dtype, y0);
            ob.h[e] = kd_st16(G.dtype, y1);
        }
        *(uint4 *)dst = oa.u;
        *(uint4 *)(dst + G.hdim / 2) = ob.u;
        return;
    }
    if (rope) {
        uint32_t i0 = w * 4;
        for (int e = 0; e < 8; e += 2) {
            float x0 = xa[e], x1 = xa[e + 1], c0 = cs[i0 + e / 2], s0 = sn[i0 + e / 2];
            kd_rot(x0, x1, c0, s0, &xa[e], &xa[e + 1]);
        }
    }
    for (int e = 0; e < 8; e++)
        oa.h[e] = kd_st16(G.dtype, xa[e]);
    *(uint4 *)dst = oa.u;
}

/* One unit of k_rope_inplace: rotate the 8 (2 x 8) elements at dst by
 * +angle, fp32 math, one rounding back to the chunk's dtype. */
__device__ static inline void kd_unit_rope(const kd_rowgeo &G, int half, const float *cs,
                                           const float *sn, uint32_t w, kd_v8 a, kd_v8 b,
                                           uint16_t *dst)
{
    kd_v8 oa, ob;
    float xa[8];
    for (int e = 0; e < 8; e++)
        xa[e] = kd_ld16(G.dtype, a.h[e]);
    if (half) {
        uint32_t i0 = w * 8;
        for (int e = 0; e < 8; e++) {
            float xb = kd_ld16(G.dtype, b.h[e]);
            float y0, y1;
            kd_rot(xa[e], xb, cs[i0 + e], sn[i0 + e], &y0, &y1);
            oa.h[e] = kd_st16(G.dtype, y0);
            ob.h[e] = kd_st16(G.dtype, y1);
        }
        *(uint4 *)dst = oa.u;
        *(uint4 *)(dst + G.hdim / 2) = ob.u;
        return;
    }
    uint32_t i0 = w * 4;
    for (int e = 0; e < 8; e += 2) {
        float x0 = xa[e], x1 = xa[e + 1], c0 = cs[i0 + e / 2], s0 = sn[i0 + e / 2];
        float y0, y1;
        kd_rot(x0, x1, c0, s0, &y0, &y1);
        oa.h[e] = kd_st16(G.dtype, y0);
        oa.h[e + 1] = kd_st16(G.dtype, y1);
    }
    *(uint4 *)dst = oa.u;
}

/* ---- The vectorized kernels' memory side. One block a row; a thread
 * takes the units threadIdx.x + k * blockDim.x and keeps its next
 * KD_RING units' loads in flight by cp.async into its own ring of slots in
 * shared memory: no registers held by loads in flight, so residency is
 * set by the ring (32 KiB a block) and the registers. A thread reads only
 * the slots it filled, so a wait on its own copies is enough: no block
 * barrier. The units' places come from a walk without a division a unit
 * (kd_walk). Measured (session 11, H200, 1 GiB): rows_in 0.79-0.81 ->
 * 0.70-0.72 ms, rows_out 0.84-0.87 -> 0.69-0.73, the direct decode's RoPE
 * 0.34-0.35 -> 0.31, against the kernels before (one or two 16-byte loads
 * a thread in flight, ~4 integer divisions a unit); docs/perf-notes.md,
 * "Row kernels with cp.async rings" (v23); on an H100 rows_in 0.92 -> 0.84
 * and rows_out unchanged (0.84, near that card's copy rate). ---- */

/* A thread's walk over the units u = threadIdx.x + k * blockDim.x of one
 * row, in order, as (layer, r): r the unit within the layer (upl units a
 * layer), advanced by blockDim.x units a step. */
struct kd_walk {
    uint32_t upl, per_vec, layer, r, sl, sr;
    float inv_pv;
    __device__ kd_walk(uint32_t units_per_layer, uint32_t pv)
        : upl(units_per_layer), per_vec(pv), layer(threadIdx.x / units_per_layer),
          r(threadIdx.x % units_per_layer), sl(blockDim.x / units_per_layer),
          sr(blockDim.x % units_per_layer), inv_pv(1.0f / pv)
    {
    }
    __device__ void next()
    {
        r += sr;
        layer += sl;
        if (r >= upl) {
            r -= upl;
            layer++;
        }
    }
    /* Unit r's first element within its layer, and w: the unit's index
     * within its head vector. r < 2^17 is exact in a float; the product's
     * rounding moves the quotient by at most one, corrected here. */
    __device__ uint32_t elem(uint32_t hdim, uint32_t *w) const
    {
        uint32_t h = (uint32_t)((float)r * inv_pv);
        if (h * per_vec > r)
            h--;
        else if ((h + 1) * per_vec <= r)
            h++;
        *w = r - h * per_vec;
        return h * hdim + *w * 8;
    }
};

__device__ static inline void kd_means8(const float *__restrict__ mean, float *m8)
{
    const float4 *m4 = (const float4 *)mean;
    float4 m0 = __ldg(m4), m1 = __ldg(m4 + 1);
    m8[0] = m0.x, m8[1] = m0.y, m8[2] = m0.z, m8[3] = m0.w;
    m8[4] = m1.x, m8[5] = m1.y, m8[6] = m1.z, m8[7] = m1.w;
}

#define KD_RING 4

__device__ static inline void kd_cp16(uint4 *dst, const void *src)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(src) : "memory");
}
__device__ static inline void kd_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ static inline void kd_cp_wait_ring()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(KD_RING - 1) : "memory");
}

/* A thread's ring: slot k's two 16-byte parts (a, b) at ring[(2k + p) *
 * blockDim.x + threadIdx.x], so a warp's 32 parts are consecutive. */
struct kd_ring {
    uint4 *my;
    __device__ explicit kd_ring(uint4 *ring) : my(ring + threadIdx.x) {}
    __device__ void fill(uint32_t k, const uint16_t *a, const uint16_t *b) const
    {
        uint32_t slot = k % KD_RING;
        kd_cp16(my + 2 * slot * blockDim.x, a);
        if (b)
            kd_cp16(my + (2 * slot + 1) * blockDim.x, b);
    }
    __device__ void take(uint32_t k, int half, kd_v8 *a, kd_v8 *b) const
    {
        uint32_t slot = k % KD_RING;
        a->u = my[2 * slot * blockDim.x];
        b->u = half ? my[(2 * slot + 1) * blockDim.x] : a->u;
    }
};

/* Units of this thread in a row of `units`: threadIdx.x + k * blockDim.x. */
__device__ static inline uint32_t kd_my_units(uint32_t units)
{
    return units > threadIdx.x ? (units - threadIdx.x + blockDim.x - 1) / blockDim.x : 0;
}

/* A thread's units of one row as a stream: unit k's bytes come from src +
 * layer * lstride + its element (and + hdim / 2 for half-split pairs);
 * `in` walks the loads KD_RING units ahead of `out`, the units used. */
struct kd_units {
    kd_walk in, out;
    kd_ring rg;
    const uint16_t *src;
    size_t lstride;
    uint32_t n, hdim;
    int half;
    __device__ kd_units(uint4 *ring, const kd_rowgeo &G, int half_pairs, const uint16_t *from,
                        size_t layer_stride)
        : in(G.kvh * (G.hdim / 8 / (half_pairs ? 2 : 1)), G.hdim / 8 / (half_pairs ? 2 : 1)),
          out(in), rg(ring), src(from), lstride(layer_stride),
          n(kd_my_units(G.layers * in.upl)), hdim(G.hdim), half(half_pairs)
    {
        for (uint32_t k = 0; k < KD_RING; k++)
            issue(k);
    }
    /* the in-walk's unit (this thread's k-th) into its slot */
    __device__ void issue(uint32_t k)
    {
        uint32_t w;
        const uint16_t *sp = src + in.layer * lstride + in.elem(hdim, &w);
        if (k < n)
            rg.fill(k, sp, half ? sp + hdim / 2 : NULL);
        kd_cp_commit();
        in.next();
    }
    /* unit k's bytes (once they are in), its layer, its first element
     * within the layer and w, its index within its head vector */
    __device__ void take(uint32_t k, kd_v8 *a, kd_v8 *b, uint32_t *layer, uint32_t *e,
                         uint32_t *w)
    {
        *layer = out.layer;
        *e = out.elem(hdim, w);
        out.next();
        kd_cp_wait_ring();
        rg.take(k, half, a, b);
    }
    /* after unit k's bytes are used: its slot takes unit k + KD_RING */
    __device__ void refill(uint32_t k) { issue(k + KD_RING); }
    /* the means of the unit at column j (and j + hdim / 2) */
    __device__ void means(const float *__restrict__ mean, uint32_t j, float *ma, float *mb) const
    {
        kd_means8(mean + j, ma);
        if (half)
            kd_means8(mean + j + hdim / 2, mb);
    }
};

/* 4 blocks an SM (64 registers): 3 gave 0.78-0.79 ms where 4 gave 0.70-0.72. */
template <typename RT>
__global__ void __launch_bounds__(ROW_THREADS, 4)
k_rows_in_vec(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
              const double *inv_freq, const float *__restrict__ mean, RT *rows, int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    __shared__ uint4 ring[2 * KD_RING * ROW_THREADS];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    int half = rope && G.rope_style == KVTC_ROPE_HALF_SPLIT;
    uint16_t *row = (uint16_t *)(rows + m * G.D);
    /* the first loads go out before the angles' sincos */
    kd_units U(ring, G, half, (const uint16_t *)C.data + ((size_t)stream * C.n_tokens + t) * G.hd,
               (size_t)2 * C.n_tokens * G.hd);
    if (rope)
        kd_angles(C, t, G, inv_freq, 1, cs, sn);
    int bad = 0, range = 0;
    for (uint32_t k = 0; k < U.n; k++) {
        kd_v8 a, b;
        uint32_t layer, e, w;
        float ma[8], mb[8];
        U.take(k, &a, &b, &layer, &e, &w);
        uint32_t j = layer * G.hd + e;
        U.means(mean, j, ma, mb);
        kd_unit_in<RT>(G, rope, half, cs, sn, w, a, b, ma, mb, row, j, &bad, &range);
        U.refill(k);
    }
    bad = __syncthreads_or(bad);
    range = __syncthreads_or(range);
    if ((bad || range) && threadIdx.x == 0)
        status[c] = bad ? KVTC_EINVAL : KVTC_ENOTSUP;
}

/* Blocks an SM the compiler must fit (registers): 5 here (48 registers) */
#ifndef KD_OUT_BLOCKS
#define KD_OUT_BLOCKS 5
#endif
template <typename RT>
__global__ void __launch_bounds__(ROW_THREADS, KD_OUT_BLOCKS)
k_rows_out_vec(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, int stream,
               const double *inv_freq, const float *__restrict__ mean, const RT *rows,
               const int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    __shared__ uint4 ring[2 * KD_RING * ROW_THREADS];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    if (status[c])
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int rope = stream == 0 && G.rope_style != KVTC_ROPE_NONE;
    int half = rope && G.rope_style == KVTC_ROPE_HALF_SPLIT;
    uint16_t *dst = (uint16_t *)C.data + ((size_t)stream * C.n_tokens + t) * G.hd;
    size_t lstride = (size_t)2 * C.n_tokens * G.hd;
    kd_units U(ring, G, half, (const uint16_t *)(rows + m * G.D), G.hd);
    if (rope)
        kd_angles(C, t, G, inv_freq, 0, cs, sn);
    for (uint32_t k = 0; k < U.n; k++) {
        kd_v8 a, b;
        uint32_t layer, e, w;
        float ma[8], mb[8];
        U.take(k, &a, &b, &layer, &e, &w);
        U.means(mean, layer * G.hd + e, ma, mb);
        kd_unit_out<RT>(G, rope, half, cs, sn, w, a, b, ma, mb, dst + layer * lstride + e);
        U.refill(k);
    }
}

/* Direct decode, keys: the GEMM wrote token t's keys unrotated (mean
 * included) into the chunk; rotate them in place by +angle. */
__global__ void __launch_bounds__(ROW_THREADS)
k_rope_inplace(const kvtc__dchunk *ch, uint32_t nch, kd_rowgeo G, const double *inv_freq,
               const int32_t *status)
{
    __shared__ float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    __shared__ uint4 ring[2 * KD_RING * ROW_THREADS];
    uint64_t m = blockIdx.x;
    uint32_t c = kd_find_chunk(ch, nch, m);
    if (status[c])
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t t = C.sinks + (uint32_t)(m - C.row_start);
    int half = G.rope_style == KVTC_ROPE_HALF_SPLIT;
    uint16_t *dst = (uint16_t *)C.data + (size_t)t * G.hd; /* keys of layer 0 */
    size_t lstride = (size_t)2 * C.n_tokens * G.hd;
    kd_units U(ring, G, half, dst, lstride);
    kd_angles(C, t, G, inv_freq, 0, cs, sn);
    for (uint32_t k = 0; k < U.n; k++) {
        kd_v8 a, b;
        uint32_t layer, e, w;
        U.take(k, &a, &b, &layer, &e, &w);
        kd_unit_rope(G, half, cs, sn, w, a, b, dst + layer * lstride + e);
        U.refill(k);
    }
}

/* Which row kernels run where 16-byte units fit: 1 the vectorized ones
 * (the default), 0 the scalar ones everywhere (tests: both give the same
 * bits). Process-wide (kvtc__gpu_rows_set). */
#define KVTC_GPU_ROWS_DEFAULT 1
static int rows_v = KVTC_GPU_ROWS_DEFAULT;

/* Tests and benchmarks: the row kernels of later launches (0 or 1 as
 * above, -1 the default again). Process-wide and not synchronized with
 * launches on other threads. KVTC_EINVAL on another value. */
extern "C" int kvtc__gpu_rows_set(int v)
{
    if (v < -1 || v > 1)
        return KVTC_EINVAL;
    rows_v = v < 0 ? KVTC_GPU_ROWS_DEFAULT : v;
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
    const float *mean = g->mean[stream];
    if (vec && rows_v && fp16)
        k_rows_in_vec<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (__half *)rows, status);
    else if (vec && rows_v)
        k_rows_in_vec<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (__nv_bfloat16 *)rows, status);
    else if (fp16)
        k_rows_in<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(ch, n_chunks, geo(g), stream,
                                                             g->inv_freq, mean, (__half *)rows,
                                                             status);
    else
        k_rows_in<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (__nv_bfloat16 *)rows, status);
    return kvtc__cuda_err(cudaGetLastError(), "rows_in");
}

int kvtc__launch_rows_out(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                          uint32_t n_chunks, uint64_t M, const void *rows,
                          const int32_t *status, int vec, cudaStream_t s)
{
    if (!M)
        return 0;
    int fp16 = g->params.gemm == KVTC_GPU_GEMM_FP16;
    const float *mean = g->mean[stream];
    if (vec && rows_v && fp16)
        k_rows_out_vec<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (const __half *)rows, status);
    else if (vec && rows_v)
        k_rows_out_vec<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (const __nv_bfloat16 *)rows,
            status);
    else if (fp16)
        k_rows_out<__half><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (const __half *)rows, status);
    else
        k_rows_out<__nv_bfloat16><<<(unsigned)M, ROW_THREADS, 0, s>>>(
            ch, n_chunks, geo(g), stream, g->inv_freq, mean, (const __nv_bfloat16 *)rows,
            status);
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
