/* gpu_codec.cu - the GPU codec context: device copies of the profile's
 * bases (bf16/fp16, trimmed to the components the plan reaches), means,
 * RoPE frequencies and groups; the cuBLAS handle; work buffers that grow in
 * stream order. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nvcomp/deflate.h>

#include "gpu_basis.h"
#include "gpu_internal.h"
#include "huff_core.h"

extern "C" {
#include "../codec/rope.h"
}

int kvtc__cuda_err(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    fprintf(stderr, "kvtc gpu: %s: %s\n", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? KVTC_ENOMEM : KVTC_EIO;
}

int kvtc__dbuf_reserve(kvtc__dbuf *b, size_t need, cudaStream_t s)
{
    if (need <= b->cap)
        return 0;
    if (b->p)
        cudaFreeAsync(b->p, s);
    b->p = NULL;
    b->cap = 0;
    size_t want = kvtc__up(need + need / 8, 1u << 20);
    int rc = kvtc__cuda_err(cudaMallocAsync(&b->p, want, s), "cudaMallocAsync");
    if (rc) {
        b->p = NULL;
        return rc;
    }
    b->cap = want;
    return 0;
}

void kvtc__dbuf_free(kvtc__dbuf *b)
{
    if (b->p)
        cudaFree(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* A pinned slot with room for need bytes whose last upload has run, or -1
 * (both busy, or pinned staging off). Why pinned: a pageable
 * cudaMemcpyAsync makes the driver copy the blob into its own staging
 * buffer before it returns, host time the GPU waits through when it is
 * idle at the call; from page-locked memory the copy is a DMA queued on
 * the stream. Growth frees a slot only once its upload has run. */
static int pin_slot(kvtc_gpu_codec *g, size_t need)
{
    if (!g->pin_init) {
        const char *e = getenv("KVTC_GPU_PAGEABLE_META");
        g->pin_off = e && *e == '1';
        g->pin_init = 1;
    }
    for (int i = 0; !g->pin_off && i < 2; i++) {
        int k = (g->pin_next + i) & 1;
        if (!g->pin_ev[k] &&
            cudaEventCreateWithFlags(&g->pin_ev[k], cudaEventDisableTiming) != cudaSuccess) {
            g->pin_ev[k] = NULL;
            g->pin_off = 1;
            break;
        }
        if (cudaEventQuery(g->pin_ev[k]) != cudaSuccess) /* its upload is still queued */
            continue;
        if (g->pin_cap[k] < need) {
            cudaFreeHost(g->pin[k]);
            g->pin[k] = NULL;
            g->pin_cap[k] = 0;
            size_t want = kvtc__up(need + need / 8, 1u << 16);
            if (cudaMallocHost(&g->pin[k], want) != cudaSuccess) {
                cudaGetLastError();
                g->pin[k] = NULL;
                g->pin_off = 1;
                break;
            }
            g->pin_cap[k] = want;
        }
        return k;
    }
    return -1;
}

int kvtc__host_reserve(kvtc_gpu_codec *g, size_t need)
{
    g->pin_cur = pin_slot(g, need);
    if (g->pin_cur >= 0) {
        g->hmeta = (uint8_t *)g->pin[g->pin_cur];
        return 0;
    }
    if (need > g->host_meta_cap) {
        void *p = realloc(g->host_meta, need);
        if (!p)
            return KVTC_ENOMEM;
        g->host_meta = p;
        g->host_meta_cap = need;
    }
    g->hmeta = (uint8_t *)g->host_meta;
    return 0;
}

void kvtc__host_uploaded(kvtc_gpu_codec *g, cudaStream_t s)
{
    if (g->pin_cur < 0)
        return;
    cudaEventRecord(g->pin_ev[g->pin_cur], s);
    g->pin_next = g->pin_cur ^ 1;
    g->pin_cur = -1;
}

int kvtc__host_chunks(kvtc_gpu_codec *g, uint32_t n)
{
    if (n <= g->host_n_cap)
        return 0;
    uint32_t *t = (uint32_t *)realloc(g->host_T, sizeof(uint32_t) * n);
    if (t)
        g->host_T = t;
    size_t *r = (size_t *)realloc(g->host_roff, sizeof(size_t) * n);
    if (r)
        g->host_roff = r;
    if (!t || !r)
        return KVTC_ENOMEM;
    g->host_n_cap = n;
    return 0;
}

