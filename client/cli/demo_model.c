/* The model side of `kvtc demo` (stories260K on the CPU). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo_model.h"

int kvtc_demo_model_open(const char *path, struct kvtc_demo_model *dm)
{
    memset(dm, 0, sizeof *dm);
    int rc = kvtc_llama_load(path, &dm->m);
    if (rc)
        return rc;
    dm->c = kvtc_llama_get_config(dm->m);
    dm->tok_floats = 2 * (size_t)dm->c->n_layers * dm->c->kv_dim;
    dm->lp = malloc(dm->c->vocab_size * sizeof *dm->lp);
    if (!dm->lp)
        rc = KVTC_ENOMEM;
    if (!rc)
        rc = kvtc_llama_state_create(dm->m, &dm->st);
    if (rc)
        kvtc_demo_model_close(dm);
    return rc;
}

void kvtc_demo_model_close(struct kvtc_demo_model *dm)
{
    kvtc_llama_state_free(dm->st);
    kvtc_llama_free(dm->m);
    free(dm->lp);
    memset(dm, 0, sizeof *dm);
}

int kvtc_demo_calibrate(struct kvtc_demo_model *dm, const kvtc_layout *lay,
                        uint32_t n_seqs, const float *targets, uint32_t n_targets,
                        kvtc_profile **out, uint64_t *rows)
{
    uint32_t T = dm->c->seq_len, ct = lay->chunk_tokens;
    size_t chunk_floats = (size_t)ct * dm->tok_floats;
    int32_t *tok = malloc(((size_t)T + 1) * sizeof *tok);
    float *f32 = malloc(chunk_floats * sizeof *f32);
    void *conv = malloc(kvtc_chunk_bytes(lay, ct));
    kvtc_calibrator *cal = NULL;
    int rc = tok && f32 && conv ? 0 : KVTC_ENOMEM;
    if (!rc)
        rc = kvtc_calibrator_create(lay, NULL, &cal);
    for (uint32_t s = 0; !rc && s < n_seqs; s++) {
        /* T + 1 tokens leave the KV of all T positions in the cache */
        rc = kvtc_llama_sample(dm->st, 1 + (uint64_t)s, T + 1, tok);
        for (uint32_t first = 0; !rc && first < T; first += ct) {
            uint32_t n = T - first < ct ? T - first : ct;
            rc = kvtc_llama_export_kv(dm->st, first, n, f32);
            if (!rc)
                rc = kvtc_from_float(lay->dtype, f32, conv, (size_t)n * dm->tok_floats);
            if (!rc)
                rc = kvtc_calibrator_add(cal, conv, n, first);
        }
    }
    if (!rc) {
        *rows = kvtc_calibrator_rows(cal);
        rc = kvtc_calibrator_finish(cal, targets, n_targets, out);
    }
    kvtc_calibrator_free(cal);
    free(tok);
    free(f32);
    free(conv);
    return rc;
}

void kvtc_demo_ref_free(struct kvtc_demo_ref *r)
{
    free(r->tok);
    free(r->cont);
    free(r->kv);
    memset(r, 0, sizeof *r);
}

static int32_t argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return (int32_t)best;
}

