/* gpu_quant.cu - the tiled quantizer: quantize + pack and dequantize of the
 * projected coefficients, one block per (tile of QT tokens of one chunk,
 * item of whole groups), one launch per stream for all groups.
 *
 * Why tiles: the codes of QT = 8 consecutive tokens of one group fill
 * whole bytes for every type (8 x 2 bits), so a tile owns its code bytes
 * and packs them itself (no codes scratch, no k_pack reading it back
 * across rows), and its shifts/scales are 16 contiguous bytes per group.
 * The block first stages its tile's coefficients in shared memory with
 * 16-byte loads all issued before use (the row-per-block kernel had one
 * dependent 128-byte load per warp in flight), then quantizes from there
 * with the same per-(token, group) math as gpu_rows.cu (gpu_quant.cuh),
 * so the bytes are the CPU codec's. Dequantize mirrors it: code bytes in,
 * values staged in shared memory, rows written with 16-byte stores (items
 * cover every column, so no separate zeroing pass).
 *
 * Who does what inside a tile: a group of at most KQ_LANE_GROUP components
 * is one thread's per token (the planner's many size-1 and size-16
 * groups: no shuffles, no ballots, its codes stored a word at a time);
 * larger groups a warp's per token (quantize) or the whole block's
 * (dequantize), found through per-item lists (kq_lists) rather than by
 * every warp scanning every group. Session 12 measured on an H200 (1 GiB
 * Llama-3.1-8B batch, 16x plan, per stream): quantize 197 -> 99 us
 * (147M -> 65M instructions), dequantize 136 -> 72 us (107M -> 54M). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "gpu_internal.h"
#include "gpu_numeric.cuh"
#include "gpu_quant.cuh"

/* The default: 1, the tiled kernels (the notes' variant 7: encq, v16; the
 * lead's H100 run of 775d8a8, random-plan symbols equal to the CPU's for
 * group sizes 1..1024, every type, T 1..257, memcheck clean; encode
 * quantizer 0.425 ms against 0.691 for variant 4 on the benchmark plan).
 * 0: the row-per-block kernels (gpu_rows.cu), the reference. */
#define KVTC_GPU_QUANT_TILES_DEFAULT 1

#define QT 8u                       /* tokens per tile = warps per block */
#define QTHREADS (QT * 32u)
#define QW KVTC_GPU_QITEM_COLS
#define QG KVTC_GPU_QITEM_GROUPS
#define QXS (QW + 8u)               /* staged row stride (floats): 16-byte rows */
#define QCS (QW + 8u)               /* codes row stride: a0 may sit 3 below c0 */
#define QVS (QW + 16u)              /* dequantized row stride (16-bit values) */
/* Groups of at most this many components are a lane's own, per token, in
 * both directions: the planner's many size-1 and size-16 groups. */
#define KQ_LANE_GROUP 32u

static_assert(KVTC__MAX_GROUP <= QW, "a group must fit one item");
static_assert(QTHREADS * 2 * 4 >= QW + 8, "two float4 rounds cover an item's columns");
static_assert(QG <= 256, "an item's group indices fit kq_lists' bytes");

/* The tile of virtual index v: chunk c owns v in [A_c, A_c + ceil(T_c/QT))
 * with A_c = row_start_c / QT + c (disjoint and increasing since row_start
 * grows by T_c); *t0 its first token. 0 if v is in no chunk's range. */
__device__ static inline int kq_tile(const kvtc__dchunk *ch, uint32_t nch, uint32_t v,
                                     uint32_t *c, uint32_t *t0)
{
    uint32_t lo = 0, hi = nch;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (ch[mid].row_start / QT + mid <= v)
            lo = mid;
        else
            hi = mid;
    }
    uint64_t a = ch[lo].row_start / QT + lo;
    if (v < a || (uint64_t)(v - a) * QT >= ch[lo].T)
        return 0;
    *c = lo;
    *t0 = (uint32_t)(v - a) * QT;
    return 1;
}

/* Byte b of a group's tile codes (nel = tokens x size elements, token-major,
 * little-endian within the byte; elements past nel are zero bits). */
__device__ static inline uint32_t kq_byte(const uint8_t (*cs)[QCS], const kvtc__dgroup &gr,
                                          uint32_t lc, uint32_t b, uint32_t nel)
{
    uint32_t per = 8 / gr.bits, e = b * per, r = e / gr.size, j = e - r * gr.size, v = 0;
    for (uint32_t k = 0; k < per && e + k < nel; k++) {
        v |= (uint32_t)cs[r][lc + j] << (gr.bits * k);
        if (++j == gr.size) {
            j = 0;
            r++;
        }
    }
    return v;
}

template <int HW> __device__ static inline uint32_t kq_e4m3(float f)
{
    if (HW && f == f)
        return (uint32_t)__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
    return kd_f32_to_e4m3(f);
}

/* kd_code with the type and bits in registers (gpu_quant.cuh's expression;
 * callers pass a descriptor copied out of shared memory once, where the
 * reference form reloaded it per element: a store to the codes array may
 * alias it). */
template <int HW>
__device__ static inline uint32_t kq_code(uint32_t type, uint32_t bits, float x, float shf,
                                          float scf, float inv)
{
    float d = __fmul_rn(__fsub_rn(x, shf), inv);
    if (type == KVTC__Q_FP8)
        return scf > 0 ? kq_e4m3<HW>(d) : 0;
    float q = scf > 0 ? rintf(d) : 0;
    return (uint32_t)fminf(fmaxf(q, 0.0f), (float)((1u << bits) - 1));
}

