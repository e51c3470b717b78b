/* gpu_fp8.cu - the projections with fp8 (e4m3) operands, per direction
 * (kvtc_gpu_params.enc_gemm / dec_gemm = KVTC_GPU_PROJ_FP8; issue #3).
 *
 * cuBLASLt FP8 matmul on Hopper: both operands e4m3 and K-major ("TN"),
 * CUBLAS_COMPUTE_32F with fast accumulation OFF (bench/quality/projx.h
 * emulates fp32 accumulation: K = D = 32768 on an 8B model, and Hopper's
 * fast path accumulates without promotion), one per-tensor scale per
 * operand as a device scalar (A/B_SCALE_POINTER), no host sync:
 *   encode: coef^T[ld x M] (fp32) = enc8^T * rows8, enc8 [ld][D] (the
 *           encoder basis transposed at creation), rows8 [M][D];
 *   decode: rows^T[D x M] (fp16/bf16 as the rows pass reads) = bdec8^T *
 *           coef8, bdec8 [D][ld] (the layout of bdec), coef8 [M][ld].
 * Decode (fp8b, v15): the activation has a STATIC scale. The dequantized
 * coefficients are whitened (the profile's sigma is folded into bdec), so
 * every component has about unit variance and one constant,
 * KVTC_GPU_FP8_DEC_SCALE (1 sigma -> 16, saturating at 28 sigma), serves
 * them all; the tiled dequantizer writes e4m3 itself (gpu_quant.cu), the
 * GEMM descales by its inverse. A chunk's decode then depends on its own
 * symbols only: v13 scaled by the batch's amax, so a chunk decoded beside
 * a larger one came out coarser (the H100 test failure of 46a9733: a
 * 1-token chunk at 2.1x the per-chunk emulation's error) and its bytes
 * changed with its batch-mates. Every row runs in the FP8 GEMM: the last
 * M % 16 as a zero-padded 16-row GEMM into scratch (cuBLASLt's FP8 kernels
 * want 16-aligned dimensions; the 16-bit GEMM there would read twice the
 * basis bytes and give those rows other arithmetic).
 * Encode: the activation is converted from the 16-bit rows the rows pass
 * writes: an amax pass, then a pass that scales by 448/amax and rounds to
 * e4m3 (scale on the device), one scale per batch (an extreme but finite
 * chunk coarsens the others' rounding, never their validity); non-finite
 * values are left out of the amax (a poisoned chunk must not spoil its
 * neighbours' scale; its status is already set). The encode's coefficients
 * are quantized with per-token ranges, so its batch dependence is
 * rounding-level; a static per-column scale from the profile (the rows'
 * calibration std) would remove it the same way (docs/perf-notes.md).
 * Encode's FP8 GEMM takes the first M & ~15 rows, the 16-bit GEMM the
 * rest; when cuBLASLt has no FP8 algorithm for a shape or refuses it, the
 * 16-bit GEMM takes all (decode: from the e4m3 values widened back;
 * counted, kvtc__gpu_fp8_info; the first reason goes to stderr): fp8
 * never breaks a call. */
#include <cuda_fp8.h>
#include <stdio.h>

#include "gpu_internal.h"

#define F8_THREADS 256u
#define F8_MAX 448.0f
/* Device scalars each in a 256-byte slot: cuBLASLt refused (at launch,
 * CUBLAS_STATUS_NOT_SUPPORTED, after its heuristic accepted the problem)
 * scale pointers 4 or 8 bytes past a 16-byte boundary on the H100. */
#define F8_SLOT 64u
#define F8_N_SLOTS (5u + 2u * KVTC_GPU_MAX_LANES)
/* slot i: basis scale (dir, stream) i = 2 dir + stream; lane li's amax
 * 4 + 2 li, its activation scale 5 + 2 li; the decode activation's static
 * descale 1 / KVTC_GPU_FP8_DEC_SCALE last */
#define F8_DEC_SLOT (4u + 2u * KVTC_GPU_MAX_LANES)
#define F8_AT(f, i) ((f)->dev + (size_t)(i) * F8_SLOT)

struct kvtc__fp8 {
    int on[2];                   /* [0 encode, 1 decode] */
    void *b8[2][2];              /* [dir][stream] e4m3 bases (layouts above) */
    float *dev;                  /* F8_SLOT-float slots: basis dequant
                                    scales [dir][stream] (slots 0..3), then
                                    per lane: amax bits, act scale */
    kvtc__dbuf act[KVTC_GPU_MAX_LANES];
    uint64_t runs, fallbacks;
    uint32_t noted;              /* f8_note's reports so far */
};

