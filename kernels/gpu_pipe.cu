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
 * stage in lockstep; mode 1 runs the GEMMs of all lanes one after the
 * other; mode 2 puts every GEMM on one high-priority stream and every
 * other stage on one low-priority stream, double-buffered (run_roles).
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
#define PIPE_MODE 0u
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

/* Mode 2's streams (GEMM: highest priority; memory-bound: lowest) and
 * events. */
static int roles_make(kvtc_gpu_codec *g)
{
    int least = 0, greatest = 0, rc;
    if (g->role_s[0])
        return 0;
    if ((rc = kvtc__cuda_err(cudaDeviceGetStreamPriorityRange(&least, &greatest), "priorities")))
        return rc;
    for (int i = 0; i < 2; i++)
        if ((rc = kvtc__cuda_err(cudaStreamCreateWithPriority(&g->role_s[i], cudaStreamNonBlocking,
                                                              i ? least : greatest),
                                 "cudaStreamCreate"))) {
            g->role_s[i] = NULL;
            return rc;
        }
    for (int i = 0; i < 8; i++)
        if ((rc = kvtc__cuda_err(cudaEventCreateWithFlags(&g->role_ev[i], cudaEventDisableTiming),
                                 "cudaEventCreate"))) {
            g->role_ev[i] = NULL;
            return rc;
        }
    return 0;
}

int kvtc__pipe_init(kvtc_gpu_codec *g)
{
    g->n_lanes = PIPE_LANES;
    g->split = PIPE_SPLIT;
    g->gemm_sms = PIPE_GEMM_SMS;
    g->mode = PIPE_MODE;
    /* cuBLASLt always: the codec's GEMMs run through it with the
     * algorithms kvtc__gemm_tune picks */
    int rc = lanes_make(g, g->n_lanes);
    return rc ? rc : lt_make(g);
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
    for (int i = 0; i < 2; i++)
        if (g->role_s[i])
            cudaStreamDestroy(g->role_s[i]);
    for (int i = 0; i < 8; i++)
        if (g->role_ev[i])
            cudaEventDestroy(g->role_ev[i]);
    if (g->fork)
        cudaEventDestroy(g->fork);
    if (g->lt)
        cublasLtDestroy(g->lt);
}

