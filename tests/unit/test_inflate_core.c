/* The GPU's raw DEFLATE decoder (kernels/inflate_core.h), compiled for the
 * host, against zlib: the same bytes on every stream zlib and libdeflate
 * write (stored, fixed, dynamic blocks, with and without matches, 1 byte to
 * 64 KiB, 15-bit codes, mixed blocks), and the same verdict as zlib on
 * damaged streams (bit flips, truncation, wrong declared size), from
 * exact-size heap buffers so ASan (make SAN=1) sees any stray access. The
 * device runs this very code (tests/gpu/test_gpu_inflate.c). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/inflate_core.h"
#include "inflate_gen.h"

static struct kvtc__inflate_ws ws;

/* Decode into an exact-size heap buffer; 0 and out == want, or an error. */
static int dec(const uint8_t *src, size_t len, uint8_t *got, size_t cap,
               struct kvtc__inflate_stats *st)
{
    /* exact multiple-of-4 input and 8-aligned output, nothing more */
    uint8_t *in = malloc((len + 3) / 4 * 4 + 1);
    memcpy(in, src, (len + 3) / 4 * 4);
    uint8_t *out = malloc(cap ? cap : 1);
    int rc = kvtc__inflate(in, (uint32_t)len, out, (uint32_t)cap, &ws, st);
    if (!rc)
        memcpy(got, out, cap);
    free(in);
    free(out);
    return rc;
}

static void same_as_input(const uint8_t *src, size_t len, const uint8_t *data, size_t n,
                          const char *what, struct kvtc__inflate_stats *st)
{
    uint8_t *got = malloc(n + 1);
    int rc = dec(src, len, got, n, st);
    cr_assert_eq(rc, 0, "%s: n %zu: rc %d", what, n, rc);
    cr_assert(!memcmp(got, data, n), "%s: n %zu: bytes differ", what, n);
    free(got);
}

static const size_t sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 255, 1000, 4095, 4097, 30000,
                               65535, 65536};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

Test(inflate_core, zlib_every_level_strategy_kind_and_size)
{
    static const int strat[] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED};
    uint8_t *data = malloc(65536);
    uint64_t seed = 1;
    struct kvtc__inflate_stats tot = {0, 0, 0, 0, 0}, st;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t si = 0; si < N_SIZES; si++) {
            size_t n = sizes[si];
            ig_data(data, n, kind, &seed);
            for (int level = 0; level <= 9; level += 3)
                for (int s = 0; s < 5; s++) {
                    size_t len = 0;
                    uint8_t *z = ig_zlib(data, n, level, strat[s], 8, 0, &len);
                    cr_assert(z);
                    same_as_input(z, len, data, n, "zlib", &st);
                    tot.stored += st.stored;
                    tot.fixed += st.fixed;
                    tot.dynamic += st.dynamic;
                    tot.matches += st.matches;
                    if (st.max_code_len > tot.max_code_len)
                        tot.max_code_len = st.max_code_len;
                    free(z);
                }
        }
    cr_log_info("blocks: %u stored, %u fixed, %u dynamic; %u matches; longest code %u bits",
                tot.stored, tot.fixed, tot.dynamic, tot.matches, tot.max_code_len);
    cr_assert(tot.stored && tot.fixed && tot.dynamic && tot.matches);
    cr_assert_eq(tot.max_code_len, 15, "no 15-bit code was exercised");
    free(data);
}

Test(inflate_core, zlib_mixed_blocks_in_one_stream)
{
    uint8_t *data = malloc(65536);
    uint64_t seed = 2;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t every = 97; every < 65536; every = every * 5 + 3)
            for (int mem = 1; mem <= 9; mem += 8) {
                size_t n = 65536 - (size_t)kind * 1001, len = 0;
                ig_data(data, n, kind, &seed);
                uint8_t *z = ig_zlib(data, n, 6, Z_DEFAULT_STRATEGY, mem, every, &len);
                cr_assert(z);
                struct kvtc__inflate_stats st;
                same_as_input(z, len, data, n, "zlib mixed", &st);
                cr_assert(n <= every || st.stored + st.fixed + st.dynamic > 1);
                free(z);
            }
    free(data);
}

