/* kvtc-bench-gpu: the GPU codec on a Llama-3.1-8B-shaped layout (32 layers
 * x 8 KV heads x 128, bf16, chunks of 256 tokens, Llama 3.1 RoPE) at the
 * 16x plan, a batch of >= 1 GiB of raw KV from bench/codec's synthetic
 * source (power-law spectrum behind RoPE). In the same run: the cuBLAS GEMM
 * alone for the same projection shapes, and the device-to-device copy
 * bandwidth; per-stage times; quality against the original and against
 * the CPU codec; bf16 vs fp16 projections; nvCOMP algorithms; our inflate
 * vs nvCOMP's (stage and end to end).
 * Prints a table; writes bench/results/gpu.json.
 *   kvtc-bench-gpu [--chunks N] [--iters N] [--rank R] [--calib-tokens N]
 *                  [--max-components K] [--calib-gpu 0|1] [--lean 1] [--json PATH]
 *                  [--calib-only 1] [--calib-pool CHUNKS] [--pipe-variants JSONL]
 *                  [--gemm-only COMPONENTS] [--batch-pool CHUNKS]
 *                  [--entropy-json PATH] [--entropy-only 1]
 *                  [--quant-report PATH] [--quant-only 1] [--fp8-report PATH] [--fp8-only 1]
 * --entropy-json: the DEFLATE stage, ours against nvCOMP's, side by side;
 * --entropy-only 1: that comparison alone after calibration. [--pipe-only 1]
 * --gemm-report PATH: the GEMM choices (tuned cuBLASLt vs GemmEx, direct
 * decode vs the rows pass, padded shapes) side by side, JSON to the path
 * (with --pipe-only 1, before the pipeline variants); --gemm-variants
 * 10,11,12: which (use_lt x 10 + direct decode variant 0..4: 0 rows pass,
 * 1 per chunk, 2 grouped, 3 grouped by GemmBatchedEx, 4 grouped
 * chunk-major; the first is the bytes reference; default 0,10,1,11);
 * --gemm-probe 0 skips its padded shapes. --probe-only 1: two
 * timed calls after the calibration, nothing else (for ncu).
 * --rows-kernels 0|1: the scalar (0) or vectorized (1, the default) row
 * kernels for the whole run (kernels/gpu_rows.cu).
 * --fp8-report PATH: compress/decompress with the fp8 projections (encode,
 * decode, both) next to fp16, against each GEMM alone (JSON to PATH);
 * --fp8-variants 0,2: only those (0 fp16, 1 fp8 encode, 2 fp8 decode, 3 both).
 * --quant-report PATH: the quantizer's kernels (row-per-block vs tiled)
 * side by side, JSON to the path; --quant-only 1: that alone after the
 * calibration. --quant-variants 0,1: which (0 row kernels, 1 tiled;
 * default 0,1,0). --gap-report PATH: per variant, a
 * call's wall time with the GPU idle / busy ahead / back to back, its host
 * time and the timed stages' sum (where the idle time goes); with
 * --gap-pageable 1 each variant again with the meta blob staged from
 * pageable memory; --gap-only 1: that (and --quant-report if given) alone.
 * --pairs N (default 0: off, at most 16): the headline's codec calls
 * and its GEMMs alone alternated N times in one context, the per-pair
 * ratios' median and range (the two sides then share clocks and heat).
 * --profile-out PATH saves the calibrated profile; --profile-in PATH
 * loads one instead of calibrating (same flags otherwise).
 * --pipe-variants: the transform pipeline's settings side by side (JSON
 * lines to the path; --pipe-only 1: that and the GEMM alone, nothing
 * else after the calibration). --batch-pool: distinct batch chunks generated (as
 * --calib-pool; the first N are generated, the rest replay them).
 * --calib-only: calibration alone (issue #3: 163840 tokens <= 2 minutes),
 * one JSON line on stdout, no codec runs, gpu.json untouched.
 * --calib-pool: distinct synthetic 256-token chunks generated (default:
 * all); the calibration cycles through them at increasing positions, so
 * 160K tokens need not wait minutes for the generator. A chunk replayed
 * at another position is RoPE-undone at the wrong angle: still distinct
 * rows of a KV-like spectrum, good for timing, not for quality. */
#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../codec/bc.h"
#include "../codec/internal.h" /* plan_groups_print: the plan's groups */
#include "kvtc_codec.h"
#include "kvtc_gpu.h"

