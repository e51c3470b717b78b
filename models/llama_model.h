/* llama_model.h - a small fp32 runner for llama2.c checkpoints (stories260K),
 * the source of real KV caches and next-token distributions for `kvtc demo`,
 * the quality benchmark and the tests. It lives outside bench/ because the
 * CLI links it (libkvtc_model.a); libkvtc_bench carries it too.
 *
 * The model (weights) is immutable once loaded and may be shared by threads;
 * a state (KV cache + scratch) belongs to one thread at a time.
 *
 * KV is exchanged in kvtc's canonical chunk layout
 * [layer][k|v][token][kv_head][head_dim], float32, keys after RoPE
 * (interleaved pairs, theta 10000), exactly as the runner caches them. */
#ifndef KVTC_LLAMA_MODEL_H
#define KVTC_LLAMA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

#define KVTC_LLAMA_BOS 1 /* llama2.c's beginning-of-sequence token */

typedef struct kvtc_llama_config {
    uint32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    uint32_t head_dim; /* dim / n_heads */
    uint32_t kv_dim;   /* n_kv_heads * head_dim */
    int shared_classifier; /* vocab_size was positive in the header */
} kvtc_llama_config;

typedef struct kvtc_llama kvtc_llama;
typedef struct kvtc_llama_state kvtc_llama_state;

/* Load a llama2.c checkpoint. The header is checked against sanity bounds and
 * the file size must equal exactly what the header implies before any weight
 * is read. Errors: KVTC_EIO (open/read), KVTC_ECORRUPT (bad header or size),
 * KVTC_ENOMEM. */
int kvtc_llama_load(const char *path, kvtc_llama **out);
void kvtc_llama_free(kvtc_llama *m);
const kvtc_llama_config *kvtc_llama_get_config(const kvtc_llama *m);

/* Fill a kvtc_layout describing this model's KV: fp32, interleaved RoPE with
 * theta 10000, chunk_tokens as given. */
void kvtc_llama_layout(const kvtc_llama *m, uint32_t chunk_tokens,
                       kvtc_layout *out);
/* Floats of the canonical KV of n tokens: n_layers * 2 * n * kv_dim. */
size_t kvtc_llama_kv_floats(const kvtc_llama *m, uint32_t n);

/* A KV cache for seq_len positions plus scratch. The model must outlive it. */
int kvtc_llama_state_create(const kvtc_llama *m, kvtc_llama_state **out);
void kvtc_llama_state_free(kvtc_llama_state *s);

/* Run token at position pos, attending to the cached positions [0, pos) and
 * writing this token's K and V into the cache at pos. *logits points to
 * vocab_size floats owned by the state, valid until the next call.
 * Errors: KVTC_EINVAL (token or pos out of range). */
int kvtc_llama_forward(kvtc_llama_state *s, int32_t token, uint32_t pos,
                       const float **logits);

/* Copy the cached KV of positions [first, first+n) into dst (canonical
 * layout, kvtc_llama_kv_floats(m, n) floats). Errors: KVTC_EINVAL. */
int kvtc_llama_export_kv(const kvtc_llama_state *s, uint32_t first, uint32_t n,
                         float *dst);
/* Same, but the keys as they were before RoPE (kept only to verify the codec's
 * RoPE inverse; meaningless for positions written by import). */
int kvtc_llama_export_kv_norope(const kvtc_llama_state *s, uint32_t first,
                                uint32_t n, float *dst);
/* Overwrite the cached KV of positions [first, first+n) with src (canonical
 * layout, keys after RoPE), e.g. a decompressed prefix. Errors: KVTC_EINVAL. */
int kvtc_llama_import_kv(kvtc_llama_state *s, uint32_t first, uint32_t n,
                         const float *src);

/* Sample n tokens from the model at temperature 1 with a deterministic RNG
 * seeded by seed: tokens[0] = BOS, tokens[t] drawn from the logits of
 * position t-1. Positions [0, n-1) are run through s, so afterwards its cache
 * holds their KV. n must be in 1..seq_len+1. Errors: KVTC_EINVAL. */
int kvtc_llama_sample(kvtc_llama_state *s, uint64_t seed, uint32_t n,
                      int32_t *tokens);

/* log-softmax of n logits into out (may alias logits). */
void kvtc_llama_log_softmax(const float *logits, uint32_t n, double *out);

#endif