extern "C" int kvtc_gpu_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" */
        return 0;
    }
    return n > 0;
}

extern "C" void kvtc_gpu_codec_free(kvtc_gpu_codec *g)
{
    if (!g)
        return;
    cudaSetDevice(g->params.device);
    cudaDeviceSynchronize(); /* stream-ordered frees of the buffers may be pending */
    kvtc__dbuf *bufs[] = {&g->meta, &g->sym, &g->cmp, &g->temp, &g->sizes, &g->bsum};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kvtc__dbuf_free(bufs[i]);
    for (int s = 0; s < 2; s++) {
        cudaFree(g->benc[s]);
        cudaFree(g->bdec[s]);
        cudaFree(g->bdir[s]);
        cudaFree(g->mean[s]);
    }
    cudaFree(g->inv_freq);
    cudaFree(g->groups);
    cudaFree(g->glist);
    kvtc__quant_free(g);
    kvtc__fp8_free(g);
    kvtc__pipe_free(g);
    if (g->blas)
        cublasDestroy(g->blas);
    for (uint32_t i = 0; i < KVTC_GPU_MAX_EVENTS; i++)
        if (g->ev[i])
            cudaEventDestroy(g->ev[i]);
    for (int k = 0; k < 2; k++) {
        cudaFreeHost(g->pin[k]);
        if (g->pin_ev[k])
            cudaEventDestroy(g->pin_ev[k]);
    }
    free(g->host_meta);
    free(g->host_T);
    free(g->host_roff);
    free(g);
}

static float slab_weight(const kvtc_profile *p, int s, uint32_t layer)
{
    return p->slab_w ? p->slab_w[layer * 2 + s] : 1.0f;
}

static int upload(void **dst, const void *src, size_t bytes)
{
    int rc = kvtc__cuda_err(cudaMalloc(dst, bytes ? bytes : 16), "cudaMalloc");
    if (!rc && bytes)
        rc = kvtc__cuda_err(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice), "upload");
    return rc;
}

/* The direct decode's basis of stream s (gpu_internal.h, bdir): in the
 * chunk's dtype, so the decode GEMM writes the chunk itself; the mean
 * (already divided by the slab weight, as g->mean) as two columns, high
 * and low part, since one 16-bit copy would lose the bits below the
 * mean's rounding (the mean can be far larger than what the components
 * add). Not built for other dtypes, head_dim % 16 != 0 or means beyond
 * fp16's range (returns 0, bdir[s] stays NULL). Built on request only
 * (kvtc__gpu_gemm_set): the direct decode measured slower (gpu_gemm.cu). */
int kvtc__direct_basis(kvtc_gpu_codec *g, int s)
{
    const kvtc_profile *p = g->p;
    const kvtc_layout *l = &p->layout;
    uint32_t kp = g->kp[s], ld = (uint32_t)kvtc__up(kp + 2, 16);
    int f16 = l->dtype == KVTC_DTYPE_FP16;
    if (!kvtc__rows_vec_ok(l) || !kp)
        return 0;
    uint16_t *h = (uint16_t *)calloc((size_t)g->D * ld, 2);
    if (!h)
        return KVTC_ENOMEM;
    int ok = 1;
    for (uint32_t d = 0; d < g->D && ok; d++) {
        float w = slab_weight(p, s, d / g->hd), m = p->mean[s][d] / w;
        for (uint32_t c = 0; c < kp; c++) {
            float v = p->basis[s][(size_t)d * p->ncomp[s] + c] * p->sigma[s][c] / w;
            h[(size_t)d * ld + c] = f16 ? kvtc__f32_to_f16(v) : kvtc__f32_to_bf16(v);
        }
        uint16_t hi = f16 ? kvtc__f32_to_f16(m) : kvtc__f32_to_bf16(m);
        float r = m - (f16 ? kvtc__f16_to_f32(hi) : kvtc__bf16_to_f32(hi));
        ok = !f16 || fabsf(m) <= 65504.0f;
        h[(size_t)d * ld + kp] = hi;
        h[(size_t)d * ld + kp + 1] = f16 ? kvtc__f32_to_f16(r) : kvtc__f32_to_bf16(r);
    }
    int rc = ok ? upload(&g->bdir[s], h, (size_t)g->D * ld * 2) : 0;
    free(h);
    if (!rc && ok) {
        g->ldd[s] = ld;
        g->dir_type = f16 ? CUDA_R_16F : CUDA_R_16BF;
    }
    return rc;
}

