/* fuzz_decode.c - libFuzzer target for the container decoder.
 *
 * Input: the bytes of a container. Every input goes through kvtc_inspect and
 * kvtc_decode (with the fuzz profile, and with a profile-less decoder) into
 * output buffers of exactly the capacity passed, so ASan flags any write
 * past dst_cap; libFuzzer hands us an exact-size heap copy of the input, so
 * any read past it is flagged too. Beyond "no crash", we check that the
 * decoder's answers are consistent: a container that decodes must inspect
 * to the same header, and its raw size must fit the capacity given.
 * Each input is tried twice: as given (the checksums reject almost all
 * mutations), and with its checksums recomputed (repair.h), which is how
 * mutated sizes, tables and DEFLATE streams reach the checks behind them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc_codec.h"
#include "repair.h"
#include "synth.h"

/* Outputs larger than this are not decoded; it bounds memory per input. */
#define FUZZ_DST_MAX (4u << 20)

static kvtc_profile *g_prof;
static kvtc_decoder *g_dec;     /* the fuzz profile */
static kvtc_decoder *g_dec_raw; /* no profile: raw containers only */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (kvtc_synth_fuzz_profile(&g_prof) < 0 ||
        kvtc_decoder_create(g_prof, &g_dec) < 0 ||
        kvtc_decoder_create(NULL, &g_dec_raw) < 0)
        abort();
    return 0;
}

static int is_error(int rc)
{
    return rc < 0 && rc >= KVTC_EEXIST;
}

/* A failed property names itself before libFuzzer records the input. */
#define check(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

static int same_info(const kvtc_container_info *a, const kvtc_container_info *b)
{
    return a->version == b->version && a->mode == b->mode &&
           a->stage == b->stage && a->plan == b->plan &&
           a->profile_id == b->profile_id && a->n_tokens == b->n_tokens &&
           a->first_pos == b->first_pos && a->sink_tokens == b->sink_tokens &&
           a->pieces == b->pieces && a->container_bytes == b->container_bytes &&
           a->raw_bytes == b->raw_bytes &&
           memcmp(&a->layout, &b->layout, sizeof a->layout) == 0;
}

static void one(const uint8_t *data, size_t size)
{
    kvtc_container_info ii, di;
    memset(&ii, 0, sizeof ii);
    int ri = kvtc_inspect(data, size, &ii);
    check(ri == 0 || is_error(ri));

    /* Decode into a buffer of the size the header claims when it is sane,
     * else into a small one: a lying header must be caught, not obeyed. */
    size_t cap = 256;
    if (ri == 0) {
        /* Trailing bytes are corruption too: the header names the size. */
        check(ii.container_bytes == size);
        if (ii.raw_bytes <= FUZZ_DST_MAX)
            cap = (size_t)ii.raw_bytes;
    }
    uint8_t *dst = malloc(cap ? cap : 1);
    uint8_t *dst2 = malloc(cap ? cap : 1);
    if (!dst || !dst2)
        abort();

    int rd = kvtc_decode(g_dec, data, size, dst, cap, &di);
    check(rd == 0 || is_error(rd));
    if (rd == 0) {
        check(ri == 0 && same_info(&ii, &di));
        check(di.raw_bytes <= cap);
    }

    int rr = kvtc_decode(g_dec_raw, data, size, dst2, cap, NULL);
    check(rr == 0 || is_error(rr));
    if (rr == 0) {
        /* Without a profile only raw containers can decode, and both
         * decoders must then agree byte for byte. */
        check(ri == 0 && ii.mode == 1);
        check(rd == 0 && memcmp(dst, dst2, (size_t)ii.raw_bytes) == 0);
    }

    /* One byte short of the output must be refused, never overrun. */
    if (rd == 0 && cap > 0) {
        int rs = kvtc_decode(g_dec, data, size, dst2, cap - 1, NULL);
        check(is_error(rs));
    }
    free(dst);
    free(dst2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    if (size >= REPAIR_HEADER) {
        uint8_t *fixed = malloc(size); /* exact size, like libFuzzer's copy */
        if (!fixed)
            abort();
        memcpy(fixed, data, size);
        repair_checksums(fixed, size);
        if (memcmp(fixed, data, size) != 0)
            one(fixed, size);
        free(fixed);
    }
    return 0;
}
