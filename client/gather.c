/* Gather / scatter between engine KV layouts and the canonical chunk
 * [layer][k|v][token][kv_head][head_dim]: the daemon and the codec see only
 * canonical chunks, whatever paging or tensor order the engine uses. */
#include <string.h>

#include "kvtc.h"

size_t kvtc_canonical_bytes(const kvtc_engine_layout *el, uint32_t n_tokens)
{
    if (!el)
        return 0;
    size_t b = el->elem_size, r;
    const size_t f[] = {el->layers, 2, n_tokens, el->kv_heads, el->head_dim};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (__builtin_mul_overflow(b, f[i], &r))
            return 0;
        b = r;
    }
    return b;
}

/* Everything checked before the first byte moves, so a failed call leaves
 * both sides untouched. */
static int check(const kvtc_engine_layout *el, uint32_t first_token,
                 uint32_t n_tokens, const void *buf, size_t *bytes)
{
    if (!el || !el->views || (!buf && n_tokens))
        return KVTC_EINVAL;
    if (el->layers < 1 || el->layers > KVTC_MAX_LAYERS || el->kv_heads < 1 ||
        el->kv_heads > KVTC_MAX_KV_HEADS || el->head_dim < 1 ||
        el->head_dim > KVTC_MAX_HEAD_DIM)
        return KVTC_EINVAL;
    if (el->elem_size != 1 && el->elem_size != 2 && el->elem_size != 4)
        return KVTC_EINVAL;
    if ((uint64_t)first_token + n_tokens > UINT32_MAX)
        return KVTC_EINVAL;
    for (uint32_t v = 0; v < 2 * el->layers; v++)
        if (!el->views[v].base)
            return KVTC_EINVAL;
    if (el->field_mask & KVTC_ENGINE_LAYOUT_FIELD_PAGED) {
        if (el->block_tokens < 1 || (!el->block_table && el->n_blocks))
            return KVTC_EINVAL;
        if (n_tokens &&
            (first_token + (uint64_t)n_tokens - 1) / el->block_tokens >= el->n_blocks)
            return KVTC_ENOENT;
    }
    *bytes = kvtc_canonical_bytes(el, n_tokens);
    if (!*bytes && n_tokens)
        return KVTC_EINVAL;
    return 0;
}

/* Address of token t's head 0 in view v. */
static char *token_ptr(const kvtc_engine_layout *el, const kvtc_kv_view *v,
                       uint32_t t)
{
    char *p = v->base;
    if (el->field_mask & KVTC_ENGINE_LAYOUT_FIELD_PAGED) {
        uint32_t block = el->block_table[t / el->block_tokens];
        return p + (int64_t)block * v->block_stride +
               (int64_t)(t % el->block_tokens) * v->token_stride;
    }
    return p + (int64_t)t * v->token_stride;
}

/* to_canon: engine -> canonical (gather), else canonical -> engine. */
static void move(const kvtc_engine_layout *el, uint32_t first_token,
                 uint32_t n_tokens, char *canon, int to_canon)
{
    size_t row = (size_t)el->head_dim * el->elem_size;
    size_t token_bytes = row * el->kv_heads;
    for (uint32_t v = 0; v < 2 * el->layers; v++) {
        const kvtc_kv_view *view = &el->views[v];
        /* Heads adjacent in the engine: one copy per token, not per head. */
        int heads_packed = view->head_stride == (int64_t)row;
        for (uint32_t t = 0; t < n_tokens; t++) {
            char *src = token_ptr(el, view, first_token + t);
            char *dst = canon + ((size_t)v * n_tokens + t) * token_bytes;
            if (heads_packed) {
                if (to_canon)
                    memcpy(dst, src, token_bytes);
                else
                    memcpy(src, dst, token_bytes);
                continue;
            }
            for (uint32_t h = 0; h < el->kv_heads; h++) {
                char *e = src + (int64_t)h * view->head_stride;
                if (to_canon)
                    memcpy(dst + h * row, e, row);
                else
                    memcpy(e, dst + h * row, row);
            }
        }
    }
}

int kvtc_gather(const kvtc_engine_layout *el, uint32_t first_token,
                uint32_t n_tokens, void *dst, size_t dst_size)
{
    size_t bytes = 0;
    int rc = check(el, first_token, n_tokens, dst, &bytes);
    if (rc)
        return rc;
    if (dst_size < bytes)
        return KVTC_ENOSPC;
    move(el, first_token, n_tokens, dst, 1);
    return 0;
}

int kvtc_scatter(const kvtc_engine_layout *el, uint32_t first_token,
                 uint32_t n_tokens, const void *src, size_t src_size)
{
    size_t bytes = 0;
    int rc = check(el, first_token, n_tokens, src, &bytes);
    if (rc)
        return rc;
    if (src_size != bytes)
        return KVTC_EINVAL;
    move(el, first_token, n_tokens, (char *)src, 0);
    return 0;
}
