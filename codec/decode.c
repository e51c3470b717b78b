/* decode.c - one container back to one canonical chunk, and inspect. The
 * whole container is validated (kvtc__container_parse) before any symbol is
 * read; symbols are validated as they are dequantized. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "internal.h"
#include "symbols.h"

struct kvtc_decoder {
    const kvtc_profile *p;
    struct kvtc__entropy *ent;
    size_t *shift_off, *scale_off, *code_off; /* per group of the largest plan */
    uint32_t cap_tokens;
    size_t sym_cap;
    float *rows, *coef;
    uint8_t *sym;
};

int kvtc_decoder_create(const kvtc_profile *p, kvtc_decoder **out)
{
    if (!out)
        return KVTC_EINVAL;
    kvtc_decoder *dec = calloc(1, sizeof *dec);
    if (!dec)
        return KVTC_ENOMEM;
    dec->p = p;
    size_t ng = 1;
    for (uint32_t i = 0; p && i < p->n_plans; i++)
        ng = p->plans[i].n_groups > ng ? p->plans[i].n_groups : ng;
    dec->shift_off = malloc(ng * sizeof(size_t));
    dec->scale_off = malloc(ng * sizeof(size_t));
    dec->code_off = malloc(ng * sizeof(size_t));
    int rc = kvtc__entropy_create(KVTC_STAGE_STORE, 0, &dec->ent);
    if (rc || !dec->shift_off || !dec->scale_off || !dec->code_off) {
        kvtc_decoder_free(dec);
        return rc ? rc : KVTC_ENOMEM;
    }
    *out = dec;
    return 0;
}

void kvtc_decoder_free(kvtc_decoder *dec)
{
    if (!dec)
        return;
    kvtc__entropy_free(dec->ent);
    free(dec->shift_off);
    free(dec->scale_off);
    free(dec->code_off);
    free(dec->rows);
    free(dec->coef);
    free(dec->sym);
    free(dec);
}

static void fill_info(const struct kvtc__header *h, size_t len, kvtc_container_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    info->version = h->index_log2 ? 2 : KVTC__CONTAINER_VERSION;
    info->mode = h->mode;
    info->stage = h->stage;
    info->plan = h->plan;
    info->profile_id = h->profile_id;
    info->layout = h->layout;
    info->n_tokens = h->n_tokens;
    info->first_pos = h->first_pos;
    info->sink_tokens = h->sink_tokens;
    info->pieces = h->n_pieces;
    info->container_bytes = len;
    info->raw_bytes = kvtc_chunk_bytes(&h->layout, h->n_tokens);
}

int kvtc_inspect(const void *src, size_t len, kvtc_container_info *info)
{
    struct kvtc__header h;
    int rc = kvtc__container_parse(src, len, &h);
    if (rc == 0)
        fill_info(&h, len, info);
    return rc;
}

static int reserve(kvtc_decoder *dec, uint32_t T, size_t sym_bytes)
{
    const kvtc_profile *p = dec->p;
    if (T > dec->cap_tokens) {
        uint32_t kmax = p->ncomp[0] > p->ncomp[1] ? p->ncomp[0] : p->ncomp[1];
        free(dec->rows);
        free(dec->coef);
        dec->rows = kvtc__aligned_alloc((size_t)T * p->width * sizeof(float));
        dec->coef = kvtc__aligned_alloc((size_t)T * (kmax ? kmax : 1) * sizeof(float));
        dec->cap_tokens = dec->rows && dec->coef ? T : 0;
        if (!dec->cap_tokens)
            return KVTC_ENOMEM;
    }
    if (sym_bytes > dec->sym_cap) {
        free(dec->sym);
        dec->sym = kvtc__aligned_alloc(sym_bytes);
        dec->sym_cap = dec->sym ? sym_bytes : 0;
        if (!dec->sym)
            return KVTC_ENOMEM;
    }
    return 0;
}

int kvtc_decode(kvtc_decoder *dec, const void *src_v, size_t len, void *dst, size_t dst_cap,
                kvtc_container_info *info)
{
    if (!dec || !src_v || !dst)
        return KVTC_EINVAL;
    const uint8_t *src = src_v;
    struct kvtc__header h;
    int rc = kvtc__container_parse(src, len, &h);
    if (rc)
        return rc;
    const kvtc_layout *l = &h.layout;
    size_t out_bytes = kvtc_chunk_bytes(l, h.n_tokens);
    if (dst_cap < out_bytes)
        return KVTC_ENOSPC;
    const uint8_t *raw = src + KVTC__HEADER_BYTES;
    if (h.mode == KVTC__MODE_RAW) {
        memcpy(dst, raw, h.raw_bytes);
        fill_info(&h, len, info);
        return 0;
    }
    const kvtc_profile *p = dec->p;
    if (!p || p->id != h.profile_id || !kvtc__layout_equal(&p->layout, l) ||
        h.plan >= p->n_plans)
        return KVTC_EPROFILE;
    const struct kvtc__plan *plan = &p->plans[h.plan];
    uint32_t T = h.n_tokens - h.sink_tokens;
    if (kvtc__plan_symbol_bytes(plan, T, dec->shift_off, dec->scale_off, dec->code_off) !=
        h.symbol_bytes)
        return KVTC_ECORRUPT;
    if ((rc = reserve(dec, T ? T : 1, h.symbol_bytes)))
        return rc;
    const uint8_t *table = raw + h.raw_bytes, *payload = table + h.table_bytes;
    rc = kvtc__entropy_decode(dec->ent, h.stage, table, payload, h.payload_bytes, dec->sym,
                              h.symbol_bytes);
    if (rc)
        return rc;
    kvtc__copy_leading_tokens(l, dst, h.n_tokens, (void *)raw, h.sink_tokens, 1);
    uint32_t g0 = 0;
    for (int s = 0; s < 2 && T; s++) {
        uint32_t k = p->ncomp[s], g1 = g0;
        while (g1 < plan->n_groups && plan->groups[g1].stream == s)
            g1++;
        memset(dec->coef, 0, (size_t)T * (k ? k : 1) * sizeof(float));
        rc = kvtc__unpack_groups(plan, g0, g1, dec->sym, k, T, dec->shift_off, dec->scale_off,
                                 dec->code_off, dec->coef);
        if (rc)
            return rc;
        g0 = g1;
        uint32_t ku = plan->kused[s]; /* later coefficients are zero */
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < ku; j++)
                dec->coef[(size_t)t * k + j] *= p->sigma[s][j];
        if (ku)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)p->width, (int)ku,
                        1.0f, dec->coef, (int)k, p->basis[s], (int)k, 0.0f, dec->rows,
                        (int)p->width);
        else
            memset(dec->rows, 0, (size_t)T * p->width * sizeof(float));
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < p->width; j++)
                dec->rows[(size_t)t * p->width + j] += p->mean[s][j];
        kvtc__rows_to_chunk(l, dec->rows, h.n_tokens, h.first_pos, h.sink_tokens, T, s,
                            p->slab_w, dst);
    }
    fill_info(&h, len, info);
    return 0;
}