/* The defaults, then each field the caller's field_mask names. */
static int gpu_params_resolve(const kvtc_gpu_params *in, kvtc_gpu_params *out)
{
    const uint64_t known = (uint64_t)KVTC_GPU_PARAM_FIELD_DEC_GEMM * 2 - 1;
    memset(out, 0, sizeof *out);
    out->field_mask = known;
    out->gemm = KVTC_GPU_GEMM_FP16;
    out->inflate = KVTC_GPU_INFLATE_NVCOMP;
    if (!in)
        return 0;
    uint64_t m = in->field_mask;
    if (m & ~known)
        return KVTC_EINVAL; /* a field of a newer library: not silently ignored */
#define KVTC_TAKE(bit, f) \
    if (m & (bit))        \
        out->f = in->f;
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_GEMM, gemm)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_DEFLATE_ALGO, deflate_algo)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_DEVICE, device)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_TIMING, timing)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_INFLATE, inflate)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_DEFLATE, deflate)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_INDEX_LOG2, index_log2)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_DECODE_INDEX, decode_index)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_ENC_GEMM, enc_gemm)
    KVTC_TAKE(KVTC_GPU_PARAM_FIELD_DEC_GEMM, dec_gemm)
#undef KVTC_TAKE
    return 0;
}

extern "C" int kvtc_gpu_codec_create(const kvtc_profile *p, uint32_t plan,
                                     const kvtc_gpu_params *params, kvtc_gpu_codec **out)
{
    if (!p || !out || plan >= p->n_plans)
        return KVTC_EINVAL;
    kvtc_gpu_params prm;
    if (gpu_params_resolve(params, &prm))
        return KVTC_EINVAL;
    if (prm.gemm > KVTC_GPU_GEMM_FP16 || prm.deflate_algo < 0 || prm.deflate_algo > 5 ||
        (prm.inflate != KVTC_GPU_INFLATE_KVTC && prm.inflate != KVTC_GPU_INFLATE_NVCOMP) ||
        prm.deflate < 0 || prm.deflate > KVTC_GPU_DEFLATE_KVTC || prm.decode_index < 0 ||
        prm.decode_index > KVTC_GPU_INDEX_OFF || prm.enc_gemm < 0 ||
        prm.enc_gemm > KVTC_GPU_PROJ_FP8 || prm.dec_gemm < 0 || prm.dec_gemm > KVTC_GPU_PROJ_DIRECT ||
        (prm.index_log2 && (prm.index_log2 < (int)KVTC__INDEX_LOG2_MIN ||
                            prm.index_log2 > (int)KVTC__INDEX_LOG2_MAX)))
        return KVTC_EINVAL;
    /* 0 is each later field's default (docs/perf-notes.md, GPU codec v8:
     * ours measured faster both ways on an H100; 512-symbol sub-ranges
     * inflate in 0.60 ms per GiB against 0.77 at 1024, for 0.2% of ratio) */
    if (prm.deflate == KVTC_GPU_DEFLATE_AUTO)
        prm.deflate = KVTC_GPU_DEFLATE_KVTC;
    if (prm.index_log2 == 0)
        prm.index_log2 = 9;
    if (prm.decode_index == KVTC_GPU_INDEX_AUTO)
        prm.decode_index = KVTC_GPU_INDEX_ON;
    if (!kvtc_gpu_available())
        return KVTC_ENOTSUP;
    const struct kvtc__plan *pl = &p->plans[plan];
    if (pl->n_groups > KVTC_GPU_MAX_GROUPS)
        return KVTC_ENOTSUP;
    kvtc_gpu_codec *g = (kvtc_gpu_codec *)calloc(1, sizeof *g);
    if (!g)
        return KVTC_ENOMEM;
    g->p = p;
    g->plan = pl;
    g->plan_index = plan;
    g->params = prm;
    g->D = p->width;
    g->hd = p->layout.kv_heads * p->layout.head_dim;
    int rc = kvtc__cuda_err(cudaSetDevice(prm.device), "cudaSetDevice");
    void *hb = NULL;
    kvtc__dgroup *dg = (kvtc__dgroup *)calloc(pl->n_groups ? pl->n_groups : 1, sizeof *dg);
    if (rc || !dg) {
        rc = rc ? rc : KVTC_ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < pl->n_groups; i++) {
        const struct kvtc__group *gr = &pl->groups[i];
        dg[i].start = gr->start;
        dg[i].size = gr->size;
        dg[i].bits = kvtc__qtype_bits(gr->type);
        dg[i].type = gr->type;
        dg[i].dyn = gr->is_static ? UINT32_MAX : g->ndyn++;
        dg[i].sshift = gr->sshift;
        dg[i].sscale = gr->sscale;
        uint32_t s = gr->stream, end = gr->start + gr->size;
        g->kp[s] = end > g->kp[s] ? end : g->kp[s];
    }
    g->g0[0] = 0;
    while (g->g0[0] + g->g1[0] < pl->n_groups && pl->groups[g->g1[0]].stream == 0)
        g->g1[0]++;
    g->g0[1] = g->g1[0];
    g->g1[1] = pl->n_groups;
    if ((rc = upload((void **)&g->groups, dg, sizeof *dg * pl->n_groups)))
        goto fail;
    {
        uint32_t *gl = (uint32_t *)malloc(sizeof(uint32_t) * (pl->n_groups + 1)), at = 0;
        if (!gl) {
            rc = KVTC_ENOMEM;
            goto fail;
        }
        for (int s = 0; s < 2; s++)
            for (int big = 0; big < 2; big++) {
                (big ? g->large0 : g->small0)[s] = at;
                for (uint32_t i = g->g0[s]; i < g->g1[s]; i++)
                    if ((dg[i].size > KVTC_GPU_SMALL_GROUP) == big)
                        gl[at++] = i;
                (big ? g->nlarge : g->nsmall)[s] = at - (big ? g->large0 : g->small0)[s];
            }
        rc = upload((void **)&g->glist, gl, sizeof(uint32_t) * at);
        free(gl);
        if (rc)
            goto fail;
    }
    for (int s = 0; s < 2; s++) {
        uint32_t kp = g->kp[s], ld = (uint32_t)kvtc__up(kp, 16);
        g->ld[s] = ld;
        /* The profile's per-(layer, K|V) weights multiply rows before the
         * projection: folded into the bases (encoder: w, decoder: 1/w) and
         * the mean (mean / w), the kernels stay weight-free. */
        float *mw = (float *)malloc(sizeof(float) * g->D);
        if (!mw) {
            rc = KVTC_ENOMEM;
            goto fail;
        }
        for (uint32_t d = 0; d < g->D; d++)
            mw[d] = p->mean[s][d] / slab_weight(p, s, d / g->hd);
        rc = upload((void **)&g->mean[s], mw, sizeof(float) * g->D);
        free(mw);
        if (rc)
            goto fail;
        hb = calloc((size_t)g->D * (ld ? ld : 1), 2);
        if (!hb) {
            rc = KVTC_ENOMEM;
            goto fail;
        }
        for (int dir = 0; dir < 2; dir++) {
            float lm[KVTC_MAX_LAYERS];
            for (uint32_t layer = 0; layer < g->D / g->hd; layer++) {
                float w = slab_weight(p, s, layer);
                lm[layer] = dir ? 1.0f / w : w;
            }
            kvtc__basis16 b = {p->basis[s], p->ncomp[s], dir ? p->sigma[s] : p->inv_sigma[s],
                               lm, g->D, g->hd, kp, ld, prm.gemm != KVTC_GPU_GEMM_FP16,
                               (uint16_t *)hb};
            kvtc__basis16_fill(&b, 0);
            if ((rc = upload(dir ? &g->bdec[s] : &g->benc[s], hb, (size_t)g->D * ld * 2)))
                break;
        }
        free(hb);
        hb = NULL;
        if (rc)
            goto fail;
    }
    if ((rc = kvtc__quant_init(g, dg))) /* after ld */
        goto fail;
    {
        double inv[KVTC_MAX_HEAD_DIM / 2] = {0};
        if (p->layout.rope_style != KVTC_ROPE_NONE)
            kvtc__rope_inv_freq(&p->layout, inv);
        if ((rc = upload((void **)&g->inv_freq, inv, sizeof(double) * (p->layout.head_dim / 2 + 1))))
            goto fail;
    }
    for (uint32_t i = 0; prm.timing && i < KVTC_GPU_MAX_EVENTS; i++)
        if ((rc = kvtc__cuda_err(cudaEventCreate(&g->ev[i]), "cudaEventCreate")))
            goto fail;
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
        g->blas = NULL;
        rc = KVTC_EIO;
        goto fail;
    }
    if ((rc = kvtc__pipe_init(g)) || (rc = kvtc__gemm_tune(g)) || (rc = kvtc__fp8_init(g)))
        goto fail;
    /* The grouped direct decode (gpu_gemm.cu): its bases and GEMM now. */
    if (prm.dec_gemm == KVTC_GPU_PROJ_DIRECT &&
        (rc = kvtc__gpu_gemm_set(g, g->gemm_lt, KVTC_GPU_DIRECT_GROUPED))) {
        if (rc == KVTC_EINVAL)
            rc = KVTC_ENOTSUP; /* neither stream's rows are 16-byte units */
        goto fail;
    }
    {
        nvcompBatchedDeflateCompressOpts_t o = nvcompBatchedDeflateCompressDefaultOpts;
        o.algorithm = prm.deflate_algo;
        if (nvcompBatchedDeflateCompressGetMaxOutputChunkSize(KVTC_PIECE_MAX, o, &g->max_out) !=
            nvcompSuccess) {
            rc = KVTC_EIO;
            goto fail;
        }
        /* slots hold either coder's pieces (ours: at most two stored
         * blocks, KVTC_HC_MAX_OUT) */
        if (g->max_out < KVTC_HC_MAX_OUT)
            g->max_out = KVTC_HC_MAX_OUT;
        g->max_out = kvtc__up(g->max_out, KVTC_GPU_ALIGN);
    }
    free(dg);
    *out = g;
    return 0;