Test(inflate_core, libdeflate_every_level)
{
    uint8_t *data = malloc(65536);
    uint64_t seed = 3;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t si = 0; si < N_SIZES; si++)
            for (int level = 0; level <= 12; level += 2) {
                size_t n = sizes[si], len = 0;
                ig_data(data, n, kind, &seed);
                uint8_t *z = ig_libdeflate(data, n, level, &len);
                cr_assert(z);
                same_as_input(z, len, data, n, "libdeflate", NULL);
                free(z);
            }
    free(data);
}

Test(inflate_core, empty_and_hand_made_streams)
{
    uint8_t got[16];
    /* empty fixed final block: 0 bytes out */
    static const uint8_t empty[4] = {0x03, 0x00};
    cr_assert_eq(dec(empty, 2, got, 0, NULL), 0);
    cr_assert_eq(dec(empty, 2, got, 1, NULL), KVTC_INFL_ESHORT);
    cr_assert_eq(dec(empty, 1, got, 0, NULL), KVTC_INFL_EINPUT);
    /* block type 3 */
    static const uint8_t bad[4] = {0x07, 0x00};
    cr_assert_eq(dec(bad, 2, got, 0, NULL), KVTC_INFL_EBLOCK);
    /* stored "abc" with a wrong NLEN */
    static const uint8_t st[12] = {0x01, 0x03, 0x00, 0xfc, 0xfe, 'a', 'b', 'c'};
    cr_assert_eq(dec(st, 8, got, 3, NULL), KVTC_INFL_EBLOCK);
    /* misaligned output */
    cr_assert_eq(kvtc__inflate(empty, 2, got + 1, 0, &ws, NULL), KVTC_INFL_EARG);
    cr_assert_eq(kvtc__inflate(empty, 2, got, 65537, &ws, NULL), KVTC_INFL_EARG);
}

/* Damaged streams: our verdict equals zlib's, and so do the bytes when
 * both accept. */
static void damaged(const uint8_t *z, size_t len, size_t n, uint64_t *seed, int rounds)
{
    uint8_t *ref = malloc(n + 8), *got = malloc(n + 8), *c = malloc(len + 4);
    for (int r = 0; r < rounds; r++) {
        memcpy(c, z, len);
        size_t clen = len, cap = n;
        int how = (int)(ig_rand(seed) % 4);
        if (how == 0 || how == 3) {
            int flips = 1 + (int)(ig_rand(seed) % 3);
            for (int f = 0; f < flips; f++) {
                /* mostly in the header and tables, where damage is subtle */
                size_t at = ig_rand(seed) % 2 ? ig_rand(seed) % (len < 64 ? len : 64)
                                              : ig_rand(seed) % len;
                c[at] ^= (uint8_t)(1u << (ig_rand(seed) % 8));
            }
        }
        if (how == 1)
            clen = ig_rand(seed) % len;
        if (how == 2 || how == 3)
            cap = ig_rand(seed) % 2 ? n + 1 + ig_rand(seed) % 3 : (n ? ig_rand(seed) % n : 0);
        if (cap > 65536)
            cap = 65536;
        int want = ig_ref(c, clen, ref, cap), rc = dec(c, clen, got, cap, NULL);
        cr_assert_eq(rc == 0, want == 0, "round %d how %d: ours %d, zlib %d (len %zu cap %zu)",
                     r, how, rc, want, clen, cap);
        if (!rc)
            cr_assert(!memcmp(got, ref, cap), "round %d: accepted with other bytes than zlib", r);
    }
    free(ref);
    free(got);
    free(c);
}

Test(inflate_core, damaged_streams_get_zlibs_verdict)
{
    uint8_t *data = malloc(65536);
    uint64_t seed = 4;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t n = 1; n <= 65536; n = n * 7 + 5) {
            ig_data(data, n, kind, &seed);
            size_t len = 0;
            for (int lv = 0; lv < 3; lv++) {
                uint8_t *z = lv == 2 ? ig_libdeflate(data, n, 6, &len)
                                     : ig_zlib(data, n, lv ? 9 : 1,
                                               lv ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY, 8,
                                               kind == IG_TEXT ? 1000 : 0, &len);
                cr_assert(z);
                damaged(z, len, n, &seed, n > 10000 ? 60 : 200);
                free(z);
            }
        }
    free(data);
}
