/* Our Huffman-only DEFLATE (kernels/huff_core.h) on the host: what the
 * reference encoder writes (the GPU encoder writes the same bytes) is
 * standard raw DEFLATE that zlib (windowBits -15), libdeflate (the CPU
 * codec's decoder) and inflate_core.h all read back byte-exact; the
 * indexed decoder (the GPU decoder's steps, serially) agrees; codes stay
 * within 15 bits (7 for the code-length code) and complete; a tampered
 * index (moved, swapped, out of range entries) or a damaged stream is
 * refused, never read or written outside its buffers (ASan, make SAN=1). */
#include <criterion/criterion.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/huff_core.h"
#include "inflate_gen.h"

static struct kvtc__inflate_ws ws;
static struct kvtc__hcode hc;
static struct kvtc__hc_ws hw;
static struct kvtc__hd_table tab;

struct enc {
    uint8_t *cmp;   /* padded to 4 (exact heap size for ASan) */
    uint32_t len;
    uint8_t *idx;   /* u16 LE entries as the container holds them */
    uint32_t S;
};

static struct enc encode(const uint8_t *src, uint32_t n, uint32_t log2)
{
    struct enc e;
    uint8_t *buf = malloc(KVTC_HC_MAX_OUT);
    uint16_t *ix = malloc(sizeof *ix * kvtc__hc_subranges(n, log2));
    e.len = kvtc__hc_encode_ref(src, n, log2, buf, ix, &hc, &hw);
    cr_assert(e.len > 0 && e.len <= KVTC_HC_MAX_OUT);
    e.cmp = ig_padded(buf, e.len);
    e.S = kvtc__hc_subranges(n, log2);
    e.idx = malloc(2 * e.S);
    for (uint32_t k = 0; k < e.S; k++)
        e.idx[2 * k] = (uint8_t)ix[k], e.idx[2 * k + 1] = (uint8_t)(ix[k] >> 8);
    free(buf);
    free(ix);
    return e;
}

static int indexed(const struct enc *e, uint32_t log2, uint8_t *out, uint32_t n)
{
    uint8_t *dst = malloc(n);
    int rc = kvtc__hd_piece(e->cmp, e->len, e->idx, log2, dst, n, &ws, &tab);
    if (!rc)
        memcpy(out, dst, n);
    free(dst);
    return rc;
}

static void check_all_decoders(const uint8_t *data, uint32_t n, uint32_t log2, const char *what)
{
    struct enc e = encode(data, n, log2);
    uint8_t *out = malloc(n + 1);
    /* zlib */
    cr_assert_eq(ig_ref(e.cmp, e.len, out, n), 0, "%s n %u: zlib refuses", what, n);
    cr_assert(!memcmp(out, data, n), "%s n %u: zlib bytes differ", what, n);
    /* libdeflate, exact size */
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    size_t got = 0;
    cr_assert_eq(libdeflate_deflate_decompress(d, e.cmp, e.len, out, n, &got), LIBDEFLATE_SUCCESS,
                 "%s n %u: libdeflate refuses", what, n);
    cr_assert(got == n && !memcmp(out, data, n), "%s n %u: libdeflate bytes differ", what, n);
    libdeflate_free_decompressor(d);
    /* our serial inflate (the GPU's fallback) */
    uint8_t *dst = malloc(n);
    cr_assert_eq(kvtc__inflate(e.cmp, e.len, dst, n, &ws, NULL), 0, "%s n %u: inflate_core", what,
                 n);
    cr_assert(!memcmp(dst, data, n));
    free(dst);
    /* the indexed decoder */
    cr_assert_eq(indexed(&e, log2, out, n), 0, "%s n %u log2 %u: indexed decode", what, n, log2);
    cr_assert(!memcmp(out, data, n), "%s n %u: indexed bytes differ", what, n);
    free(out);
    free(e.cmp);
    free(e.idx);
}