static __device__ __forceinline__ float ld16(const uint16_t *p, size_t i, int bf)
{
    uint16_t v = p[i];
    return bf ? __bfloat162float(__ushort_as_bfloat16(v)) : __half2float(__ushort_as_half(v));
}

/* amax over finite |x| of n 16-bit values into *amax (float bits; the
 * caller zeroes it): non-negative floats order as their bits. */
__global__ void k_amax16(const uint16_t *src, size_t n, int bf, unsigned *amax)
{
    float m = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = fabsf(ld16(src, i, bf));
        if (a <= 3.0e38f) /* false for inf and NaN */
            m = fmaxf(m, a);
    }
    for (int o = 16; o; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0 && m > 0.0f)
        atomicMax(amax, __float_as_uint(m));
}

/* dst[r * dld + c] = e4m3(src[r * sld + c] * 448 / amax) for r < rows,
 * c < cols (transposed: dst[c * dld + r]); *dscale = amax / 448 (the
 * multiplier cuBLASLt applies). amax 0: scale 1. */
__global__ void k_to_e4m3(const uint16_t *src, uint64_t rows, uint32_t cols, uint32_t sld, int bf,
                          const unsigned *amax, float *dscale, __nv_fp8_storage_t *dst,
                          uint32_t dld, int transpose)
{
    float a = __uint_as_float(*amax), s = a > 0.0f ? F8_MAX / a : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0)
        *dscale = 1.0f / s;
    size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i - r * cols;
        __nv_fp8_storage_t q =
            __nv_cvt_float_to_fp8(ld16(src, r * sld + c, bf) * s, __NV_SATFINITE, __NV_E4M3);
        dst[transpose ? c * dld + r : r * dld + c] = q;
    }
}

/* 16-byte steps of the activation conversion (rows of 8 values; every
 * activation width here is a multiple of 16). */
__global__ void k_to_e4m3_vec(const uint4 *src, size_t n8, int bf, const unsigned *amax,
                              float *dscale, uint2 *dst)
{
    float a = __uint_as_float(*amax), s = a > 0.0f ? F8_MAX / a : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0)
        *dscale = 1.0f / s;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = src[i];
        const uint16_t *h = (const uint16_t *)&v;
        uint32_t q[2] = {0, 0}; /* packed in registers: no byte array to reinterpret */
        for (int k = 0; k < 8; k++) {
            float x = bf ? __bfloat162float(__ushort_as_bfloat16(h[k]))
                         : __half2float(__ushort_as_half(h[k]));
            q[k / 4] |= (uint32_t)__nv_cvt_float_to_fp8(x * s, __NV_SATFINITE, __NV_E4M3)
                        << (8 * (k % 4));
        }
        dst[i] = make_uint2(q[0], q[1]);
    }
}

/* Decode activations from 16-bit coefficients (the row-per-block
 * dequantizer's): x KVTC_GPU_FP8_DEC_SCALE, as the tiled dequantizer
 * writes them itself. 8 values a step. */
__global__ void k_to_e4m3_static(const uint4 *src, size_t n8, int bf, uint2 *dst)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = src[i];
        const uint16_t *h = (const uint16_t *)&v;
        uint32_t q[2] = {0, 0};
        for (int k = 0; k < 8; k++) {
            float x = bf ? __bfloat162float(__ushort_as_bfloat16(h[k]))
                         : __half2float(__ushort_as_half(h[k]));
            q[k / 4] |= (uint32_t)__nv_cvt_float_to_fp8(x * KVTC_GPU_FP8_DEC_SCALE, __NV_SATFINITE,
                                                        __NV_E4M3)
                        << (8 * (k % 4));
        }
        dst[i] = make_uint2(q[0], q[1]);
    }
}

/* The other way, for the 16-bit GEMM when cuBLASLt refuses an FP8 one:
 * e4m3 activations back to coefficients (/ KVTC_GPU_FP8_DEC_SCALE, exact
 * in 16 bits: 4 significant bits), so the fallback sees the same values. */