/* Codes of one byte per q < 8 / bits (elements per byte). */
__device__ static inline uint32_t kq_per(uint32_t bits) { return bits == 2 ? 4u : bits == 4 ? 2u : 1u; }

/* The item's groups that no single thread takes, as ordered lists of
 * their indices (< QG) built by one warp: big, more than KQ_LANE_GROUP
 * components (a warp or the block per token); wide, tile codes of more
 * than 256 bits ending inside a byte (the quantizer's block-wide packing).
 * Scanning every group for these in each warp cost a third of the
 * quantizer's instructions. */
__device__ static void kq_lists(const kvtc__dgroup *g, uint32_t ngi, uint32_t lane, uint8_t *big,
                                uint32_t *nbig, uint8_t *wide, uint32_t *nwide)
{
    uint32_t nb = 0, nw = 0, below = (1u << lane) - 1;
    for (uint32_t kb = 0; kb < ngi; kb += 32) {
        uint32_t k = kb + lane, size = 0, tb = 0;
        if (k < ngi) {
            size = g[k].size;
            tb = size * g[k].bits;
        }
        int isb = size > KQ_LANE_GROUP, isw = tb > 256 && tb % 8;
        uint32_t mb = __ballot_sync(0xffffffffu, isb), mw = __ballot_sync(0xffffffffu, isw);
        if (isb)
            big[nb + __popc(mb & below)] = (uint8_t)k;
        if (isw)
            wide[nw + __popc(mw & below)] = (uint8_t)k;
        nb += __popc(mb);
        nw += __popc(mw);
    }
    if (lane == 0) {
        *nbig = nb;
        *nwide = nw;
    }
}

/* The fp8 shift of a group's min/max (clamped to fp16's range), and its
 * value, which the amax pass measures distances from. */
__device__ static inline uint16_t kq_fp8_shift(float mn, float mx, float *shf)
{
    uint16_t sh = kd_fp8_shift(kd_clamp16(mn), kd_clamp16(mx));
    *shf = kd_f16_to_f32(sh);
    return sh;
}

/* Shift and scale of one group for one token (their fp16 bits: 0 for
 * static groups, whose pair is the plan's): dynamic int groups from their
 * min/max, fp8 ones from their shift fsh and amax. The reductions behind
 * mn, mx and amax are order-free, so any split of the elements over lanes
 * gives these bytes. */
__device__ static inline void kq_params(const kvtc__dgroup &gg, float mn, float mx, uint16_t fsh,
                                        float amax, uint16_t *sh, uint16_t *sc, float *shf,
                                        float *scf, float *inv)
{
    *sh = *sc = 0;
    if (gg.dyn == UINT32_MAX) {
        kd_static_params(gg, shf, scf, inv);
    } else if (gg.type == KVTC__Q_FP8) {
        *sh = fsh;
        *shf = kd_f16_to_f32(fsh);
        kd_fp8_scale(amax, sc, scf, inv);
    } else {
        kd_int_params(gg.bits, kd_clamp16(mn), kd_clamp16(mx), sh, sc, shf, scf, inv);
    }
}

/* min/max folded with a float4 of the group's elements. */
__device__ static inline void kq_minmax4(float4 f, float *mn, float *mx)
{
    *mn = fminf(*mn, fminf(fminf(f.x, f.y), fminf(f.z, f.w)));
    *mx = fmaxf(*mx, fmaxf(fmaxf(f.x, f.y), fmaxf(f.z, f.w)));
}

/* The codes of 4 consecutive elements, packed (4 x bits bits). */
__device__ static inline uint32_t kq_code4(const kvtc__dgroup &gg, float4 f, float shf, float scf,
                                           float inv)
{
    return kq_code<1>(gg.type, gg.bits, f.x, shf, scf, inv) |
           kq_code<1>(gg.type, gg.bits, f.y, shf, scf, inv) << gg.bits |
           kq_code<1>(gg.type, gg.bits, f.z, shf, scf, inv) << (2 * gg.bits) |
           kq_code<1>(gg.type, gg.bits, f.w, shf, scf, inv) << (3 * gg.bits);
}

/* Byte b of one token's codes of a whole-byte group: 8 / bits codes of
 * the elements from x[b * 8 / bits]. */
__device__ static inline uint8_t kq_code_byte(const kvtc__dgroup &gg, const float *x, uint32_t b,
                                              float shf, float scf, float inv)
{
    uint32_t per = kq_per(gg.bits), v = 0;
    for (uint32_t q = 0; q < per; q++)
        v |= kq_code<1>(gg.type, gg.bits, x[b * per + q], shf, scf, inv) << (gg.bits * q);
    return (uint8_t)v;
}

/* 4 bytes at o: one store where o is 4-byte aligned. */
__device__ static inline void kq_put4(uint8_t *o, uint32_t v, int aligned)
{
    if (aligned) {
        *(uint32_t *)o = v;
        return;
    }
    for (int k = 0; k < 4; k++)
        o[k] = (uint8_t)(v >> (8 * k));
}

/* A group of at most KQ_LANE_GROUP components for one token, by one
 * thread: its parameters to sh_out and sc_out, its codes packed into whole
 * bytes at o, or to cw (the tile's codes row, for the pack phase) when the
 * token's codes end inside a byte. Groups of whole float4 units (the
 * planner's size-16 ones) read their row by 16 bytes and store their codes
 * 4 bytes at a time. */
