/* gpu_pipe.cu - the transform stages of a call (rows -> GEMM -> quantize
 * -> pack, or dequantize -> GEMM -> rows) as parts, one per (sub-batch,
 * K|V stream), spread over lanes: the caller's stream and context-owned
 * streams forked from it with an event and joined back with events, so the
 * call stays asynchronous on the caller's stream with no host sync. The
 * aim: the memory-bound row and quantization kernels of one part running
 * beside another part's GEMM. cuBLAS's default GEMM leaves no room for
 * that (it fills every SM: see the defaults below); gemm_sms makes the
 * GEMM (cuBLASLt) target fewer SMs so the others have some. Lane k > 0
 * starts after lane k-1's first kernel, so the lanes do not run the same
 * stage in lockstep; with gemm_chain the GEMMs run one after the other.
 * With params.timing the parts run serially on the caller's stream: the
 * per-stage events then time each stage alone. */
#include <stdlib.h>

#include "gpu_internal.h"

/* Defaults: the serial order (everything on the caller's stream, as
 * before the pipeline existed). Measured on an H100 (docs/perf-notes.md,
 * GPU codec v7): 2 lanes x 4 sub-batches with cuBLAS's GEMM took 10.45 /
 * 15.43 ms against 10.10 / 15.51 serial (compress / decompress, 1 GiB),
 * since cuBLAS's GEMM there is persistent (a 132-block grid, 384 threads x
 * 168 registers and 213 KB of shared memory per block: one block fills an
 * SM), so nothing of another lane runs beside it; the GEMM SM target
 * settings were not measured yet. */
#define PIPE_LANES 1u
#define PIPE_SPLIT 1u
#define PIPE_GEMM_SMS 0u
#define PIPE_CHAIN 1u
#define PIPE_LT_WS (32u << 20) /* cuBLASLt workspace per lane */

static int lanes_make(kvtc_gpu_codec *g, uint32_t want)
{
    int rc = 0;
    if (!g->fork && (rc = kvtc__cuda_err(cudaEventCreateWithFlags(&g->fork, cudaEventDisableTiming),
                                         "cudaEventCreate")))
        return rc;
    for (uint32_t k = g->lanes_made; k < want; k++) {
        kvtc__lane *ln = &g->lane[k];
        if (k == 0) {
            ln->blas = g->blas;
        } else {
            if ((rc = kvtc__cuda_err(cudaStreamCreateWithFlags(&ln->s, cudaStreamNonBlocking),
                                     "cudaStreamCreate")))
                return rc;
            if (cublasCreate(&ln->blas) != CUBLAS_STATUS_SUCCESS) {
                ln->blas = NULL;
                return KVTC_EIO;
            }
        }
        if ((rc = kvtc__cuda_err(cudaEventCreateWithFlags(&ln->started, cudaEventDisableTiming),
                                 "cudaEventCreate")) ||
            (rc = kvtc__cuda_err(cudaEventCreateWithFlags(&ln->done, cudaEventDisableTiming),
                                 "cudaEventCreate")) ||
            (rc = kvtc__cuda_err(cudaEventCreateWithFlags(&ln->gemm_done, cudaEventDisableTiming),
                                 "cudaEventCreate")))
            return rc;
        g->lanes_made = k + 1;
    }
    return 0;
}

/* cuBLASLt (GEMMs with an SM target) and its workspace on every lane made:
 * only once a setting asks for it. */
static int lt_make(kvtc_gpu_codec *g)
{
    if (!g->lt && cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS) {
        g->lt = NULL;
        return KVTC_EIO;
    }
    for (uint32_t k = 0; k < g->lanes_made; k++) {
        kvtc__lane *ln = &g->lane[k];
        if (ln->ws.p)
            continue;
        int rc = kvtc__cuda_err(cudaMalloc(&ln->ws.p, PIPE_LT_WS), "cudaMalloc");
        if (rc) {
            ln->ws.p = NULL;
            return rc;
        }
        ln->ws.cap = PIPE_LT_WS;
    }
    return 0;
}

int kvtc__pipe_init(kvtc_gpu_codec *g)
{
    g->n_lanes = PIPE_LANES;
    g->split = PIPE_SPLIT;
    g->gemm_sms = PIPE_GEMM_SMS;
    g->gemm_chain = PIPE_CHAIN;
    int rc = lanes_make(g, g->n_lanes);
    return rc || !g->gemm_sms ? rc : lt_make(g);
}

void kvtc__pipe_free(kvtc_gpu_codec *g)
{
    /* the caller synchronized the device */
    for (uint32_t k = 0; k < KVTC_GPU_MAX_LANES; k++) {
        kvtc__lane *ln = &g->lane[k];
        kvtc__dbuf_free(&ln->rows);
        kvtc__dbuf_free(&ln->coef);
        kvtc__dbuf_free(&ln->codes);
        kvtc__dbuf_free(&ln->ws);
        if (k > 0 && ln->blas)
            cublasDestroy(ln->blas);
        if (ln->s)
            cudaStreamDestroy(ln->s);
        if (ln->started)
            cudaEventDestroy(ln->started);
        if (ln->done)
            cudaEventDestroy(ln->done);
        if (ln->gemm_done)
            cudaEventDestroy(ln->gemm_done);
    }
    if (g->fork)
        cudaEventDestroy(g->fork);
    if (g->lt)
        cublasLtDestroy(g->lt);
}