static const uint32_t sizes[] = {1, 2, 3, 7, 8, 9, 255, 256, 257, 1000, 1023, 1024, 1025, 4095,
                                 4097, 30000, 65535, 65536};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

Test(huff_core, every_kind_size_and_index_granularity_reads_back_everywhere)
{
    uint8_t *data = malloc(65536);
    uint64_t seed = 7;
    for (int kind = 0; kind < IG_N_KINDS; kind++)
        for (size_t si = 0; si < N_SIZES; si++)
            for (uint32_t log2 = KVTC_HC_LOG2_MIN; log2 <= KVTC_HC_LOG2_MAX; log2 += 2) {
                ig_data(data, sizes[si], kind, &seed);
                check_all_decoders(data, sizes[si], log2, "kind");
            }
    free(data);
}

Test(huff_core, single_symbol_uniform_and_two_symbol_pieces)
{
    uint8_t *data = malloc(65536);
    for (uint32_t n = 1; n <= 65536; n = n * 4 + 1) {
        memset(data, 0x5a, n);
        check_all_decoders(data, n, 10, "single");
        for (uint32_t i = 0; i < n; i++)
            data[i] = (uint8_t)(i * 2654435761u >> 13); /* ~uniform: stored */
        check_all_decoders(data, n, 10, "uniform");
        for (uint32_t i = 0; i < n; i++)
            data[i] = i % 3 ? 0 : 255;
        check_all_decoders(data, n, 9, "two");
    }
    memset(data, 0, 65536);
    check_all_decoders(data, 65536, 12, "zeros64k");
    for (uint32_t i = 0; i < 65536; i++)
        data[i] = (uint8_t)i;
    check_all_decoders(data, 65536, 8, "ramp64k"); /* stored, two blocks */
    struct enc e = encode(data, 65536, 8);
    cr_assert_eq(e.len, 65536 + 10, "a full incompressible piece: two stored blocks");
    free(e.cmp);
    free(e.idx);
    free(data);
}

/* The cost (sum of freq x length) of an optimal code without a length
 * limit, and its longest code: Huffman's merges of the two lightest, by
 * selection (n <= 257: quadratic is fine). */
static uint64_t huffman_cost(const uint32_t *freq, uint32_t n, uint32_t *depth)
{
    uint64_t w[KVTC_HC_SYMS], cost = 0;
    uint32_t d[KVTC_HC_SYMS], alive = n;
    for (uint32_t i = 0; i < n; i++)
        w[i] = freq[i], d[i] = 0;
    while (alive > 1) {
        uint32_t a = UINT32_MAX, b = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++) {
            if (w[i] == UINT64_MAX)
                continue;
            if (a == UINT32_MAX || w[i] < w[a])
                b = a, a = i;
            else if (b == UINT32_MAX || w[i] < w[b])
                b = i;
        }
        cost += w[a] + w[b];
        w[a] += w[b], w[b] = UINT64_MAX;
        d[a] = (d[a] > d[b] ? d[a] : d[b]) + 1;
        alive--;
    }
    for (uint32_t i = 0; i < n; i++)
        if (w[i] != UINT64_MAX)
            *depth = d[i];
    return cost;
}

/* Lengths are complete codes within their limits, on frequencies that
 * push them (Fibonacci counts) and on random ones, and optimal: where an
 * unlimited Huffman code fits the limit, they cost exactly what it does,
 * and never less than it. */
