/* demo_model.h - the model side of `kvtc demo`: calibration KV, the
 * conversation and its reference continuation from the uncompressed cache,
 * and the scoring of a continuation from a restored cache. Nothing here
 * talks to a daemon; the chunks it hands out are fp32 canonical chunks
 * ([layer][k|v][token][kv_head][head_dim]) of chunk_tokens tokens each. */
#ifndef KVTC_CLI_DEMO_MODEL_H
#define KVTC_CLI_DEMO_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"
#include "llama_model.h"

struct kvtc_demo_model {
    kvtc_llama *m;
    const kvtc_llama_config *c;
    kvtc_llama_state *st;
    size_t tok_floats; /* K+V floats of one token across all layers */
    double *lp;        /* vocab log-probs scratch */
};

/* Load the checkpoint and make one cache. Errors as kvtc_llama_load. */
int kvtc_demo_model_open(const char *path, struct kvtc_demo_model *dm);
void kvtc_demo_model_close(struct kvtc_demo_model *dm);

/* Calibrate a profile for lay (its dtype and chunk_tokens) on the KV of
 * n_seqs sequences the model samples itself (seeds 1..n_seqs, seq_len
 * tokens each), one plan per target. *rows gets the rows used. */
int kvtc_demo_calibrate(struct kvtc_demo_model *dm, const kvtc_layout *lay,
                        uint32_t n_seqs, const float *targets, uint32_t n_targets,
                        kvtc_profile **out, uint64_t *rows);

/* The conversation: n_tokens tokens sampled with seed, then n_cont tokens
 * continued greedily from the uncompressed cache. */
struct kvtc_demo_ref {
    uint32_t n_tokens, n_cont, chunk_tokens, n_chunks;
    int32_t *tok;  /* n_tokens prompt tokens (tok[0] = BOS) */
    int32_t *cont; /* n_cont greedy tokens after the prompt */
    float *kv;     /* n_chunks whole chunks of the prompt's KV, fp32,
                      chunk i at i * chunk_tokens * tok_floats */
    double nll;    /* mean -log p(cont) under the uncompressed cache */
};

/* Needs n_tokens + n_cont <= seq_len. Errors: KVTC_EINVAL, KVTC_ENOMEM. */
int kvtc_demo_reference(struct kvtc_demo_model *dm, uint64_t seed, uint32_t n_tokens,
                        uint32_t n_cont, uint32_t chunk_tokens, struct kvtc_demo_ref *r);
void kvtc_demo_ref_free(struct kvtc_demo_ref *r);

struct kvtc_demo_score {
    double top1;          /* teacher-forced: fraction of positions whose
                             argmax is the reference's next token */
    double nll;           /* mean -log p(reference continuation) */
    uint32_t same_prefix; /* free-running greedy: tokens equal to the
                             reference before the first difference */
};

/* Restore the prompt from kv (r->n_chunks chunks laid out as r->kv), run
 * the rest of the prompt (the partial chunk, and always the last token:
 * engines recompute it to get its logits), then score the reference
 * continuation teacher-forced and, restored again, greedily free-running.
 * gen (may be NULL) gets the n_cont free-running tokens. */
int kvtc_demo_score(struct kvtc_demo_model *dm, const struct kvtc_demo_ref *r,
                    const float *kv, struct kvtc_demo_score *out, int32_t *gen);

#endif
