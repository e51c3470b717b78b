/* layout.c - the layout descriptor: sanity bounds and sizes. Every layout
 * read from a file or the network passes kvtc_layout_check before any size
 * is computed from it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int kvtc_layout_check(const kvtc_layout *l)
{
    if (!l)
        return KVTC_EINVAL;
    if (l->layers == 0 || l->layers > KVTC_MAX_LAYERS || l->kv_heads == 0 ||
        l->kv_heads > KVTC_MAX_KV_HEADS || l->head_dim == 0 || l->head_dim > KVTC_MAX_HEAD_DIM)
        return KVTC_EINVAL;
    if ((uint64_t)l->layers * l->kv_heads * l->head_dim > KVTC_MAX_ROW_WIDTH)
        return KVTC_EINVAL;
    if (kvtc_dtype_size(l->dtype) == 0)
        return KVTC_EINVAL;
    if (l->chunk_tokens == 0 || l->chunk_tokens > KVTC_MAX_CHUNK_TOKENS)
        return KVTC_EINVAL;
    if (l->rope_style > KVTC_ROPE_HALF_SPLIT || l->rope_scaling > KVTC_ROPE_SCALING_LLAMA3)
        return KVTC_EINVAL;
    /* Every float must be finite, used or not: layouts are compared field by
     * field (kvtc__layout_equal) and NaN never equals itself, so a NaN in an
     * unused field made a profile refuse its own containers (found by
     * tests/fuzz/fuzz_profile). */
    if (!isfinite(l->rope_theta) || !isfinite(l->rope_factor) ||
        !isfinite(l->rope_low_freq_factor) || !isfinite(l->rope_high_freq_factor))
        return KVTC_EINVAL;
    if (l->rope_style != KVTC_ROPE_NONE) {
        if (l->head_dim % 2 || !isfinite(l->rope_theta) || l->rope_theta <= 1.0f)
            return KVTC_EINVAL;
        if (l->rope_scaling != KVTC_ROPE_SCALING_NONE &&
            (!isfinite(l->rope_factor) || l->rope_factor <= 0))
            return KVTC_EINVAL;
        if (l->rope_scaling == KVTC_ROPE_SCALING_LLAMA3 &&
            (l->rope_orig_max_pos == 0 || !isfinite(l->rope_low_freq_factor) ||
             !isfinite(l->rope_high_freq_factor) || l->rope_low_freq_factor <= 0 ||
             l->rope_high_freq_factor <= l->rope_low_freq_factor))
            return KVTC_EINVAL;
    }
    return 0;
}

size_t kvtc_row_width(const kvtc_layout *l)
{
    return (size_t)l->layers * l->kv_heads * l->head_dim;
}

size_t kvtc_chunk_bytes(const kvtc_layout *l, uint32_t n_tokens)
{
    return 2 * kvtc_row_width(l) * n_tokens * kvtc_dtype_size(l->dtype);
}

int kvtc__layout_equal(const kvtc_layout *a, const kvtc_layout *b)
{
    return a->layers == b->layers && a->kv_heads == b->kv_heads &&
           a->head_dim == b->head_dim && a->dtype == b->dtype &&
           a->chunk_tokens == b->chunk_tokens && a->rope_style == b->rope_style &&
           a->rope_scaling == b->rope_scaling && a->rope_orig_max_pos == b->rope_orig_max_pos &&
           a->rope_theta == b->rope_theta && a->rope_factor == b->rope_factor &&
           a->rope_low_freq_factor == b->rope_low_freq_factor &&
           a->rope_high_freq_factor == b->rope_high_freq_factor;
}

void *kvtc__aligned_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    memset(p, 0, bytes);
    return p;
}

int kvtc__mul_overflow(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}
