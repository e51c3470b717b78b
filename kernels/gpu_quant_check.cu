/* gpu_quant_check.cu - tests only: the quantizer's kernels (tiled or
 * row-per-block) on given coefficients and a given plan, outside a codec
 * call, so a test can compare their symbol bytes with the CPU codec's
 * kvtc__pack_groups on layouts no calibrated profile produces. */
#include <stdlib.h>

#include "gpu_internal.h"

/* Context fields the quantize/pack/dequantize launchers read: groups, the
 * small/large lists, g0/g1, kp/ld, ndyn, the items. */
static int fake_ctx(kvtc_gpu_codec *g, const struct kvtc__plan *pl, int bf16)
{
    g->plan = pl;
    g->params.gemm = bf16 ? KVTC_GPU_GEMM_BF16 : KVTC_GPU_GEMM_FP16;
    uint32_t ng = pl->n_groups;
    kvtc__dgroup *dg = (kvtc__dgroup *)calloc(ng ? ng : 1, sizeof *dg);
    uint32_t *gl = (uint32_t *)malloc(sizeof(uint32_t) * (ng + 1)), at = 0;
    int rc = dg && gl ? 0 : KVTC_ENOMEM;
    for (uint32_t i = 0; !rc && i < ng; i++) {
        const struct kvtc__group *gr = &pl->groups[i];
        dg[i] = {gr->start, gr->size, kvtc__qtype_bits(gr->type), gr->type,
                 gr->is_static ? UINT32_MAX : g->ndyn++, gr->sshift, gr->sscale};
        uint32_t end = gr->start + gr->size;
        g->kp[gr->stream] = end > g->kp[gr->stream] ? end : g->kp[gr->stream];
        if (gr->stream == 0)
            g->g1[0] = i + 1;
    }
    g->g0[1] = g->g1[0];
    g->g1[1] = ng;
    for (int s = 0; !rc && s < 2; s++) {
        g->ld[s] = (uint32_t)kvtc__up(g->kp[s], 16);
        for (int big = 0; big < 2; big++) {
            (big ? g->large0 : g->small0)[s] = at;
            for (uint32_t i = g->g0[s]; i < g->g1[s]; i++)
                if ((dg[i].size > KVTC_GPU_SMALL_GROUP) == big)
                    gl[at++] = i;
            (big ? g->nlarge : g->nsmall)[s] = at - (big ? g->large0 : g->small0)[s];
        }
    }
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&g->groups, sizeof *dg * (ng ? ng : 1)), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(g->groups, dg, sizeof *dg * ng, cudaMemcpyHostToDevice),
                            "copy");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&g->glist, sizeof(uint32_t) * (at + 1)), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(g->glist, gl, sizeof(uint32_t) * at, cudaMemcpyHostToDevice),
                            "copy");
    if (!rc)
        rc = kvtc__quant_init(g, dg);
    free(dg);
    free(gl);
    return rc;
}

/* Tests: quantize + pack coef[s] ([M][k[s]] host floats, M = sum of T[i],
 * k[s] = the stream's last group end rounded up to 16) for chunks of T[i]
 * coded tokens with the tiled (tiles 1) or row-per-block (0) kernels; sym
 * (host) gets each chunk's symbol bytes back to back (every byte must be
 * written: the device buffer starts poisoned); then dequantize those
 * symbols into deq[s] ([M][k[s]] host, fp16 or bf16 bits). Synchronous.
 * KVTC_EINVAL on a k[s] that is not the context's row stride, KVTC_ENOTSUP
 * when tiles were asked for and the plan does not allow them,
 * KVTC_ECORRUPT when the dequantizer flags a chunk. */
