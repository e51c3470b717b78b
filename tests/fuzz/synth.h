/* synth.h - deterministic synthetic KV chunks and a small real profile,
 * shared by the corruption tests, the libFuzzer targets and the seed-corpus
 * generator. The fuzzers and the generator must build byte-identical
 * profiles, or the seeds would all stop at the profile-id check, so every
 * number here comes from a fixed-seed PRNG. */
#ifndef KVTC_TEST_SYNTH_H
#define KVTC_TEST_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

/* The small layout the fuzz/corruption profile is calibrated for:
 * 2 layers x 2 KV heads x 8, bf16, 16-token chunks, interleaved RoPE. */
void kvtc_synth_layout(kvtc_layout *l);

/* Fill chunk (canonical layout, l->dtype) with n_tokens tokens starting at
 * absolute position first_pos. Rows are correlated across layers and heads:
 * a fixed random basis (depends only on the layout) weighted by a decaying
 * spectrum, plus a little noise; seed picks the coefficients. Keys get RoPE
 * applied, as a model's cache holds them. */
int kvtc_synth_chunk(const kvtc_layout *l, uint32_t n_tokens,
                     uint32_t first_pos, uint64_t seed, void *chunk);

/* Calibrate a profile for l on n_chunks synthetic chunks of chunk_tokens
 * tokens, with plans for targets[0..n_targets). */
int kvtc_synth_profile(const kvtc_layout *l, uint32_t n_chunks,
                       const float *targets, uint32_t n_targets,
                       kvtc_profile **out);

/* The fixed profile of the fuzzers: kvtc_synth_layout, plans 4x, 8x, 16x. */
int kvtc_synth_fuzz_profile(kvtc_profile **out);

#endif