__device__ static void kq_lane_group(const kvtc__dgroup &gg, const float *x, uint8_t *cw,
                                     uint16_t *sh_out, uint16_t *sc_out, uint8_t *o)
{
    uint32_t size = gg.size, bits = gg.bits;
    int vec = (size & 3) == 0 && ((uintptr_t)x & 15) == 0;
    const float4 *x4 = (const float4 *)x;
    float mn = INFINITY, mx = -INFINITY, amax = 0, shf = 0, scf, inv;
    uint16_t sh, sc, fsh = 0;
    if (gg.dyn != UINT32_MAX) {
        if (vec) {
            for (uint32_t u = 0; u < size / 4; u++)
                kq_minmax4(x4[u], &mn, &mx);
        } else {
            for (uint32_t j = 0; j < size; j++) {
                mn = fminf(mn, x[j]);
                mx = fmaxf(mx, x[j]);
            }
        }
        if (gg.type == KVTC__Q_FP8) {
            fsh = kq_fp8_shift(mn, mx, &shf);
            for (uint32_t u = 0; vec && u < size / 4; u++) {
                float4 f = x4[u];
                float a = fmaxf(fabsf(__fsub_rn(f.x, shf)), fabsf(__fsub_rn(f.y, shf)));
                a = fmaxf(a, fmaxf(fabsf(__fsub_rn(f.z, shf)), fabsf(__fsub_rn(f.w, shf))));
                amax = fmaxf(amax, a);
            }
            for (uint32_t j = 0; !vec && j < size; j++)
                amax = fmaxf(amax, fabsf(__fsub_rn(x[j], shf)));
        }
    }
    kq_params(gg, mn, mx, fsh, amax, &sh, &sc, &shf, &scf, &inv);
    *sh_out = sh;
    *sc_out = sc;
    if (vec) { /* 4 codes = 4 x bits bits: whole bytes for every type */
        int al = ((uintptr_t)o & 3) == 0;
        uint64_t acc = 0;
        uint32_t nbits = 0, ob = 0;
        for (uint32_t u = 0; u < size / 4; u++) {
            acc |= (uint64_t)kq_code4(gg, x4[u], shf, scf, inv) << nbits;
            nbits += 4 * bits;
            if (nbits >= 32) {
                kq_put4(o + ob, (uint32_t)acc, al);
                ob += 4;
                acc >>= 32;
                nbits -= 32;
            }
        }
        for (; nbits; nbits -= 8, acc >>= 8)
            o[ob++] = (uint8_t)acc;
        return;
    }
    if (size * bits % 8) {
        for (uint32_t j = 0; j < size; j++)
            cw[j] = (uint8_t)kq_code<1>(gg.type, bits, x[j], shf, scf, inv);
        return;
    }
    for (uint32_t b = 0; b < size * bits / 8; b++)
        o[b] = kq_code_byte(gg, x, b, shf, scf, inv);
}

/* A group larger than KQ_LANE_GROUP for one token, by the whole warp:
 * min/max (and fp8 amax) reduced over the lanes, every lane then holds the
 * parameters; lane 0 stores their bits; codes as kq_lane_group's. */
__device__ static void kq_warp_group(const kvtc__dgroup &gg, const float *x, uint32_t lane,
                                     uint8_t *cw, uint16_t *sh_out, uint16_t *sc_out, uint8_t *o)
{
    const unsigned full = 0xffffffffu;
    uint32_t size = gg.size, j0 = 0;
    int aligned = ((uintptr_t)x & 15) == 0;
    float mn = INFINITY, mx = -INFINITY, amax = 0, shf = 0, scf, inv;
    uint16_t sh, sc, fsh = 0;
    if (gg.dyn != UINT32_MAX) {
        if (aligned) {
            const float4 *x4 = (const float4 *)x;
            for (uint32_t u = lane; u < size / 4; u += 32)
                kq_minmax4(x4[u], &mn, &mx);
            j0 = size & ~3u;
        }
        for (uint32_t j = j0 + lane; j < size; j += 32) {
            mn = fminf(mn, x[j]);
            mx = fmaxf(mx, x[j]);
        }
        for (int d = 16; d; d >>= 1) {
            mn = fminf(mn, __shfl_xor_sync(full, mn, d));
            mx = fmaxf(mx, __shfl_xor_sync(full, mx, d));
        }
        if (gg.type == KVTC__Q_FP8) {
            fsh = kq_fp8_shift(mn, mx, &shf);
            for (uint32_t j = lane; j < size; j += 32)
                amax = fmaxf(amax, fabsf(__fsub_rn(x[j], shf)));
            for (int d = 16; d; d >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(full, amax, d));
        }
    }
    kq_params(gg, mn, mx, fsh, amax, &sh, &sc, &shf, &scf, &inv);
    if (lane == 0) {
        *sh_out = sh;
        *sc_out = sc;
    }
    if (size * gg.bits % 8) { /* a token's codes end inside a byte */
        for (uint32_t j = lane; j < size; j += 32)
            cw[j] = (uint8_t)kq_code<1>(gg.type, gg.bits, x[j], shf, scf, inv);
        return;
    }
    uint32_t per = kq_per(gg.bits), bt = size >> (per >> 1);
    if (aligned && (size & 3) == 0) {
        /* a float4 a lane: 4 codes, 4 x bits bits = 1, 2 or 4 bytes */
        const float4 *x4 = (const float4 *)x;
        uint32_t ub = gg.bits / 2;
        int al = ((uintptr_t)o & (ub - 1)) == 0;
        for (uint32_t u = lane; u < size / 4; u += 32) {
            uint32_t v = kq_code4(gg, x4[u], shf, scf, inv);
            uint8_t *d = o + u * ub;
            if (ub == 4 && al)
                *(uint32_t *)d = v;
            else if (ub == 2 && al)
                *(uint16_t *)d = (uint16_t)v;
            else
                for (uint32_t b = 0; b < ub; b++)
                    d[b] = (uint8_t)(v >> (8 * b));
        }
    } else if (per == 2 && ((uintptr_t)x & 7) == 0) {
        const float2 *x2 = (const float2 *)x;
        for (uint32_t b = lane; b < bt; b += 32) {
            float2 f = x2[b];
            o[b] = (uint8_t)(kq_code<1>(gg.type, 4, f.x, shf, scf, inv) |
                             kq_code<1>(gg.type, 4, f.y, shf, scf, inv) << 4);
        }
    } else {
        for (uint32_t b = lane; b < bt; b += 32)
            o[b] = kq_code_byte(gg, x, b, shf, scf, inv);
    }
}

