/* rows.c - between a canonical chunk [layer][k|v][token][kv_head][head_dim]
 * and the codec's rows: one row per token, the concatenation of that
 * token's vectors across all layers and heads (keys with RoPE undone). */
#include <math.h>

#include "internal.h"
#include "rope.h"

static size_t slab_offset(const kvtc_layout *l, uint32_t layer, int stream,
                          uint32_t n_tokens, uint32_t t)
{
    size_t hd = (size_t)l->kv_heads * l->head_dim;
    return (((size_t)layer * 2 + (size_t)stream) * n_tokens + t) * hd;
}

/* Per token, between a chunk's vectors and a codec row: RoPE undone on
 * keys, then each layer's part times its importance weight; to_chunk does
 * the inverse in reverse order. inv_freq is NULL when no RoPE applies. */
static void transform_row(const kvtc_layout *l, const double *inv_freq, uint32_t pos, int stream,
                          const float *slab_w, float *row, int to_chunk)
{
    size_t hd = (size_t)l->kv_heads * l->head_dim, D = hd * l->layers;
    float cs[KVTC_MAX_HEAD_DIM / 2], sn[KVTC_MAX_HEAD_DIM / 2];
    for (uint32_t layer = 0; to_chunk && slab_w && layer < l->layers; layer++) {
        float inv = 1.0f / slab_w[layer * 2 + stream];
        for (size_t j = 0; j < hd; j++)
            row[layer * hd + j] *= inv;
    }
    if (inv_freq) {
        kvtc__rope_angles(l, inv_freq, pos, cs, sn);
        for (size_t v = 0; v < D; v += l->head_dim)
            kvtc__rope_rotate(l, row + v, cs, sn, !to_chunk);
    }
    for (uint32_t layer = 0; !to_chunk && slab_w && layer < l->layers; layer++) {
        float w = slab_w[layer * 2 + stream];
        for (size_t j = 0; j < hd; j++)
            row[layer * hd + j] *= w;
    }
}

/* Inverse frequencies into buf when stream's vectors carry RoPE, else NULL. */
static const double *rope_freqs(const kvtc_layout *l, int stream, double *buf)
{
    if (stream != 0 || l->rope_style == KVTC_ROPE_NONE)
        return NULL;
    kvtc__rope_inv_freq(l, buf);
    return buf;
}

int kvtc__chunk_to_rows(const kvtc_layout *l, const void *chunk, uint32_t n_tokens,
                        uint32_t first_pos, uint32_t t0, uint32_t n, int stream,
                        const float *slab_w, float *rows)
{
    size_t hd = (size_t)l->kv_heads * l->head_dim, D = hd * l->layers;
    size_t es = kvtc_dtype_size(l->dtype);
    double buf[KVTC_MAX_HEAD_DIM / 2];
    const double *inv_freq = rope_freqs(l, stream, buf);
    for (uint32_t i = 0; i < n; i++) {
        float *row = rows + (size_t)i * D;
        for (uint32_t layer = 0; layer < l->layers; layer++) {
            const char *src = (const char *)chunk +
                              slab_offset(l, layer, stream, n_tokens, t0 + i) * es;
            kvtc_to_float(l->dtype, src, row + layer * hd, hd);
        }
        for (size_t j = 0; j < D; j++)
            if (!isfinite(row[j]))
                return KVTC_EINVAL; /* NaN/inf KV cannot be coded faithfully */
        transform_row(l, inv_freq, first_pos + t0 + i, stream, slab_w, row, 0);
    }
    return 0;
}

int kvtc__rows_to_chunk(const kvtc_layout *l, float *rows, uint32_t n_tokens,
                        uint32_t first_pos, uint32_t t0, uint32_t n, int stream,
                        const float *slab_w, void *chunk)
{
    size_t hd = (size_t)l->kv_heads * l->head_dim, D = hd * l->layers;
    size_t es = kvtc_dtype_size(l->dtype);
    double buf[KVTC_MAX_HEAD_DIM / 2];
    const double *inv_freq = rope_freqs(l, stream, buf);
    for (uint32_t i = 0; i < n; i++) {
        float *row = rows + (size_t)i * D;
        transform_row(l, inv_freq, first_pos + t0 + i, stream, slab_w, row, 1);
        for (uint32_t layer = 0; layer < l->layers; layer++) {
            char *dst = (char *)chunk + slab_offset(l, layer, stream, n_tokens, t0 + i) * es;
            kvtc_from_float(l->dtype, row + layer * hd, dst, hd);
        }
    }
    return 0;
}