extern "C" int kvtc__gpu_pipeline(kvtc_gpu_codec *g, uint32_t lanes, uint32_t split,
                                  uint32_t gemm_sms, uint32_t mode)
{
    if (!g || !lanes || lanes > KVTC_GPU_MAX_LANES || !split || split > KVTC_GPU_MAX_SPLIT ||
        gemm_sms > 1024 || mode > 2 || (mode == 2 && lanes != 2))
        return KVTC_EINVAL;
    int rc = kvtc__cuda_err(cudaSetDevice(g->params.device), "cudaSetDevice");
    if (rc || (rc = kvtc__cuda_err(cudaDeviceSynchronize(), "sync")) ||
        (rc = lanes_make(g, lanes)) || (rc = lt_make(g)) ||
        (mode == 2 && (rc = roles_make(g))))
        return rc;
    g->n_lanes = lanes;
    g->split = split;
    g->gemm_sms = gemm_sms;
    g->mode = mode;
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
    for (int s = 0; s < 2; s++) /* direct decode: ldd-wide coefficients */
        kmax = !codes && g->ldd[s] > kmax ? g->ldd[s] : kmax;
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

/* GEMM order (mode 1): the GEMMs of all lanes run one after the
 * other, in the order of the parts, so they never split the SMs between
 * them; only the memory-bound kernels of other lanes run beside one. */
static void gemm_wait(kvtc_gpu_codec *g, uint32_t k, uint32_t *last, cudaStream_t s)
{
    if (g->mode == 1 && *last != UINT32_MAX && *last != k)
        cudaStreamWaitEvent(s, g->lane[*last].gemm_done, 0);
}

static void gemm_issued(kvtc_gpu_codec *g, uint32_t k, uint32_t nl, uint32_t *last,
                        cudaStream_t s)
{
    if (g->mode == 1 && nl > 1) {
        cudaEventRecord(g->lane[k].gemm_done, s);
        *last = k;
    }
}

/* One (sub-batch, K|V stream) part of a call. */
struct pipe_item {
    const kvtc__part *p;
    int s;
};

static uint32_t pipe_items(const kvtc_gpu_codec *g, int enc, const kvtc__part *parts, uint32_t np,
                           pipe_item *it)
{
    uint32_t ni = 0;
    for (uint32_t j = 0; j < np; j++)
        for (int s = 0; s < 2 && parts[j].M; s++)
            if (!enc || g->g1[s] != g->g0[s])
                it[ni++] = {&parts[j], s};
    return ni;
}

/* Stage 0, 1 or 2 of a part with buffers `buf` and the cuBLAS handle of
 * `bl`, on stream s. Encode: rows, GEMM, quantize + pack; decode:
 * dequantize, GEMM, rows. */
static int pipe_stage(kvtc_gpu_codec *g, int enc, int stage, const pipe_item *it,
                      const kvtc__dchunk *dch, int32_t *d_status, int vec, kvtc__lane *buf,
                      kvtc__lane *bl, cudaStream_t s)
{
    const kvtc__part *p = it->p;
    const kvtc__dchunk *c = dch + p->c0;
    int32_t *stt = d_status + p->c0;
    /* direct decode: the GEMM writes the chunks (16-byte aligned ones) */
    int dir = !enc && g->direct && g->bdir[it->s] && vec && g->hch;
    int rc;
    if (stage == 1) {
        rc = enc   ? kvtc__gemm_encode(g, bl, it->s, p->M, buf->rows.p, (float *)buf->coef.p, s)
             : dir ? kvtc__gemm_direct(g, bl, it->s, g->hch + p->c0, c, p->n, buf->coef.p,
                                       &buf->rows, s)
                   : kvtc__gemm_decode(g, bl, it->s, p->M, buf->coef.p, buf->rows.p, s);
        kvtc__mark(g, KVTC_GPU_STAGE_GEMM, s);
    } else if (enc && stage == 0) {
        rc = kvtc__launch_rows_in(g, it->s, c, p->n, p->M, buf->rows.p, stt, vec, s);
        kvtc__mark(g, KVTC_GPU_STAGE_ROWS, s);
    } else if (enc) {
        if (!(rc = kvtc__launch_quant(g, it->s, c, p->n, p->M, (const float *)buf->coef.p,
                                      (uint8_t *)buf->codes.p, s)))
            rc = kvtc__launch_pack(g, it->s, c, p->n, (const uint8_t *)buf->codes.p, s);
        kvtc__mark(g, KVTC_GPU_STAGE_QUANT, s);
    } else if (stage == 0) {
        rc = kvtc__launch_dequant(g, it->s, c, p->n, p->M, buf->coef.p, stt, dir, s);
        kvtc__mark(g, KVTC_GPU_STAGE_QUANT, s);
    } else if (dir) { /* keys: RoPE in place; values are done */
        rc = it->s == 0 ? kvtc__launch_rope_inplace(g, c, p->n, p->M, stt, s) : 0;
        kvtc__mark(g, KVTC_GPU_STAGE_ROWS, s);
    } else {
        rc = kvtc__launch_rows_out(g, it->s, c, p->n, p->M, buf->rows.p, stt, vec, s);
        kvtc__mark(g, KVTC_GPU_STAGE_ROWS, s);
    }
    return rc;
}

/* Modes 0 and 1: parts round robin over the lanes, each part's three
 * stages on its lane. */
static int run_lanes(kvtc_gpu_codec *g, int enc, const pipe_item *it, uint32_t ni,
                     const kvtc__dchunk *dch, int32_t *d_status, int vec, cudaStream_t st)
{
    uint32_t nl = lanes_used(g), last = UINT32_MAX;
    int rc = fork_lanes(g, nl, st);
    for (uint32_t i = 0; !rc && i < ni; i++) {
        uint32_t k = i % nl;
        int first = i < nl;
        kvtc__lane *ln = &g->lane[k];
        cudaStream_t ls = lane_stream(g, k, first, st);
        if ((rc = pipe_stage(g, enc, 0, &it[i], dch, d_status, vec, ln, ln, ls)))
            break;
        lane_started(g, k, first, nl, ls);
        gemm_wait(g, k, &last, ls);
        if ((rc = pipe_stage(g, enc, 1, &it[i], dch, d_status, vec, ln, ln, ls)))
            break;
        gemm_issued(g, k, nl, &last, ls);
        rc = pipe_stage(g, enc, 2, &it[i], dch, d_status, vec, ln, ln, ls);
    }
    /* join even after a failed launch: what was queued on the lanes must
     * stay ordered before the caller's next use of the buffers */
    int jr = join_lanes(g, nl, st);
    return rc ? rc : jr;
}

/* Mode 2: every GEMM on one stream of the highest priority (its blocks
 * get SMs first as they free up), every memory-bound stage on one stream
 * of the lowest; part i uses buffer slot i % 2 (lanes 0 and 1's buffers),
 * so stage 0 of part i+1 and stage 2 of part i-1 run while part i's GEMM
 * does. Events: ev[b] after stage 0 into slot b, ev[2+b] after the GEMM of
 * slot b, ev[4+b] after stage 2 of slot b; a stage that overwrites a
 * slot waits for the last reader of it. */
static int run_roles(kvtc_gpu_codec *g, int enc, const pipe_item *it, uint32_t ni,
                     const kvtc__dchunk *dch, int32_t *d_status, int vec, cudaStream_t st)
{
    cudaStream_t G = g->role_s[0], Ms = g->role_s[1];
    cudaEvent_t *ev = g->role_ev;
    kvtc__lane *bl = &g->lane[1];
    int rc = kvtc__cuda_err(cudaEventRecord(g->fork, st), "fork");
    if (!rc && !(rc = kvtc__cuda_err(cudaStreamWaitEvent(G, g->fork, 0), "fork wait")))
        rc = kvtc__cuda_err(cudaStreamWaitEvent(Ms, g->fork, 0), "fork wait");
    if (!rc && ni)
        rc = pipe_stage(g, enc, 0, &it[0], dch, d_status, vec, &g->lane[0], bl, Ms);
    if (!rc && ni)
        cudaEventRecord(ev[0], Ms);
    for (uint32_t i = 0; !rc && i < ni; i++) {
        uint32_t b = i % 2, nb = (i + 1) % 2;
        cudaStreamWaitEvent(G, ev[b], 0);
        if (i >= 2) /* stage 2 of part i-2 still reads what this GEMM writes */
            cudaStreamWaitEvent(G, ev[4 + b], 0);
        if ((rc = pipe_stage(g, enc, 1, &it[i], dch, d_status, vec, &g->lane[b], bl, G)))
            break;
        cudaEventRecord(ev[2 + b], G);
        if (i + 1 < ni) {
            if (i + 1 >= 2) /* the GEMM of part i-1 read slot nb */
                cudaStreamWaitEvent(Ms, ev[2 + nb], 0);
            if ((rc = pipe_stage(g, enc, 0, &it[i + 1], dch, d_status, vec, &g->lane[nb], bl, Ms)))
                break;
            cudaEventRecord(ev[nb], Ms);
        }
        cudaStreamWaitEvent(Ms, ev[2 + b], 0);
        if ((rc = pipe_stage(g, enc, 2, &it[i], dch, d_status, vec, &g->lane[b], bl, Ms)))
            break;
        cudaEventRecord(ev[4 + b], Ms);
    }
    /* join both (also after a failed launch: what was queued must stay
     * ordered before the caller's next use of the buffers) */
    int jr = kvtc__cuda_err(cudaEventRecord(ev[6], G), "join");
    if (!jr && !(jr = kvtc__cuda_err(cudaEventRecord(ev[7], Ms), "join")) &&
        !(jr = kvtc__cuda_err(cudaStreamWaitEvent(st, ev[6], 0), "join wait")))
        jr = kvtc__cuda_err(cudaStreamWaitEvent(st, ev[7], 0), "join wait");
    return rc ? rc : jr;
}

static int pipe_run(kvtc_gpu_codec *g, int enc, const kvtc__dchunk *dch, const kvtc__part *parts,
                    uint32_t np, int32_t *d_status, int vec, cudaStream_t st)
{
    pipe_item it[2 * KVTC_GPU_MAX_SPLIT];
    uint32_t ni = pipe_items(g, enc, parts, np, it);
    int rc = lanes_reserve(g, parts, np, enc ? 4 : 2, enc, st);
    if (rc)
        return rc;
    if (g->mode == 2 && lanes_used(g) == 2)
        return run_roles(g, enc, it, ni, dch, d_status, vec, st);
    return run_lanes(g, enc, it, ni, dch, d_status, vec, st);
}

int kvtc__pipe_encode(kvtc_gpu_codec *g, const kvtc__dchunk *dch, const kvtc__part *parts,
                      uint32_t np, int32_t *d_status, int vec, cudaStream_t st)
{
    return pipe_run(g, 1, dch, parts, np, d_status, vec, st);
}

int kvtc__pipe_decode(kvtc_gpu_codec *g, const kvtc__dchunk *hch, const kvtc__dchunk *dch,
                      const kvtc__part *parts, uint32_t np, int32_t *d_status, int vec,
                      cudaStream_t st)
{
    g->hch = hch;
    int rc = pipe_run(g, 0, dch, parts, np, d_status, vec, st);
    g->hch = NULL; /* the host copy is the caller's, valid during the call only */
    return rc;
}