/* kvtc__gpu_e4m3_check's sweep: every non-NaN float (NaN takes the
 * software rule in kq_e4m3 anyway). */
__global__ void k_e4m3_check(unsigned long long *bad, uint32_t *first)
{
    uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32); i += step) {
        float f = __uint_as_float((uint32_t)i);
        if (f == f && kq_e4m3<1>(f) != kd_f32_to_e4m3(f)) {
            atomicAdd(bad, 1ull);
            atomicMin(first, (uint32_t)i);
        }
    }
}

/* Tests: the hardware e4m3 conversion against gpu_numeric.cuh's software
 * one on every non-NaN float bit pattern; *mismatches and the smallest
 * mismatching pattern (*first, UINT32_MAX if none). Synchronous, device 0's
 * current context; KVTC_EIO on a CUDA error. */
extern "C" int kvtc__gpu_e4m3_check(uint64_t *mismatches, uint32_t *first)
{
    unsigned long long *d = NULL;
    int rc = kvtc__cuda_err(cudaMalloc((void **)&d, 16), "malloc");
    unsigned long long init[2] = {0, 0xffffffffull};
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(d, init, 16, cudaMemcpyHostToDevice), "copy");
    if (!rc) {
        k_e4m3_check<<<1024, 256>>>(d, (uint32_t *)(d + 1));
        rc = kvtc__cuda_err(cudaGetLastError(), "e4m3 check");
    }
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(init, d, 16, cudaMemcpyDeviceToHost), "copy");
    cudaFree(d);
    *mismatches = init[0];
    *first = (uint32_t)init[1];
    return rc;
}

/* Grid: x = tiles (M / QT + chunks), y = the stream's items. The item's
 * group descriptors and lists are staged in shared memory, the groups
 * quantized by kq_lane_group / kq_warp_group (whole-byte groups packed and
 * stored there), and the rest packed below. The history (variants 1-7,
 * measured on an H100) is in docs/perf-notes.md, "The quantizer as tiles"
 * to "Compress overhead under the GEMM"; variant 7 was kept, and session
 * 12 changed who quantizes what ("The (de)quantizer's threads"). */
