/* Container version 2 (docs/container.md): the GPU's own Huffman pieces
 * with their sub-range index at the end of the table section. Built here
 * from a CPU (version 1) container by re-coding its pieces with the
 * reference encoder (kernels/huff_core.h, the bytes the GPU writes): the
 * CPU decoder reads it to the same chunk, checks the index's shape and
 * otherwise ignores it; every damage is an error code, never a crash or a
 * stray access (ASan); version 1 still reads. */
#include <criterion/criterion.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kvtc_codec.h"
#include "../../codec/container.h"
#include "../../kernels/huff_core.h"
#include "../fuzz/repair.h"
#include "../fuzz/synth.h"

static kvtc_profile *g_prof;
static kvtc_decoder *g_dec;
static uint8_t *g_chunk, *g_v1;
static size_t g_raw, g_v1_len;
static const uint32_t n_tok = 4096, first = 64;

static void setup(void)
{
    cr_assert_eq(kvtc_synth_fuzz_profile(&g_prof), 0);
    cr_assert_eq(kvtc_decoder_create(g_prof, &g_dec), 0);
    const kvtc_layout *l = kvtc_profile_layout(g_prof);
    g_raw = kvtc_chunk_bytes(l, n_tok);
    g_chunk = malloc(g_raw);
    cr_assert_eq(kvtc_synth_chunk(l, n_tok, first, 99, g_chunk), 0);
    kvtc_encoder *enc = NULL;
    cr_assert_eq(kvtc_encoder_create(g_prof, 0, KVTC_STAGE_DEFLATE, 0, &enc), 0);
    size_t cap = kvtc_encode_bound(enc, n_tok);
    g_v1 = malloc(cap);
    kvtc_chunk ch = {g_chunk, n_tok, first, 0};
    cr_assert_eq(kvtc_encode(enc, &ch, g_v1, cap, &g_v1_len), 0);
    kvtc_encoder_free(enc);
}

static void teardown(void)
{
    free(g_chunk);
    free(g_v1);
    kvtc_decoder_free(g_dec);
    kvtc_profile_free(g_prof);
}

TestSuite(container_v2, .init = setup, .fini = teardown, .timeout = 120);

static struct kvtc__hcode hc;
static struct kvtc__hc_ws hw;

/* The v1 container's pieces inflated and re-coded by our encoder, with
 * the index; *npieces / *hdr for the tests. */
static uint8_t *make_v2(uint32_t log2, size_t *out_len, struct kvtc__header *hdr)
{
    struct kvtc__header h;
    cr_assert_eq(kvtc__container_parse(g_v1, g_v1_len, &h), 0);
    cr_assert_geq(h.n_pieces, 2);
    const uint8_t *raw = g_v1 + KVTC__HEADER_BYTES, *table = raw + h.raw_bytes;
    const uint8_t *pay = table + h.table_bytes;
    uint8_t *sym = malloc(h.symbol_bytes);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    uint64_t at = 0;
    for (uint32_t i = 0; i < h.n_pieces; i++) {
        uint32_t c = table[4 * i] | table[4 * i + 1] << 8 | table[4 * i + 2] << 16 |
                     (uint32_t)table[4 * i + 3] << 24;
        size_t n = h.symbol_bytes - (uint64_t)i * 65536 < 65536 ? h.symbol_bytes - i * 65536ull
                                                                 : 65536;
        cr_assert_eq(libdeflate_deflate_decompress(d, pay, c, sym + (size_t)i * 65536, n, NULL),
                     LIBDEFLATE_SUCCESS);
        pay += c;
        at += c;
    }
    libdeflate_free_decompressor(d);
    uint64_t entries = kvtc__index_entries(h.symbol_bytes, log2);
    size_t tb = 4ull * h.n_pieces + 2 * entries;
    size_t cap = KVTC__HEADER_BYTES + h.raw_bytes + tb + (size_t)h.n_pieces * KVTC_HC_MAX_OUT;
    uint8_t *out = calloc(1, cap), *piece = malloc(KVTC_HC_MAX_OUT + 4);
    uint16_t *ix = malloc(2 * (65536 >> log2));
    memcpy(out + KVTC__HEADER_BYTES, raw, h.raw_bytes);
    uint8_t *t2 = out + KVTC__HEADER_BYTES + h.raw_bytes, *i2 = t2 + 4ull * h.n_pieces;
    uint8_t *p2 = t2 + tb;
    uint64_t payload = 0;
    for (uint32_t i = 0; i < h.n_pieces; i++) {
        uint32_t n = (uint32_t)(h.symbol_bytes - i * 65536ull < 65536 ? h.symbol_bytes - i * 65536ull
                                                                      : 65536);
        uint32_t c = kvtc__hc_encode_ref(sym + (size_t)i * 65536, n, log2, piece, ix, &hc, &hw);
        for (int b = 0; b < 4; b++)
            t2[4 * i + b] = (uint8_t)(c >> (8 * b));
        for (uint32_t k = 0; k < kvtc__hc_subranges(n, log2); k++)
            *i2++ = (uint8_t)ix[k], *i2++ = (uint8_t)(ix[k] >> 8);
        memcpy(p2 + payload, piece, c);
        payload += c;
    }
    cr_assert_eq(i2, t2 + tb);
    h.index_log2 = log2;
    h.table_bytes = tb;
    h.payload_bytes = payload;
    h.table_sum = XXH3_64bits(t2, tb);
    h.payload_sum = XXH3_64bits(p2, payload);
    kvtc__header_write(&h, out);
    *out_len = KVTC__HEADER_BYTES + h.raw_bytes + tb + payload;
    if (hdr)
        *hdr = h;
    free(sym);
    free(piece);
    free(ix);
    uint8_t *exact = malloc(*out_len); /* exact size: ASan sees over-reads */
    memcpy(exact, out, *out_len);
    free(out);
    return exact;
}