#define CK(e)                                                                           \
    do {                                                                                \
        cudaError_t e_ = (e);                                                           \
        if (e_ != cudaSuccess) {                                                        \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #e, cudaGetErrorString(e_)); \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)
#define KV(e)                                                                           \
    do {                                                                                \
        int r_ = (e);                                                                   \
        if (r_) {                                                                       \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #e, kvtc_strerror(r_)); \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* kernels/gpu_calib.cu: seconds of the last GPU PCA (internal, for the
 * fit's breakdown) */
extern double kvtc__gpu_calib_pca_seconds;
/* kernels/gpu_pipe.cu: the transform pipeline's lanes, sub-batches and
 * GEMM SM target (internal, for --pipe-variants) */
extern int kvtc__gpu_pipeline(kvtc_gpu_codec *g, uint32_t lanes, uint32_t split,
                              uint32_t gemm_sms, uint32_t mode);
static uint32_t pipe_cfg[4];
static int pipe_set;              /* 1: run_codec applies pipe_cfg to its context */
/* kernels/gpu_gemm.cu (internal, for --gemm-report): GEMM path, its tuned
 * choices, the GEMMs alone as the codec runs them, shapes probed alone */
extern int kvtc__gpu_gemm_set(kvtc_gpu_codec *g, uint32_t use_lt, uint32_t direct);
extern int kvtc__gpu_gemm_info(const kvtc_gpu_codec *g, int kind, int stream, uint32_t *idx,
                               uint32_t *n, float *ms, float *ms_first);
extern int kvtc__gpu_fp8_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, float *enc_ms,
                                   float *dec_ms);
extern int kvtc__gpu_fp8_info(const kvtc_gpu_codec *g, uint64_t *runs, uint64_t *fallbacks);
extern int kvtc__gpu_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, int noise,
                               float *enc_ms, float *dec_ms);
extern int kvtc__gpu_gemm_probe(uint32_t D, uint64_t M, uint32_t ld, int fp16, float *out);
extern int kvtc__gpu_direct_info(const kvtc_gpu_codec *g, uint64_t *out);
static uint32_t gemm_cfg[2];
static int gemm_set;              /* 1: run_codec applies gemm_cfg (use_lt, direct) */
/* --gemm-variants: use_lt x 10 + direct of each --gemm-report row */
static uint32_t gemm_v[12] = {0, 10, 1, 11}, n_gemm_v = 4;
static int gemm_probe = 1;        /* --gemm-probe 0: no padded shapes */
/* kernels/gpu_quant.cu (internal, for --quant-report): 1 the tiled
 * quantizer, 0 the row-per-block kernels */
extern int kvtc__gpu_quant_set(kvtc_gpu_codec *g, uint32_t tiles);
/* kernels/gpu_rows.cu (internal): the row kernels, process-wide (0 the
 * scalar ones, 1 the vectorized ones; -1 the default, vectorized) */
extern int kvtc__gpu_rows_set(int v);
static uint32_t quant_cfg;
static int quant_set;             /* 1: run_codec applies quant_cfg */
/* --quant-variants: the quantizer kernels --quant-report and --gap-report
 * run (0 row kernels, 1 tiled); the first is the bytes reference. In
 * --quant-report, v >= 10 is quantizer v % 10 with the row kernels v / 10
 * - 1 (11: tiled + the scalar row kernels; 21: tiled + the vectorized
 * ones), v < 10 the library's default row kernels. */
static uint32_t quant_v[8] = {0, 1, 0}, n_quant_v = 3;
static int gap_pageable; /* --gap-pageable 1: gap report with pageable meta too */
/* the default params with per-stage timing (kvtc_gpu_stage_times) */
static const kvtc_gpu_params timed = {.field_mask = KVTC_GPU_PARAM_FIELD_TIMING, .timing = 1};
static size_t quality_stride = 1; /* run_codec's error: every n-th 64 Ki block */
/* run_codec's error covers the first quality_bytes only: the generated
 * chunks (with --batch-pool the rest replay them at other positions,
 * RoPE-undone at the wrong angle, and the headline printed rel.err 0.44
 * for them; the fp8 report had the same fix, pool_rel_err) */
static size_t quality_bytes = SIZE_MAX;
static kvtc_gpu_codec *reuse_ctx; /* set: run_codec uses it (no create/free) */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Synthetic chunks i = 0..n-1 (256 tokens at pos0 + 256 i, seed seed0 +
 * sstep i) into out + i * cb, on every core: the generator takes ~1 s a
 * chunk on one core, which was a minute of every GPU run. Each chunk is
 * the same as bc_source_chunk makes alone (the source is read-only). */
struct gen_job {
    bc_source *src;
    uint8_t *out;
    size_t cb;
    uint32_t n, pos0, seed0, sstep, next;
    int rc;
    pthread_mutex_t mu;
};

static void *gen_worker(void *arg)
{
    struct gen_job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        uint32_t i = j->next++;
        pthread_mutex_unlock(&j->mu);
        if (i >= j->n)
            return NULL;
        int rc = bc_source_chunk(j->src, 256, j->pos0 + 256 * i, j->seed0 + (uint64_t)j->sstep * i,
                                 j->out + (size_t)i * j->cb);
        if (rc) {
            pthread_mutex_lock(&j->mu);
            j->rc = j->rc ? j->rc : rc;
            pthread_mutex_unlock(&j->mu);
        }
    }
}

static int gen_chunks(bc_source *src, uint32_t n, uint32_t pos0, uint32_t seed0, uint32_t sstep,
                      uint8_t *out, size_t cb)
{
    struct gen_job j = {src, out, cb, n, pos0, seed0, sstep, 0, 0, PTHREAD_MUTEX_INITIALIZER};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t nt = cores < 1 ? 1 : cores > 64 ? 64 : (uint32_t)cores, started = 0;
    if (nt > n)
        nt = n;
    pthread_t th[64];
    openblas_set_num_threads(1); /* one BLAS thread per worker */
    for (uint32_t t = 0; t < nt; t++)
        started += pthread_create(&th[started], NULL, gen_worker, &j) == 0;
    if (!started)
        gen_worker(&j);
    for (uint32_t t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    openblas_set_num_threads(cores < 1 ? 1 : (int)cores);
    return j.rc;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}
static float median(float *v, int n)
{
    qsort(v, n, sizeof *v, cmp_f);
    return v[n / 2];
}

struct run {
    float enc_ms, dec_ms, enc_stage[KVTC_GPU_N_STAGES], dec_stage[KVTC_GPU_N_STAGES];
    double ratio, rel_mse;
};

/* Encode + decode the batch iters times with one context; medians. */
static void run_codec(const kvtc_profile *p, uint32_t plan, kvtc_gpu_params prm,
                      const kvtc_gpu_chunk *ch, uint32_t n, const kvtc_layout *l, void *d_out,
                      size_t raw_bytes, int iters, const void *d_in, struct run *r,
                      uint8_t **first_container, size_t *first_len)
{
    kvtc_gpu_codec *g = reuse_ctx;
    if (!g)
        KV(kvtc_gpu_codec_create(p, plan, &prm, &g));
    if (pipe_set)
        KV(kvtc__gpu_pipeline(g, pipe_cfg[0], pipe_cfg[1], pipe_cfg[2], pipe_cfg[3]));
    if (gemm_set)
        KV(kvtc__gpu_gemm_set(g, gemm_cfg[0], gemm_cfg[1]));
    if (quant_set)
        KV(kvtc__gpu_quant_set(g, quant_cfg));
    size_t cap = kvtc_gpu_encode_bound(g, ch, n);
    uint8_t *d_dst;
    uint64_t *d_off, *d_sz;
    int32_t *d_st;
    CK(cudaMalloc((void **)&d_dst, cap));
    CK(cudaMalloc((void **)&d_off, 8 * n));
    CK(cudaMalloc((void **)&d_sz, 8 * n));
    CK(cudaMalloc((void **)&d_st, 4 * n));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float *te = calloc(iters, sizeof(float)), *td = calloc(iters, sizeof(float));
    float stage[KVTC_GPU_N_STAGES];
    memset(r->enc_stage, 0, sizeof r->enc_stage);
    memset(r->dec_stage, 0, sizeof r->dec_stage);
    uint64_t *off = malloc(8 * n), *sz = malloc(8 * n);
    int32_t *stat = malloc(4 * n);
    kvtc_gpu_container *it = malloc(sizeof *it * n);
    for (int i = -2; i < iters; i++) { /* two warm-up rounds */
        CK(cudaEventRecord(a, st));
        KV(kvtc_gpu_encode(g, ch, n, d_dst, cap, d_off, d_sz, d_st, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (prm.timing && i >= 0) {
            KV(kvtc_gpu_stage_times(g, stage));
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                r->enc_stage[s] += stage[s] / iters;
        }
        if (i >= 0)
            te[i] = ms;
        if (i == -2) {
            CK(cudaMemcpy(off, d_off, 8 * n, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(sz, d_sz, 8 * n, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(stat, d_st, 4 * n, cudaMemcpyDeviceToHost));
            size_t total = 0;
            uint8_t *op = d_out;
            for (uint32_t c = 0; c < n; c++) {
                if (stat[c]) {
                    fprintf(stderr, "encode status %d on chunk %u\n", stat[c], c);
                    exit(1);
                }
                total += sz[c];
                it[c] = (kvtc_gpu_container){off[c], sz[c], op, ch[c].n_tokens, ch[c].first_pos,
                                             ch[c].flags};
                op += kvtc_chunk_bytes(l, ch[c].n_tokens);
            }
            r->ratio = (double)raw_bytes / (double)total;
            if (first_container) {
                *first_len = sz[0];
                *first_container = malloc(sz[0]);
                CK(cudaMemcpy(*first_container, d_dst + off[0], sz[0], cudaMemcpyDeviceToHost));
            }
        }
    }
    for (int i = -2; i < iters; i++) {
        CK(cudaEventRecord(a, st));
        KV(kvtc_gpu_decode(g, it, n, d_dst, d_st, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (prm.timing && i >= 0) {
            KV(kvtc_gpu_stage_times(g, stage));
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                r->dec_stage[s] += stage[s] / iters;
        }
        if (i >= 0)
            td[i] = ms;
    }
    CK(cudaMemcpy(stat, d_st, 4 * n, cudaMemcpyDeviceToHost));
    for (uint32_t c = 0; c < n; c++)
        if (stat[c]) {
            fprintf(stderr, "decode status %d on chunk %u\n", stat[c], c);
            exit(1);
        }
    r->enc_ms = median(te, iters);
    r->dec_ms = median(td, iters);
    /* Quality of the whole batch: relative squared error vs the input
     * (quality_stride 0: none, as --pairs wants the GPU kept busy). */
    r->rel_mse = 0;
    if (quality_stride) {
        size_t qb = raw_bytes < quality_bytes ? raw_bytes : quality_bytes, elems = qb / 2;
        uint16_t *x = malloc(qb), *y = malloc(qb);
        CK(cudaMemcpy(x, d_in, qb, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(y, d_out, qb, cudaMemcpyDeviceToHost));
        float *fx = malloc(4 * 65536), *fy = malloc(4 * 65536);
        double num = 0, den = 0;
        for (size_t o = 0; o < elems; o += 65536 * quality_stride) {
            size_t m = elems - o < 65536 ? elems - o : 65536;
            kvtc_to_float(KVTC_DTYPE_BF16, x + o, fx, m);
            kvtc_to_float(KVTC_DTYPE_BF16, y + o, fy, m);
            for (size_t j = 0; j < m; j++) {
                num += ((double)fx[j] - fy[j]) * ((double)fx[j] - fy[j]);
                den += (double)fx[j] * fx[j];
            }
        }
        r->rel_mse = num / den;
        free(x);
        free(y);
        free(fx);
        free(fy);
    }
    free(te);
    free(td);
    free(off);
    free(sz);
    free(stat);
    free(it);
    cudaFree(d_dst);
    cudaFree(d_off);
    cudaFree(d_sz);
    cudaFree(d_st);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(st);
    if (!reuse_ctx)
        kvtc_gpu_codec_free(g);
}

/* The same projections alone: encode shape (kp x M x D) and decode shape
 * (D x M x kp) for both streams, bf16 in, fp32 / bf16 out, fp32 compute. */
static float gemm_alone(uint32_t D, uint64_t M, const uint32_t kp[2], int iters, double *tflops)
{
    cublasHandle_t h;
    cublasCreate(&h);
    uint32_t kmax = kp[0] > kp[1] ? kp[0] : kp[1];
    void *A, *B, *C;
    CK(cudaMalloc(&A, (size_t)D * kmax * 2));
    CK(cudaMalloc(&B, (size_t)M * D * 2));
    CK(cudaMalloc(&C, (size_t)M * (D > kmax ? D : kmax) * 4));
    CK(cudaMemset(A, 0x3c, (size_t)D * kmax * 2)); /* nonzero data: bf16 ~0.0115 */
    CK(cudaMemset(B, 0x3c, (size_t)M * D * 2));
    const float one = 1, zero = 0;
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float *t = calloc(iters, sizeof(float));
    for (int i = -2; i < iters; i++) {
        CK(cudaEventRecord(a, 0));
        for (int s = 0; s < 2; s++) {
            cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)kp[s], (int)M, (int)D, &one, A,
                         CUDA_R_16F, (int)kp[s], B, CUDA_R_16F, (int)D, &zero, C, CUDA_R_32F,
                         (int)kp[s], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)D, (int)M, (int)kp[s], &one, A,
                         CUDA_R_16F, (int)kp[s], B, CUDA_R_16F, (int)kp[s], &zero, C,
                         CUDA_R_16F, (int)D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        }
        CK(cudaEventRecord(b, 0));
        CK(cudaEventSynchronize(b));
        if (i >= 0)
            CK(cudaEventElapsedTime(&t[i], a, b));
    }
    CK(cudaGetLastError());
    float ms = median(t, iters);
    *tflops = 2.0 * 2.0 * (double)M * D * (kp[0] + kp[1]) / (ms * 1e-3) / 1e12;
    free(t);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    cublasDestroy(h);
    return ms / 2; /* per direction (encode or decode), both streams */
}

static float copy_bw(size_t bytes, int iters)
{
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float *t = calloc(iters, sizeof(float));
    for (int i = -2; i < iters; i++) {
        CK(cudaEventRecord(e0, 0));
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        if (i >= 0)
            CK(cudaEventElapsedTime(&t[i], e0, e1));
    }
    float ms = median(t, iters);
    free(t);
    cudaFree(a);
    cudaFree(b);
    return ms;
}

/* --pipe-variants: the transform pipeline's settings (gpu_pipe.cu) on
 * the same batch and profile, untimed stages, medians of iters calls each;
 * decoded output compared byte for byte with the serial order's (lanes 1,
 * split 1: the code before the pipeline). A table on stdout, JSON lines to
 * path. */
static void pipe_variants(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch,
                          uint32_t n, const kvtc_layout *l, void *d_out, size_t raw, int iters,
                          const void *d_in, const char *path)
{
    /* lanes, split, gemm_sms, mode (0: lanes; 1: GEMMs chained; 2: a
     * high-priority GEMM stream and a low-priority one for the rest); the
     * serial order first and last */
    static const uint32_t v[][4] = {
        {1, 1, 0, 0},   {2, 4, 116, 2}, {2, 8, 116, 2}, {2, 8, 124, 2}, {2, 8, 100, 2},
        {2, 16, 116, 2}, {2, 8, 0, 2},  {2, 4, 116, 1}, {2, 8, 116, 1}, {3, 8, 116, 1},
        {2, 4, 116, 0}, {1, 1, 132, 0}, {2, 4, 0, 0},   {1, 1, 0, 0}};
    uint32_t nv = sizeof v / sizeof v[0];
    uint8_t *ref = malloc(raw), *got = malloc(raw);
    FILE *f = fopen(path, "w");
    if (!ref || !got)
        exit(1);
    printf("pipeline variants (%d calls each, medians; serial = lanes 1 split 1; rel.err on "
           "every 8th 64 Ki block)\n", iters);
    printf("%5s %5s %5s %5s %10s %10s %10s %10s %12s %10s\n", "lanes", "split", "sms", "mode",
           "enc ms", "dec ms", "enc GB/s", "dec GB/s", "rel.err", "dec diff");
    quality_stride = 8;
    /* one context for all (its creation uploads ~1 GiB of bases) */
    KV(kvtc_gpu_codec_create(p, plan, NULL, &reuse_ctx));
    for (uint32_t i = 0; i < nv; i++) {
        struct run r;
        memcpy(pipe_cfg, v[i], sizeof pipe_cfg);
        pipe_set = 1;
        run_codec(p, plan, (kvtc_gpu_params){0}, ch, n, l, d_out, raw,
                  iters, d_in, &r, NULL, NULL);
        pipe_set = 0;
        CK(cudaMemcpy(i ? got : ref, d_out, raw, cudaMemcpyDeviceToHost));
        size_t diff = 0;
        for (size_t b = 0; i && b < raw; b += 65536) {
            size_t m = raw - b < 65536 ? raw - b : 65536;
            if (memcmp(got + b, ref + b, m))
                for (size_t k = 0; k < m; k++)
                    diff += got[b + k] != ref[b + k];
        }
        double gb = raw / 1e9;
        printf("%5u %5u %5u %5u %10.3f %10.3f %10.1f %10.1f %12.5g %10zu\n", v[i][0], v[i][1],
               v[i][2], v[i][3], r.enc_ms, r.dec_ms, gb / (r.enc_ms * 1e-3),
               gb / (r.dec_ms * 1e-3), r.rel_mse, diff);
        if (f) {
            fprintf(f, "{\"lanes\": %u, \"split\": %u, \"gemm_sms\": %u, \"mode\": %u, "
                       "\"compress_ms\": %.4f, \"decompress_ms\": %.4f, \"ratio\": %.4f, "
                       "\"rel_sq_error\": %.6g, \"decoded_bytes_differing_from_serial\": %zu}\n",
                    v[i][0], v[i][1], v[i][2], v[i][3], r.enc_ms, r.dec_ms, r.ratio, r.rel_mse,
                    diff);
            fflush(f);
        }
    }
    quality_stride = 1;
    kvtc_gpu_codec_free(reuse_ctx);
    reuse_ctx = NULL;
    if (f)
        fclose(f);
    free(ref);
    free(got);
}

/* --gemm-report: the GEMM choices (kernels/gpu_gemm.cu) on the same batch
 * and profile: what tuning picked at creation, the GEMMs alone as the codec
 * runs them (tuned cuBLASLt) against cuBLAS's GemmEx default, padded
 * component counts and rows probed alone, and the codec end to end with
 * each (GEMM path, decode path) pair; decoded bytes compared with the old
 * code's (GemmEx, rows pass). Table on stdout, JSON to path. */
static void gemm_report(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch,
                        uint32_t n, const kvtc_layout *l, void *d_out, size_t raw, int iters,
                        const void *d_in, const uint32_t kp[2], const char *path)
{
    FILE *f = fopen(path, "w");
    uint32_t D = l->layers * l->kv_heads * l->head_dim;
    uint64_t M = (uint64_t)n * 256;
    double gb = raw / 1e9;
    kvtc_gpu_codec *gu = NULL, *gt = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    KV(kvtc_gpu_codec_create(p, plan, NULL, &gu));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double create_s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    kvtc_gpu_params tp = timed;
    KV(kvtc_gpu_codec_create(p, plan, &tp, &gt));
    printf("GEMM choice (context create %.2f s incl. tuning):\n", create_s);
    if (f)
        fprintf(f, "{\"create_s\": %.3f, \"tuned\": [", create_s);
    static const char *kinds[] = {"encode", "decode", "direct", "grouped"};
    for (int k = 0, first = 1; k < 4; k++)
        for (int s = 0; s < 2; s++) {
            uint32_t idx = 0, nc = 0;
            float ms = 0, ms0 = 0;
            if (kvtc__gpu_gemm_info(gu, k, s, &idx, &nc, &ms, &ms0))
                continue;
            printf("  %-6s %s: candidate %u of %u, %.3f ms (heuristic's first %.3f ms)\n",
                   kinds[k], s ? "V" : "K", idx, nc, ms, ms0);
            if (f)
                fprintf(f, "%s{\"kind\": \"%s\", \"stream\": %d, \"idx\": %u, \"n\": %u, "
                           "\"ms\": %.4f, \"first_ms\": %.4f}",
                        first ? "" : ", ", kinds[k], s, idx, nc, ms, ms0);
            first = 0;
        }
    double tfl = 0;
    float gx = gemm_alone(D, M, kp, iters, &tfl), ge = 0, gd = 0;
    KV(kvtc__gpu_gemm_time(gu, M, iters, 0, &ge, &gd));
    double fl = 2.0 * M * D * (kp[0] + kp[1]);
    printf("GEMM alone per direction: cuBLAS GemmEx default %.3f ms (%.0f TFLOP/s); codec's "
           "(tuned cuBLASLt) encode %.3f ms (%.0f), decode %.3f ms (%.0f)\n",
           gx, tfl, ge, fl / (ge * 1e-3) / 1e12, gd, fl / (gd * 1e-3) / 1e12);
    if (f)
        fprintf(f, "], \"gemm_alone_gemmex_ms\": %.4f, \"gemm_alone_enc_ms\": %.4f, "
                   "\"gemm_alone_dec_ms\": %.4f, \"probe\": [",
                gx, ge, gd);
    /* padding: components (ld) and rows (M) probed alone, tuned */
    uint32_t k0 = kp[0] > kp[1] ? kp[0] : kp[1];
    uint32_t lds[] = {2048, k0, k0 + 16, k0 + 32, k0 + 64, k0 + 128, k0 + 256};
    uint64_t Ms[] = {M, M, M, M, M, M, M, M + 128, M - 128};
    printf("%8s %8s %11s %11s %11s %11s  (ms / TFLOP/s per GEMM of ld x M x D)\n", "ld", "M",
           "enc first", "enc best", "dec first", "dec best");
    for (uint32_t i = 0; gemm_probe && i < sizeof Ms / sizeof Ms[0]; i++) {
        uint32_t ld = i < 7 ? lds[i] : k0;
        float o[4] = {0};
        if (kvtc__gpu_gemm_probe(D, Ms[i], ld, 1, o))
            continue;
        double flo = 2.0 * Ms[i] * D * ld / 1e12;
        printf("%8u %8llu %6.3f/%4.0f %6.3f/%4.0f %6.3f/%4.0f %6.3f/%4.0f\n", ld,
               (unsigned long long)Ms[i], o[0], flo / (o[0] * 1e-3), o[1], flo / (o[1] * 1e-3),
               o[2], flo / (o[2] * 1e-3), o[3], flo / (o[3] * 1e-3));
        if (f)
            fprintf(f, "%s{\"ld\": %u, \"M\": %llu, \"enc_first_ms\": %.4f, \"enc_best_ms\": %.4f, "
                       "\"dec_first_ms\": %.4f, \"dec_best_ms\": %.4f}",
                    i ? ", " : "", ld, (unsigned long long)Ms[i], o[0], o[1], o[2], o[3]);
    }
    if (f)
        fprintf(f, "], \"codec\": [");
    /* (use_lt, direct) from --gemm-variants; the first is the bytes
     * reference (by default the old code's path, GemmEx + rows pass) */
    uint32_t v[12][2];
    for (uint32_t i = 0; i < n_gemm_v; i++) {
        v[i][0] = gemm_v[i] / 10;
        v[i][1] = gemm_v[i] % 10;
    }
    uint8_t *ref = malloc(raw), *got = malloc(raw);
    if (!ref || !got)
        exit(1);
    quality_stride = 8;
    printf("%4s %6s %9s %9s %9s %9s %8s %8s %8s %8s %12s %10s\n", "lt", "direct", "enc ms",
           "dec ms", "enc GB/s", "dec GB/s", "enc gemm", "dec gemm", "dec rows", "dec quant",
           "rel.err", "bytes diff");
    for (uint32_t i = 0; i < n_gemm_v; i++) {
        struct run r, t;
        uint64_t p0[3], p1[3];
        memcpy(gemm_cfg, v[i], sizeof gemm_cfg);
        gemm_set = 1;
        reuse_ctx = gt;
        run_codec(p, plan, tp, ch, n, l, d_out, raw, 2, d_in, &t, NULL, NULL);
        reuse_ctx = gu;
        KV(kvtc__gpu_direct_info(gu, p0));
        run_codec(p, plan, (kvtc_gpu_params){0}, ch, n, l, d_out, raw,
                  iters, d_in, &r, NULL, NULL);
        KV(kvtc__gpu_direct_info(gu, p1));
        reuse_ctx = NULL;
        gemm_set = 0;
        CK(cudaMemcpy(i ? got : ref, d_out, raw, cudaMemcpyDeviceToHost));
        size_t diff = 0;
        for (size_t b = 0; i && b < raw; b += 65536) {
            size_t m = raw - b < 65536 ? raw - b : 65536;
            if (memcmp(got + b, ref + b, m))
                for (size_t k = 0; k < m; k++)
                    diff += got[b + k] != ref[b + k];
        }
        printf("%4u %6u %9.3f %9.3f %9.1f %9.1f %8.3f %8.3f %8.3f %8.3f %12.5g %10zu\n", v[i][0],
               v[i][1], r.enc_ms, r.dec_ms, gb / (r.enc_ms * 1e-3), gb / (r.dec_ms * 1e-3),
               t.enc_stage[KVTC_GPU_STAGE_GEMM], t.dec_stage[KVTC_GPU_STAGE_GEMM],
               t.dec_stage[KVTC_GPU_STAGE_ROWS], t.dec_stage[KVTC_GPU_STAGE_QUANT], r.rel_mse,
               diff);
        /* which GEMMs the direct decode ran (per call: warm-ups included) */
        double calls = iters + 2;
        printf("     direct GEMMs per call: per chunk %.0f, cuBLASLt grouped %.0f, "
               "GemmBatchedEx %.0f\n",
               (p1[0] - p0[0]) / calls, (p1[1] - p0[1]) / calls, (p1[2] - p0[2]) / calls);
        printf("     stages enc:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), t.enc_stage[s]);
        printf("\n     stages dec:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), t.dec_stage[s]);
        printf("\n");
        if (f) {
            fprintf(f, "%s{\"use_lt\": %u, \"direct\": %u, \"compress_ms\": %.4f, "
                       "\"decompress_ms\": %.4f, \"ratio\": %.4f, \"rel_sq_error\": %.6g, "
                       "\"decoded_bytes_differing_from_old\": %zu, ",
                    i ? ", " : "", v[i][0], v[i][1], r.enc_ms, r.dec_ms, r.ratio, r.rel_mse, diff);
            fprintf(f, "\"direct_gemms_per_call\": [%.1f, %.1f, %.1f], \"stages_compress_ms\": {",
                    (p1[0] - p0[0]) / calls, (p1[1] - p0[1]) / calls, (p1[2] - p0[2]) / calls);
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s), t.enc_stage[s]);
            fprintf(f, "}, \"stages_decompress_ms\": {");
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s), t.dec_stage[s]);
            fprintf(f, "}}");
        }
    }
    quality_stride = 1;
    if (f) {
        fprintf(f, "]}\n");
        fclose(f);
    }
    free(ref);
    free(got);
    kvtc_gpu_codec_free(gu);
    kvtc_gpu_codec_free(gt);
}

/* The plan's groups per stream by size (1, 16, 64, 256, 1024, other) and
 * type, and how many are static: the quantizer's time follows the group
 * structure (per-(token, group) work) more than the bytes. One line per
 * stream on stdout. */
static void plan_groups_print(const kvtc_profile *p, uint32_t plan)
{
    static const uint32_t sz[] = {1, 16, 64, 256, 1024};
    const struct kvtc__plan *pl = &p->plans[plan];
    for (uint8_t s = 0; s < 2; s++) {
        uint32_t n[6][4];
        memset(n, 0, sizeof n);
        for (uint32_t i = 0; i < pl->n_groups; i++) {
            const struct kvtc__group *g = &pl->groups[i];
            if (g->stream != s || g->type < KVTC__Q_INT2 || g->type > KVTC__Q_FP8)
                continue;
            int c = 5;
            for (int k = 0; k < 5; k++)
                if (g->size == sz[k])
                    c = k;
            n[c][g->type]++;
            n[c][0] += g->is_static != 0;
        }
        printf("plan groups, %s (size: int2/int4/fp8 static):", s ? "values" : "keys");
        for (int c = 0; c < 6; c++)
            if (n[c][1] + n[c][2] + n[c][3])
                printf(" %s%u: %u/%u/%u %u", c == 5 ? "other" : "", c == 5 ? 0 : sz[c],
                       n[c][1], n[c][2], n[c][3], n[c][0]);
        printf("\n");
    }
}

/* --quant-report: the quantizer's kernels side by side on the same batch
 * and context: row-per-block (0, the old code and the bytes reference),
 * tiled (1), row-per-block again (the run's spread). Stage times from
 * timed calls (iters), end to end from untimed ones; decoded chunks and
 * chunk 0's container must equal the reference's byte for byte. Table on
 * stdout, JSON to path. */
static void quant_report(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch,
                         uint32_t n, const kvtc_layout *l, void *d_out, size_t raw, int iters,
                         const void *d_in, const char *path)
{
    FILE *f = fopen(path, "w");
    double gb = raw / 1e9;
    kvtc_gpu_codec *gu = NULL, *gt = NULL;
    kvtc_gpu_params tp = timed;
    KV(kvtc_gpu_codec_create(p, plan, NULL, &gu));
    KV(kvtc_gpu_codec_create(p, plan, &tp, &gt));
    const uint32_t *v = quant_v;
    uint8_t *ref = malloc(raw), *got = malloc(raw), *c0 = NULL;
    size_t c0_len = 0;
    if (!ref || !got)
        exit(1);
    quality_stride = 8;
    plan_groups_print(p, plan);
    if (f)
        fprintf(f, "{\"variants\": [");
    printf("%5s %9s %9s %9s %9s %10s %10s %9s %11s %11s\n", "tiles", "enc ms", "dec ms",
           "enc GB/s", "dec GB/s", "enc quant", "dec quant", "ratio", "bytes diff", "cont0 same");
    for (uint32_t i = 0; i < n_quant_v; i++) {
        struct run r, t;
        uint8_t *ci = NULL;
        size_t ci_len = 0;
        quant_cfg = v[i] % 10;
        quant_set = 1;
        KV(kvtc__gpu_rows_set(v[i] >= 10 ? (int)(v[i] / 10) - 1 : -1));
        reuse_ctx = gt;
        run_codec(p, plan, tp, ch, n, l, d_out, raw, iters, d_in, &t, i ? &ci : &c0,
                  i ? &ci_len : &c0_len);
        reuse_ctx = gu;
        run_codec(p, plan, (kvtc_gpu_params){0}, ch, n, l, d_out, raw,
                  iters, d_in, &r, NULL, NULL);
        reuse_ctx = NULL;
        quant_set = 0;
        KV(kvtc__gpu_rows_set(-1));
        CK(cudaMemcpy(i ? got : ref, d_out, raw, cudaMemcpyDeviceToHost));
        size_t diff = 0;
        for (size_t b = 0; i && b < raw; b += 65536) {
            size_t m = raw - b < 65536 ? raw - b : 65536;
            if (memcmp(got + b, ref + b, m))
                for (size_t k = 0; k < m; k++)
                    diff += got[b + k] != ref[b + k];
        }
        int same = !i || (ci_len == c0_len && !memcmp(ci, c0, c0_len));
        free(ci);
        printf("%5u %9.3f %9.3f %9.1f %9.1f %10.3f %10.3f %9.3f %11zu %11s\n", v[i], r.enc_ms,
               r.dec_ms, gb / (r.enc_ms * 1e-3), gb / (r.dec_ms * 1e-3),
               t.enc_stage[KVTC_GPU_STAGE_QUANT], t.dec_stage[KVTC_GPU_STAGE_QUANT], r.ratio, diff,
               same ? "yes" : "NO");
        printf("      stages enc:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), t.enc_stage[s]);
        printf("\n      stages dec:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), t.dec_stage[s]);
        printf("\n");
        if (f) {
            fprintf(f, "%s{\"tiles\": %u, \"compress_ms\": %.4f, \"decompress_ms\": %.4f, "
                       "\"timed_compress_ms\": %.4f, \"timed_decompress_ms\": %.4f, "
                       "\"ratio\": %.4f, \"rel_sq_error\": %.6g, "
                       "\"decoded_bytes_differing_from_old\": %zu, \"container0_same\": %d, "
                       "\"stages_compress_ms\": {",
                    i ? ", " : "", v[i], r.enc_ms, r.dec_ms, t.enc_ms, t.dec_ms, r.ratio,
                    r.rel_mse, diff, same);
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s), t.enc_stage[s]);
            fprintf(f, "}, \"stages_decompress_ms\": {");
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s), t.dec_stage[s]);
            fprintf(f, "}}");
        }
    }
    quality_stride = 1;
    if (f) {
        fprintf(f, "]}\n");
        fclose(f);
    }
    free(c0);
    free(ref);
    free(got);
    kvtc_gpu_codec_free(gu);
    kvtc_gpu_codec_free(gt);
}

/* --entropy-json: the DEFLATE stage both ways, ours (kernels/gpu_huffman_*,
 * version 2 containers, at several index granularities) against nvCOMP's
 * (algo 0 + its inflate), same batch and profile, in the same run: stage
 * times from timed calls (2), end to end from untimed ones (iters); the
 * decoded chunks of every variant must equal nvCOMP's byte for byte (same
 * symbols, only the entropy coder differs). A table on stdout, JSON to
 * path. */
static void entropy_compare(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch,
                            uint32_t n, const kvtc_layout *l, void *d_out, size_t raw, int iters,
                            const void *d_in, const char *path)
{
    struct v {
        const char *name;
        int deflate, log2, index, inflate;
    } v[] = {{"nvcomp", KVTC_GPU_DEFLATE_NVCOMP, 0, KVTC_GPU_INDEX_ON, KVTC_GPU_INFLATE_NVCOMP},
             {"ours_log2_10", KVTC_GPU_DEFLATE_KVTC, 10, KVTC_GPU_INDEX_ON, 0},
             {"ours_log2_9", KVTC_GPU_DEFLATE_KVTC, 9, KVTC_GPU_INDEX_ON, 0},
             {"ours_log2_11", KVTC_GPU_DEFLATE_KVTC, 11, KVTC_GPU_INDEX_ON, 0},
             {"ours_log2_12", KVTC_GPU_DEFLATE_KVTC, 12, KVTC_GPU_INDEX_ON, 0},
             {"ours_enc_nvcomp_inflate", KVTC_GPU_DEFLATE_KVTC, 10, KVTC_GPU_INDEX_OFF, 0},
             {"ours_serial_legacy_pass", KVTC_GPU_DEFLATE_KVTC, 10, KVTC_GPU_INDEX_ON,
              KVTC_GPU_INFLATE_KVTC}};
    uint32_t nv = sizeof v / sizeof v[0];
    uint8_t *ref = malloc(raw), *got = malloc(raw);
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!ref || !got)
        exit(1);
    double gb = raw / 1e9;
    quality_stride = 8; /* the host's error pass would dominate the run */
    printf("entropy stage: ours vs nvCOMP (stage ms from 2 timed calls; end to end: medians of "
           "%d untimed calls)\n", iters);
    printf("%-24s %9s %9s %8s %9s %9s %9s %9s %10s\n", "variant", "deflate", "inflate", "ratio",
           "enc ms", "dec ms", "enc GB/s", "dec GB/s", "dec==nv");
    if (f)
        fprintf(f, "{\"raw_bytes\": %zu, \"variants\": [", raw);
    for (uint32_t i = 0; i < nv; i++) {
        kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_TIMING |
                                             KVTC_GPU_PARAM_FIELD_INFLATE |
                                             KVTC_GPU_PARAM_FIELD_DEFLATE |
                                             KVTC_GPU_PARAM_FIELD_INDEX_LOG2 |
                                             KVTC_GPU_PARAM_FIELD_DECODE_INDEX,
                               .timing = 1,
                               .inflate = v[i].inflate,
                               .deflate = v[i].deflate,
                               .index_log2 = v[i].log2,
                               .decode_index = v[i].index};
        struct run t, r;
        run_codec(p, plan, prm, ch, n, l, d_out, raw, 2, d_in, &t, NULL, NULL);
        prm.timing = 0;
        /* end to end only for the two the headline compares */
        int full = i < 2;
        if (full)
            run_codec(p, plan, prm, ch, n, l, d_out, raw, iters, d_in, &r, NULL, NULL);
        else
            r = t;
        CK(cudaMemcpy(i ? got : ref, d_out, raw, cudaMemcpyDeviceToHost));
        int same = i == 0 || !memcmp(got, ref, raw);
        printf("%-24s %9.3f %9.3f %8.2f %9.3f %9.3f %9.1f %9.1f %10s\n", v[i].name,
               t.enc_stage[KVTC_GPU_STAGE_DEFLATE], t.dec_stage[KVTC_GPU_STAGE_DEFLATE], t.ratio,
               full ? r.enc_ms : NAN, full ? r.dec_ms : NAN, full ? gb / (r.enc_ms * 1e-3) : NAN,
               full ? gb / (r.dec_ms * 1e-3) : NAN, same ? "yes" : "NO");
        if (f) {
            fprintf(f, "%s{\"variant\": \"%s\", \"deflate_ms\": %.4f, \"inflate_ms\": %.4f, "
                       "\"ratio\": %.4f, \"container_enc_ms\": %.4f, \"container_dec_ms\": %.4f",
                    i ? ", " : "", v[i].name, t.enc_stage[KVTC_GPU_STAGE_DEFLATE],
                    t.dec_stage[KVTC_GPU_STAGE_DEFLATE], t.ratio,
                    t.enc_stage[KVTC_GPU_STAGE_CONTAINER], t.dec_stage[KVTC_GPU_STAGE_CONTAINER]);
            if (full)
                fprintf(f, ", \"compress_ms\": %.4f, \"decompress_ms\": %.4f, "
                           "\"compress_gbps\": %.2f, \"decompress_gbps\": %.2f",
                        r.enc_ms, r.dec_ms, gb / (r.enc_ms * 1e-3), gb / (r.dec_ms * 1e-3));
            fprintf(f, ", \"rel_sq_error\": %.6g, \"decoded_equal_to_nvcomp\": %s}",
                    t.rel_mse, same ? "true" : "false");
            fflush(f);
        }
        if (!same)
            fprintf(stderr, "kvtc-bench-gpu: %s decodes other bytes than nvCOMP\n", v[i].name);
    }
    quality_stride = 1;
    if (f) {
        fprintf(f, "]}\n");
        fclose(f);
    }
    free(ref);
    free(got);
}

/* --fp8-variants: which of fp16 / fp8 encode / fp8 decode / fp8 both
 * --fp8-report runs (bit i: variant i), so a short device call can take
 * the ones it needs (each costs a context, ~15-20 s on an H100). */
static uint32_t fp8_mask = 0xf;

/* Relative squared error of bytes of bf16 output vs input (device). */
static double pool_rel_err(const void *d_in, const void *d_out, size_t bytes)
{
    size_t elems = bytes / 2;
    uint16_t *x = malloc(bytes), *y = malloc(bytes);
    float *fx = malloc(4 * elems), *fy = malloc(4 * elems);
    CK(cudaMemcpy(x, d_in, bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(y, d_out, bytes, cudaMemcpyDeviceToHost));
    kvtc_to_float(KVTC_DTYPE_BF16, x, fx, elems);
    kvtc_to_float(KVTC_DTYPE_BF16, y, fy, elems);
    double num = 0, den = 0;
    for (size_t j = 0; j < elems; j++) {
        num += ((double)fx[j] - fy[j]) * ((double)fx[j] - fy[j]);
        den += (double)fx[j] * fx[j];
    }
    free(x);
    free(y);
    free(fx);
    free(fy);
    return den > 0 ? num / den : 0;
}

/* Chunk 0's container (host, len bytes) decoded alone with g: the share of
 * its bytes equal to the batch's decode of it at d_out. */
static double alone_same(kvtc_gpu_codec *g, const kvtc_gpu_chunk *c0, const kvtc_layout *l,
                         const uint8_t *cont, size_t len, const void *d_out)
{
    size_t cb = kvtc_chunk_bytes(l, c0->n_tokens), same = 0;
    uint8_t *d_src, *d_dst, *a = malloc(cb), *b = malloc(cb);
    int32_t *d_st, st = -1;
    CK(cudaMalloc((void **)&d_src, len));
    CK(cudaMalloc((void **)&d_dst, cb));
    CK(cudaMalloc((void **)&d_st, 4));
    CK(cudaMemcpy(d_src, cont, len, cudaMemcpyHostToDevice));
    kvtc_gpu_container it = {0, len, d_dst, c0->n_tokens, c0->first_pos, c0->flags};
    KV(kvtc_gpu_decode(g, &it, 1, d_src, d_st, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(&st, d_st, 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(a, d_dst, cb, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b, d_out, cb, cudaMemcpyDeviceToHost));
    for (size_t j = 0; j < cb; j++)
        same += a[j] == b[j];
    cudaFree(d_src);
    cudaFree(d_dst);
    cudaFree(d_st);
    free(a);
    free(b);
    return st ? -1 : (double)same / cb;
}

/* --fp8-report: the projections in fp8 (kvtc_gpu_params.enc_gemm /
 * dec_gemm) next to fp16 on the same batch: fp16 both ways, fp8 encode,
 * fp8 decode, fp8 both. One context per variant with stage timing on
 * (events add microseconds to ~8 ms calls); the GEMMs alone: the fp16
 * context's (kvtc__gpu_gemm_time) and the fp8 ones without the activation
 * conversion (kvtc__gpu_fp8_gemm_time). Errors: relative squared error vs
 * the input over the generated chunks only (the first `pool`: with
 * --batch-pool the others replay them at other positions, RoPE-undone at
 * the wrong angle, so their error says nothing; v13's table averaged them
 * in and showed 0.87 for every variant), and the CPU codec's on chunk 0
 * (cpu_rel). "alone": chunk 0 decoded by itself vs in the batch, the share
 * of equal bytes (the fp8 decode's static scale makes a chunk's result its
 * own; v13's batch amax did not). Table on stdout, JSON to path. */
static void fp8_report(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch, uint32_t n,
                       const kvtc_layout *l, void *d_out, size_t raw, int iters, const void *d_in,
                       double cpu_rel, const char *path, uint32_t pool)
{
    static const int v[4][2] = {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
    static const char *name[4] = {"fp16", "fp8 encode", "fp8 decode", "fp8 both"};
    FILE *f = fopen(path, "w");
    double gb = raw / 1e9;
    uint64_t M = (uint64_t)n * 256;
    float g16[2] = {0, 0}, g8[2] = {0, 0};
    struct run r[4];
    uint64_t runs[4] = {0}, fbk[4] = {0};
    double alone[4] = {0};
    size_t pool_bytes = (raw / n) * (pool ? pool : n);
    quality_stride = (size_t)1 << 30; /* run_codec's sampled error: replaced below */
    for (int i = 0; i < 4; i++) {
        if (!(fp8_mask >> i & 1))
            continue;
        kvtc_gpu_params prm = {.field_mask = KVTC_GPU_PARAM_FIELD_TIMING |
                                             KVTC_GPU_PARAM_FIELD_ENC_GEMM |
                                             KVTC_GPU_PARAM_FIELD_DEC_GEMM,
                               .timing = 1,
                               .enc_gemm = v[i][0] ? KVTC_GPU_PROJ_FP8 : 0,
                               .dec_gemm = v[i][1] ? KVTC_GPU_PROJ_FP8 : 0};
        kvtc_gpu_codec *g = NULL;
        KV(kvtc_gpu_codec_create(p, plan, &prm, &g));
        reuse_ctx = g;
        uint8_t *cont0 = NULL;
        size_t len0 = 0;
        run_codec(p, plan, prm, ch, n, l, d_out, raw, iters, d_in, &r[i], &cont0, &len0);
        reuse_ctx = NULL;
        r[i].rel_mse = pool_rel_err(d_in, d_out, pool_bytes);
        alone[i] = alone_same(g, &ch[0], l, cont0, len0, d_out);
        free(cont0);
        KV(kvtc__gpu_fp8_info(g, &runs[i], &fbk[i]));
        fprintf(stderr,
                "fp8 report: %s compress %.3f ms, decompress %.3f ms, rel.err %.4g, "
                "chunk 0 alone: %.4f of bytes equal\n",
                name[i], r[i].enc_ms, r[i].dec_ms, r[i].rel_mse, alone[i]);
        if (i == 0)
            KV(kvtc__gpu_gemm_time(g, M, iters, 0, &g16[0], &g16[1]));
        if (i == 3 || (i > 0 && !(fp8_mask >> 3 & 1) && !(fp8_mask >> (i + 1) & 1)))
        {
            KV(kvtc__gpu_fp8_gemm_time(g, M, iters, &g8[0], &g8[1])); /* the last fp8 context */
            for (int d = 0; d < 2; d++) /* a direction it keeps in 16 bits: not measured */
                g8[d] = v[i][d] ? g8[d] : NAN;
        }
        kvtc_gpu_codec_free(g);
    }
    quality_stride = 1;
    printf("fp8 projections (%s, %.2f GiB): GEMMs alone fp16 enc %.3f / dec %.3f ms, "
           "fp8 enc %.3f / dec %.3f ms; CPU codec rel.err (chunk 0) %.4g\n",
           "stage timing on", raw / 1073741824.0, g16[0], g16[1], g8[0], g8[1], cpu_rel);
    printf("rel.err: the %u generated chunks; alone: chunk 0 decoded by itself, share of its "
           "bytes equal to the batch's\n",
           pool ? pool : n);
    printf("%-11s %8s %8s %8s %8s %7s %7s %7s %7s %7s %10s %8s %7s %9s\n", "variant", "enc ms",
           "dec ms", "enc GB/s", "dec GB/s", "enc/16", "dec/16", "enc/8", "dec/8", "ratio",
           "rel.err", "vs CPU", "alone", "fp8 calls");
    if (f)
        fprintf(f, "{\"raw_bytes\": %zu, \"gemm_fp16_ms\": [%.4f, %.4f], "
                   "\"gemm_fp8_ms\": [%.4f, %.4f], \"cpu_rel_sq_error_chunk0\": %.6g, "
                   "\"variants\": [",
                raw, g16[0], g16[1], isnan(g8[0]) ? -1.0 : g8[0], isnan(g8[1]) ? -1.0 : g8[1],
                cpu_rel);
    for (int i = 0, first = 1; i < 4; i++) {
        if (!(fp8_mask >> i & 1))
            continue;
        printf("%-11s %8.3f %8.3f %8.1f %8.1f %7.2f %7.2f %7.2f %7.2f %7.3f %10.4g %8.3f %7.4f "
               "%5llu/%llu\n",
               name[i], r[i].enc_ms, r[i].dec_ms, gb / (r[i].enc_ms * 1e-3),
               gb / (r[i].dec_ms * 1e-3), r[i].enc_ms / g16[0], r[i].dec_ms / g16[1],
               r[i].enc_ms / g8[0], r[i].dec_ms / g8[1], r[i].ratio, r[i].rel_mse,
               cpu_rel > 0 ? r[i].rel_mse / cpu_rel : 0, alone[i], (unsigned long long)runs[i],
               (unsigned long long)fbk[i]);
        printf("      stages enc:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), r[i].enc_stage[s]);
        printf("\n      stages dec:");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            printf(" %s %.3f", kvtc_gpu_stage_name(s), r[i].dec_stage[s]);
        printf("\n");
        if (f) {
            fprintf(f, "%s{\"variant\": \"%s\", \"compress_ms\": %.4f, \"decompress_ms\": %.4f, "
                       "\"ratio\": %.4f, \"rel_sq_error_pool\": %.6g, \"pool_chunks\": %u, "
                       "\"chunk0_alone_bytes_equal\": %.6f, \"fp8_gemm_calls\": %llu, "
                       "\"fp8_fallbacks\": %llu, \"stages_compress_ms\": {",
                    first ? "" : ", ", name[i], r[i].enc_ms, r[i].dec_ms, r[i].ratio,
                    r[i].rel_mse, pool ? pool : n, alone[i], (unsigned long long)runs[i],
                    (unsigned long long)fbk[i]);
            first = 0;
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s),
                        r[i].enc_stage[s]);
            fprintf(f, "}, \"stages_decompress_ms\": {");
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s),
                        r[i].dec_stage[s]);
            fprintf(f, "}}");
        }
    }
    if (f) {
        fprintf(f, "]}\n");
        fclose(f);
    }
}

static double host_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* One gap_report measurement of a direction: medians over iters of the
 * call's wall time between events around it (*wall), the host time the
 * call takes to return (*host), with the GPU idle when the call starts
 * (busy 0: the bench's way) or still busy with 4 memsets of the output
 * batch queued before the start event (busy 1: the call's host work
 * overlaps them, so the wall is the GPU's part alone), or two calls back
 * to back between the events (busy 2: wall per call). */
static void gap_measure(kvtc_gpu_codec *g, int enc, int busy, const kvtc_gpu_chunk *ch,
                        const kvtc_gpu_container *it, uint32_t n, void *d_out, size_t raw,
                        uint8_t *d_dst, size_t cap, uint64_t *d_off, uint64_t *d_sz,
                        int32_t *d_st, cudaStream_t st, int iters, float *wall, float *host)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float *tw = calloc(iters, sizeof(float)), *th = calloc(iters, sizeof(float));
    for (int i = -1; i < iters; i++) {
        for (int k = 0; busy == 1 && k < 4; k++)
            CK(cudaMemsetAsync(d_out, k, raw, st));
        CK(cudaEventRecord(a, st));
        double h0 = host_ms();
        for (int k = 0; k < (busy == 2 ? 2 : 1); k++) {
            if (enc)
                KV(kvtc_gpu_encode(g, ch, n, d_dst, cap, d_off, d_sz, d_st, st));
            else
                KV(kvtc_gpu_decode(g, it, n, d_dst, d_st, st));
        }
        double h1 = host_ms();
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (i >= 0) {
            tw[i] = busy == 2 ? ms / 2 : ms;
            th[i] = (float)(busy == 2 ? (h1 - h0) / 2 : h1 - h0);
        }
    }
    *wall = median(tw, iters);
    *host = median(th, iters);
    free(tw);
    free(th);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

/* --gap-report: where a call's time goes besides its stages (issue #3,
 * gaps): per quantizer variant (--quant-variants) and direction, the wall
 * time with the GPU idle at the call (as the headline), with the GPU busy
 * ahead of it (the call's host work hidden), back to back, the host time
 * of the call, and the timed stages' sum (another context, params.timing:
 * events between the stages). idle - busy = host work before the first
 * launch that the GPU waits for; busy - stage sum = gaps between kernels
 * and the timing events' own cost. JSON to path. */
static void gap_report(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch, uint32_t n,
                       const kvtc_layout *l, void *d_out, size_t raw, int iters, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f)
        fprintf(f, "{\"variants\": [");
    printf("gaps (ms; medians of %d): tiles dir idle busy b2b host stages_sum | stages\n", iters);
    kvtc_gpu_codec *g = NULL, *gt = NULL;
    for (uint32_t rv = 0; rv < n_quant_v * (gap_pageable ? 2 : 1); rv++) {
        /* the second round: the meta blob staged from pageable memory */
        uint32_t vi = rv % n_quant_v, pg = rv >= n_quant_v;
        if (vi == 0) { /* one context pair per round (creating one takes seconds) */
            kvtc_gpu_codec_free(g);
            kvtc_gpu_codec_free(gt);
            if (pg)
                setenv("KVTC_GPU_PAGEABLE_META", "1", 1);
            else
                unsetenv("KVTC_GPU_PAGEABLE_META");
            kvtc_gpu_params up = {0}, tp = timed;
            KV(kvtc_gpu_codec_create(p, plan, &up, &g));
            KV(kvtc_gpu_codec_create(p, plan, &tp, &gt));
        }
        KV(kvtc__gpu_quant_set(g, quant_v[vi]));
        KV(kvtc__gpu_quant_set(gt, quant_v[vi]));
        size_t cap = kvtc_gpu_encode_bound(g, ch, n);
        uint8_t *d_dst;
        uint64_t *d_off, *d_sz;
        int32_t *d_st;
        CK(cudaMalloc((void **)&d_dst, cap));
        CK(cudaMalloc((void **)&d_off, 8 * n));
        CK(cudaMalloc((void **)&d_sz, 8 * n));
        CK(cudaMalloc((void **)&d_st, 4 * n));
        cudaStream_t st;
        CK(cudaStreamCreate(&st));
        KV(kvtc_gpu_encode(g, ch, n, d_dst, cap, d_off, d_sz, d_st, st));
        CK(cudaStreamSynchronize(st));
        uint64_t *off = malloc(8 * n), *sz = malloc(8 * n);
        int32_t *stat = malloc(4 * n);
        kvtc_gpu_container *it = malloc(sizeof *it * n);
        CK(cudaMemcpy(off, d_off, 8 * n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(sz, d_sz, 8 * n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(stat, d_st, 4 * n, cudaMemcpyDeviceToHost));
        uint8_t *op = d_out;
        for (uint32_t c = 0; c < n; c++) {
            if (stat[c]) {
                fprintf(stderr, "gap report: encode status %d on chunk %u\n", stat[c], c);
                exit(1);
            }
            it[c] = (kvtc_gpu_container){off[c], sz[c], op, ch[c].n_tokens, ch[c].first_pos,
                                         ch[c].flags};
            op += kvtc_chunk_bytes(l, ch[c].n_tokens);
        }
        if (f)
            fprintf(f, "%s{\"tiles\": %u, \"pageable_meta\": %u", rv ? ", " : "", quant_v[vi],
                    pg);
        for (int enc = 1; enc >= 0; enc--) {
            float w[3], h[3], stg[KVTC_GPU_N_STAGES], sum = 0, acc[KVTC_GPU_N_STAGES] = {0};
            for (int busy = 0; busy < 3; busy++)
                gap_measure(g, enc, busy, ch, it, n, d_out, raw, d_dst, cap, d_off, d_sz, d_st,
                            st, iters, &w[busy], &h[busy]);
            for (int i = -1; i < iters; i++) {
                if (enc)
                    KV(kvtc_gpu_encode(gt, ch, n, d_dst, cap, d_off, d_sz, d_st, st));
                else
                    KV(kvtc_gpu_decode(gt, it, n, d_dst, d_st, st));
                CK(cudaStreamSynchronize(st));
                KV(kvtc_gpu_stage_times(gt, stg));
                for (int s = 0; i >= 0 && s < KVTC_GPU_N_STAGES; s++)
                    acc[s] += stg[s] / iters;
            }
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                sum += acc[s];
            printf("gaps %u%s %s idle %.3f busy %.3f b2b %.3f host %.3f (busy %.3f) stages %.3f |",
                   quant_v[vi], pg ? "p" : "", enc ? "enc" : "dec", w[0], w[1], w[2], h[0], h[1],
                   sum);
            for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                printf(" %s %.3f", kvtc_gpu_stage_name(s), acc[s]);
            printf("\n");
            if (f) {
                fprintf(f, ", \"%s\": {\"idle_ms\": %.4f, \"busy_ms\": %.4f, \"b2b_ms\": %.4f, "
                           "\"host_ms\": %.4f, \"host_busy_ms\": %.4f, \"host_b2b_ms\": %.4f, "
                           "\"stages_sum_ms\": %.4f, \"stages\": {",
                        enc ? "compress" : "decompress", w[0], w[1], w[2], h[0], h[1], h[2], sum);
                for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
                    fprintf(f, "%s\"%s\": %.4f", s ? ", " : "", kvtc_gpu_stage_name(s), acc[s]);
                fprintf(f, "}}");
            }
        }
        if (f)
            fprintf(f, "}");
        free(off);
        free(sz);
        free(stat);
        free(it);
        cudaFree(d_dst);
        cudaFree(d_off);
        cudaFree(d_sz);
        cudaFree(d_st);
        cudaStreamDestroy(st);
    }
    kvtc_gpu_codec_free(g);
    kvtc_gpu_codec_free(gt);
    unsetenv("KVTC_GPU_PAGEABLE_META");
    if (f) {
        fprintf(f, "]}\n");
        fclose(f);
    }
}

/* --pairs N: the headline's codec calls and the codec's GEMMs alone
 * alternate N times in one context (3 calls each a pair), so the two sides
 * of each ratio share the card's clocks and heat: across processes the
 * GEMMs alone moved 4.75-6.08 ms on one H100 (session 9), as much as
 * anything the codec changes. Medians and ranges of the per-pair ratios.
 * No quality pass between (its copies idle the GPU, and a GEMM after an
 * idle runs at a higher clock: session 10 measured 4.74-5.50 ms so); the
 * GEMMs on noise rows are the ratios' base, those on constant rows (the
 * headline's) are reported beside them. */
struct pairs {
    int n;
    float enc[16], dec[16];          /* the ratios (GEMMs on noise rows) */
    float codec[2][16], gemm[2][16]; /* their terms (ms): [0] encode, [1] decode */
    float gemm_const[2][16];         /* the GEMMs on constant rows, as the headline's */
};

/* One line: the candidates a context's tuning chose (encode K/V, decode
 * K/V) and their tuned times: contexts tune apart, and may choose apart. */
static void print_tuned(const char *what, const kvtc_gpu_codec *g)
{
    printf("tuned GEMMs of %s:", what);
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < 2; s++) {
            uint32_t idx = 0, nc = 0;
            float ms = 0, ms0 = 0;
            if (!kvtc__gpu_gemm_info(g, k, s, &idx, &nc, &ms, &ms0))
                printf(" %s%s #%u %.3f ms", k ? "dec" : "enc", s ? "V" : "K", idx, ms);
        }
    printf("\n");
}

static void paired_ratios(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_chunk *ch,
                          uint32_t n, const kvtc_layout *l, void *d_out, size_t raw,
                          const void *d_in, struct pairs *pr)
{
    kvtc_gpu_params prm = {0};
    size_t stride = quality_stride;
    quality_stride = 0; /* the error pass is the headline's, not this one's */
    KV(kvtc_gpu_codec_create(p, plan, &prm, &reuse_ctx));
    for (int k = 0; k < pr->n; k++) {
        struct run r;
        float e = 0, d = 0;
        run_codec(p, plan, prm, ch, n, l, d_out, raw, 3, d_in, &r, NULL, NULL);
        KV(kvtc__gpu_gemm_time(reuse_ctx, (uint64_t)n * 256, 3, 0, &pr->gemm_const[0][k],
                               &pr->gemm_const[1][k]));
        KV(kvtc__gpu_gemm_time(reuse_ctx, (uint64_t)n * 256, 3, 1, &e, &d));
        pr->enc[k] = r.enc_ms / e;
        pr->dec[k] = r.dec_ms / d;
        pr->codec[0][k] = r.enc_ms;
        pr->codec[1][k] = r.dec_ms;
        pr->gemm[0][k] = e;
        pr->gemm[1][k] = d;
    }
    print_tuned("the paired context", reuse_ctx);
    kvtc_gpu_codec_free(reuse_ctx);
    reuse_ctx = NULL;
    quality_stride = stride;
}

static float range_of(const float *v, int n, float *hi)
{
    float lo = v[0];
    *hi = v[0];
    for (int i = 1; i < n; i++) {
        lo = v[i] < lo ? v[i] : lo;
        *hi = v[i] > *hi ? v[i] : *hi;
    }
    return lo;
}

int main(int argc, char **argv)
{
    uint32_t n_chunks = 32, rank = 1024, calib_tokens = 8192, max_comp = 4096, calib_gpu = 1;
    uint32_t calib_only = 0, calib_pool = 0, gemm_only = 0, batch_pool = 0;
    int iters = 10, lean = 0, pipe_only = 0;
    const char *json = "bench/results/gpu.json", *pipe_json = NULL, *entropy_json = NULL;
    const char *gemm_json = NULL, *quant_json = NULL;
    int probe_only = 0, quant_only = 0, fp8_only = 0, gap_only = 0;
    const char *gap_json = NULL, *profile_out = NULL, *profile_in = NULL;
    const char *fp8_json = NULL;
    int entropy_only = 0;
    struct pairs pairs = {0}; /* --pairs: off by default (3 x N more codec calls) */
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines reach a log even if the run is cut short */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--chunks"))
            n_chunks = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters"))
            iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rank"))
            rank = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calib-tokens"))
            calib_tokens = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calib-gpu")) /* 1: kvtc_gpu_calibrator_fit */
            calib_gpu = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-components"))
            max_comp = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lean")) /* headline only: no fp16 / LZ variants */
            lean = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calib-only"))
            calib_only = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calib-pool"))
            calib_pool = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--json"))
            json = argv[i + 1];
        else if (!strcmp(argv[i], "--entropy-json")) /* ours vs nvCOMP, JSON path */
            entropy_json = argv[i + 1];
        else if (!strcmp(argv[i], "--entropy-only")) /* 1: that comparison alone */
            entropy_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gemm-report")) /* GEMM choices, JSON path */
            gemm_json = argv[i + 1];
        else if (!strcmp(argv[i], "--gemm-probe")) /* 0: no padded shapes */
            gemm_probe = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gemm-variants")) { /* e.g. 10,11,12 */
            n_gemm_v = 0;
            for (char *q = argv[i + 1], *e; *q && n_gemm_v < 12; q = e + (*e == ',')) {
                uint32_t x = (uint32_t)strtoul(q, &e, 10);
                if (e == q) /* not a number: stop */
                    break;
                if (x / 10 <= 1 && x % 10 <= 4)
                    gemm_v[n_gemm_v++] = x;
            }
            if (!n_gemm_v) {
                fprintf(stderr, "--gemm-variants: none of use_lt x 10 + direct (0..4)\n");
                return 2;
            }
        }
        else if (!strcmp(argv[i], "--fp8-report")) /* fp8 projections, JSON path */
            fp8_json = argv[i + 1];
        else if (!strcmp(argv[i], "--fp8-only")) /* 1: that report alone */
            fp8_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--fp8-variants")) { /* 0 fp16, 1 enc, 2 dec, 3 both */
            fp8_mask = 0;
            for (const char *q = argv[i + 1]; *q; q++)
                if (*q >= '0' && *q <= '3')
                    fp8_mask |= 1u << (*q - '0');
        }
        else if (!strcmp(argv[i], "--quant-report")) /* quantizer kernels, JSON path */
            quant_json = argv[i + 1];
        else if (!strcmp(argv[i], "--quant-only")) /* 1: that report alone */
            quant_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--profile-out")) /* save the calibrated profile */
            profile_out = argv[i + 1];
        else if (!strcmp(argv[i], "--profile-in")) /* load it instead of calibrating */
            profile_in = argv[i + 1];
        else if (!strcmp(argv[i], "--gap-report")) /* idle time per call, JSON path */
            gap_json = argv[i + 1];
        else if (!strcmp(argv[i], "--gap-pageable")) /* 1: also with pageable meta */
            gap_pageable = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gap-only")) /* 1: that report alone */
            gap_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--quant-variants")) { /* e.g. 0,1 */
            n_quant_v = 0;
            for (char *q = argv[i + 1], *e; *q && n_quant_v < 8; q = e + (*e == ',')) {
                quant_v[n_quant_v++] = (uint32_t)strtoul(q, &e, 10);
                if (e == q) /* not a number: stop */
                    break;
            }
        }
        else if (!strcmp(argv[i], "--probe-only")) /* 1: one timed call (for ncu) */
            probe_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rows-kernels")) /* kvtc__gpu_rows_set for the run */
            KV(kvtc__gpu_rows_set(atoi(argv[i + 1])));
        else if (!strcmp(argv[i], "--pipe-variants")) /* JSON lines path */
            pipe_json = argv[i + 1];
        else if (!strcmp(argv[i], "--pipe-only")) /* 1: only --pipe-variants + GEMM alone */
            pipe_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--pairs")) /* paired codec / GEMM-alone ratios */
            pairs.n = atoi(argv[i + 1]) < 0 ? 0 : atoi(argv[i + 1]) > 16 ? 16 : atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch-pool")) /* distinct batch chunks generated */
            batch_pool = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gemm-only")) /* the GEMM of K components alone */
            gemm_only = (uint32_t)atoi(argv[i + 1]);
    }
    if (gemm_only) {
        /* no calibration: for a profiler (ncu) to read the cuBLAS kernels'
         * resources at the headline's shapes */
        uint32_t kp[2] = {gemm_only, gemm_only};
        double tfl = 0;
        float ms = gemm_alone(32 * 8 * 128, (uint64_t)n_chunks * 256, kp, iters, &tfl);
        printf("GEMM alone, %u+%u components: %.3f ms per direction, %.0f TFLOP/s\n", gemm_only,
               gemm_only, ms, tfl);
        return 0;
    }
    if (!kvtc_gpu_available()) {
        fprintf(stderr, "kvtc-bench-gpu: no CUDA device\n");
        return 2;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    kvtc_layout l = {.layers = 32, .kv_heads = 8, .head_dim = 128, .dtype = KVTC_DTYPE_BF16,
                     .chunk_tokens = 256, .rope_style = KVTC_ROPE_HALF_SPLIT,
                     .rope_scaling = KVTC_ROPE_SCALING_LLAMA3, .rope_orig_max_pos = 8192,
                     .rope_theta = 500000.0f, .rope_factor = 8.0f, .rope_low_freq_factor = 1.0f,
                     .rope_high_freq_factor = 4.0f};
    bc_source *src = NULL;
    KV(bc_source_create(&l, rank, &src));
    size_t cb = kvtc_chunk_bytes(&l, 256), raw = cb * n_chunks;
    /* Calibration: rows gathered by the CPU calibrator (RoPE undone), PCA on
     * the GPU (or LAPACK), error measurement and plans on the CPU. */
    double t_gen = 0, t_add = 0, t_fit = 0, t_plan = 0, t0;
    kvtc_calib_params cp = {.max_rows = calib_tokens, .max_components = max_comp, .seed = 1};
    kvtc_calibrator *cal = NULL;
    KV(kvtc_calibrator_create(&l, &cp, &cal));
    uint32_t n_calib_chunks = (calib_tokens + 255) / 256;
    if (calib_pool == 0 || calib_pool > n_calib_chunks)
        calib_pool = n_calib_chunks;
    uint8_t *pool = malloc(cb * calib_pool);
    if (!pool)
        return 1;
    t0 = now();
    if (!profile_in)
        KV(gen_chunks(src, calib_pool, 8192, 1000, 256, pool, cb));
    t_gen = now() - t0;
    for (uint32_t c = 0; !profile_in && c < n_calib_chunks; c++) {
        uint32_t t = c * 256;
        uint8_t *buf = pool + (size_t)(c % calib_pool) * cb;
        t0 = now();
        KV(kvtc_calibrator_add(cal, buf, 256, 8192 + t));
        t_add += now() - t0;
    }
    free(pool);
    void *buf = malloc(cb);
    if (!buf)
        return 1;
    t0 = now();
    if (!profile_in)
        KV(calib_gpu ? kvtc_gpu_calibrator_fit(cal, 0) : kvtc_calibrator_fit(cal));
    t_fit = now() - t0;
    /* the fit's PCA part (GPU, or LAPACK when --calib-gpu 0: not split) */
    double t_pca = calib_gpu ? kvtc__gpu_calib_pca_seconds : 0;
    t0 = now();
    float targets[] = {4, 8, 16, 32};
    for (int i = 0; !profile_in && i < 4; i++)
        KV(kvtc_calibrator_plan(cal, targets[i], NULL));
    kvtc_profile *p = NULL;
    /* --profile-in: a profile saved by --profile-out (a second process of
     * the same run, e.g. under ncu, skips the calibration) */
    KV(profile_in ? kvtc_profile_load_file(profile_in, &p) : kvtc_calibrator_profile(cal, &p));
    kvtc_calibrator_free(cal);
    if (profile_out)
        KV(kvtc_profile_save_file(p, profile_out));
    t_plan = now() - t0;
    double calib_s = t_add + t_fit + t_plan;
    uint32_t plan = kvtc_profile_find_plan(p, 16);
    kvtc_plan_info pi;
    KV(kvtc_profile_plan_info(p, plan, &pi));
    fprintf(stderr, "calibrated on %u tokens (%s PCA) in %.1f s: add %.1f s (CPU), fit %.1f s, "
                    "4 plans + profile %.1f s (synthetic data generation %.1f s not counted); "
                    "16x plan: %u+%u components, %u groups\n",
            calib_tokens, calib_gpu ? "GPU" : "CPU", calib_s, t_add, t_fit, t_plan, t_gen,
            pi.key_components, pi.value_components, pi.groups);
    if (calib_only) {
        printf("{\"calibration\": {\"pca\": \"%s\", \"tokens\": %u, \"pool_chunks\": %u, "
               "\"max_components\": %u, \"seconds\": %.2f, \"add_s\": %.2f, \"fit_s\": %.2f, "
               "\"fit_pca_s\": %.2f, \"plans_profile_s\": %.2f, \"gen_s\": %.2f, "
               "\"plan16_components\": [%u, %u]}}\n",
               calib_gpu ? "gpu" : "cpu", calib_tokens, calib_pool, max_comp, calib_s, t_add,
               t_fit, t_pca, t_plan, t_gen, pi.key_components, pi.value_components);
        kvtc_profile_free(p);
        bc_source_free(src);
        return 0;
    }
    /* The batch, generated on the CPU, uploaded once. */
    uint8_t *d_in, *d_out;
    CK(cudaMalloc((void **)&d_in, raw));
    CK(cudaMalloc((void **)&d_out, raw));
    kvtc_gpu_chunk *ch = calloc(n_chunks, sizeof *ch);
    if (batch_pool == 0 || batch_pool > n_chunks)
        batch_pool = n_chunks;
    quality_bytes = cb * batch_pool;
    {
        uint8_t *host = malloc(cb * batch_pool);
        if (!host)
            return 1;
        KV(gen_chunks(src, batch_pool, 65536, 777, 1, host, cb));
        CK(cudaMemcpy(d_in, host, cb * batch_pool, cudaMemcpyHostToDevice));
        free(host);
    }
    for (uint32_t c = 0; c < n_chunks; c++) {
        /* chunks past the pool replay its data at their own position:
         * RoPE-undone at the wrong angle, still KV-like rows; for timing */
        if (c >= batch_pool)
            CK(cudaMemcpy(d_in + c * cb, d_in + (c % batch_pool) * cb, cb,
                          cudaMemcpyDeviceToDevice));
        ch[c] = (kvtc_gpu_chunk){d_in + c * cb, 256, 65536 + 256 * c, 0};
    }
    /* CPU reference error on one chunk. */
    double cpu_rel = 0;
    {
        kvtc_encoder *enc = NULL;
        kvtc_decoder *dec = NULL;
        KV(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc));
        KV(kvtc_decoder_create(p, &dec));
        size_t capc = kvtc_encode_bound(enc, 256), len = 0;
        uint8_t *cont = malloc(capc);
        void *rec = malloc(cb);
        KV(bc_source_chunk(src, 256, 65536, 777, buf));
        kvtc_chunk c0 = {buf, 256, 65536, 0};
        KV(kvtc_encode(enc, &c0, cont, capc, &len));
        KV(kvtc_decode(dec, cont, len, rec, cb, NULL));
        float *fx = malloc(4 * (cb / 2)), *fy = malloc(4 * (cb / 2));
        kvtc_to_float(KVTC_DTYPE_BF16, buf, fx, cb / 2);
        kvtc_to_float(KVTC_DTYPE_BF16, rec, fy, cb / 2);
        double num = 0, den = 0;
        for (size_t j = 0; j < cb / 2; j++) {
            num += ((double)fx[j] - fy[j]) * ((double)fx[j] - fy[j]);
            den += (double)fx[j] * fx[j];
        }
        cpu_rel = num / den;
        fprintf(stderr, "CPU codec on chunk 0: ratio %.2f, rel. squared error %.4g\n",
                (double)cb / len, cpu_rel);
        free(fx);
        free(fy);
        free(cont);
        free(rec);
        kvtc_encoder_free(enc);
        kvtc_decoder_free(dec);
    }
    if (probe_only) {
        /* two timed calls, nothing else: for a profiler (ncu) to read the
         * stages' kernels */
        struct run t;
        run_codec(p, plan, timed, ch,
                  n_chunks, &l, d_out, raw, 2, d_in, &t, NULL, NULL);
        printf("probe: compress %.3f ms, decompress %.3f ms (timed stages)\n", t.enc_ms, t.dec_ms);
        return 0;
    }
    if (fp8_json) {
        fp8_report(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, cpu_rel, fp8_json,
                   batch_pool);
        if (fp8_only)
            return 0;
    }
    if (gap_json) {
        gap_report(p, plan, ch, n_chunks, &l, d_out, raw, iters, gap_json);
        if (gap_only && !quant_json)
            return 0;
    }
    if (quant_json) {
        quant_report(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, quant_json);
        if (quant_only)
            return 0;
    }
    if (gemm_json) {
        uint32_t kq[2] = {(pi.key_components + 15) / 16 * 16, (pi.value_components + 15) / 16 * 16};
        gemm_report(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, kq, gemm_json);
        if (!pipe_json && pipe_only)
            return 0;
    }
    if (pipe_json && pipe_only) {
        /* the transform pipeline's settings alone, against the GEMM alone */
        pipe_variants(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, pipe_json);
        uint32_t kq[2] = {(pi.key_components + 15) / 16 * 16, (pi.value_components + 15) / 16 * 16};
        double tq = 0;
        float gq = gemm_alone(l.layers * l.kv_heads * l.head_dim, (uint64_t)n_chunks * 256, kq,
                              iters, &tq);
        printf("cuBLAS GEMM alone (per direction): %.3f ms, %.0f TFLOP/s\n", gq, tq);
        return 0;
    }
    if (entropy_only) { /* the comparison alone (a short device call) */
        entropy_compare(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in,
                        entropy_json ? entropy_json : "bench/results/gpu-entropy.json");
        return 0;
    }
    struct run rb, rh, r0;
    uint8_t *first = NULL;
    size_t first_len = 0;
    run_codec(p, plan, timed, ch, n_chunks, &l, d_out,
              raw, iters, d_in, &rb, &first, &first_len);
    run_codec(p, plan, (kvtc_gpu_params){0}, ch, n_chunks, &l, d_out,
              raw, iters, d_in, &rb, NULL, NULL); /* untimed stages: the headline */
    {
        struct run tmp;
        run_codec(p, plan, timed, ch, n_chunks, &l,
                  d_out, raw, 2, d_in, &tmp, NULL, NULL);
        memcpy(rb.enc_stage, tmp.enc_stage, sizeof rb.enc_stage);
        memcpy(rb.dec_stage, tmp.dec_stage, sizeof rb.dec_stage);
    }
    /* The same batch with nvCOMP's deflate: pieces without a sub-range
     * index, which our inflate decodes a thread a piece (what a v1
     * container gets), against the headline's indexed ones: stage time from
     * a timed run, end to end from an untimed one. */
    struct run rn;
    {
        struct run tmp;
        kvtc_gpu_params nv = {.field_mask = KVTC_GPU_PARAM_FIELD_TIMING |
                                            KVTC_GPU_PARAM_FIELD_INFLATE |
                                            KVTC_GPU_PARAM_FIELD_DEFLATE,
                              .timing = 1,
                              .inflate = KVTC_GPU_INFLATE_KVTC,
                              .deflate = KVTC_GPU_DEFLATE_NVCOMP};
        run_codec(p, plan, nv, ch, n_chunks, &l, d_out, raw, 2, d_in, &tmp, NULL, NULL);
        nv.timing = 0;
        run_codec(p, plan, nv, ch, n_chunks, &l, d_out, raw, iters, d_in, &rn, NULL, NULL);
        memcpy(rn.dec_stage, tmp.dec_stage, sizeof rn.dec_stage);
    }
    memset(&rh, 0, sizeof rh);
    memset(&r0, 0, sizeof r0);
    rh.enc_ms = rh.dec_ms = r0.enc_ms = r0.dec_ms = INFINITY; /* 0 GB/s when skipped */
    if (!lean) {
        kvtc_gpu_params bf = {.field_mask = KVTC_GPU_PARAM_FIELD_GEMM, .gemm = KVTC_GPU_GEMM_BF16};
        kvtc_gpu_params lz = {.field_mask = KVTC_GPU_PARAM_FIELD_DEFLATE_ALGO |
                                            KVTC_GPU_PARAM_FIELD_DEFLATE,
                              .deflate_algo = 1,
                              .deflate = KVTC_GPU_DEFLATE_NVCOMP};
        run_codec(p, plan, bf, ch, n_chunks, &l, d_out, raw, iters, d_in, &rh, NULL, NULL);
        run_codec(p, plan, lz, ch, n_chunks, &l, d_out, raw, iters, d_in, &r0, NULL, NULL);
    }
    if (entropy_json)
        entropy_compare(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, entropy_json);
    if (pipe_json)
        pipe_variants(p, plan, ch, n_chunks, &l, d_out, raw, iters, d_in, pipe_json);
    /* A GPU container must decode on the CPU. */
    int cpu_ok = 0;
    {
        kvtc_decoder *dec = NULL;
        KV(kvtc_decoder_create(p, &dec));
        void *rec = malloc(cb);
        cpu_ok = kvtc_decode(dec, first, first_len, rec, cb, NULL) == 0;
        free(rec);
        kvtc_decoder_free(dec);
    }
    uint32_t kp[2] = {0, 0};
    {
        /* the components the 16x plan reaches, as the GPU context uses */
        /* coded components, padded to 16 as the context pads them */
        kp[0] = (pi.key_components + 15) / 16 * 16;
        kp[1] = (pi.value_components + 15) / 16 * 16;
    }
    double tfl = 0;
    float gemm_ms = gemm_alone(l.layers * l.kv_heads * l.head_dim, (uint64_t)n_chunks * 256, kp,
                               iters, &tfl);
    /* the GEMMs alone as the codec runs them (the algorithms its context
     * tuned at creation): the base of the ratios, so that they compare like
     * with like; cuBLAS's GemmEx default above stays as a reference */
    float g_enc = 0, g_dec = 0;
    {
        kvtc_gpu_codec *gg = NULL;
        KV(kvtc_gpu_codec_create(p, plan, NULL, &gg));
        KV(kvtc__gpu_gemm_time(gg, (uint64_t)n_chunks * 256, iters, 0, &g_enc, &g_dec));
        if (pairs.n)
            print_tuned("the GEMMs-alone context", gg);
        kvtc_gpu_codec_free(gg);
    }
    if (pairs.n)
        paired_ratios(p, plan, ch, n_chunks, &l, d_out, raw, d_in, &pairs);
    float copy_ms = copy_bw(raw, iters);
    double gb = raw / 1e9;
    double enc_gbs = gb / (rb.enc_ms * 1e-3), dec_gbs = gb / (rb.dec_ms * 1e-3);
    double copy_gbs = 2 * gb / (copy_ms * 1e-3), gemm_gbs = gb / (gemm_ms * 1e-3);
    printf("kvtc-bench-gpu on %s: Llama-3.1-8B layout, %u chunks x 256 tokens = %.2f GiB bf16, "
           "16x plan (%u+%u components, %u groups)\n",
           prop.name, n_chunks, raw / 1073741824.0, pi.key_components, pi.value_components,
           pi.groups);
    printf("%-34s %10s %10s\n", "", "ms", "GB/s raw");
    printf("%-34s %10.2f %10.1f   ratio %.2fx, rel.err %.4g (CPU %.4g)\n", "compress (fp16 GEMM, algo 0)",
           rb.enc_ms, enc_gbs, rb.ratio, rb.rel_mse, cpu_rel);
    printf("%-34s %10.2f %10.1f\n", "decompress (fp16 GEMM)", rb.dec_ms, dec_gbs);
    /* rn: nvCOMP's pieces carry no sub-range index, so our inflate decodes
     * each with one thread: the fallback a v1 container gets */
    printf("%-34s %10.2f %10.1f   rel.err %.4g\n", "decompress (nvCOMP-written pieces)", rn.dec_ms,
           gb / (rn.dec_ms * 1e-3), rn.rel_mse);
    printf("%-34s %10.2f %10s   one thread a piece: %.2f ms (%.1f vs %.1f GB/s of container bytes)\n",
           "inflate stage (ours, indexed)", rb.dec_stage[KVTC_GPU_STAGE_DEFLATE], "",
           rn.dec_stage[KVTC_GPU_STAGE_DEFLATE],
           raw / rb.ratio / 1e6 / rb.dec_stage[KVTC_GPU_STAGE_DEFLATE],
           raw / rb.ratio / 1e6 / rn.dec_stage[KVTC_GPU_STAGE_DEFLATE]);
    if (!lean) {
        printf("%-34s %10.2f %10.1f   rel.err %.4g\n", "compress (bf16 GEMM)", rh.enc_ms,
               gb / (rh.enc_ms * 1e-3), rh.rel_mse);
        printf("%-34s %10.2f %10.1f\n", "decompress (bf16 GEMM)", rh.dec_ms, gb / (rh.dec_ms * 1e-3));
        printf("%-34s %10.2f %10.1f   ratio %.2fx\n", "compress (nvCOMP algo 1, LZ)", r0.enc_ms,
               gb / (r0.enc_ms * 1e-3), r0.ratio);
        printf("%-34s %10.2f %10.1f\n", "decompress (nvCOMP algo 1, LZ)", r0.dec_ms,
               gb / (r0.dec_ms * 1e-3));
    }
    printf("%-34s %10.2f %10.1f   %.0f TFLOP/s\n", "cuBLAS GEMM alone (per direction)", gemm_ms,
           gemm_gbs, tfl);
    printf("%-34s %10.2f %10.1f   decode GEMMs %.2f ms (tuned cuBLASLt, as the codec)\n",
           "codec's encode GEMMs alone", g_enc, gb / (g_enc * 1e-3), g_dec);
    printf("%-34s %10.2f %10.1f   (read+write bytes: %.0f GB/s)\n", "device copy of the batch",
           copy_ms, gb / (copy_ms * 1e-3), copy_gbs);
    printf("ratios: compress/GEMM time %.2f, decompress/GEMM time %.2f (the codec's GEMMs); "
           "compress/copy %.3f, decompress/copy %.3f (raw GB/s over copy GB/s)\n",
           rb.enc_ms / g_enc, rb.dec_ms / g_dec, enc_gbs / (gb / (copy_ms * 1e-3)),
           dec_gbs / (gb / (copy_ms * 1e-3)));
    if (pairs.n) {
        float eh, dh, el = range_of(pairs.enc, pairs.n, &eh), dl = range_of(pairs.dec, pairs.n, &dh);
        float se[16], sd[16]; /* median sorts: the pairs keep their order for the JSON */
        memcpy(se, pairs.enc, sizeof se);
        memcpy(sd, pairs.dec, sizeof sd);
        printf("paired ratios (%d x: the codec's calls, then its GEMMs alone on noise rows, one context): "
               "compress/GEMM %.2f (%.2f-%.2f), decompress/GEMM %.2f (%.2f-%.2f)\n",
               pairs.n, median(se, pairs.n), el, eh, median(sd, pairs.n), dl, dh);
        for (int k = 0; k < pairs.n; k++)
            printf("  pair %d: compress %.3f / GEMMs %.3f ms (constant rows %.3f), decompress "
                   "%.3f / GEMMs %.3f ms (%.3f)\n",
                   k, pairs.codec[0][k], pairs.gemm[0][k], pairs.gemm_const[0][k],
                   pairs.codec[1][k], pairs.gemm[1][k], pairs.gemm_const[1][k]);
    }
    printf("stages (ms)       ");
    for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
        printf(" %9s", kvtc_gpu_stage_name(s));
    printf("\n  compress        ");
    for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
        printf(" %9.2f", rb.enc_stage[s]);
    printf("\n  decompress      ");
    for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
        printf(" %9.2f", rb.dec_stage[s]);
    printf("\nGPU container decodes on the CPU: %s; calibration (%s PCA, %u tokens): %.1f s "
           "(add %.1f, fit %.1f, plans %.1f)\n",
           cpu_ok ? "yes" : "NO", calib_gpu ? "GPU" : "CPU", calib_tokens, calib_s, t_add, t_fit,
           t_plan);
    FILE *f = fopen(json, "w");
    if (f) {
        fprintf(f, "{\"device\": \"%s\", \"layout\": \"llama3.1-8b 32x8x128 bf16\", \"chunks\": %u, "
                   "\"raw_bytes\": %zu, \"plan_target\": 16, \"key_components\": %u, "
                   "\"value_components\": %u, \"groups\": %u, \"ratio\": %.3f, "
                   "\"compress_ms\": %.3f, \"decompress_ms\": %.3f, \"compress_gbps\": %.2f, "
                   "\"decompress_gbps\": %.2f, \"rel_sq_error\": %.5g, \"cpu_rel_sq_error\": %.5g, "
                   "\"variants_run\": %s, \"bf16_gemm\": {\"compress_gbps\": %.2f, \"decompress_gbps\": %.2f, "
                   "\"rel_sq_error\": %.5g}, "
                   "\"nvcomp_algo1\": {\"compress_gbps\": %.2f, \"decompress_gbps\": %.2f, "
                   "\"ratio\": %.3f}, "
                   "\"nvcomp_written_pieces\": {\"decompress_gbps\": %.2f, \"inflate_ms\": %.3f, "
                   "\"rel_sq_error\": %.5g}, \"indexed_inflate_ms\": %.3f, "
                   "\"gemm_alone_ms\": %.3f, \"gemm_tflops\": %.1f, \"copy_ms\": %.3f, "
                   "\"copy_gbps_rw\": %.1f, \"compress_over_gemm\": %.3f, "
                   "\"decompress_over_gemm\": %.3f, \"gemm_alone_codec_enc_ms\": %.3f, "
                   "\"gemm_alone_codec_dec_ms\": %.3f, \"stages_compress_ms\": {",
                prop.name, n_chunks, raw, pi.key_components, pi.value_components, pi.groups,
                rb.ratio, rb.enc_ms, rb.dec_ms, enc_gbs, dec_gbs, rb.rel_mse, cpu_rel,
                lean ? "false" : "true", gb / (rh.enc_ms * 1e-3), gb / (rh.dec_ms * 1e-3), rh.rel_mse,
                gb / (r0.enc_ms * 1e-3), gb / (r0.dec_ms * 1e-3), r0.ratio,
                gb / (rn.dec_ms * 1e-3), rn.dec_stage[KVTC_GPU_STAGE_DEFLATE], rn.rel_mse,
                rb.dec_stage[KVTC_GPU_STAGE_DEFLATE], gemm_ms, tfl, copy_ms,
                copy_gbs, rb.enc_ms / g_enc, rb.dec_ms / g_dec, g_enc, g_dec);
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            fprintf(f, "%s\"%s\": %.3f", s ? ", " : "", kvtc_gpu_stage_name(s), rb.enc_stage[s]);
        fprintf(f, "}, \"stages_decompress_ms\": {");
        for (int s = 0; s < KVTC_GPU_N_STAGES; s++)
            fprintf(f, "%s\"%s\": %.3f", s ? ", " : "", kvtc_gpu_stage_name(s), rb.dec_stage[s]);
        fprintf(f, "}, \"paired_compress_over_gemm\": [");
        for (int k = 0; k < pairs.n; k++)
            fprintf(f, "%s%.4f", k ? ", " : "", pairs.enc[k]);
        fprintf(f, "], \"paired_decompress_over_gemm\": [");
        for (int k = 0; k < pairs.n; k++)
            fprintf(f, "%s%.4f", k ? ", " : "", pairs.dec[k]);
        fprintf(f, "], \"paired_ms\": [");
        for (int k = 0; k < pairs.n; k++)
            fprintf(f, "%s{\"compress\": %.4f, \"encode_gemms\": %.4f, \"decompress\": %.4f, "
                       "\"decode_gemms\": %.4f, \"encode_gemms_constant\": %.4f, "
                       "\"decode_gemms_constant\": %.4f}",
                    k ? ", " : "", pairs.codec[0][k], pairs.gemm[0][k], pairs.codec[1][k],
                    pairs.gemm[1][k], pairs.gemm_const[0][k], pairs.gemm_const[1][k]);
        fprintf(f, "], \"gpu_container_cpu_decodes\": %s, \"calibration\": {\"pca\": \"%s\", "
                   "\"tokens\": %u, \"max_components\": %u, \"seconds\": %.2f, "
                   "\"add_s\": %.2f, \"fit_s\": %.2f, \"plans_s\": %.2f}}\n",
                cpu_ok ? "true" : "false", calib_gpu ? "gpu" : "cpu", calib_tokens, max_comp,
                calib_s, t_add, t_fit, t_plan);
        fclose(f);
    }
    return cpu_ok ? 0 : 1;
}