__global__ void __launch_bounds__(QTHREADS)
k_quant_tiles(const kvtc__dchunk *ch, uint32_t nch, const kvtc__dgroup *__restrict__ groups,
              const kvtc__qitem *items, uint32_t ng, const float *__restrict__ coef, uint32_t ld)
{
    __shared__ __align__(16) float xs[QT][QXS];
    __shared__ uint8_t cs[QT][QCS];
    __shared__ uint16_t shs[QG][QT], scs[QG][QT];
    __shared__ kvtc__dgroup sg[QG];
    __shared__ uint8_t big[QG], wide[QG];
    __shared__ uint32_t nbig, nwide;
    const kvtc__qitem it = items[blockIdx.y];
    uint32_t c, t0;
    if (it.ga == it.gb || !kq_tile(ch, nch, blockIdx.x, &c, &t0))
        return; /* block-uniform: no thread reaches a barrier */
    const kvtc__dchunk C = ch[c];
    uint32_t nr = min(QT, C.T - t0), ngi = it.gb - it.ga;
    uint32_t tid = threadIdx.x, w = tid / 32, lane = tid & 31;
    /* the item's groups and lists (visible after the staging's barrier) */
    for (uint32_t k = tid; k < ngi; k += QTHREADS)
        sg[k] = groups[it.ga + k];
    if (w == 0)
        kq_lists(groups + it.ga, ngi, lane, big, &nbig, wide, &nwide);
    /* Stage: rows t0.. of the columns [a0, c1) as float4 (a0 = c0 rounded
     * down to 4; ld is a multiple of 16 and rows of coef 16-byte aligned,
     * so every unit is aligned and inside the row), loads before stores. */
    uint32_t a0 = it.c0 & ~3u, nv4 = (it.c1 - a0 + 3) / 4;
    const float *base = coef + (C.row_start + t0) * ld + a0;
    /* in two halves of QT/2 rows: 8 loads in flight per thread (16 KiB a
     * block) at 48 registers, so 4 blocks fit an SM (shared memory bound;
     * all rows at once took 80 registers: 3 blocks) */
#pragma unroll 1
    for (uint32_t h = 0; h < QT; h += QT / 2) {
        float4 v4[QT / 2][2];
#pragma unroll
        for (uint32_t r = 0; r < QT / 2; r++)
#pragma unroll
            for (uint32_t k = 0; k < 2; k++) {
                uint32_t u = tid + k * QTHREADS;
                if (h + r < nr && u < nv4)
                    v4[r][k] = __ldg((const float4 *)(base + (size_t)(h + r) * ld) + u);
            }
#pragma unroll
        for (uint32_t r = 0; r < QT / 2; r++)
#pragma unroll
            for (uint32_t k = 0; k < 2; k++) {
                uint32_t u = tid + k * QTHREADS;
                if (h + r < nr && u < nv4)
                    *(float4 *)&xs[h + r][4 * u] = v4[r][k];
            }
    }
    __syncthreads();
    /* Quantize (shift/scale bits to shs/scs, whole-byte groups' codes
     * packed and stored into sym, the others' to cs): groups of at most
     * KQ_LANE_GROUP components a thread per (group, token), so a warp
     * takes 4 groups x 8 tokens and its rows' 16-byte reads conflict at
     * most 2-way; larger groups warp w for token w. The same per-group math
     * as gpu_quant.cuh with order-free reductions: the row kernels' bytes,
     * the CPU codec's. (Until session 12 a warp took one token's small
     * groups 2-8 lanes each, in runs of one size class found by ballots,
     * with shuffles for every reduction and parameter.) */
    const size_t *coff = C.code_off + it.ga;
    for (uint32_t i = tid; i < ngi * QT; i += QTHREADS) {
        uint32_t k = i / QT, r = i % QT;
        const kvtc__dgroup gg = sg[k];
        if (r < nr && gg.size <= KQ_LANE_GROUP)
            kq_lane_group(gg, xs[r] + (gg.start - a0), cs[r] + (gg.start - a0), &shs[k][r],
                          &scs[k][r], C.sym + coff[k] + (size_t)(t0 + r) * (gg.size * gg.bits / 8));
    }
    for (uint32_t b = 0; w < nr && b < nbig; b++) {
        uint32_t k = big[b];
        const kvtc__dgroup gg = sg[k];
        kq_warp_group(gg, xs[w] + (gg.start - a0), lane, cs[w] + (gg.start - a0), &shs[k][w],
                      &scs[k][w], C.sym + coff[k] + (size_t)(t0 + w) * (gg.size * gg.bits / 8));
    }
    __syncthreads();
    /* Write: a warp per group for the tile's shifts/scales (contiguous per
     * group) and the code bytes of groups of at most 256 tile bytes; the
     * whole block for larger groups. Each byte is whole and this tile's. */
    uint16_t *sym16 = (uint16_t *)C.sym; /* sym regions are 16-byte aligned */
    for (uint32_t k = w; k < ngi; k += QT) {
        uint32_t gi = it.ga + k;
        kvtc__dgroup gr = sg[k];
        if (gr.dyn != UINT32_MAX) {
            if (lane < nr)
                sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t0 + lane] = shs[k][lane];
            else if (lane >= 16 && lane - 16 < nr)
                sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t0 + lane - 16] = scs[k][lane - 16];
        }
        if (gr.size * gr.bits > 256 || gr.size * gr.bits % 8 == 0)
            continue; /* the block's loop below, or written by the codes pass */
        uint32_t nel = nr * gr.size, nb = (nel * gr.bits + 7) / 8;
        uint8_t *o = C.sym + C.code_off[gi] + (size_t)t0 * gr.size * gr.bits / 8;
        if (gr.size == 1) { /* size-1 int2/int4: kq_byte without its divisions */
            uint32_t per = kq_per(gr.bits), lp = per >> 1, lc = gr.start - a0;
            for (uint32_t b = lane; b < nb; b += 32) {
                uint32_t v = 0;
                for (uint32_t q = 0; q < per; q++)
                    if ((b << lp) + q < nr)
                        v |= (uint32_t)cs[(b << lp) + q][lc] << (gr.bits * q);
                o[b] = (uint8_t)v;
            }
            continue;
        }
        for (uint32_t b = lane; b < nb; b += 32)
            o[b] = (uint8_t)kq_byte(cs, gr, gr.start - a0, b, nel);
    }
    for (uint32_t b = 0; b < nwide; b++) {
        uint32_t k = wide[b], gi = it.ga + k;
        kvtc__dgroup gr = sg[k];
        /* a token's codes end inside a byte: the block packs them */
        uint32_t nel = nr * gr.size, nb = (nel * gr.bits + 7) / 8, lc = gr.start - a0;
        uint8_t *o = C.sym + C.code_off[gi] + (size_t)t0 * gr.size * gr.bits / 8;
        for (uint32_t b = tid; b < nb; b += QTHREADS)
            o[b] = (uint8_t)kq_byte(cs, gr, lc, b, nel);
    }
}

template <typename RT> __device__ static inline uint16_t kq_bits(float v);
template <> __device__ inline uint16_t kq_bits<__half>(float v)
{
    __half h = __float2half_rn(v);
    return *(uint16_t *)&h;
}
template <> __device__ inline uint16_t kq_bits<__nv_bfloat16>(float v)
{
    __nv_bfloat16 h = __float2bfloat16_rn(v);
    return *(uint16_t *)&h;
}
/* fp8 decode (fp8b, v15): the GEMM's e4m3 activation straight from the
 * dequantized value, times the static scale (saturating, as cuBLASLt's
 * own conversions): no 16-bit copy, no amax pass, nothing shared with the
 * batch-mates. */
template <> __device__ inline uint16_t kq_bits<__nv_fp8_e4m3>(float v)
{
    return __nv_cvt_float_to_fp8(v * KVTC_GPU_FP8_DEC_SCALE, __NV_SATFINITE, __NV_E4M3);
}

/* Code q of a group, dequantized as gpu_rows.cu's kd_dequant_el (same
 * expression, same rounding); fp8 NaN codes set *bad. */
