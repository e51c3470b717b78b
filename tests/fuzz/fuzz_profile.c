/* fuzz_profile.c - libFuzzer target for the profile loader.
 *
 * Input: the bytes of a .kvtcp profile. A profile the loader accepts must be
 * fully usable: its accessors answer, it re-serializes to the same bytes and
 * id, and (for layouts small enough to try) an encoder and decoder made from
 * it round-trip a chunk without touching memory they do not own. That is
 * what "validated before trusted" means for the rest of the codec.
 * Each input is tried as given and with its checksum recomputed (repair.h),
 * so mutations reach the field checks behind the checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc_codec.h"
#include "repair.h"
#include "synth.h"

/* Try an encode/decode only when a 2-token chunk stays this small. */
#define FUZZ_ROUNDTRIP_MAX_WIDTH 4096u

/* A failed property names itself before libFuzzer records the input. */
#define check(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

static int is_error(int rc)
{
    return rc < 0 && rc >= KVTC_EEXIST;
}

static void roundtrip(const kvtc_profile *p, uint32_t plan)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    kvtc_encoder *enc = NULL;
    kvtc_decoder *dec = NULL;
    uint8_t *raw = NULL, *out = NULL, *cont = NULL;
    const uint32_t n = 2;
    size_t raw_len = kvtc_chunk_bytes(l, n);
    if (kvtc_row_width(l) > FUZZ_ROUNDTRIP_MAX_WIDTH || raw_len == 0)
        return;
    int rc = kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc);
    check(rc == 0 || is_error(rc));
    if (rc < 0)
        goto cleanup;
    check(kvtc_decoder_create(p, &dec) == 0);
    size_t bound = kvtc_encode_bound(enc, n);
    raw = calloc(1, raw_len);
    out = malloc(raw_len);
    cont = malloc(bound ? bound : 1);
    if (!raw || !out || !cont)
        abort();
    /* Zeros are a valid chunk in every dtype. */
    kvtc_chunk ch = { .data = raw, .n_tokens = n, .first_pos = 100, .flags = 0 };
    size_t len = 0;
    rc = kvtc_encode(enc, &ch, cont, bound, &len);
    check(rc == 0 || is_error(rc));
    if (rc == 0) {
        check(len <= bound);
        kvtc_container_info info;
        rc = kvtc_decode(dec, cont, len, out, raw_len, &info);
        check(rc == 0 && info.raw_bytes == raw_len && info.n_tokens == n);
    }
cleanup:
    kvtc_encoder_free(enc);
    kvtc_decoder_free(dec);
    free(raw);
    free(out);
    free(cont);
}

static void one(const uint8_t *data, size_t size)
{
    kvtc_profile *p = NULL;
    int rc = kvtc_profile_load(data, size, &p);
    check(rc == 0 || is_error(rc));
    if (rc < 0)
        return;
    const kvtc_layout *l = kvtc_profile_layout(p);
    check(l != NULL && kvtc_layout_check(l) == 0);
    uint32_t plans = kvtc_profile_plan_count(p);
    check(plans >= 1 && plans <= KVTC_MAX_PLANS);
    for (uint32_t i = 0; i < plans; i++) {
        kvtc_plan_info pi;
        check(kvtc_profile_plan_info(p, i, &pi) == 0);
    }
    check(is_error(kvtc_profile_plan_info(p, plans, &(kvtc_plan_info){ 0 })));
    check(kvtc_profile_find_plan(p, 16.0f) < plans);

    /* Loading is the inverse of saving: same bytes, same id. */
    size_t n = kvtc_profile_size(p);
    check(n == size);
    uint8_t *buf = malloc(n);
    if (!buf)
        abort();
    check(kvtc_profile_save(p, buf, n) == 0);
    check(memcmp(buf, data, n) == 0);
    kvtc_profile *q = NULL;
    check(kvtc_profile_load(buf, n, &q) == 0);
    check(kvtc_profile_id(q) == kvtc_profile_id(p));
    kvtc_profile_free(q);
    free(buf);

    roundtrip(p, 0);
    roundtrip(p, plans - 1);
    kvtc_profile_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    if (size >= 8) {
        uint8_t *fixed = malloc(size); /* exact size, like libFuzzer's copy */
        if (!fixed)
            abort();
        memcpy(fixed, data, size);
        repair_profile_checksum(fixed, size);
        if (memcmp(fixed, data, size) != 0)
            one(fixed, size);
        free(fixed);
    }
    return 0;
}