extern "C" int kvtc__gpu_quant_check(const struct kvtc__plan *pl, const uint32_t *T, uint32_t n,
                                     const float *const coef[2], const uint32_t k[2],
                                     uint32_t tiles, int bf16, uint8_t *sym,
                                     uint16_t *const deq[2])
{
    kvtc_gpu_codec *g = (kvtc_gpu_codec *)calloc(1, sizeof *g);
    if (!g || !n)
        return g ? (free(g), KVTC_EINVAL) : KVTC_ENOMEM;
    int rc = fake_ctx(g, pl, bf16);
    uint64_t M = 0, symtot = 0, symdev = 0;
    size_t *hoff = (size_t *)malloc(sizeof(size_t) * n * (pl->n_groups + 1));
    kvtc__dchunk *hch = (kvtc__dchunk *)calloc(n, sizeof *hch);
    uint64_t *at = (uint64_t *)calloc(n, sizeof *at), *len = (uint64_t *)calloc(n, sizeof *len);
    uint8_t *dsym = NULL, *codes = NULL;
    size_t *doff = NULL;
    kvtc__dchunk *dch = NULL;
    void *dcoef = NULL;
    int32_t *dstat = NULL, *hstat = (int32_t *)calloc(n, sizeof *hstat);
    if (!rc && (!hoff || !hch || !at || !len || !hstat))
        rc = KVTC_ENOMEM;
    for (int s = 0; !rc && s < 2; s++) {
        if (k[s] != g->ld[s] || tiles > 1)
            rc = KVTC_EINVAL;
        else if (tiles && g->ld[s] && !g->nqi[s])
            rc = KVTC_ENOTSUP;
        g->qtiles[s] = g->nqi[s] ? tiles : 0; /* 1: the tiled kernels */
    }
    for (uint32_t i = 0; !rc && i < n; i++) {
        len[i] = kvtc__plan_symbol_bytes(pl, T[i], NULL, NULL, hoff + (size_t)i * pl->n_groups);
        at[i] = symdev;
        symdev += kvtc__up(len[i], KVTC_GPU_ALIGN);
        symtot += len[i];
        M += T[i];
    }
    uint32_t ldm = g->ld[0] > g->ld[1] ? g->ld[0] : g->ld[1];
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dsym, symdev + 16), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&doff, sizeof(size_t) * n * (pl->n_groups + 1)),
                            "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dch, sizeof *dch * n), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc(&dcoef, sizeof(float) * M * ldm + 16), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&codes, M * ldm + 16), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMalloc((void **)&dstat, sizeof(int32_t) * n), "malloc");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemset(dsym, 0xa5, symdev + 16), "memset");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemset(dstat, 0, sizeof(int32_t) * n), "memset");
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(doff, hoff, sizeof(size_t) * n * pl->n_groups,
                                       cudaMemcpyHostToDevice), "copy");
    uint64_t row = 0;
    for (uint32_t i = 0; !rc && i < n; i++) {
        hch[i] = {NULL, dsym + at[i], doff + (size_t)i * pl->n_groups, row, T[i], 0, 0, T[i]};
        row += T[i];
    }
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(dch, hch, sizeof *dch * n, cudaMemcpyHostToDevice), "copy");
    for (int s = 0; !rc && s < 2; s++) {
        if (!g->ld[s])
            continue;
        rc = kvtc__cuda_err(cudaMemcpy(dcoef, coef[s], sizeof(float) * M * g->ld[s],
                                       cudaMemcpyHostToDevice), "copy");
        if (!rc)
            rc = kvtc__launch_quant(g, s, dch, n, M, (const float *)dcoef, codes, 0);
        if (!rc)
            rc = kvtc__launch_pack(g, s, dch, n, codes, 0);
    }
    uint64_t so = 0;
    for (uint32_t i = 0; !rc && i < n; i++) {
        rc = kvtc__cuda_err(cudaMemcpy(sym + so, dsym + at[i], len[i], cudaMemcpyDeviceToHost),
                            "copy");
        so += len[i];
    }
    for (int s = 0; !rc && s < 2; s++) {
        if (!g->ld[s])
            continue;
        rc = kvtc__cuda_err(cudaMemset(dcoef, 0xff, 2 * M * g->ld[s]), "memset");
        if (!rc)
            rc = kvtc__launch_dequant(g, s, dch, n, M, dcoef, dstat, 0, 0);
        if (!rc)
            rc = kvtc__cuda_err(cudaMemcpy(deq[s], dcoef, 2 * M * g->ld[s], cudaMemcpyDeviceToHost),
                                "copy");
    }
    if (!rc)
        rc = kvtc__cuda_err(cudaMemcpy(hstat, dstat, sizeof(int32_t) * n, cudaMemcpyDeviceToHost),
                            "copy");
    for (uint32_t i = 0; !rc && i < n; i++)
        if (hstat[i])
            rc = KVTC_ECORRUPT;
    cudaFree(dsym);
    cudaFree(doff);
    cudaFree(dch);
    cudaFree(dcoef);
    cudaFree(codes);
    cudaFree(dstat);
    cudaFree(g->groups);
    cudaFree(g->glist);
    kvtc__quant_free(g);
    free(g);
    free(hoff);
    free(hch);
    free(at);
    free(len);
    free(hstat);
    return rc;
}