template <typename RT>
__device__ static inline uint32_t kq_dq(uint32_t type, uint32_t q, float shf, float scf, int *bad)
{
    float v;
    if (type == KVTC__Q_FP8) {
        *bad |= (q & 0x7f) == 0x7f;
        v = shf + kd_e4m3_to_f32((uint8_t)q) * scf;
    } else {
        v = shf + (float)q * scf;
    }
    return kq_bits<RT>(v);
}

/* Element e of a group's tile codes at `in`, dequantized. */
template <typename RT>
__device__ static inline uint16_t kq_value(const kvtc__dgroup &gr, const uint8_t *in, uint32_t e,
                                           float shf, float scf, int *bad)
{
    uint32_t bit = e * gr.bits, q = (in[bit / 8] >> (bit % 8)) & ((1u << gr.bits) - 1);
    return (uint16_t)kq_dq<RT>(gr.type, q, shf, scf, bad);
}

/* 8 consecutive codes starting at byte p (8 x bits bits: bits bytes, read
 * at once where p is aligned to them), dequantized: 16-bit values in
 * element order, two a word. */
template <typename RT>
__device__ static inline uint4 kq_unit8(const kvtc__dgroup &gr, const uint8_t *p, float shf,
                                        float scf, int *bad)
{
    uint32_t nb = gr.bits, mask = (1u << gr.bits) - 1, v[8];
    uint64_t w = 0;
    if (((uintptr_t)p & (nb - 1)) == 0)
        w = nb == 8 ? *(const uint64_t *)p : nb == 4 ? *(const uint32_t *)p : *(const uint16_t *)p;
    else
        for (uint32_t b = 0; b < nb; b++)
            w |= (uint64_t)p[b] << (8 * b);
#pragma unroll
    for (uint32_t q = 0; q < 8; q++)
        v[q] = kq_dq<RT>(gr.type, (uint32_t)(w >> (q * gr.bits)) & mask, shf, scf, bad);
    return make_uint4(v[0] | v[1] << 16, v[2] | v[3] << 16, v[4] | v[5] << 16, v[6] | v[7] << 16);
}

/* A unit of 8 values into vs's row at column lc: one store where lc is a
 * multiple of 8 (the row is 16-byte aligned). */
__device__ static inline void kq_put8(uint16_t *row, uint32_t lc, uint4 v)
{
    if ((lc & 7) == 0) {
        *(uint4 *)(row + lc) = v;
        return;
    }
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    for (uint32_t e = 0; e < 8; e++)
        row[lc + e] = (uint16_t)(w[e / 2] >> (16 * (e & 1)));
}

/* Grid as k_quant_tiles. Every column of the item is written: group
 * components dequantized, the others (dropped, padding) zero. */
