/* Gather / scatter between engine layouts and the canonical chunk
 * [layer][k|v][token][kv_head][head_dim]: every element is checked against
 * its expected canonical index, and scatter must restore the engine bytes. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc.h"

/* A value unique to (layer, kv, seq token, head, dim), truncated to es bytes. */
static uint32_t val(uint32_t l, uint32_t kv, uint32_t t, uint32_t h, uint32_t d)
{
    return (l * 2654435761u) ^ (kv * 40503u) ^ (t * 7919u) ^ (h * 131u) ^ (d * 3u) ^ 0x5a5a5a5au;
}

static void put_elem(void *p, uint32_t es, uint32_t v)
{
    memcpy(p, &v, es); /* little-endian host: the low es bytes */
}

static uint32_t get_elem(const void *p, uint32_t es)
{
    uint32_t v = 0;
    memcpy(&v, p, es);
    return v;
}

static uint32_t trunc_to(uint32_t v, uint32_t es)
{
    return es == 4 ? v : v & ((1u << (8 * es)) - 1);
}

/* Address of (t, h) in view v under el, as the engine sees it. */
static char *addr(const kvtc_engine_layout *el, const kvtc_kv_view *v, uint32_t t,
                  uint32_t h)
{
    char *p = v->base;
    if (el->field_mask & KVTC_ENGINE_LAYOUT_FIELD_PAGED)
        p += (int64_t)el->block_table[t / el->block_tokens] * v->block_stride +
             (int64_t)(t % el->block_tokens) * v->token_stride;
    else
        p += (int64_t)t * v->token_stride;
    return p + (int64_t)h * v->head_stride;
}

static void fill(const kvtc_engine_layout *el, uint32_t seq_tokens)
{
    for (uint32_t l = 0; l < el->layers; l++)
        for (uint32_t kv = 0; kv < 2; kv++)
            for (uint32_t t = 0; t < seq_tokens; t++)
                for (uint32_t h = 0; h < el->kv_heads; h++)
                    for (uint32_t d = 0; d < el->head_dim; d++)
                        put_elem(addr(el, &el->views[2 * l + kv], t, h) + d * el->elem_size,
                                 el->elem_size, val(l, kv, t, h, d));
}

/* Gather, check every canonical element, wipe the engine range, scatter it
 * back and check the engine again. */
static void round_trip(const kvtc_engine_layout *el, uint32_t first, uint32_t n,
                       uint32_t seq_tokens)
{
    fill(el, seq_tokens);
    size_t bytes = kvtc_canonical_bytes(el, n);
    cr_assert_eq(bytes, (size_t)el->layers * 2 * n * el->kv_heads * el->head_dim * el->elem_size);
    char *canon = malloc(bytes);
    cr_assert_not_null(canon);
    cr_assert_eq(kvtc_gather(el, first, n, canon, bytes), 0);
    uint32_t es = el->elem_size;
    size_t i = 0;
    for (uint32_t l = 0; l < el->layers; l++)
        for (uint32_t kv = 0; kv < 2; kv++)
            for (uint32_t t = 0; t < n; t++)
                for (uint32_t h = 0; h < el->kv_heads; h++)
                    for (uint32_t d = 0; d < el->head_dim; d++, i++)
                        cr_assert_eq(get_elem(canon + i * es, es),
                                     trunc_to(val(l, kv, first + t, h, d), es),
                                     "l%u kv%u t%u h%u d%u", l, kv, t, h, d);
    cr_assert_eq(i * es, bytes);
    /* Wipe what the chunk covers, then restore it from the canonical copy. */
    for (uint32_t l = 0; l < el->layers; l++)
        for (uint32_t kv = 0; kv < 2; kv++)
            for (uint32_t t = first; t < first + n; t++)
                for (uint32_t h = 0; h < el->kv_heads; h++)
                    memset(addr(el, &el->views[2 * l + kv], t, h), 0, (size_t)el->head_dim * es);
    cr_assert_eq(kvtc_scatter(el, first, n, canon, bytes), 0);
    for (uint32_t l = 0; l < el->layers; l++)
        for (uint32_t kv = 0; kv < 2; kv++)
            for (uint32_t t = first; t < first + n; t++)
                for (uint32_t h = 0; h < el->kv_heads; h++)
                    for (uint32_t d = 0; d < el->head_dim; d++)
                        cr_assert_eq(get_elem(addr(el, &el->views[2 * l + kv], t, h) + d * es, es),
                                     trunc_to(val(l, kv, t, h, d), es));
    free(canon);
}

/* Hugging Face style: per layer K and V tensors [heads][seq][dim] (heads
 * not adjacent: one copy per head). */
Test(gather, hf_per_layer_head_major)
{
    enum { L = 3, H = 4, D = 8, S = 40, ES = 2 };
    static uint16_t mem[L][2][H][S][D];
    kvtc_kv_view v[2 * L];
    for (int l = 0; l < L; l++)
        for (int kv = 0; kv < 2; kv++)
            v[2 * l + kv] = (kvtc_kv_view){.base = mem[l][kv],
                                           .token_stride = D * ES,
                                           .head_stride = S * D * ES};
    kvtc_engine_layout el = {.layers = L, .kv_heads = H, .head_dim = D, .elem_size = ES,
                             .views = v};
    round_trip(&el, 5, 16, S);
}

/* vLLM flash-attn style: per layer [2][blocks][block][heads][dim], the
 * sequence's blocks scattered through the pool by a block table. */
