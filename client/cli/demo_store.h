/* demo_store.h - the store side of `kvtc demo`: the conversation's chunk
 * keys, timed batch puts and gets, and client-side KVTC encode/decode of
 * whole conversations (chunk i starts at token i * chunk_tokens). */
#ifndef KVTC_CLI_DEMO_STORE_H
#define KVTC_CLI_DEMO_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc.h"

/* Keys of the n whole chunks of tok, chained from the fingerprint string
 * (model, dtype, chunking and what the store holds: raw and compressed
 * copies of one conversation must not share keys here). */
int kvtc_demo_keys(const char *fingerprint, const int32_t *tok, uint32_t n_tokens,
                   uint32_t chunk_tokens, kvtc_key *keys, uint32_t n);

/* Put chunks data[i] (len[i] bytes) under keys[i], each parented to the one
 * before, reps times (batches of at most the daemon's max_batch); *secs
 * gets the total time. lay non-NULL: the chunks are canonical chunks of
 * lay (first_pos i * chunk_tokens), and ratio > 0 asks the daemon to
 * compress them at that ratio (protocol 1.2). Errors: the first failure
 * (message from kvtc_last_error). */
int kvtc_demo_put(kvtc_conn *c, const kvtc_key *keys, uint32_t n, void *const *data,
                  const size_t *len, const kvtc_layout *lay, float ratio, uint32_t reps,
                  double *secs);

/* What one get of a chunk brought. */
struct kvtc_demo_got {
    size_t size;       /* bytes in the buffer */
    uint64_t wire;     /* bytes that travelled */
    uint32_t encoding; /* enum kvtc_encoding of what travelled */
};

/* Get the chunks into bufs[i] (cap bytes each) reps times, as want (enum
 * kvtc_want); got[i] describes each; *secs gets the total time. */
int kvtc_demo_get(kvtc_conn *c, const kvtc_key *keys, uint32_t n, void *const *bufs,
                  size_t cap, uint32_t want, struct kvtc_demo_got *got, uint32_t reps,
                  double *secs);

/* Client-side compression: encode the canonical chunks raw[i] (lay, whole
 * chunks) with the profile's plan closest to ratio into cont[i] (cap bytes
 * each; size with kvtc_demo_encode_bound), container sizes into len[i]. */
size_t kvtc_demo_encode_bound(const kvtc_profile *p, float ratio, uint32_t chunk_tokens);
int kvtc_demo_encode(const kvtc_profile *p, float ratio, uint32_t n, void *const *raw,
                     uint32_t chunk_tokens, void *const *cont, size_t cap, size_t *len,
                     double *secs);
/* Decode containers cont[i] (len[i] bytes) into raw[i] (cap bytes each),
 * checking each describes chunk i. */
int kvtc_demo_decode(const kvtc_profile *p, uint32_t n, void *const *cont, const size_t *len,
                     uint32_t chunk_tokens, void *const *raw, size_t cap, double *secs);

#endif