int kvtc_demo_reference(struct kvtc_demo_model *dm, uint64_t seed, uint32_t n_tokens,
                        uint32_t n_cont, uint32_t chunk_tokens, struct kvtc_demo_ref *r)
{
    const kvtc_llama_config *c = dm->c;
    memset(r, 0, sizeof *r);
    if (n_tokens < 2 || n_cont < 1 || chunk_tokens < 1 || n_tokens + n_cont > c->seq_len)
        return KVTC_EINVAL;
    r->n_tokens = n_tokens;
    r->n_cont = n_cont;
    r->chunk_tokens = chunk_tokens;
    r->n_chunks = n_tokens / chunk_tokens;
    size_t kv_floats = (size_t)r->n_chunks * chunk_tokens * dm->tok_floats;
    r->tok = malloc(n_tokens * sizeof *r->tok);
    r->cont = malloc(n_cont * sizeof *r->cont);
    r->kv = malloc((kv_floats ? kv_floats : 1) * sizeof *r->kv);
    int rc = r->tok && r->cont && r->kv ? 0 : KVTC_ENOMEM;
    const float *lg = NULL;
    /* the sampler runs positions [0, n_tokens - 1); the last prompt token
     * runs here and its logits pick the first continuation token */
    if (!rc)
        rc = kvtc_llama_sample(dm->st, seed, n_tokens, r->tok);
    if (!rc)
        rc = kvtc_llama_forward(dm->st, r->tok[n_tokens - 1], n_tokens - 1, &lg);
    for (uint32_t i = 0; !rc && i < r->n_chunks; i++)
        rc = kvtc_llama_export_kv(dm->st, i * chunk_tokens, chunk_tokens,
                                  r->kv + (size_t)i * chunk_tokens * dm->tok_floats);
    double nll = 0;
    for (uint32_t j = 0; !rc && j < n_cont; j++) {
        r->cont[j] = argmax(lg, c->vocab_size);
        kvtc_llama_log_softmax(lg, c->vocab_size, dm->lp);
        nll -= dm->lp[r->cont[j]];
        if (j + 1 < n_cont)
            rc = kvtc_llama_forward(dm->st, r->cont[j], n_tokens + j, &lg);
    }
    r->nll = nll / n_cont;
    if (rc)
        kvtc_demo_ref_free(r);
    return rc;
}

/* Restore the whole chunks, recompute the rest of the prompt; *lg gets the
 * logits after the last prompt token. */
static int prime(struct kvtc_demo_model *dm, const struct kvtc_demo_ref *r, const float *kv,
                 const float **lg)
{
    uint32_t ct = r->chunk_tokens, restored = r->n_chunks * ct;
    int rc = 0;
    for (uint32_t i = 0; !rc && i < r->n_chunks; i++)
        rc = kvtc_llama_import_kv(dm->st, i * ct, ct, kv + (size_t)i * ct * dm->tok_floats);
    uint32_t from = restored < r->n_tokens ? restored : r->n_tokens - 1;
    for (uint32_t p = from; !rc && p < r->n_tokens; p++)
        rc = kvtc_llama_forward(dm->st, r->tok[p], p, lg);
    return rc;
}

int kvtc_demo_score(struct kvtc_demo_model *dm, const struct kvtc_demo_ref *r,
                    const float *kv, struct kvtc_demo_score *out, int32_t *gen)
{
    uint32_t V = dm->c->vocab_size, hits = 0;
    const float *lg = NULL;
    double nll = 0;
    memset(out, 0, sizeof *out);
    /* Teacher-forced on the reference, so one early difference does not
     * make every later position differ too. */
    int rc = prime(dm, r, kv, &lg);
    for (uint32_t j = 0; !rc && j < r->n_cont; j++) {
        hits += argmax(lg, V) == r->cont[j];
        kvtc_llama_log_softmax(lg, V, dm->lp);
        nll -= dm->lp[r->cont[j]];
        if (j + 1 < r->n_cont)
            rc = kvtc_llama_forward(dm->st, r->cont[j], r->n_tokens + j, &lg);
    }
    if (rc)
        return rc;
    out->top1 = (double)hits / r->n_cont;
    out->nll = nll / r->n_cont;
    /* Free-running: what a user of the restored cache would get. */
    rc = prime(dm, r, kv, &lg);
    int same = 1;
    for (uint32_t j = 0; !rc && j < r->n_cont; j++) {
        int32_t t = argmax(lg, V);
        if (gen)
            gen[j] = t;
        same = same && t == r->cont[j];
        out->same_prefix += (uint32_t)same;
        if (j + 1 < r->n_cont)
            rc = kvtc_llama_forward(dm->st, t, r->n_tokens + j, &lg);
    }
    return rc;
}
