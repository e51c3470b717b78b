/* The store side of `kvtc demo`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo_store.h"
#include "store.h"

int kvtc_demo_keys(const char *fingerprint, const int32_t *tok, uint32_t n_tokens,
                   uint32_t chunk_tokens, kvtc_key *keys, uint32_t n)
{
    uint32_t *u = malloc((n_tokens ? n_tokens : 1) * sizeof *u);
    size_t got = 0;
    if (!u)
        return KVTC_ENOMEM;
    /* token ids are hashed as u32; the model's are small and non-negative */
    for (uint32_t i = 0; i < n_tokens; i++)
        u[i] = (uint32_t)tok[i];
    int rc = kvtc_key_chain(NULL, fingerprint, strlen(fingerprint), u, n_tokens, chunk_tokens,
                            keys, n, &got);
    free(u);
    return rc ? rc : got == n ? 0 : KVTC_EINVAL;
}

static uint32_t max_batch(const kvtc_conn *c)
{
    kvtc_server_info si;
    if (kvtc_server_info_get(c, &si) || si.max_batch == 0)
        return 1;
    return si.max_batch;
}

int kvtc_demo_put(kvtc_conn *c, const kvtc_key *keys, uint32_t n, void *const *data,
                  const size_t *len, const kvtc_layout *lay, float ratio, uint32_t reps,
                  double *secs)
{
    kvtc_put_item *it = calloc(n ? n : 1, sizeof *it);
    uint32_t mb = max_batch(c);
    int rc = it ? 0 : KVTC_ENOMEM;
    for (uint32_t i = 0; !rc && i < n; i++) {
        it[i].field_mask = KVTC_PUT_FIELD_MEM;
        it[i].mem = KVTC_MEM_HOST;
        it[i].key = keys[i];
        it[i].data = data[i];
        it[i].size = len[i];
        if (i) {
            it[i].field_mask |= KVTC_PUT_FIELD_PARENT;
            it[i].parent = keys[i - 1];
        }
        if (lay) {
            it[i].field_mask |= KVTC_PUT_FIELD_LAYOUT;
            it[i].layout = lay;
            it[i].first_pos = i * lay->chunk_tokens;
            it[i].n_tokens = lay->chunk_tokens;
        }
        if (lay && ratio > 0) {
            it[i].field_mask |= KVTC_PUT_FIELD_RATIO;
            it[i].target_ratio = ratio;
        }
    }
    double t0 = kvtc_cli_now();
    for (uint32_t r = 0; !rc && r < reps; r++)
        for (uint32_t i = 0; !rc && i < n; i += mb)
            rc = kvtc_put_batch(c, it + i, n - i < mb ? n - i : mb, NULL);
    *secs = kvtc_cli_now() - t0;
    free(it);
    return rc;
}

int kvtc_demo_get(kvtc_conn *c, const kvtc_key *keys, uint32_t n, void *const *bufs,
                  size_t cap, uint32_t want, struct kvtc_demo_got *got, uint32_t reps,
                  double *secs)
{
    kvtc_get_item *it = calloc(n ? n : 1, sizeof *it);
    uint32_t mb = max_batch(c);
    int rc = it ? 0 : KVTC_ENOMEM;
    for (uint32_t i = 0; !rc && i < n; i++) {
        it[i].field_mask = KVTC_GET_FIELD_MEM | KVTC_GET_FIELD_WANT;
        it[i].mem = KVTC_MEM_HOST;
        it[i].want = want;
        it[i].key = keys[i];
        it[i].buf = bufs[i];
        it[i].capacity = cap;
    }
    double t0 = kvtc_cli_now();
    for (uint32_t r = 0; !rc && r < reps; r++)
        for (uint32_t i = 0; !rc && i < n; i += mb)
            rc = kvtc_get_batch(c, it + i, n - i < mb ? n - i : mb, NULL);
    *secs = kvtc_cli_now() - t0;
    for (uint32_t i = 0; !rc && i < n; i++)
        got[i] = (struct kvtc_demo_got){it[i].size, it[i].wire_size, it[i].encoding};
    free(it);
    return rc;
}

size_t kvtc_demo_encode_bound(const kvtc_profile *p, float ratio, uint32_t chunk_tokens)
{
    kvtc_encoder *enc = NULL;
    size_t b = 0;
    if (kvtc_encoder_create(p, kvtc_profile_find_plan(p, ratio), KVTC_STAGE_DEFLATE, 0,
                            &enc) == 0)
        b = kvtc_encode_bound(enc, chunk_tokens);
    kvtc_encoder_free(enc);
    return b;
}

int kvtc_demo_encode(const kvtc_profile *p, float ratio, uint32_t n, void *const *raw,
                     uint32_t chunk_tokens, void *const *cont, size_t cap, size_t *len,
                     double *secs)
{
    kvtc_encoder *enc = NULL;
    double t0 = kvtc_cli_now();
    int rc = kvtc_encoder_create(p, kvtc_profile_find_plan(p, ratio), KVTC_STAGE_DEFLATE, 0,
                                 &enc);
    for (uint32_t i = 0; !rc && i < n; i++) {
        kvtc_chunk ch = {.data = raw[i], .n_tokens = chunk_tokens,
                         .first_pos = i * chunk_tokens, .flags = 0};
        rc = kvtc_encode(enc, &ch, cont[i], cap, &len[i]);
    }
    *secs = kvtc_cli_now() - t0;
    kvtc_encoder_free(enc);
    return rc;
}

int kvtc_demo_decode(const kvtc_profile *p, uint32_t n, void *const *cont, const size_t *len,
                     uint32_t chunk_tokens, void *const *raw, size_t cap, double *secs)
{
    kvtc_decoder *dec = NULL;
    kvtc_container_info info;
    double t0 = kvtc_cli_now();
    int rc = kvtc_decoder_create(p, &dec);
    for (uint32_t i = 0; !rc && i < n; i++) {
        rc = kvtc_decode(dec, cont[i], len[i], raw[i], cap, &info);
        /* a container of another chunk decodes fine: only its header
         * tells that the store answered with the wrong one */
        if (!rc && (info.first_pos != i * chunk_tokens || info.n_tokens != chunk_tokens))
            rc = KVTC_ECORRUPT;
    }
    *secs = kvtc_cli_now() - t0;
    kvtc_decoder_free(dec);
    return rc;
}
