/* encode.c - one chunk to one container: sinks as-is; the other tokens'
 * rows projected onto the profile's bases, quantized by the plan's groups,
 * packed into symbol bytes and coded as pieces. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bytes.h"
#include "container.h"
#include "internal.h"
#include "symbols.h"

struct kvtc_encoder {
    const kvtc_profile *p;
    const struct kvtc__plan *plan;
    uint32_t plan_index;
    struct kvtc__entropy *ent;
    size_t *shift_off, *scale_off, *code_off; /* per group, for cap_tokens */
    uint32_t cap_tokens;                      /* work buffers sized for this */
    float *rows, *coef;
    uint8_t *sym;
};

int kvtc_encoder_create(const kvtc_profile *p, uint32_t plan, uint32_t stage, int level,
                        kvtc_encoder **out)
{
    if (!p || !out || plan >= p->n_plans)
        return KVTC_EINVAL;
    kvtc_encoder *enc = calloc(1, sizeof *enc);
    if (!enc)
        return KVTC_ENOMEM;
    enc->p = p;
    enc->plan = &p->plans[plan];
    enc->plan_index = plan;
    int rc = kvtc__entropy_create(stage, level, &enc->ent);
    if (rc) {
        free(enc);
        return rc;
    }
    size_t ng = enc->plan->n_groups ? enc->plan->n_groups : 1;
    enc->shift_off = malloc(ng * sizeof(size_t));
    enc->scale_off = malloc(ng * sizeof(size_t));
    enc->code_off = malloc(ng * sizeof(size_t));
    if (!enc->shift_off || !enc->scale_off || !enc->code_off) {
        kvtc_encoder_free(enc);
        return KVTC_ENOMEM;
    }
    *out = enc;
    return 0;
}

void kvtc_encoder_free(kvtc_encoder *enc)
{
    if (!enc)
        return;
    kvtc__entropy_free(enc->ent);
    free(enc->shift_off);
    free(enc->scale_off);
    free(enc->code_off);
    free(enc->rows);
    free(enc->coef);
    free(enc->sym);
    free(enc);
}

size_t kvtc_encode_bound(const kvtc_encoder *enc, uint32_t n_tokens)
{
    const kvtc_layout *l = &enc->p->layout;
    size_t raw_all = kvtc_chunk_bytes(l, n_tokens);
    size_t sinks = kvtc_chunk_bytes(l, n_tokens < KVTC_SINK_TOKENS ? n_tokens : KVTC_SINK_TOKENS);
    size_t sym = kvtc__plan_symbol_bytes(enc->plan, n_tokens, NULL, NULL, NULL);
    size_t coded = sinks + 4 * kvtc__n_pieces(sym) + kvtc__entropy_bound(enc->ent, sym);
    return KVTC__HEADER_BYTES + (coded > raw_all ? coded : raw_all);
}

static int reserve(kvtc_encoder *enc, uint32_t n)
{
    if (n <= enc->cap_tokens)
        return 0;
    const kvtc_profile *p = enc->p;
    uint32_t kmax = p->ncomp[0] > p->ncomp[1] ? p->ncomp[0] : p->ncomp[1];
    free(enc->rows);
    free(enc->coef);
    free(enc->sym);
    enc->rows = kvtc__aligned_alloc((size_t)n * p->width * sizeof(float));
    enc->coef = kvtc__aligned_alloc((size_t)n * (kmax ? kmax : 1) * sizeof(float));
    enc->sym = kvtc__aligned_alloc(kvtc__plan_symbol_bytes(enc->plan, n, NULL, NULL, NULL));
    enc->cap_tokens = enc->rows && enc->coef && enc->sym ? n : 0;
    return enc->cap_tokens ? 0 : KVTC_ENOMEM;
}

void kvtc__copy_leading_tokens(const kvtc_layout *l, const void *chunk, uint32_t total,
                               void *part, uint32_t n, int to_chunk)
{
    size_t tb = (size_t)l->kv_heads * l->head_dim * kvtc_dtype_size(l->dtype);
    for (size_t slab = 0; slab < 2ull * l->layers; slab++) {
        char *c = (char *)chunk + slab * total * tb, *q = (char *)part + slab * n * tb;
        if (to_chunk)
            memcpy(c, q, n * tb);
        else
            memcpy(q, c, n * tb);
    }
}

