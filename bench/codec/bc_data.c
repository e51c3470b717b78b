#include "bc.h"

#include "llama_model.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct bc_source {
    kvtc_layout l;
    size_t w, rank;
    float *basis[2]; /* [rank][w], already scaled by the spectrum */
    float *mean[2];  /* [w] */
    kvtc_llama *m;   /* real KV instead of the synthetic source */
    kvtc_llama_state *st;
};

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float next_gauss(uint64_t *s)
{
    float u = (float)((next_u64(s) >> 40) + 1) * (1.0f / 16777216.0f);
    float v = (float)(next_u64(s) >> 40) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * logf(u)) * cosf(6.28318530718f * v);
}

void bc_source_free(bc_source *s)
{
    if (!s)
        return;
    for (int i = 0; i < 2; i++) {
        free(s->basis[i]);
        free(s->mean[i]);
    }
    kvtc_llama_state_free(s->st);
    kvtc_llama_free(s->m);
    free(s);
}

int bc_source_create(const kvtc_layout *l, uint32_t rank, bc_source **out)
{
    int rc = kvtc_layout_check(l);
    if (rc < 0)
        return rc;
    bc_source *s = calloc(1, sizeof *s);
    if (!s)
        return KVTC_ENOMEM;
    s->l = *l;
    s->w = kvtc_row_width(l);
    s->rank = rank < s->w ? rank : s->w;
    uint64_t seed = 0x62632D64617461ull ^ s->w;
    rc = KVTC_ENOMEM;
    for (int kv = 0; kv < 2; kv++) {
        s->basis[kv] = malloc(s->rank * s->w * sizeof(float));
        s->mean[kv] = malloc(s->w * sizeof(float));
        if (!s->basis[kv] || !s->mean[kv])
            goto fail;
        for (size_t j = 0; j < s->rank; j++) {
            /* Power-law spectrum, as the singular values of real KV rows
             * fall off; folding it into the basis keeps the per-token
             * coefficients plain N(0,1). */
            float sj = 4.0f / powf((float)j + 1.0f, 0.9f) / sqrtf((float)s->w);
            for (size_t e = 0; e < s->w; e++)
                s->basis[kv][j * s->w + e] = sj * next_gauss(&seed);
        }
        for (size_t e = 0; e < s->w; e++)
            s->mean[kv][e] = 0.3f * next_gauss(&seed);
    }
    *out = s;
    return 0;
fail:
    bc_source_free(s);
    return rc;
}

int bc_source_create_llama(const char *path, uint32_t dtype,
                           uint32_t chunk_tokens, kvtc_layout *l_out,
                           bc_source **out)
{
    bc_source *s = calloc(1, sizeof *s);
    if (!s)
        return KVTC_ENOMEM;
    int rc = kvtc_llama_load(path, &s->m);
    if (rc == 0)
        rc = kvtc_llama_state_create(s->m, &s->st);
    if (rc < 0) {
        bc_source_free(s);
        return rc;
    }
    kvtc_llama_layout(s->m, chunk_tokens, &s->l);
    s->l.dtype = dtype;
    s->w = kvtc_row_width(&s->l);
    *l_out = s->l;
    *out = s;
    return 0;
}

uint32_t bc_source_max_pos(const bc_source *s)
{
    return s->m ? kvtc_llama_get_config(s->m)->seq_len : UINT32_MAX;
}

/* Sample a sequence long enough to cover the chunk, then export its KV. */
static int llama_chunk(bc_source *s, uint32_t n_tokens, uint32_t first_pos,
                       uint64_t seed, void *chunk)
{
    uint32_t n = first_pos + n_tokens + 1;
    int32_t *tok = malloc(n * sizeof *tok);
    size_t nf = kvtc_llama_kv_floats(s->m, n_tokens);
    float *kv = malloc(nf * sizeof *kv);
    int rc = KVTC_ENOMEM;
    if (tok && kv) {
        rc = kvtc_llama_sample(s->st, seed, n, tok);
        if (rc == 0)
            rc = kvtc_llama_export_kv(s->st, first_pos, n_tokens, kv);
        if (rc == 0)
            rc = kvtc_from_float(s->l.dtype, kv, chunk, nf);
    }
    free(tok);
    free(kv);
    return rc;
}

int bc_source_chunk(bc_source *s, uint32_t n_tokens, uint32_t first_pos,
                    uint64_t seed, void *chunk)
{
    if (s->m)
        return llama_chunk(s, n_tokens, first_pos, seed, chunk);
    const kvtc_layout *l = &s->l;
    size_t w = s->w, H = l->kv_heads, hd = l->head_dim, lw = H * hd;
    float *z = malloc((size_t)n_tokens * s->rank * sizeof(float));
    float *rows = malloc((size_t)n_tokens * w * sizeof(float));
    float *canon = malloc(2 * (size_t)n_tokens * w * sizeof(float));
    uint32_t *pos = malloc((size_t)n_tokens * H * sizeof(uint32_t));
    int rc = KVTC_ENOMEM;
    if (!z || !rows || !canon || !pos)
        goto cleanup;
    uint64_t st = seed * 0x2545F4914F6CDD1Dull + 77;
    /* A floor under the spectrum: 30% of the leading factor's per-element
     * scale, about 5% of the rows' energy spread over every direction, so
     * the tail the planner drops or codes coarsely is not empty. */
    const float noise = 1.2f / sqrtf((float)w);
    for (int kv = 0; kv < 2; kv++) {
        for (size_t i = 0; i < (size_t)n_tokens * s->rank; i++)
            z[i] = next_gauss(&st);
        for (size_t t = 0; t < n_tokens; t++)
            for (size_t e = 0; e < w; e++)
                rows[t * w + e] = s->mean[kv][e] + noise * next_gauss(&st);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n_tokens, (int)w,
                    (int)s->rank, 1.0f, z, (int)s->rank, s->basis[kv], (int)w, 1.0f,
                    rows, (int)w);
        /* row element (layer, head, dim) -> [layer][kv][token][head][dim] */
        for (size_t layer = 0; layer < l->layers; layer++)
            for (size_t t = 0; t < n_tokens; t++)
                memcpy(canon + ((layer * 2 + (size_t)kv) * n_tokens + t) * lw,
                       rows + t * w + layer * lw, lw * sizeof(float));
    }
    if (l->rope_style != KVTC_ROPE_NONE) {
        for (uint32_t t = 0; t < n_tokens; t++)
            for (size_t h = 0; h < H; h++)
                pos[(size_t)t * H + h] = first_pos + t;
        for (size_t layer = 0; layer < l->layers; layer++)
            kvtc_rope_apply(l, canon + layer * 2 * n_tokens * lw, (size_t)n_tokens * H, pos, 0);
    }
    rc = kvtc_from_float(l->dtype, canon, chunk, 2 * (size_t)n_tokens * w);
cleanup:
    free(z);
    free(rows);
    free(canon);
    free(pos);
    return rc;
}