Test(huff_core, lengths_limited_complete_and_optimal)
{
    uint32_t freq[KVTC_HC_SYMS];
    uint16_t sorted[KVTC_HC_SYMS];
    uint8_t len[KVTC_HC_SYMS];
    static struct kvtc__hc_pm pm;
    uint32_t fits = 0;
    uint64_t seed = 3;
    for (int trial = 0; trial < 400; trial++) {
        uint32_t n = 2 + (uint32_t)(ig_rand(&seed) % 256), limit = trial & 1 ? 15 : 7;
        if (limit == 7 && n > 19)
            n = 19;
        uint32_t a = 1, b = 1;
        for (uint32_t s = 0; s < n; s++) {
            if (trial % 3 == 0) {
                freq[s] = a; /* Fibonacci, capped so the sum stays < 2^31 */
                uint32_t c = a + b < (1u << 22) ? a + b : 1u << 22;
                a = b, b = c;
            } else {
                freq[s] = 1 + (uint32_t)(ig_rand(&seed) % (trial % 3 == 1 ? 3 : 100000));
            }
        }
        memset(len, 0, sizeof len);
        uint32_t m = kvtc__hc_sort(freq, n, sorted);
        cr_assert_eq(m, n);
        for (uint32_t i = 1; i < m; i++)
            cr_assert(freq[sorted[i - 1]] < freq[sorted[i]] ||
                      (freq[sorted[i - 1]] == freq[sorted[i]] && sorted[i - 1] < sorted[i]));
        kvtc__hc_lengths(freq, sorted, m, limit, len, &pm);
        uint64_t kraft = 0, cost = 0;
        for (uint32_t s = 0; s < n; s++) {
            cr_assert(len[s] >= 1 && len[s] <= limit, "trial %d: len %u", trial, len[s]);
            kraft += 1ull << (limit - len[s]);
            cost += (uint64_t)freq[s] * len[s];
        }
        cr_assert_eq(kraft, 1ull << limit, "trial %d: incomplete or over-subscribed", trial);
        uint32_t depth = 0;
        uint64_t best = huffman_cost(freq, n, &depth);
        cr_assert(cost >= best, "trial %d: cost %llu below Huffman's %llu", trial,
                  (unsigned long long)cost, (unsigned long long)best);
        if (depth <= limit) {
            fits++;
            cr_assert_eq(cost, best, "trial %d: cost %llu, Huffman's %llu (depth %u)", trial,
                         (unsigned long long)cost, (unsigned long long)best, depth);
        }
    }
    cr_assert(fits > 100 && fits < 400, "both kinds of trial ran (%u fit the limit)", fits);
}

/* Counts 1, 1, 2, 4, ..., 32768 need 17-bit codes unlimited: the block
 * still reads back, with the longest literal code exactly 15 bits. */
Test(huff_core, doubling_counts_use_fifteen_bit_codes)
{
    uint8_t *data = malloc(65536);
    uint32_t at = 0;
    data[at++] = 200;
    for (uint32_t k = 0; k < 16; k++)
        for (uint32_t c = 0; c < (1u << k); c++)
            data[at++] = (uint8_t)(k * 11 + 1);
    cr_assert_eq(at, 65536);
    struct enc e = encode(data, 65536, 10);
    uint32_t maxl = 0;
    for (uint32_t s = 0; s < KVTC_HC_SYMS; s++)
        maxl = hc.len[s] > maxl ? hc.len[s] : maxl;
    cr_assert_eq(maxl, 15);
    struct kvtc__inflate_stats st;
    uint8_t *dst = malloc(65536);
    cr_assert_eq(kvtc__inflate(e.cmp, e.len, dst, 65536, &ws, &st), 0);
    cr_assert(st.dynamic == 1 && st.stored == 0 && st.matches == 0 && st.max_code_len == 15,
              "dyn %u stored %u matches %u max %u", st.dynamic, st.stored, st.matches,
              st.max_code_len);
    cr_assert(!memcmp(dst, data, 65536));
    free(dst);
    free(e.cmp);
    free(e.idx);
    free(data);
}

static void set_entry(uint8_t *idx, uint32_t k, uint32_t v)
{
    idx[2 * k] = (uint8_t)v, idx[2 * k + 1] = (uint8_t)(v >> 8);
}

/* Every single change of the index is refused: a sub-range then ends
 * somewhere other than where the next starts (or the end-of-block is not
 * where the last one ends). */
