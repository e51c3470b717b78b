/* plan.c - bit allocation by dynamic programming (the paper's section 3.2):
 * over the components of both streams, ordered by variance, choose for
 * consecutive aligned groups a size in {1,16,64,256,1024} and a type in
 * {dropped, int2, int4, fp8}, minimizing the squared reconstruction error of
 * the calibration rows under a budget of bits per token. Each coded group
 * costs size*bits + 32 bits (its fp16 shift and scale).
 *
 * The budget axis is discretized into at most PLAN_MAX_CELLS/(P+1) bins and
 * every option's cost is rounded UP to whole bins, so a plan never exceeds
 * its budget; the plan records its exact cost. Each stream's errors enter
 * the objective times its weight; the plan reports them unweighted. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "plan.h"

#define PLAN_MAX_CELLS (16u << 20)

size_t kvtc__plan_symbol_bytes(const struct kvtc__plan *p, uint32_t n,
                               size_t *shift_off, size_t *scale_off, size_t *code_off)
{
    /* Layout: every dynamic group's shifts [g][t], then their scales, then
     * every group's codes, bit-packed token-major, each group byte-aligned.
     * Static groups have no per-token shift/scale. */
    size_t dyn = 0;
    for (uint32_t g = 0; g < p->n_groups; g++)
        dyn += !p->groups[g].is_static;
    size_t params = dyn * n * 2, off = 2 * params, d = 0;
    for (uint32_t g = 0; g < p->n_groups; g++) {
        if (shift_off)
            shift_off[g] = p->groups[g].is_static ? SIZE_MAX : d * n * 2;
        if (scale_off)
            scale_off[g] = p->groups[g].is_static ? SIZE_MAX : params + d * n * 2;
        d += !p->groups[g].is_static;
        if (code_off)
            code_off[g] = off;
        uint64_t bits = (uint64_t)n * p->groups[g].size * kvtc__qtype_bits(p->groups[g].type);
        off += (size_t)((bits + 7) / 8);
    }
    return off;
}

int kvtc__plan_validate(const struct kvtc__plan *p, const uint32_t ncomp[2])
{
    uint32_t next[2] = {0, 0};
    int stream = 0;
    for (uint32_t g = 0; g < p->n_groups; g++) {
        const struct kvtc__group *gr = &p->groups[g];
        if (gr->stream > 1 || gr->stream < stream || gr->type < KVTC__Q_INT2 ||
            gr->type > KVTC__Q_FP8 || gr->size == 0 || gr->size > KVTC__MAX_GROUP)
            return KVTC_ECORRUPT;
        if (gr->is_static && (!kvtc__f16_is_finite(gr->sshift) ||
                              !kvtc__f16_is_finite(gr->sscale) || !(kvtc__f16_to_f32(gr->sscale) > 0)))
            return KVTC_ECORRUPT;
        stream = gr->stream;
        if (gr->start < next[stream] || (uint64_t)gr->start + gr->size > ncomp[stream])
            return KVTC_ECORRUPT;
        next[stream] = gr->start + gr->size;
    }
    return 0;
}

/* Option encoding in the choice table: 0 = drop one component;
 * 1 + ((size_index * 3 + type - 1) << 1 | is_static) = a coded group. */
static uint8_t option(uint32_t si, uint32_t t, uint32_t st)
{
    return (uint8_t)(1 + ((si * 3 + t - 1) << 1 | st));
}

static uint64_t option_bits(uint32_t len, uint32_t t, uint32_t st)
{
    return (uint64_t)len * kvtc__qtype_bits(t) + (st ? 0 : KVTC__GROUP_OVERHEAD_BITS);
}

static uint32_t units(uint64_t bits, uint64_t unit) { return (uint32_t)((bits + unit - 1) / unit); }