template <typename RT>
__global__ void __launch_bounds__(QTHREADS)
k_dequant_tiles(const kvtc__dchunk *ch, uint32_t nch, const kvtc__dgroup *__restrict__ groups,
                const kvtc__qitem *items, uint32_t ng, RT *coef, uint32_t ld, int32_t *status)
{
    __shared__ __align__(16) uint16_t vs[QT][QVS];
    __shared__ float shs[QG][QT], scs[QG][QT];
    __shared__ uint8_t big[QG], wide[QG];
    __shared__ uint32_t nbig, nwide;
    const kvtc__qitem it = items[blockIdx.y];
    uint32_t c, t0;
    if (!kq_tile(ch, nch, blockIdx.x, &c, &t0))
        return;
    const kvtc__dchunk C = ch[c];
    uint32_t nr = min(QT, C.T - t0), ngi = it.gb - it.ga;
    uint32_t tid = threadIdx.x;
    uint32_t a0 = it.c0 & ~7u, width = it.c1 - a0;
    int bad = 0;
    const uint16_t *sym16 = (const uint16_t *)C.sym;
    if (tid < 32)
        kq_lists(groups + it.ga, ngi, tid, big, &nbig, wide, &nwide);
    /* Zeros for the columns no group covers, 8 a store (rows are 16-byte
     * aligned and QVS leaves room past width); each token-group's pair. */
    for (uint32_t r = 0; r < nr; r++)
        for (uint32_t u = tid; u < (width + 7) / 8; u += QTHREADS)
            *(uint4 *)&vs[r][8 * u] = make_uint4(0, 0, 0, 0);
    for (uint32_t i = tid; i < ngi * QT; i += QTHREADS) {
        uint32_t k = i / QT, r = i % QT;
        if (r >= nr)
            continue;
        kvtc__dgroup gr = groups[it.ga + k];
        int dyn = gr.dyn != UINT32_MAX;
        uint16_t sh = dyn ? sym16[kvtc__shift_off(gr.dyn, C.T) / 2 + t0 + r] : gr.sshift;
        uint16_t sc = dyn ? sym16[kvtc__scale_off(ng, gr.dyn, C.T) / 2 + t0 + r] : gr.sscale;
        bad |= (sh & 0x7c00u) == 0x7c00u || (sc & 0x7c00u) == 0x7c00u;
        shs[k][r] = kd_f16_to_f32(sh);
        scs[k][r] = kd_f16_to_f32(sc);
    }
    __syncthreads();
    /* Codes -> values: a thread per (group, token) for groups of at most
     * KQ_LANE_GROUP components (a warp: 4 groups x 8 tokens, the tokens'
     * codes contiguous); the whole block for larger ones (kq_lists), a
     * thread per 8 values of a token. Groups of whole 8-code units read a
     * unit's bytes at once (kq_unit8). (A warp per small group with an
     * element a lane spent an integer division and a byte load per element
     * and left most lanes idle on size-1 groups; every warp scanned every
     * group for the large ones.) */
    for (uint32_t i = tid; i < ngi * QT; i += QTHREADS) {
        uint32_t k = i / QT, r = i % QT, gi = it.ga + k;
        kvtc__dgroup gr = groups[gi];
        if (r >= nr || gr.size > KQ_LANE_GROUP)
            continue;
        const uint8_t *in = C.sym + C.code_off[gi] + (size_t)t0 * gr.size * gr.bits / 8;
        uint32_t lc = gr.start - a0, j = 0;
        float shf = shs[k][r], scf = scs[k][r];
        if ((gr.size & 7) == 0)
            for (; j < gr.size; j += 8)
                kq_put8(vs[r], lc + j,
                        kq_unit8<RT>(gr, in + (r * gr.size + j) * gr.bits / 8, shf, scf, &bad));
        for (; j < gr.size; j++)
            vs[r][lc + j] = kq_value<RT>(gr, in, r * gr.size + j, shf, scf, &bad);
    }
    for (uint32_t b = 0; b < nbig; b++) {
        uint32_t k = big[b], gi = it.ga + k;
        kvtc__dgroup gr = groups[gi];
        const uint8_t *in = C.sym + C.code_off[gi] + (size_t)t0 * gr.size * gr.bits / 8;
        uint32_t lc = gr.start - a0;
        if ((gr.size & 7) == 0) {
            uint32_t nu8 = gr.size / 8;
            for (uint32_t i = tid; i < nr * nu8; i += QTHREADS) {
                uint32_t r = i / nu8, u = i - r * nu8;
                kq_put8(vs[r], lc + 8 * u,
                        kq_unit8<RT>(gr, in + (r * gr.size + 8 * u) * gr.bits / 8, shs[k][r],
                                     scs[k][r], &bad));
            }
            continue;
        }
        for (uint32_t r = 0; r < nr; r++)
            for (uint32_t j = tid; j < gr.size; j += QTHREADS)
                vs[r][lc + j] = kq_value<RT>(gr, in, r * gr.size + j, shs[k][r], scs[k][r], &bad);
    }
    __syncthreads();
    /* Rows out: 8 values (16 bytes, e4m3: 8) a store where the unit is
     * the item's alone; the units shared with a neighbouring item
     * element-wise. */
    uint32_t nu = (it.c1 - a0 + 7) / 8;
    for (uint32_t r = 0; r < nr; r++)
        for (uint32_t u = tid; u < nu; u += QTHREADS) {
            uint32_t col = a0 + 8 * u;
            size_t at = (C.row_start + t0 + r) * ld + col;
            int whole = col >= it.c0 && col + 8 <= it.c1;
            if constexpr (sizeof(RT) == 1) {
                uint8_t *dst = (uint8_t *)coef + at;
                if (whole) {
                    const uint16_t *v = &vs[r][8 * u];
                    uint32_t lo = v[0] | v[1] << 8 | v[2] << 16 | (uint32_t)v[3] << 24;
                    uint32_t hi = v[4] | v[5] << 8 | v[6] << 16 | (uint32_t)v[7] << 24;
                    *(uint2 *)dst = make_uint2(lo, hi);
                } else {
                    for (uint32_t e = 0; e < 8; e++)
                        if (col + e >= it.c0 && col + e < it.c1)
                            dst[e] = (uint8_t)vs[r][8 * u + e];
                }
            } else {
                uint16_t *dst = (uint16_t *)coef + at;
                if (whole) {
                    *(uint4 *)dst = *(const uint4 *)&vs[r][8 * u];
                } else {
                    for (uint32_t e = 0; e < 8; e++)
                        if (col + e >= it.c0 && col + e < it.c1)
                            dst[e] = vs[r][8 * u + e];
                }
            }
        }
    if (__syncthreads_or(bad) && tid == 0)
        atomicCAS((int *)&status[c], 0, KVTC_ECORRUPT);
}

int kvtc__launch_quant_tiles(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                             uint32_t n_chunks, uint64_t M, const float *coef, cudaStream_t s)
{
    if (!M || !n_chunks || !g->nqi[stream])
        return 0;
    dim3 grid((unsigned)(M / QT + n_chunks), g->nqi[stream]);
    k_quant_tiles<<<grid, QTHREADS, 0, s>>>(ch, n_chunks, g->groups, g->qitem + g->qi0[stream],
                                            g->ndyn, coef, g->ld[stream]);
    return kvtc__cuda_err(cudaGetLastError(), "quant tiles");
}

/* The tiles' coefficients into coef as elements of type t (e4m3, fp16 or
 * bf16), rows ld apart. */
static void launch_dequant_as(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                              uint32_t n_chunks, uint64_t M, void *coef, uint32_t ld,
                              int32_t *status, cudaDataType t, cudaStream_t s)
{
    dim3 grid((unsigned)(M / QT + n_chunks), g->nqi[stream]);
    const kvtc__qitem *it = g->qitem + g->qi0[stream];
    if (t == CUDA_R_8F_E4M3)
        k_dequant_tiles<__nv_fp8_e4m3><<<grid, QTHREADS, 0, s>>>(
            ch, n_chunks, g->groups, it, g->ndyn, (__nv_fp8_e4m3 *)coef, ld, status);
    else if (t == CUDA_R_16F)
        k_dequant_tiles<__half><<<grid, QTHREADS, 0, s>>>(ch, n_chunks, g->groups, it, g->ndyn,
                                                          (__half *)coef, ld, status);
    else
        k_dequant_tiles<__nv_bfloat16><<<grid, QTHREADS, 0, s>>>(
            ch, n_chunks, g->groups, it, g->ndyn, (__nv_bfloat16 *)coef, ld, status);
}