__global__ void k_from_e4m3(const uint8_t *src, size_t n, int bf, uint16_t *dst)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        __half_raw hr = __nv_cvt_fp8_to_halfraw(src[i], __NV_E4M3);
        float x = __half2float(__half(hr)) * (1.0f / KVTC_GPU_FP8_DEC_SCALE);
        dst[i] = bf ? __bfloat16_as_ushort(__float2bfloat16_rn(x))
                    : __half_as_ushort(__float2half_rn(x));
    }
}

static unsigned grid_for(size_t n)
{
    size_t b = (n + F8_THREADS - 1) / F8_THREADS;
    return (unsigned)(b < 1 ? 1 : b > 4096 ? 4096 : b);
}

static int is_bf(const kvtc_gpu_codec *g) { return g->params.gemm != KVTC_GPU_GEMM_FP16; }

/* The activation of M rows of width w (16-bit, [M][w]) into lane li's
 * e4m3 buffer, its scale in slot 5 + 2 li (amax in 4 + 2 li). */
static int act_convert(kvtc_gpu_codec *g, int li, const void *src, uint64_t M, uint32_t w,
                       cudaStream_t s)
{
    kvtc__fp8 *f = g->fp8;
    size_t n = M * w;
    unsigned *amax = (unsigned *)F8_AT(f, 4 + 2 * li);
    int rc = kvtc__dbuf_reserve(&f->act[li], n + 16, s);
    if (rc || (rc = kvtc__cuda_err(cudaMemsetAsync(amax, 0, 4, s), "memset")))
        return rc;
    k_amax16<<<grid_for(n / 4), F8_THREADS, 0, s>>>((const uint16_t *)src, n, is_bf(g), amax);
    k_to_e4m3_vec<<<grid_for(n / 8), F8_THREADS, 0, s>>>((const uint4 *)src, n / 8, is_bf(g), amax,
                                                         F8_AT(f, 5 + 2 * li),
                                                         (uint2 *)f->act[li].p);
    return kvtc__cuda_err(cudaGetLastError(), "fp8 convert");
}

/* Reports an FP8 GEMM that could not run (once per context): the 16-bit
 * GEMM then runs instead, so this is a speed finding, not an error. */
static void f8_note(kvtc_gpu_codec *g, const char *step, int st, uint64_t m, uint64_t n,
                    uint64_t k)
{
    if (g->fp8->noted++)
        return;
    fprintf(stderr, "kvtc gpu: fp8 GEMM %llux%llux%llu: %s (cuBLAS status %d); 16-bit GEMM used\n",
            (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, step, st);
}

#define F8_CANDIDATES 4

/* One FP8 matmul: C[m x n] = (sa * A^T) (sb * B), A [k x m] (lda k), B
 * [k x n] (ldb k), C of type ct (ldc m). 1: it could not run (nothing
 * enqueued; the caller falls back), 0 done. cuBLASLt's heuristic
 * candidates are tried in order until one launches (its first may refuse
 * at launch what the heuristic accepted: alignment checks). */
static int f8_run(kvtc_gpu_codec *g, kvtc__lane *ln, uint64_t m, uint64_t n, uint64_t k,
                  const void *A, const float *sa, const void *B, const float *sb, void *C,
                  cudaDataType ct, cudaStream_t s)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t h[F8_CANDIDATES];
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    uint64_t ws = ln->ws.p ? ln->ws.cap : 0;
    const float one = 1.0f, zero = 0.0f;
    int found = 0, rc = 1;
    cublasStatus_t st;
    if ((st = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F))) {
        op = NULL;
        f8_note(g, "descriptor", st, m, n, k);
        goto done;
    }
    /* fast accumulation stays at its default, off: fp32 accumulation */
    if ((st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta)) ||
        (st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb)) ||
        (st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa,
                                             sizeof sa)) ||
        (st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb,
                                             sizeof sb))) {
        f8_note(g, "attributes", st, m, n, k);
        goto done;
    }
    if ((st = cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, k, m, (int64_t)k)) ||
        (st = cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, k, n, (int64_t)k)) ||
        (st = cublasLtMatrixLayoutCreate(&lc, ct, m, n, (int64_t)m))) {
        f8_note(g, "layouts", st, m, n, k);
        goto done;
    }
    if ((st = cublasLtMatmulPreferenceCreate(&pref)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws, sizeof ws))) {
        f8_note(g, "preference", st, m, n, k);
        goto done;
    }
    if ((st = cublasLtMatmulAlgoGetHeuristic(g->lt, op, la, lb, lc, lc, pref, F8_CANDIDATES, h,
                                             &found)) ||
        found < 1) {
        f8_note(g, "no algorithm", st, m, n, k);
        goto done;
    }
    for (int i = 0; i < found && rc; i++) {
        st = cublasLtMatmul(g->lt, op, &one, A, la, B, lb, &zero, C, lc, C, lc, &h[i].algo,
                            ln->ws.p, ws, s);
        if (st == CUBLAS_STATUS_SUCCESS)
            rc = 0;
    }
    if (rc) {
        f8_note(g, "launch refused", st, m, n, k);
        cudaGetLastError(); /* a refused launch leaves nothing behind */
    }
done:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (lc)
        cublasLtMatrixLayoutDestroy(lc);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return rc;
}

/* Rows the FP8 GEMM takes: a multiple of 16 (cuBLASLt's FP8 kernels want
 * every dimension 16-aligned; the rest go to the 16-bit GEMM). */
static uint64_t f8_rows(uint64_t M) { return M & ~(uint64_t)15; }

int kvtc__fp8_encode(kvtc_gpu_codec *g, kvtc__lane *ln, int stream, uint64_t M, const void *rows,
                     float *coef, cudaStream_t s, uint64_t *done)
{
    kvtc__fp8 *f = g->fp8;
    int li = (int)(ln - g->lane), rc;
    uint64_t Mf = f8_rows(M);
    *done = 0;
    if (!Mf)
        return 0;
    if ((rc = act_convert(g, li, rows, Mf, g->D, s)))
        return rc;
    rc = f8_run(g, ln, g->ld[stream], Mf, g->D, f->b8[0][stream], F8_AT(f, stream),
                f->act[li].p, F8_AT(f, 5 + 2 * li), coef, CUDA_R_32F, s);
    if (rc)
        f->fallbacks++;
    else {
        f->runs++;
        *done = Mf;
    }
    return 0;
}

int kvtc__fp8_dec_e4m3(const kvtc_gpu_codec *g, int stream)
{
    return kvtc__fp8_on(g, 1) && g->qtiles[stream];
}

/* rows [from, M) to the caller's 16-bit GEMM: coef's own when it holds 16
 * bits, else the e4m3 values widened into the lane's scratch. */
static int dec_rest(kvtc_gpu_codec *g, int li, int stream, uint64_t from, uint64_t M,
                    const void *coef, int e8, cudaStream_t s, const void **rest)
{
    kvtc__fp8 *f = g->fp8;
    uint32_t ld = g->ld[stream];
    f->fallbacks++;
    if (!e8) {
        *rest = (const uint8_t *)coef + from * ld * 2;
        return 0;
    }
    size_t n = (M - from) * ld;
    int rc = kvtc__dbuf_reserve(&f->act[li], 2 * n + 16, s);
    if (rc)
        return rc;
    k_from_e4m3<<<grid_for(n), F8_THREADS, 0, s>>>((const uint8_t *)coef + from * ld, n, is_bf(g),
                                                 (uint16_t *)f->act[li].p);
    *rest = f->act[li].p;
    return kvtc__cuda_err(cudaGetLastError(), "fp8 widen");
}

