/* bc.h - CPU codec throughput benchmark (kvtc-bench-codec): data sources. */
#ifndef KVTC_BENCH_CODEC_H
#define KVTC_BENCH_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

/* Synthetic KV with a realistic decaying spectrum: each row (one token's
 * keys or values across all layers and heads) is a mean plus `rank` latent
 * factors with power-law weights (k^-0.9) plus white noise holding about 5%
 * of the energy, the keys then
 * rotated by RoPE at their positions, stored in the layout's dtype. The
 * basis depends only on the layout, so calibration and benchmark chunks
 * share one structure, as real chunks of one model do. */
typedef struct bc_source bc_source;

int bc_source_create(const kvtc_layout *l, uint32_t rank, bc_source **out);
void bc_source_free(bc_source *s);
/* Real KV instead: the stories260K checkpoint at path, run by the
 * bench/quality runner on sequences it samples itself (seed = sequence);
 * layout fp32 in the model, converted to l->dtype. Positions are limited to
 * the model's seq_len (512), bc_source_max_pos() says so. */
int bc_source_create_llama(const char *path, uint32_t dtype,
                           uint32_t chunk_tokens, kvtc_layout *l_out,
                           bc_source **out);
/* Highest first_pos + n_tokens a chunk may reach (UINT32_MAX: unbounded). */
uint32_t bc_source_max_pos(const bc_source *s);
/* n_tokens tokens at absolute positions first_pos.., coefficients drawn from
 * seed, into chunk (kvtc_chunk_bytes(l, n_tokens) bytes). */
int bc_source_chunk(bc_source *s, uint32_t n_tokens, uint32_t first_pos,
                    uint64_t seed, void *chunk);

#endif