Test(gather, vllm_paged_blocks)
{
    enum { L = 2, NB = 8, B = 16, H = 2, D = 16, ES = 2 };
    static uint16_t mem[L][2][NB][B][H][D];
    const uint32_t table[] = {7, 2, 5, 0, 3};
    kvtc_kv_view v[2 * L];
    for (int l = 0; l < L; l++)
        for (int kv = 0; kv < 2; kv++)
            v[2 * l + kv] = (kvtc_kv_view){.base = mem[l][kv],
                                           .token_stride = H * D * ES,
                                           .head_stride = D * ES,
                                           .block_stride = B * H * D * ES};
    kvtc_engine_layout el = {.field_mask = KVTC_ENGINE_LAYOUT_FIELD_PAGED,
                             .layers = L, .kv_heads = H, .head_dim = D, .elem_size = ES,
                             .views = v, .block_tokens = B, .block_table = table,
                             .n_blocks = 5};
    /* tokens 10..41 straddle blocks 0, 1 and 2 of the table */
    round_trip(&el, 10, 32, 5 * B);
}

/* SGLang style: per layer k_buffer/v_buffer [slots][heads][dim] with one
 * slot per token (block_tokens = 1), fp32. */
Test(gather, sglang_token_slots)
{
    enum { L = 2, SLOTS = 64, H = 3, D = 4, ES = 4, N = 20 };
    static uint32_t kbuf[L][SLOTS][H][D], vbuf[L][SLOTS][H][D];
    uint32_t slots[N];
    for (uint32_t i = 0; i < N; i++)
        slots[i] = (i * 37u + 11u) % SLOTS; /* distinct: 37 is coprime to 64 */
    kvtc_kv_view v[2 * L];
    for (int l = 0; l < L; l++) {
        v[2 * l] = (kvtc_kv_view){.base = kbuf[l], .token_stride = 0,
                                  .head_stride = D * ES, .block_stride = H * D * ES};
        v[2 * l + 1] = (kvtc_kv_view){.base = vbuf[l], .token_stride = 0,
                                      .head_stride = D * ES, .block_stride = H * D * ES};
    }
    kvtc_engine_layout el = {.field_mask = KVTC_ENGINE_LAYOUT_FIELD_PAGED,
                             .layers = L, .kv_heads = H, .head_dim = D, .elem_size = ES,
                             .views = v, .block_tokens = 1, .block_table = slots,
                             .n_blocks = N};
    round_trip(&el, 0, N, N);
    round_trip(&el, 7, 9, N);
}

/* One tensor holding every layer, [seq][layer][k|v][heads][dim + pad],
 * fp8 (1 byte) with padded head rows. */
Test(gather, fused_padded_fp8)
{
    enum { S = 24, L = 4, H = 2, D = 6, PAD = 2, ES = 1 };
    static uint8_t mem[S][L][2][H][D + PAD];
    kvtc_kv_view v[2 * L];
    for (int l = 0; l < L; l++)
        for (int kv = 0; kv < 2; kv++)
            v[2 * l + kv] = (kvtc_kv_view){.base = mem[0][l][kv],
                                           .token_stride = L * 2 * H * (D + PAD),
                                           .head_stride = D + PAD};
    kvtc_engine_layout el = {.layers = L, .kv_heads = H, .head_dim = D, .elem_size = ES,
                             .views = v};
    round_trip(&el, 3, 21, S);
}

Test(gather, rejects_bad_arguments_without_writing)
{
    enum { H = 2, D = 4, ES = 2, NB = 2, B = 4 };
    static uint16_t mem[2][NB][B][H][D];
    const uint32_t table[] = {1, 0};
    kvtc_kv_view v[2] = {
        {.base = mem[0], .token_stride = H * D * ES, .head_stride = D * ES, .block_stride = B * H * D * ES},
        {.base = mem[1], .token_stride = H * D * ES, .head_stride = D * ES, .block_stride = B * H * D * ES},
    };
    kvtc_engine_layout el = {.field_mask = KVTC_ENGINE_LAYOUT_FIELD_PAGED, .layers = 1,
                             .kv_heads = H, .head_dim = D, .elem_size = ES, .views = v,
                             .block_tokens = B, .block_table = table, .n_blocks = 2};
    uint8_t out[2 * 8 * H * D * ES];
    memset(out, 0xAB, sizeof out);
    size_t need = kvtc_canonical_bytes(&el, 8);
    cr_assert_eq(need, sizeof out);
    cr_assert_eq(kvtc_gather(&el, 0, 8, out, need - 1), KVTC_ENOSPC);
    cr_assert_eq(kvtc_gather(&el, 1, 8, out, need), KVTC_ENOENT); /* token 8: block 2 */
    for (size_t i = 0; i < sizeof out; i++)
        cr_assert_eq(out[i], 0xAB);
    cr_assert_eq(kvtc_scatter(&el, 0, 8, out, need - 2), KVTC_EINVAL);
    el.elem_size = 3;
    cr_assert_eq(kvtc_gather(&el, 0, 8, out, need), KVTC_EINVAL);
    el.elem_size = ES;
    v[1].base = NULL;
    cr_assert_eq(kvtc_gather(&el, 0, 8, out, need), KVTC_EINVAL);
    v[1].base = mem[1];
    el.layers = 0;
    cr_assert_eq(kvtc_gather(&el, 0, 8, out, need), KVTC_EINVAL);
    el.layers = 1;
    cr_assert_eq(kvtc_gather(&el, 0, 8, out, need), 0);
    cr_assert_eq(kvtc_gather(NULL, 0, 8, out, need), KVTC_EINVAL);
}