int kvtc__fp8_decode(kvtc_gpu_codec *g, kvtc__lane *ln, int stream, uint64_t M, const void *coef,
                     void *rows, cudaStream_t s, uint64_t *done, const void **rest)
{
    kvtc__fp8 *f = g->fp8;
    int li = (int)(ln - g->lane), rc, e8 = kvtc__fp8_dec_e4m3(g, stream);
    uint32_t ld = g->ld[stream];
    uint64_t Mf = f8_rows(M), t = M - Mf;
    cudaDataType ct = is_bf(g) ? CUDA_R_16BF : CUDA_R_16F;
    const float *sb = F8_AT(f, F8_DEC_SLOT);
    /* scratch: [16-bit input converted: M ld][tail in: 16 ld][tail out: 16 D 16-bit] */
    size_t conv = e8 ? 0 : kvtc__up(M * ld, 256), tin = (size_t)16 * ld;
    *done = 0;
    *rest = coef;
    if ((rc = kvtc__dbuf_reserve(&f->act[li], conv + tin + (size_t)32 * g->D + 16, s)))
        return rc;
    uint8_t *scr = (uint8_t *)f->act[li].p;
    const uint8_t *a8 = (const uint8_t *)coef;
    if (!e8) {
        k_to_e4m3_static<<<grid_for(M * ld / 8), F8_THREADS, 0, s>>>(
            (const uint4 *)coef, M * ld / 8, is_bf(g), (uint2 *)scr);
        if ((rc = kvtc__cuda_err(cudaGetLastError(), "fp8 convert")))
            return rc;
        a8 = scr;
    }
    if (Mf && f8_run(g, ln, g->D, Mf, ld, f->b8[1][stream], F8_AT(f, 2 + stream), a8, sb, rows,
                     ct, s))
        return dec_rest(g, li, stream, 0, M, coef, e8, s, rest);
    if (t) {
        /* the last M % 16 rows: a zero-padded 16-row FP8 GEMM into
         * scratch (the rows buffer has no room for padding) */
        uint8_t *in = scr + conv, *out = in + tin;
        if ((rc = kvtc__cuda_err(cudaMemsetAsync(in, 0, tin, s), "memset")) ||
            (rc = kvtc__cuda_err(cudaMemcpyAsync(in, a8 + Mf * ld, t * ld,
                                                 cudaMemcpyDeviceToDevice, s),
                                 "fp8 tail")))
            return rc;
        if (f8_run(g, ln, g->D, 16, ld, f->b8[1][stream], F8_AT(f, 2 + stream), in, sb, out, ct,
                   s)) {
            *done = Mf;
            return dec_rest(g, li, stream, Mf, M, coef, e8, s, rest);
        }
        if ((rc = kvtc__cuda_err(cudaMemcpyAsync((uint8_t *)rows + Mf * g->D * 2, out,
                                                 t * g->D * 2, cudaMemcpyDeviceToDevice, s),
                                 "fp8 tail")))
            return rc;
    }
    f->runs++;
    *done = M;
    return 0;
}

int kvtc__fp8_init(kvtc_gpu_codec *g)
{
    int on[2] = {g->params.enc_gemm == KVTC_GPU_PROJ_FP8, g->params.dec_gemm == KVTC_GPU_PROJ_FP8};
    if (!on[0] && !on[1])
        return 0;
    /* FP8 operands need 16-element leading dimensions: ld is, D must be
     * (every real model's is: head_dim % 16 == 0) */
    if (g->D % 16)
        return KVTC_ENOTSUP;
    kvtc__fp8 *f = (kvtc__fp8 *)calloc(1, sizeof *f);
    if (!f)
        return KVTC_ENOMEM;
    g->fp8 = f;
    f->on[0] = on[0];
    f->on[1] = on[1];
    size_t db = sizeof(float) * F8_SLOT * F8_N_SLOTS;
    float dscale = 1.0f / KVTC_GPU_FP8_DEC_SCALE;
    int rc = kvtc__cuda_err(cudaMalloc(&f->dev, db), "cudaMalloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemset(f->dev, 0, db), "memset");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(F8_AT(f, F8_DEC_SLOT), &dscale, sizeof dscale,
                                       cudaMemcpyHostToDevice),
                            "memcpy");
    for (int dir = 0; dir < 2 && !rc; dir++)
        for (int s = 0; s < 2 && !rc; s++) {
            uint32_t ld = g->ld[s];
            size_t n = (size_t)g->D * ld;
            if (!on[dir] || !g->kp[s])
                continue;
            unsigned *amax = (unsigned *)F8_AT(f, 4); /* lane 0's, free now */
            const uint16_t *src = (const uint16_t *)(dir ? g->bdec[s] : g->benc[s]);
            if ((rc = kvtc__cuda_err(cudaMalloc(&f->b8[dir][s], n), "cudaMalloc")) ||
                (rc = kvtc__cuda_err(cudaMemset(amax, 0, 4), "memset")))
                break;
            k_amax16<<<grid_for(n / 4), F8_THREADS>>>(src, n, is_bf(g), amax);
            /* encode: [D][ld] -> [ld][D]; decode: as is */
            k_to_e4m3<<<grid_for(n), F8_THREADS>>>(src, g->D, ld, ld, is_bf(g), amax,
                                                   F8_AT(f, 2 * dir + s),
                                                   (__nv_fp8_storage_t *)f->b8[dir][s],
                                                   dir ? ld : g->D, !dir);
            rc = kvtc__cuda_err(cudaDeviceSynchronize(), "fp8 bases");
        }
    return rc; /* kvtc__fp8_free cleans up on failure */
}