extern "C" int kvtc__gpu_pipeline(kvtc_gpu_codec *g, uint32_t lanes, uint32_t split,
                                  uint32_t gemm_sms, uint32_t chain)
{
    if (!g || !lanes || lanes > KVTC_GPU_MAX_LANES || !split || split > KVTC_GPU_MAX_SPLIT ||
        gemm_sms > 1024 || chain > 1)
        return KVTC_EINVAL;
    int rc = kvtc__cuda_err(cudaSetDevice(g->params.device), "cudaSetDevice");
    if (rc || (rc = kvtc__cuda_err(cudaDeviceSynchronize(), "sync")) ||
        (rc = lanes_make(g, lanes)) || (gemm_sms && (rc = lt_make(g))))
        return rc;
    g->n_lanes = lanes;
    g->split = split;
    g->gemm_sms = gemm_sms;
    g->gemm_chain = chain;
    return 0;
}

uint32_t kvtc__pipe_split(const kvtc_gpu_codec *g, const uint32_t *T, uint32_t n, uint64_t M,
                          kvtc__part *parts)
{
    uint32_t want = g->params.timing ? 1 : g->split, np = 0;
    if (want > n)
        want = n;
    if (want < 1 || M == 0)
        want = 1;
    uint64_t row = 0;
    uint32_t c = 0;
    for (uint32_t j = 0; j < want && c < n; j++) {
        /* part j ends once the rows reach M * (j + 1) / want; the last
         * takes whatever is left */
        uint64_t end = j + 1 == want ? UINT64_MAX : M * (j + 1) / want;
        kvtc__part *p = &parts[np++];
        p->c0 = c;
        p->row0 = row;
        while (c < n && (row < end || T[c] == 0))
            row += T[c++];
        if (c == p->c0) /* at least one chunk per part */
            row += T[c++];
        p->n = c - p->c0;
        p->M = row - p->row0;
    }
    if (c < n) { /* cannot happen: the last part runs to n */
        parts[np - 1].n += n - c;
        for (; c < n; c++)
            parts[np - 1].M += T[c];
    }
    return np;
}

static uint32_t lanes_used(const kvtc_gpu_codec *g)
{
    return g->params.timing ? 1 : g->n_lanes;
}

/* Buffers of every lane for the largest part; on the caller's stream,
 * before the fork, so the lanes see them allocated. */
static int lanes_reserve(kvtc_gpu_codec *g, const kvtc__part *parts, uint32_t np, size_t coef_es,
                         int codes, cudaStream_t st)
{
    uint64_t mmax = 0;
    for (uint32_t j = 0; j < np; j++)
        mmax = parts[j].M > mmax ? parts[j].M : mmax;
    uint32_t kmax = g->ld[0] > g->ld[1] ? g->ld[0] : g->ld[1], nl = lanes_used(g);
    int rc = 0;
    for (uint32_t k = 0; k < nl && !rc; k++) {
        kvtc__lane *ln = &g->lane[k];
        if ((rc = kvtc__dbuf_reserve(&ln->rows, mmax * g->D * 2 + 16, st)) ||
            (rc = kvtc__dbuf_reserve(&ln->coef, mmax * kmax * coef_es + 16, st)))
            break;
        if (codes)
            rc = kvtc__dbuf_reserve(&ln->codes, mmax * kmax + 16, st);
    }
    return rc;
}

/* Fork: every lane but 0 waits for the caller's stream; lane k > 1 also
 * for lane k-1's first kernel (the stagger). */
static int fork_lanes(kvtc_gpu_codec *g, uint32_t nl, cudaStream_t st)
{
    if (nl < 2)
        return 0;
    int rc = kvtc__cuda_err(cudaEventRecord(g->fork, st), "fork");
    for (uint32_t k = 1; !rc && k < nl; k++)
        rc = kvtc__cuda_err(cudaStreamWaitEvent(g->lane[k].s, g->fork, 0), "fork wait");
    return rc;
}

static int join_lanes(kvtc_gpu_codec *g, uint32_t nl, cudaStream_t st)
{
    int rc = 0;
    for (uint32_t k = 1; !rc && k < nl; k++)
        if (!(rc = kvtc__cuda_err(cudaEventRecord(g->lane[k].done, g->lane[k].s), "join")))
            rc = kvtc__cuda_err(cudaStreamWaitEvent(st, g->lane[k].done, 0), "join wait");
    return rc;
}

/* The stream of a part's lane; the first part on lane k > 0 first waits
 * for lane k-1's first kernel. */