static int encode_raw(kvtc_encoder *enc, const kvtc_chunk *c, uint8_t *dst, size_t cap,
                      size_t *len)
{
    const kvtc_layout *l = &enc->p->layout;
    struct kvtc__header h = {.mode = KVTC__MODE_RAW, .layout = *l, .first_pos = c->first_pos,
                             .n_tokens = c->n_tokens, .sink_tokens = c->n_tokens};
    h.raw_bytes = kvtc_chunk_bytes(l, c->n_tokens);
    if (cap < KVTC__HEADER_BYTES + h.raw_bytes)
        return KVTC_ENOSPC;
    memcpy(dst + KVTC__HEADER_BYTES, c->data, h.raw_bytes);
    h.raw_sum = XXH3_64bits(dst + KVTC__HEADER_BYTES, h.raw_bytes);
    h.table_sum = h.payload_sum = XXH3_64bits(NULL, 0);
    kvtc__header_write(&h, dst);
    *len = KVTC__HEADER_BYTES + h.raw_bytes;
    return 0;
}

int kvtc_encode(kvtc_encoder *enc, const kvtc_chunk *c, void *dst_v, size_t cap, size_t *len)
{
    if (!enc || !c || !c->data || !dst_v || !len || c->n_tokens == 0 ||
        c->n_tokens > KVTC_MAX_CHUNK_TOKENS || (uint64_t)c->first_pos + c->n_tokens > UINT32_MAX ||
        (c->flags & ~(uint32_t)KVTC_CHUNK_RAW))
        return KVTC_EINVAL;
    uint8_t *dst = dst_v;
    if (c->flags & KVTC_CHUNK_RAW)
        return encode_raw(enc, c, dst, cap, len);
    const kvtc_profile *p = enc->p;
    const kvtc_layout *l = &p->layout;
    const struct kvtc__plan *plan = enc->plan;
    uint32_t sinks = kvtc__sink_tokens(c->first_pos, c->n_tokens), T = c->n_tokens - sinks;
    int rc = reserve(enc, T ? T : 1);
    if (rc)
        return rc;
    struct kvtc__header h = {.mode = KVTC__MODE_CODED, .stage = kvtc__entropy_stage(enc->ent),
                             .plan = enc->plan_index, .profile_id = p->id, .layout = *l,
                             .first_pos = c->first_pos, .n_tokens = c->n_tokens,
                             .sink_tokens = sinks};
    h.raw_bytes = kvtc_chunk_bytes(l, sinks);
    h.symbol_bytes = kvtc__plan_symbol_bytes(plan, T, enc->shift_off, enc->scale_off, enc->code_off);
    h.n_pieces = (uint32_t)kvtc__n_pieces(h.symbol_bytes);
    h.table_bytes = 4ull * h.n_pieces;
    size_t fixed = KVTC__HEADER_BYTES + h.raw_bytes + h.table_bytes;
    if (cap < fixed)
        return KVTC_ENOSPC;
    uint8_t *raw = dst + KVTC__HEADER_BYTES, *table = raw + h.raw_bytes;
    kvtc__copy_leading_tokens(l, c->data, c->n_tokens, raw, sinks, 0);
    if (T) {
        memset(enc->sym, 0, h.symbol_bytes);
        uint32_t g0 = 0;
        for (int s = 0; s < 2; s++) {
            uint32_t k = p->ncomp[s], g1 = g0;
            while (g1 < plan->n_groups && plan->groups[g1].stream == s)
                g1++;
            if (g1 > g0) {
                rc = kvtc__chunk_to_rows(l, c->data, c->n_tokens, c->first_pos, sinks, T, s,
                                         p->slab_w, enc->rows);
                if (rc)
                    return rc;
                for (uint32_t t = 0; t < T; t++)
                    for (uint32_t j = 0; j < p->width; j++)
                        enc->rows[(size_t)t * p->width + j] -= p->mean[s][j];
                /* only the components this plan codes */
                uint32_t ku = plan->kused[s];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)ku,
                            (int)p->width, 1.0f, enc->rows, (int)p->width, p->basis[s], (int)k,
                            0.0f, enc->coef, (int)k);
                for (uint32_t t = 0; t < T; t++)
                    for (uint32_t j = 0; j < ku; j++)
                        enc->coef[(size_t)t * k + j] *= p->inv_sigma[s][j];
                kvtc__pack_groups(plan, g0, g1, enc->coef, k, T, enc->shift_off, enc->scale_off,
                                  enc->code_off, enc->sym);
            }
            g0 = g1;
        }
    }
    size_t used = 0;
    rc = kvtc__entropy_encode(enc->ent, enc->sym, h.symbol_bytes, table, dst + fixed, cap - fixed,
                              &used);
    if (rc)
        return rc;
    h.payload_bytes = used;
    h.raw_sum = XXH3_64bits(raw, h.raw_bytes);
    h.table_sum = XXH3_64bits(table, h.table_bytes);
    h.payload_sum = XXH3_64bits(dst + fixed, used);
    kvtc__header_write(&h, dst);
    *len = fixed + used;
    return 0;
}
