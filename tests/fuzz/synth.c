#include "synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: tiny, fixed, identical on every compiler. */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]; 24 bits are plenty for test data. */
static float next_unit(uint64_t *s)
{
    return (float)((next_u64(s) >> 40) + 1) * (1.0f / 16777216.0f);
}

/* Box-Muller; one value per call keeps the stream simple to reason about. */
static float next_gauss(uint64_t *s)
{
    float u = next_unit(s), v = next_unit(s);
    return sqrtf(-2.0f * logf(u)) * cosf(6.28318530718f * v);
}

void kvtc_synth_layout(kvtc_layout *l)
{
    memset(l, 0, sizeof *l);
    l->layers = 2;
    l->kv_heads = 2;
    l->head_dim = 8;
    l->dtype = KVTC_DTYPE_BF16;
    l->chunk_tokens = 16;
    l->rope_style = KVTC_ROPE_INTERLEAVED;
    l->rope_scaling = KVTC_ROPE_SCALING_NONE;
    l->rope_theta = 10000.0f;
    l->rope_factor = 1.0f;
}

/* Latent factors per row: enough for a spread-out spectrum, few enough that
 * PCA has real structure to find. */
#define SYNTH_RANK_MAX 48

int kvtc_synth_chunk(const kvtc_layout *l, uint32_t n_tokens,
                     uint32_t first_pos, uint64_t seed, void *chunk)
{
    int rc = kvtc_layout_check(l);
    if (rc < 0)
        return rc;
    if (n_tokens == 0 || n_tokens > KVTC_MAX_CHUNK_TOKENS)
        return KVTC_EINVAL;
    size_t w = kvtc_row_width(l);
    size_t rank = w < SYNTH_RANK_MAX ? w : SYNTH_RANK_MAX;
    size_t n_el = 2 * w * n_tokens;
    float *basis = malloc(2 * rank * w * sizeof *basis);
    float *mean = malloc(2 * w * sizeof *mean);
    float *buf = malloc(n_el * sizeof *buf);
    uint32_t *pos = malloc((size_t)n_tokens * l->kv_heads * sizeof *pos);
    rc = KVTC_ENOMEM;
    if (!basis || !mean || !buf || !pos)
        goto cleanup;

    /* The basis and means depend only on the layout, so every chunk (and
     * every profile calibrated on them) shares one structure. */
    uint64_t bs = 0x6B7674632D73796Eull ^ (uint64_t)w;
    for (size_t i = 0; i < 2 * rank * w; i++)
        basis[i] = next_gauss(&bs) / sqrtf((float)w);
    for (size_t i = 0; i < 2 * w; i++)
        mean[i] = 0.3f * next_gauss(&bs);

    uint64_t cs = seed * 0x2545F4914F6CDD1Dull + 1;
    size_t hd = l->head_dim, H = l->kv_heads;
    for (uint32_t t = 0; t < n_tokens; t++) {
        for (int kv = 0; kv < 2; kv++) {
            const float *B = basis + (size_t)kv * rank * w;
            float coef[SYNTH_RANK_MAX];
            /* A power-law spectrum, as measured KV rows show. */
            for (size_t j = 0; j < rank; j++)
                coef[j] = 4.0f * next_gauss(&cs) / powf((float)j + 1.0f, 0.9f);
            for (size_t e = 0; e < w; e++) {
                float x = mean[(size_t)kv * w + e] + 0.01f * next_gauss(&cs);
                for (size_t j = 0; j < rank; j++)
                    x += coef[j] * B[j * w + e];
                /* row element e = (layer, head, dim) -> canonical index */
                size_t layer = e / (H * hd), rest = e % (H * hd);
                size_t idx = ((layer * 2 + (size_t)kv) * n_tokens + t) * H * hd + rest;
                buf[idx] = x;
            }
        }
    }
    if (l->rope_style != KVTC_ROPE_NONE) {
        for (uint32_t t = 0; t < n_tokens; t++)
            for (size_t h = 0; h < H; h++)
                pos[(size_t)t * H + h] = first_pos + t;
        for (size_t layer = 0; layer < l->layers; layer++)
            kvtc_rope_apply(l, buf + layer * 2 * n_tokens * H * hd,
                            (size_t)n_tokens * H, pos, 0);
    }
    rc = kvtc_from_float(l->dtype, buf, chunk, n_el);

cleanup:
    free(basis);
    free(mean);
    free(buf);
    free(pos);
    return rc;
}

int kvtc_synth_profile(const kvtc_layout *l, uint32_t n_chunks,
                       const float *targets, uint32_t n_targets,
                       kvtc_profile **out)
{
    kvtc_calibrator *cal = NULL;
    void *chunk = malloc(kvtc_chunk_bytes(l, l->chunk_tokens));
    kvtc_calib_params params = { .seed = 7 };
    int rc = KVTC_ENOMEM;
    if (!chunk)
        goto cleanup;
    rc = kvtc_calibrator_create(l, &params, &cal);
    if (rc < 0)
        goto cleanup;
    for (uint32_t c = 0; c < n_chunks; c++) {
        uint32_t first = c * l->chunk_tokens;
        rc = kvtc_synth_chunk(l, l->chunk_tokens, first, 1000 + c, chunk);
        if (rc < 0)
            goto cleanup;
        rc = kvtc_calibrator_add(cal, chunk, l->chunk_tokens, first);
        if (rc < 0)
            goto cleanup;
    }
    rc = kvtc_calibrator_finish(cal, targets, n_targets, out);
cleanup:
    kvtc_calibrator_free(cal);
    free(chunk);
    return rc;
}

int kvtc_synth_fuzz_profile(kvtc_profile **out)
{
    static const float targets[] = { 4.0f, 8.0f, 16.0f };
    kvtc_layout l;
    kvtc_synth_layout(&l);
    return kvtc_synth_profile(&l, 32, targets, 3, out);
}