void kvtc__fp8_free(kvtc_gpu_codec *g)
{
    kvtc__fp8 *f = g->fp8;
    if (!f)
        return;
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < 2; s++)
            cudaFree(f->b8[d][s]);
    for (uint32_t i = 0; i < KVTC_GPU_MAX_LANES; i++)
        kvtc__dbuf_free(&f->act[i]);
    cudaFree(f->dev);
    free(f);
    g->fp8 = NULL;
}

int kvtc__fp8_on(const kvtc_gpu_codec *g, int dir) { return g->fp8 && g->fp8->on[dir]; }

extern "C" int kvtc__gpu_fp8_info(const kvtc_gpu_codec *g, uint64_t *runs, uint64_t *fallbacks)
{
    if (!g || !runs || !fallbacks)
        return KVTC_EINVAL;
    *runs = g->fp8 ? g->fp8->runs : 0;
    *fallbacks = g->fp8 ? g->fp8->fallbacks : 0;
    return 0;
}

extern "C" int kvtc__gpu_fp8_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, float *enc_ms,
                                       float *dec_ms)
{
    /* the FP8 GEMMs alone (no conversion), both streams, on scratch e4m3
     * activations with scale 1; medians of iters. Synchronous. */
    if (!g || !g->fp8 || !M || iters < 1 || !enc_ms || !dec_ms)
        return KVTC_EINVAL;
    kvtc__fp8 *f = g->fp8;
    kvtc__lane *ln = &g->lane[0];
    uint32_t kmax = g->ld[0] > g->ld[1] ? g->ld[0] : g->ld[1];
    size_t w = g->D > kmax ? g->D : kmax;
    void *B = NULL, *C = NULL;
    float *one = NULL, h1 = 1.0f;
    cudaEvent_t e[3] = {NULL, NULL, NULL};
    float *t = (float *)calloc(2 * (size_t)iters, sizeof(float));
    int rc = t ? kvtc__cuda_err(cudaSetDevice(g->params.device), "cudaSetDevice") : KVTC_ENOMEM;
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc(&B, M * w), "cudaMalloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc(&C, M * w * 4), "cudaMalloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc(&one, 4), "cudaMalloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemset(B, 0x2c, M * w), "memset"); /* e4m3 0x2c = 0.1875 */
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(one, &h1, 4, cudaMemcpyHostToDevice), "memcpy");
    for (int i = 0; i < 3 && !rc; i++)
        if (cudaEventCreate(&e[i]) != cudaSuccess)
            rc = KVTC_EIO;
    for (int i = -2; i < iters && !rc; i++) {
        cudaEventRecord(e[0], 0);
        for (int s = 0; s < 2 && !rc; s++)
            if (g->kp[s] && f->b8[0][s])
                rc = f8_run(g, ln, g->ld[s], M, g->D, f->b8[0][s], F8_AT(f, s), B, one, C,
                            CUDA_R_32F, 0);
        cudaEventRecord(e[1], 0);
        for (int s = 0; s < 2 && !rc; s++)
            if (g->kp[s] && f->b8[1][s])
                rc = f8_run(g, ln, g->D, M, g->ld[s], f->b8[1][s], F8_AT(f, 2 + s), B, one, C,
                            is_bf(g) ? CUDA_R_16BF : CUDA_R_16F, 0);
        cudaEventRecord(e[2], 0);
        if (rc == 1)
            rc = KVTC_ENOTSUP; /* no FP8 GEMM at this shape (f8_note said why) */
        if (!rc)
            rc = kvtc__cuda_err(cudaEventSynchronize(e[2]), "fp8 gemm time");
        if (!rc && i >= 0) {
            cudaEventElapsedTime(&t[i], e[0], e[1]);
            cudaEventElapsedTime(&t[iters + i], e[1], e[2]);
        }
    }
    if (!rc) {
        *enc_ms = kvtc__median_ms(t, iters);
        *dec_ms = kvtc__median_ms(t + iters, iters);
    }
    for (int i = 0; i < 3; i++)
        if (e[i])
            cudaEventDestroy(e[i]);
    cudaFree(B);
    cudaFree(C);
    cudaFree(one);
    free(t);
    return rc;
}