fail:
    free(dg);
    free(hb);
    kvtc_gpu_codec_free(g);
    return rc;
}

size_t kvtc__code_off_rows(const kvtc_gpu_codec *g, const uint32_t *T, uint32_t n, uint8_t *blob,
                           size_t at, size_t *row_off)
{
    /* Chunks of one batch nearly always share one or two token counts. */
    uint32_t ng = g->plan->n_groups, nd = 0;
    size_t row = sizeof(size_t) * (ng ? ng : 1);
    uint32_t *seen = (uint32_t *)malloc(sizeof(uint32_t) * (n ? n : 1));
    for (uint32_t i = 0; i < n; i++) {
        uint32_t d = 0;
        while (d < nd && seen[d] != T[i])
            d++;
        if (d == nd) {
            seen[nd++] = T[i];
            if (blob)
                kvtc__plan_symbol_bytes(g->plan, T[i], NULL, NULL, (size_t *)(blob + at + d * row));
        }
        if (row_off)
            row_off[i] = at + d * row;
    }
    free(seen);
    return (size_t)nd * row;
}

extern "C" int kvtc_gpu_stage_times(kvtc_gpu_codec *g, float *ms)
{
    if (!g || !ms || !g->params.timing || g->n_ev < 2)
        return KVTC_EINVAL;
    int rc = kvtc__cuda_err(cudaEventSynchronize(g->ev[g->n_ev - 1]), "stage times");
    for (uint32_t s = 0; s < KVTC_GPU_N_STAGES; s++)
        ms[s] = 0;
    for (uint32_t i = 1; !rc && i < g->n_ev; i++) {
        float t = 0;
        rc = kvtc__cuda_err(cudaEventElapsedTime(&t, g->ev[i - 1], g->ev[i]), "elapsed");
        ms[g->ev_stage[i]] += t;
    }
    return rc;
}

extern "C" const char *kvtc_gpu_stage_name(uint32_t stage)
{
    static const char *names[] = {"setup", "rows", "gemm", "quant", "deflate", "container"};
    return stage < KVTC_GPU_N_STAGES ? names[stage] : "?";
}