int kvtc__launch_dequant_tiles(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                               uint32_t n_chunks, uint64_t M, void *coef, int32_t *status,
                               cudaStream_t s)
{
    if (!M || !n_chunks || !g->nqi[stream])
        return 0;
    cudaDataType t = kvtc__fp8_dec_e4m3(g, stream)             ? CUDA_R_8F_E4M3
                     : g->params.gemm == KVTC_GPU_GEMM_FP16 ? CUDA_R_16F
                                                            : CUDA_R_16BF;
    launch_dequant_as(g, stream, ch, n_chunks, M, coef, g->ld[stream], status, t, s);
    return kvtc__cuda_err(cudaGetLastError(), "dequant tiles");
}

/* Direct decode (gpu_gemm.cu, kvtc__gemm_direct): columns [kp, ldd) of
 * every row after the tiles wrote [0, ld): the mean's two coefficients (1
 * at kp and kp + 1, kvtc__direct_basis) and zeros. */
template <typename RT>
__global__ void k_dequant_mean_cols(uint16_t *coef, uint64_t M, uint32_t kp, uint32_t ldd)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t w = ldd - kp;
    if (i >= M * w)
        return;
    uint64_t r = i / w;
    uint32_t j = kp + (uint32_t)(i - r * w);
    coef[r * ldd + j] = kq_bits<RT>(j < kp + 2 ? 1.0f : 0.0f);
}

int kvtc__launch_dequant_tiles_direct(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                                      uint32_t n_chunks, uint64_t M, void *coef, int32_t *status,
                                      cudaStream_t s)
{
    if (!M || !n_chunks || !g->nqi[stream])
        return 0;
    uint32_t kp = g->kp[stream], ldd = g->ldd[stream];
    unsigned tb = (unsigned)((M * (ldd - kp) + 255) / 256);
    launch_dequant_as(g, stream, ch, n_chunks, M, coef, ldd, status, (cudaDataType)g->dir_type, s);
    if (g->dir_type == CUDA_R_16F)
        k_dequant_mean_cols<__half><<<tb, 256, 0, s>>>((uint16_t *)coef, M, kp, ldd);
    else
        k_dequant_mean_cols<__nv_bfloat16><<<tb, 256, 0, s>>>((uint16_t *)coef, M, kp, ldd);
    return kvtc__cuda_err(cudaGetLastError(), "dequant tiles (direct)");
}

/* Items of one stream into it[] (room for ld + groups entries); their
 * count, or 0 when the groups do not allow tiles. Greedy: whole groups
 * while the item spans <= QW columns and <= QG groups, the columns up to
 * the next group (or ld) included when they fit, else gap-only items. */
static uint32_t quant_items(const kvtc__dgroup *dg, uint32_t g0, uint32_t g1, uint32_t ld,
                            kvtc__qitem *it)
{
    uint32_t end = 0;
    for (uint32_t i = g0; i < g1; i++) {
        if (dg[i].start < end || dg[i].size == 0 || dg[i].size > QW ||
            (uint64_t)dg[i].start + dg[i].size > ld)
            return 0;
        end = dg[i].start + dg[i].size;
    }
    uint32_t n = 0, a = 0, gi = g0;
    while (a < ld) {
        uint32_t ga = gi;
        while (gi < g1 && gi - ga < QG && dg[gi].start + dg[gi].size - a <= QW)
            gi++;
        uint32_t next = gi < g1 ? dg[gi].start : ld, c1;
        if (gi == ga)
            c1 = next < a + QW ? next : a + QW; /* a gap: next > a here */
        else
            c1 = next - a <= QW ? next : dg[gi - 1].start + dg[gi - 1].size;
        it[n++] = {a, c1, ga, gi};
        a = c1;
    }
    return n;
}

int kvtc__quant_init(kvtc_gpu_codec *g, const kvtc__dgroup *dg)
{
    size_t cap = 0;
    for (int s = 0; s < 2; s++)
        cap += g->ld[s] + (g->g1[s] - g->g0[s]) + 1;
    kvtc__qitem *h = (kvtc__qitem *)malloc(sizeof *h * cap);
    if (!h)
        return KVTC_ENOMEM;
    uint32_t at = 0;
    for (int s = 0; s < 2; s++) {
        g->qi0[s] = at;
        g->nqi[s] = quant_items(dg, g->g0[s], g->g1[s], g->ld[s], h + at);
        if (g->nqi[s] > 65535) /* grid.y */
            g->nqi[s] = 0;
        g->qtiles[s] = g->nqi[s] > 0 ? KVTC_GPU_QUANT_TILES_DEFAULT : 0;
        at += g->nqi[s];
    }
    int rc = 0;
    if (at) {
        rc = kvtc__cuda_err(cudaMalloc((void **)&g->qitem, sizeof *h * at), "cudaMalloc");
        if (!rc)
            rc = kvtc__cuda_err(cudaMemcpy(g->qitem, h, sizeof *h * at, cudaMemcpyHostToDevice),
                                "cudaMemcpy");
    }
    free(h);
    return rc;
}

void kvtc__quant_free(kvtc_gpu_codec *g)
{
    cudaFree(g->qitem);
    g->qitem = NULL;
}

extern "C" int kvtc__gpu_quant_set(kvtc_gpu_codec *g, uint32_t tiles)
{
    if (!g || tiles > 1)
        return KVTC_EINVAL;
    for (int s = 0; s < 2; s++)
        g->qtiles[s] = g->nqi[s] > 0 ? tiles : 0;
    return 0;
}