static cudaStream_t lane_stream(kvtc_gpu_codec *g, uint32_t k, int first, cudaStream_t st)
{
    if (k == 0)
        return st;
    if (first)
        cudaStreamWaitEvent(g->lane[k].s, g->lane[k - 1].started, 0);
    return g->lane[k].s;
}

static void lane_started(kvtc_gpu_codec *g, uint32_t k, int first, uint32_t nl, cudaStream_t s)
{
    if (first && k + 1 < nl)
        cudaEventRecord(g->lane[k].started, s);
}

/* GEMM order (gemm_chain): the GEMMs of all lanes run one after the
 * other, in the order of the parts, so they never split the SMs between
 * them; only the memory-bound kernels of other lanes run beside one. */
static void gemm_wait(kvtc_gpu_codec *g, uint32_t k, uint32_t *last, cudaStream_t s)
{
    if (g->gemm_chain && *last != UINT32_MAX && *last != k)
        cudaStreamWaitEvent(s, g->lane[*last].gemm_done, 0);
}

static void gemm_issued(kvtc_gpu_codec *g, uint32_t k, uint32_t nl, uint32_t *last,
                        cudaStream_t s)
{
    if (g->gemm_chain && nl > 1) {
        cudaEventRecord(g->lane[k].gemm_done, s);
        *last = k;
    }
}

int kvtc__pipe_encode(kvtc_gpu_codec *g, const kvtc__dchunk *dch, const kvtc__part *parts,
                      uint32_t np, int32_t *d_status, int vec, cudaStream_t st)
{
    uint32_t nl = lanes_used(g), next = 0, last = UINT32_MAX;
    int rc = lanes_reserve(g, parts, np, 4, 1, st);
    if (rc || (rc = fork_lanes(g, nl, st)))
        return rc;
    for (uint32_t j = 0; j < np; j++) {
        const kvtc__part *p = &parts[j];
        for (int s = 0; s < 2 && p->M; s++) {
            if (g->g1[s] == g->g0[s])
                continue;
            uint32_t k = next % nl;
            int first = next++ < nl;
            kvtc__lane *ln = &g->lane[k];
            cudaStream_t ls = lane_stream(g, k, first, st);
            const kvtc__dchunk *c = dch + p->c0;
            if ((rc = kvtc__launch_rows_in(g, s, c, p->n, p->M, ln->rows.p, d_status + p->c0, vec,
                                           ls)))
                return rc;
            lane_started(g, k, first, nl, ls);
            kvtc__mark(g, KVTC_GPU_STAGE_ROWS, ls);
            gemm_wait(g, k, &last, ls);
            if ((rc = kvtc__gemm_encode(g, ln, s, p->M, ln->rows.p, (float *)ln->coef.p, ls)))
                return rc;
            gemm_issued(g, k, nl, &last, ls);
            kvtc__mark(g, KVTC_GPU_STAGE_GEMM, ls);
            if ((rc = kvtc__launch_quant(g, s, c, p->n, p->M, (const float *)ln->coef.p,
                                         (uint8_t *)ln->codes.p, ls)) ||
                (rc = kvtc__launch_pack(g, s, c, p->n, (const uint8_t *)ln->codes.p, ls)))
                return rc;
            kvtc__mark(g, KVTC_GPU_STAGE_QUANT, ls);
        }
    }
    return join_lanes(g, nl, st);
}

int kvtc__pipe_decode(kvtc_gpu_codec *g, const kvtc__dchunk *dch, const kvtc__part *parts,
                      uint32_t np, int32_t *d_status, int vec, cudaStream_t st)
{
    uint32_t nl = lanes_used(g), next = 0, last = UINT32_MAX;
    int rc = lanes_reserve(g, parts, np, 2, 0, st);
    if (rc || (rc = fork_lanes(g, nl, st)))
        return rc;
    for (uint32_t j = 0; j < np; j++) {
        const kvtc__part *p = &parts[j];
        for (int s = 0; s < 2 && p->M; s++) {
            uint32_t k = next % nl;
            int first = next++ < nl;
            kvtc__lane *ln = &g->lane[k];
            cudaStream_t ls = lane_stream(g, k, first, st);
            const kvtc__dchunk *c = dch + p->c0;
            if ((rc = kvtc__launch_dequant(g, s, c, p->n, p->M, ln->coef.p, d_status + p->c0, ls)))
                return rc;
            lane_started(g, k, first, nl, ls);
            kvtc__mark(g, KVTC_GPU_STAGE_QUANT, ls);
            gemm_wait(g, k, &last, ls);
            if ((rc = kvtc__gemm_decode(g, ln, s, p->M, ln->coef.p, ln->rows.p, ls)))
                return rc;
            gemm_issued(g, k, nl, &last, ls);
            kvtc__mark(g, KVTC_GPU_STAGE_GEMM, ls);
            if ((rc = kvtc__launch_rows_out(g, s, c, p->n, p->M, ln->rows.p, d_status + p->c0, vec,
                                            ls)))
                return rc;
            kvtc__mark(g, KVTC_GPU_STAGE_ROWS, ls);
        }
    }
    return join_lanes(g, nl, st);
}