int kvtc__plan_solve(const struct kvtc__plan_errors *pe, double budget_bits,
                     struct kvtc__plan *out)
{
    const uint32_t P = pe->ncomp[0] + pe->ncomp[1];
    if (budget_bits < 0 || P == 0 || !(pe->weight[0] > 0) || !(pe->weight[1] > 0))
        return KVTC_EINVAL;
    uint64_t bbits = (uint64_t)budget_bits;
    uint64_t max_bins = PLAN_MAX_CELLS / (P + 1);
    if (max_bins < 1)
        max_bins = 1;
    uint64_t unit = bbits / max_bins + 1;
    uint32_t B = (uint32_t)(bbits / unit);
    size_t cells = (size_t)(P + 1) * (B + 1);
    float *dp = malloc(cells * sizeof *dp);
    uint8_t *ch = malloc(cells);
    int rc = KVTC_ENOMEM;
    if (!dp || !ch)
        goto out;
    for (size_t i = 0; i < cells; i++)
        dp[i] = FLT_MAX;
    dp[0] = 0;
    for (uint32_t i = 0; i < P; i++) {
        int s = i >= pe->ncomp[0];
        uint32_t base = s ? pe->ncomp[0] : 0, end = s ? P : pe->ncomp[0], local = i - base;
        float *row = dp + (size_t)i * (B + 1);
        for (uint32_t c = 0; c <= B; c++) {
            float e0 = row[c];
            if (e0 == FLT_MAX)
                continue;
            size_t d = (size_t)(i + 1) * (B + 1) + c;
            float e = e0 + (float)(pe->weight[s] * pe->drop[s][local]);
            if (e < dp[d]) {
                dp[d] = e;
                ch[d] = 0;
            }
            for (uint32_t si = 0; si < KVTC__N_GROUP_SIZES; si++) {
                uint32_t size = kvtc__group_sizes[si];
                if (local % size)
                    continue;
                uint32_t len = end - i < size ? end - i : size;
                for (uint32_t t = KVTC__Q_INT2; t <= KVTC__Q_FP8; t++)
                    for (uint32_t st = 0; st < 2; st++) {
                        const double *err = st ? pe->sgroup[s][si][t] : pe->group[s][si][t];
                        if (!err)
                            continue;
                        uint32_t cu = units(option_bits(len, t, st), unit);
                        if (c + cu > B)
                            continue;
                        size_t dd = (size_t)(i + len) * (B + 1) + c + cu;
                        float en = e0 + (float)(pe->weight[s] * err[local / size]);
                        if (en < dp[dd]) {
                            dp[dd] = en;
                            ch[dd] = option(si, t, st);
                        }
                    }
            }
        }
    }
    /* Best end state, then walk back collecting groups in reverse. */
    uint32_t best = 0;
    for (uint32_t c = 1; c <= B; c++)
        if (dp[(size_t)P * (B + 1) + c] < dp[(size_t)P * (B + 1) + best])
            best = c;
    rc = KVTC_ENUMERICAL;
    if (dp[(size_t)P * (B + 1) + best] == FLT_MAX)
        goto out;
    uint32_t n_groups = 0, i = P, c = best;
    struct kvtc__group *groups = malloc(sizeof *groups * P);
    rc = KVTC_ENOMEM;
    if (!groups)
        goto out;
    double err_s[2] = {0, 0}, bits = 0;
    while (i > 0) {
        uint8_t o = ch[(size_t)i * (B + 1) + c];
        int s = (i - 1) >= pe->ncomp[0];
        uint32_t base = s ? pe->ncomp[0] : 0;
        if (o == 0) {
            err_s[s] += pe->drop[s][i - 1 - base];
            i -= 1;
            continue;
        }
        uint32_t st = (uint32_t)(o - 1) & 1, si = (uint32_t)((o - 1) >> 1) / 3;
        uint32_t t = (uint32_t)((o - 1) >> 1) % 3 + 1, size = kvtc__group_sizes[si];
        uint32_t start = base + ((i - 1 - base) / size) * size, len = i - start;
        uint32_t gi = (start - base) / size;
        struct kvtc__group *g = &groups[n_groups++];
        memset(g, 0, sizeof *g);
        g->start = start - base;
        g->size = (uint16_t)len;
        g->type = (uint8_t)t;
        g->stream = (uint8_t)s;
        g->is_static = (uint8_t)st;
        if (st)
            kvtc__static_params(t, pe->sclip[s][si][t][gi], &g->sshift, &g->sscale);
        err_s[s] += (st ? pe->sgroup : pe->group)[s][si][t][gi];
        bits += (double)option_bits(len, t, st);
        c -= units(option_bits(len, t, st), unit);
        i = start;
    }
    for (uint32_t a = 0, b = n_groups ? n_groups - 1 : 0; a < b; a++, b--) {
        struct kvtc__group tmp = groups[a];
        groups[a] = groups[b];
        groups[b] = tmp;
    }
    memset(out, 0, sizeof *out);
    out->groups = groups;
    out->n_groups = n_groups;
    out->info.bits_per_token = (float)bits;
    out->info.groups = n_groups;
    for (uint32_t g = 0; g < n_groups; g++)
        *(groups[g].stream ? &out->info.value_components : &out->info.key_components) +=
            groups[g].size;
    out->info.mse_key = (float)((err_s[0] + pe->tail[0]) / pe->width);
    out->info.mse_value = (float)((err_s[1] + pe->tail[1]) / pe->width);
    rc = 0;
out:
    free(dp);
    free(ch);
    return rc;
}