Test(huff_core, tampered_index_refused)
{
    uint8_t *data = malloc(65536), *out = malloc(65536);
    uint64_t seed = 5;
    for (int kind = IG_QUANT; kind <= IG_FIB; kind++) {
        ig_data(data, 50000, kind, &seed);
        struct enc e = encode(data, 50000, 10);
        cr_assert_eq(indexed(&e, 10, out, 50000), 0);
        for (uint32_t k = 0; k < e.S; k++) {
            uint32_t v = kvtc__hd_entry(e.idx, k);
            const uint32_t moved[] = {v + 1, v - 1, v + 8, 0, 65535, v ^ 0x100};
            for (size_t j = 0; j < sizeof moved / sizeof moved[0]; j++) {
                set_entry(e.idx, k, moved[j] & 0xffff);
                cr_assert_neq(indexed(&e, 10, out, 50000), 0, "kind %d k %u -> %u", kind, k,
                              moved[j] & 0xffff);
            }
            set_entry(e.idx, k, v);
            if (k + 1 < e.S && kvtc__hd_entry(e.idx, k + 1) != v) { /* swapped */
                uint32_t w = kvtc__hd_entry(e.idx, k + 1);
                set_entry(e.idx, k, w), set_entry(e.idx, k + 1, v);
                cr_assert_neq(indexed(&e, 10, out, 50000), 0);
                set_entry(e.idx, k, v), set_entry(e.idx, k + 1, w);
            }
        }
        /* a wrong granularity or a wrong symbol count (other S) */
        cr_assert_neq(indexed(&e, 9, out, 50000), 0);
        cr_assert_neq(indexed(&e, 10, out, 49999), 0);
        cr_assert_eq(indexed(&e, 10, out, 50000), 0);
        free(e.cmp);
        free(e.idx);
    }
    /* stored pieces take only zero entries */
    for (uint32_t i = 0; i < 5000; i++)
        data[i] = (uint8_t)(i * 2654435761u >> 11);
    struct enc e = encode(data, 5000, 8);
    cr_assert_eq(indexed(&e, 8, out, 5000), 0);
    set_entry(e.idx, 3, 1);
    cr_assert_neq(indexed(&e, 8, out, 5000), 0);
    free(e.cmp);
    free(e.idx);
    free(out);
    free(data);
}

/* Damaged streams: any verdict, but never outside the buffers; a
 * truncated or extended stream, and non-zero padding, are refused. */
Test(huff_core, damaged_streams_stay_in_bounds)
{
    uint8_t *data = malloc(65536), *out = malloc(65536);
    uint64_t seed = 9;
    ig_data(data, 20000, IG_QUANT, &seed);
    struct enc e = encode(data, 20000, 10);
    for (int t = 0; t < 3000; t++) {
        uint32_t bit = (uint32_t)(ig_rand(&seed) % (e.len * 8));
        e.cmp[bit >> 3] ^= (uint8_t)(1u << (bit & 7));
        (void)indexed(&e, 10, out, 20000);
        e.cmp[bit >> 3] ^= (uint8_t)(1u << (bit & 7));
    }
    cr_assert_eq(indexed(&e, 10, out, 20000), 0);
    uint32_t len = e.len;
    e.len = len - 1;
    cr_assert_neq(indexed(&e, 10, out, 20000), 0);
    e.len = len;
    /* padding bits after the end-of-block must be zero */
    struct kvtc__inflate_ws w2;
    uint32_t start;
    cr_assert_eq(kvtc__hd_setup(e.cmp, e.len, &w2, &start), 0);
    uint8_t last = e.cmp[len - 1];
    e.cmp[len - 1] |= 0x80;
    if (e.cmp[len - 1] != last)
        cr_assert_neq(indexed(&e, 10, out, 20000), 0, "non-zero padding accepted");
    e.cmp[len - 1] = last;
    free(e.cmp);
    free(e.idx);
    free(out);
    free(data);
}