static int decode(const uint8_t *c, size_t len, uint8_t *dst)
{
    return kvtc_decode(g_dec, c, len, dst, g_raw, NULL);
}

Test(container_v2, decodes_like_version_1)
{
    uint8_t *ref = malloc(g_raw), *got = malloc(g_raw);
    cr_assert_eq(decode(g_v1, g_v1_len, ref), 0);
    kvtc_container_info info;
    cr_assert_eq(kvtc_inspect(g_v1, g_v1_len, &info), 0);
    cr_assert_eq(info.version, 1);
    for (uint32_t log2 = KVTC__INDEX_LOG2_MIN; log2 <= KVTC__INDEX_LOG2_MAX; log2++) {
        size_t len;
        uint8_t *v2 = make_v2(log2, &len, NULL);
        cr_assert_eq(kvtc_inspect(v2, len, &info), 0);
        cr_assert_eq(info.version, 2);
        memset(got, 0xa5, g_raw);
        cr_assert_eq(decode(v2, len, got), 0, "log2 %u", log2);
        cr_assert(!memcmp(got, ref, g_raw), "log2 %u: other bytes than v1", log2);
        free(v2);
    }
    free(ref);
    free(got);
}

static void rewrite(uint8_t *c, size_t len, const struct kvtc__header *h)
{
    kvtc__header_write(h, c);
    repair_checksums(c, len);
}

Test(container_v2, header_lies_refused)
{
    size_t len;
    struct kvtc__header h0;
    uint8_t *v2 = make_v2(10, &len, &h0), *bad = malloc(len), *out = malloc(g_raw);
    struct kvtc__header h;
    /* granularity out of range, or another one (index of another size) */
    const uint32_t logs[] = {7, 13, 255, 9, 11};
    for (size_t i = 0; i < sizeof logs / sizeof logs[0]; i++) {
        memcpy(bad, v2, len);
        h = h0;
        h.index_log2 = logs[i];
        rewrite(bad, len, &h);
        cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT, "log2 %u", logs[i]);
    }
    /* version 2 only for DEFLATE pieces of a coded chunk */
    for (uint32_t st = KVTC_STAGE_ZSTD; st <= KVTC_STAGE_STORE; st++) {
        memcpy(bad, v2, len);
        h = h0;
        h.stage = st;
        rewrite(bad, len, &h);
        cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT);
    }
    /* the index left out (a v1 table in a v2 header), at both lengths */
    memcpy(bad, v2, len);
    h = h0;
    h.table_bytes = 4ull * h.n_pieces;
    rewrite(bad, len, &h);
    cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT);
    /* a version 1 header over version 2 sections */
    memcpy(bad, v2, len);
    h = h0;
    h.index_log2 = 0;
    rewrite(bad, len, &h);
    cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT);
    /* unknown versions, high byte of the granularity */
    memcpy(bad, v2, len);
    bad[4] = 3;
    repair_checksums(bad, len);
    cr_assert_eq(decode(bad, len, out), KVTC_EVERSION);
    memcpy(bad, v2, len);
    bad[11] = 1;
    repair_checksums(bad, len);
    cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT);
    memcpy(bad, v2, len);
    cr_assert_eq(decode(bad, len, out), 0);
    free(v2);
    free(bad);
    free(out);
}

/* The index is covered by the table's checksum; behind a repaired one its
 * shape is checked (entries of a piece sum to 0, or to at least a bit per
 * symbol and at most the piece's bits) and otherwise ignored. */
Test(container_v2, index_damage)
{
    size_t len;
    struct kvtc__header h;
    uint8_t *v2 = make_v2(10, &len, &h), *bad = malloc(len), *out = malloc(g_raw);
    uint8_t *ref = malloc(g_raw);
    cr_assert_eq(decode(g_v1, g_v1_len, ref), 0);
    size_t i0 = KVTC__HEADER_BYTES + h.raw_bytes + 4ull * h.n_pieces;
    for (size_t i = i0; i < i0 + 2 * kvtc__index_entries(h.symbol_bytes, 10); i++) {
        memcpy(bad, v2, len);
        bad[i] ^= 0x40;
        cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT, "index byte %zu, checksum", i - i0);
        repair_checksums(bad, len);
        int rc = decode(bad, len, out);
        cr_assert(rc == 0 || rc == KVTC_ECORRUPT, "rc %d", rc);
        if (rc == 0)
            cr_assert(!memcmp(out, ref, g_raw), "an index change altered the output");
    }
    /* a piece's entries summing past its bits */
    memcpy(bad, v2, len);
    bad[i0 + 1] = 0xff;
    repair_checksums(bad, len);
    cr_assert_eq(decode(bad, len, out), KVTC_ECORRUPT);
    free(v2);
    free(bad);
    free(out);
    free(ref);
}

/* Every byte flipped with checksums repaired: an error code or a decode,
 * never a crash or a stray access. */
Test(container_v2, flipped_with_checksums_repaired)
{
    size_t len;
    uint8_t *v2 = make_v2(9, &len, NULL), *bad = malloc(len), *out = malloc(g_raw);
    for (size_t i = 0; i < len; i += (i < 1024 ? 1 : 211)) {
        memcpy(bad, v2, len);
        bad[i] ^= 0xff;
        repair_checksums(bad, len);
        int rc = decode(bad, len, out);
        cr_assert(rc == 0 || (rc < 0 && rc >= KVTC_EEXIST), "byte %zu: rc %d", i, rc);
    }
    free(v2);
    free(bad);
    free(out);
}
