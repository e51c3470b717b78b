/* Decoder safety: every damaged container or profile is rejected with an
 * error, never a crash, a read outside the input or a write past the output.
 *
 * Inputs are real: a profile calibrated through the public API on
 * correlated synthetic rows (tests/fuzz/synth.c) and containers encoded
 * with it: transform coded with sink tokens (first_pos 0) and without, raw
 * (KVTC_CHUNK_RAW), each through the DEFLATE, zstd and STORE stages. Each
 * damaged copy is decoded from an exact-size heap allocation (so ASan sees
 * any over-read) into an output buffer followed by a poisoned guard zone
 * (so a write past dst_cap shows even where ASan would not look).
 *
 * Checksums stop almost every random change, so the second half of this
 * file recomputes them after damaging a container (tests/fuzz/repair.h),
 * and forges headers field by field: what remains must be caught by the
 * decoder's size, table, profile and stream checks. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvtc_codec.h"
#include "../../codec/container.h" /* to forge headers with valid checksums */
#include "../fuzz/repair.h"
#include "../fuzz/synth.h"

#define GUARD 256
#define POISON 0xA5
#define N_STAGES 3

enum { C_SINKS, C_KVTC, C_RAW, N_KINDS };
static const char *kind_name[N_KINDS] = { "kvtc+sinks", "kvtc", "raw" };

struct container {
    uint8_t *bytes;
    size_t len;
    uint8_t *chunk; /* what was encoded */
    size_t raw_len;
    uint32_t n_tokens, first_pos;
};

static kvtc_profile *g_prof;
static kvtc_decoder *g_dec;
static struct container g_c[N_STAGES][N_KINDS];

static int is_error(int rc)
{
    return rc < 0 && rc >= KVTC_EEXIST;
}

static void *dup_exact(const void *src, size_t len)
{
    /* malloc(0) may return NULL; the decoder still needs a valid pointer. */
    void *p = malloc(len ? len : 1);
    cr_assert_not_null(p);
    if (len)
        memcpy(p, src, len);
    return p;
}

static void build(void)
{
    cr_assert_eq(kvtc_synth_fuzz_profile(&g_prof), 0);
    cr_assert_eq(kvtc_decoder_create(g_prof, &g_dec), 0);
    const kvtc_layout *l = kvtc_profile_layout(g_prof);
    for (uint32_t s = 0; s < N_STAGES; s++) {
        kvtc_encoder *enc = NULL;
        cr_assert_eq(kvtc_encoder_create(g_prof, 0, s, 0, &enc), 0, "stage %u", s);
        for (int k = 0; k < N_KINDS; k++) {
            struct container *c = &g_c[s][k];
            c->n_tokens = l->chunk_tokens;
            c->first_pos = k == C_SINKS ? 0 : 32;
            c->raw_len = kvtc_chunk_bytes(l, c->n_tokens);
            c->chunk = malloc(c->raw_len);
            size_t cap = kvtc_encode_bound(enc, c->n_tokens);
            c->bytes = malloc(cap);
            cr_assert(c->chunk && c->bytes);
            cr_assert_eq(kvtc_synth_chunk(l, c->n_tokens, c->first_pos, 11 + k, c->chunk), 0);
            kvtc_chunk ch = { c->chunk, c->n_tokens, c->first_pos,
                              k == C_RAW ? KVTC_CHUNK_RAW : 0 };
            cr_assert_eq(kvtc_encode(enc, &ch, c->bytes, cap, &c->len), 0,
                         "encode %s stage %u", kind_name[k], s);
            cr_assert(c->len > 0 && c->len <= cap);
        }
        kvtc_encoder_free(enc);
    }
}

static void teardown(void)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            free(g_c[s][k].bytes);
            free(g_c[s][k].chunk);
        }
    kvtc_decoder_free(g_dec);
    kvtc_profile_free(g_prof);
}

/* Decode src[0..len) with dec into a poisoned buffer of dst_cap usable
 * bytes; returns the decoder's code after checking the guard zone. */
static int decode_guarded(kvtc_decoder *dec, const void *src, size_t len,
                          size_t dst_cap, uint8_t *out_copy)
{
    void *in = dup_exact(src, len);
    uint8_t *dst = malloc(dst_cap + GUARD);
    cr_assert_not_null(dst);
    memset(dst, POISON, dst_cap + GUARD);
    int rc = kvtc_decode(dec, in, len, dst, dst_cap, NULL);
    for (size_t i = dst_cap; i < dst_cap + GUARD; i++)
        cr_assert_eq(dst[i], POISON, "decoder wrote %zu bytes past dst_cap %zu",
                     i - dst_cap + 1, dst_cap);
    if (out_copy && rc == 0)
        memcpy(out_copy, dst, dst_cap);
    free(dst);
    free(in);
    return rc;
}

static int inspect_exact(const void *src, size_t len)
{
    void *in = dup_exact(src, len);
    kvtc_container_info info;
    int rc = kvtc_inspect(in, len, &info);
    free(in);
    return rc;
}

/* A damaged container: both entry points must say so with an error code. */
static void expect_reject(const struct container *c, const uint8_t *bad,
                          size_t len, const char *what, size_t where)
{
    int ri = inspect_exact(bad, len);
    cr_assert(is_error(ri), "inspect accepted (%d) %s at %zu (len %zu of %zu)",
              ri, what, where, len, c->len);
    int rd = decode_guarded(g_dec, bad, len, c->raw_len, NULL);
    cr_assert(is_error(rd), "decode accepted (%d) %s at %zu (len %zu of %zu)",
              rd, what, where, len, c->len);
}

/* Behind valid checksums, inspect (no profile, no decompression) cannot see
 * every lie: a symbol size that does not match the plan, or a DEFLATE piece
 * boundary moved. Decode must. */
static void expect_decode_reject(const struct container *c, const uint8_t *bad,
                                 size_t len, const char *what, size_t where)
{
    int ri = inspect_exact(bad, len);
    cr_assert(ri == 0 || is_error(ri), "inspect returned %d", ri);
    int rd = decode_guarded(g_dec, bad, len, c->raw_len, NULL);
    cr_assert(is_error(rd), "decode accepted (%d) %s at %zu (len %zu of %zu)",
              rd, what, where, len, c->len);
}

TestSuite(corruption, .init = build, .fini = teardown, .timeout = 120);

/* Positive control: the undamaged containers decode, raw ones exactly,
 * transform-coded ones with their sink tokens exact. */
Test(corruption, pristine_containers_decode)
{
    const kvtc_layout *l = kvtc_profile_layout(g_prof);
    size_t esz = kvtc_dtype_size(l->dtype);
    size_t tok_bytes = (size_t)l->kv_heads * l->head_dim * esz;
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            kvtc_container_info info;
            cr_assert_eq(kvtc_inspect(c->bytes, c->len, &info), 0);
            cr_assert_eq(info.container_bytes, c->len);
            cr_assert_eq(info.raw_bytes, c->raw_len);
            cr_assert_eq(info.n_tokens, c->n_tokens);
            cr_assert_eq(info.first_pos, c->first_pos);
            if (k != C_RAW) /* raw containers have no pieces, so no stage */
                cr_assert_eq(info.stage, s);
            cr_assert_eq(info.mode, k == C_RAW ? 1u : 0u);
            uint8_t *out = malloc(c->raw_len);
            cr_assert_eq(decode_guarded(g_dec, c->bytes, c->len, c->raw_len, out), 0,
                         "%s stage %u", kind_name[k], s);
            if (k == C_RAW) {
                cr_assert_eq(memcmp(out, c->chunk, c->raw_len), 0);
            } else if (k == C_SINKS) {
                cr_assert_eq(info.sink_tokens, KVTC_SINK_TOKENS);
                /* Sinks of every [layer][k|v] block come back bit-exact. */
                for (uint32_t b = 0; b < 2 * l->layers; b++) {
                    size_t off = (size_t)b * c->n_tokens * tok_bytes;
                    cr_assert_eq(memcmp(out + off, c->chunk + off,
                                        KVTC_SINK_TOKENS * tok_bytes), 0, "block %u", b);
                }
            } else {
                cr_assert_eq(info.sink_tokens, 0);
            }
            free(out);
        }
}

Test(corruption, every_byte_flipped)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *bad = dup_exact(c->bytes, c->len);
            for (size_t i = 0; i < c->len; i++) {
                bad[i] ^= 0xFF;
                expect_reject(c, bad, c->len, "byte flip", i);
                bad[i] ^= 0xFF;
            }
            free(bad);
        }
}

/* One bit per byte, the bit position rotating, so every byte and every bit
 * position of the header is hit across the containers. */
Test(corruption, single_bits_flipped)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *bad = dup_exact(c->bytes, c->len);
            for (size_t i = 0; i < c->len; i++) {
                uint8_t bit = (uint8_t)(1u << ((i + s + (size_t)k) % 8));
                bad[i] ^= bit;
                expect_reject(c, bad, c->len, "bit flip", i);
                bad[i] ^= bit;
            }
            free(bad);
        }
}

Test(corruption, truncated_at_every_length)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            for (size_t n = 0; n < c->len; n++)
                expect_reject(c, c->bytes, n, "truncation", n);
        }
}

/* The header names the container's size: bytes after it are damage (a
 * store that concatenated two records), not something to ignore. */
Test(corruption, trailing_garbage)
{
    static const size_t extra[] = { 1, 3, 8, 64, 4096 };
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            for (size_t e = 0; e < sizeof extra / sizeof extra[0]; e++) {
                size_t n = c->len + extra[e];
                uint8_t *big = malloc(n);
                cr_assert_not_null(big);
                memcpy(big, c->bytes, c->len);
                for (size_t i = c->len; i < n; i++)
                    big[i] = (uint8_t)(i * 37 + 1);
                expect_reject(c, big, n, "trailing garbage", extra[e]);
                /* A second copy of itself appended is the subtle case. */
                if (extra[e] == 4096 && n >= 2 * c->len) {
                    memcpy(big + c->len, c->bytes, c->len);
                    expect_reject(c, big, 2 * c->len, "doubled container", c->len);
                }
                free(big);
            }
        }
}

/* Every 32- and 64-bit field position of the header, overwritten with the
 * values a size bug would produce. The checksums must catch them all;
 * test_corruption's checksum-repairing cases below go further. */
Test(corruption, header_words_overwritten)
{
    static const uint64_t vals[] = { 0, 1, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu,
                                     0xFFFFFFFFFFFFFFFFull, 0x100000000ull };
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            size_t hdr = c->len < 128 ? c->len : 128;
            uint8_t *bad = dup_exact(c->bytes, c->len);
            for (size_t off = 0; off + 4 <= hdr; off += 4) {
                for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++) {
                    size_t w = vals[v] > 0xFFFFFFFFu ? 8 : 4;
                    if (off + w > c->len)
                        continue;
                    uint8_t le[8];
                    for (size_t b = 0; b < 8; b++)
                        le[b] = (uint8_t)(vals[v] >> (8 * b));
                    if (memcmp(bad + off, le, w) == 0)
                        continue; /* not a change */
                    memcpy(bad + off, le, w);
                    expect_reject(c, bad, c->len, "header word", off);
                    memcpy(bad + off, c->bytes + off, w);
                }
                /* Off by one, both ways, as a u32. */
                for (int d = -1; d <= 1; d += 2) {
                    uint32_t x;
                    memcpy(&x, bad + off, 4);
                    x += (uint32_t)d;
                    memcpy(bad + off, &x, 4);
                    expect_reject(c, bad, c->len, "header word +-1", off);
                    memcpy(bad + off, c->bytes + off, 4);
                }
            }
            free(bad);
        }
}

Test(corruption, output_buffer_too_small)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            static const size_t less[] = { 1, 2, 7, 64 };
            for (size_t i = 0; i < sizeof less / sizeof less[0]; i++) {
                if (less[i] > c->raw_len)
                    continue;
                int rc = decode_guarded(g_dec, c->bytes, c->len,
                                        c->raw_len - less[i], NULL);
                cr_assert_eq(rc, KVTC_ENOSPC, "%s stage %u cap-%zu: %d",
                             kind_name[k], s, less[i], rc);
            }
            cr_assert_eq(decode_guarded(g_dec, c->bytes, c->len, 0, NULL), KVTC_ENOSPC);
        }
}

/* A decoder for another profile of the same layout must refuse transform
 * coded containers (their coefficients mean nothing in another basis), and
 * a profile-less decoder too; raw containers need no profile. */
Test(corruption, wrong_profile)
{
    const kvtc_layout *l = kvtc_profile_layout(g_prof);
    static const float targets[] = { 4.0f, 8.0f };
    kvtc_profile *other = NULL;
    kvtc_decoder *dec_other = NULL, *dec_none = NULL;
    cr_assert_eq(kvtc_synth_profile(l, 24, targets, 2, &other), 0);
    cr_assert_neq(kvtc_profile_id(other), kvtc_profile_id(g_prof));
    cr_assert_eq(kvtc_decoder_create(other, &dec_other), 0);
    cr_assert_eq(kvtc_decoder_create(NULL, &dec_none), 0);
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            int want = k == C_RAW ? 0 : KVTC_EPROFILE;
            cr_assert_eq(decode_guarded(dec_other, c->bytes, c->len, c->raw_len, NULL),
                         want, "%s stage %u, other profile", kind_name[k], s);
            cr_assert_eq(decode_guarded(dec_none, c->bytes, c->len, c->raw_len, NULL),
                         want, "%s stage %u, no profile", kind_name[k], s);
        }
    kvtc_decoder_free(dec_other);
    kvtc_decoder_free(dec_none);
    kvtc_profile_free(other);
}

/* ---- profiles ---------------------------------------------------------- */

static uint8_t *saved_profile(size_t *len)
{
    *len = kvtc_profile_size(g_prof);
    cr_assert(*len > 0);
    uint8_t *buf = malloc(*len);
    cr_assert_not_null(buf);
    cr_assert_eq(kvtc_profile_save(g_prof, buf, *len), 0);
    return buf;
}

static void expect_profile_reject(const uint8_t *bad, size_t len,
                                  const char *what, size_t where)
{
    void *in = dup_exact(bad, len);
    kvtc_profile *p = NULL;
    int rc = kvtc_profile_load(in, len, &p);
    free(in);
    if (rc == 0)
        kvtc_profile_free(p);
    cr_assert(is_error(rc), "profile_load accepted (%d) %s at %zu (len %zu)",
              rc, what, where, len);
}

Test(corruption, profile_roundtrip_control)
{
    size_t len;
    uint8_t *buf = saved_profile(&len);
    void *in = dup_exact(buf, len);
    kvtc_profile *p = NULL;
    cr_assert_eq(kvtc_profile_load(in, len, &p), 0);
    cr_assert_eq(kvtc_profile_id(p), kvtc_profile_id(g_prof));
    cr_assert_eq(kvtc_profile_plan_count(p), kvtc_profile_plan_count(g_prof));
    kvtc_profile_free(p);
    free(in);
    free(buf);
}

Test(corruption, profile_every_byte_flipped)
{
    size_t len;
    uint8_t *buf = saved_profile(&len);
    for (size_t i = 0; i < len; i++) {
        buf[i] ^= 0xFF;
        expect_profile_reject(buf, len, "byte flip", i);
        buf[i] ^= 0xFF;
        uint8_t bit = (uint8_t)(1u << (i % 8));
        buf[i] ^= bit;
        expect_profile_reject(buf, len, "bit flip", i);
        buf[i] ^= bit;
    }
    free(buf);
}

Test(corruption, profile_truncated_and_grown)
{
    size_t len;
    uint8_t *buf = saved_profile(&len);
    for (size_t n = 0; n < len; n++)
        expect_profile_reject(buf, n, "truncation", n);
    uint8_t *big = malloc(len + 64);
    cr_assert_not_null(big);
    memcpy(big, buf, len);
    memset(big + len, 0, 64);
    expect_profile_reject(big, len + 1, "trailing byte", len);
    expect_profile_reject(big, len + 64, "trailing bytes", len);
    free(big);
    free(buf);
}

/* ---- damage behind valid checksums ------------------------------------- */

/* The repair helper must know the format: on a pristine container it is
 * the identity. If this fails, the container format moved and repair.h
 * (and with it the fuzzer's deep mode) must follow. */
Test(corruption, repair_is_identity_on_pristine)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *cp = dup_exact(c->bytes, c->len);
            repair_checksums(cp, c->len);
            cr_assert_eq(memcmp(cp, c->bytes, c->len), 0, "%s stage %u", kind_name[k], s);
            free(cp);
        }
}

/* Every byte flipped, checksums recomputed: some of these are legitimate
 * containers (a changed raw byte, a different first_pos), so success is
 * allowed; a crash, an over-read, a write past dst_cap or an undocumented
 * return code is not. Raw containers must then return exactly the bytes
 * they hold. */
Test(corruption, flipped_with_checksums_repaired)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *bad = dup_exact(c->bytes, c->len);
            uint8_t *out = malloc(c->raw_len);
            cr_assert_not_null(out);
            for (size_t i = 0; i < c->len; i++) {
                memcpy(bad, c->bytes, c->len);
                bad[i] ^= 0xFF;
                repair_checksums(bad, c->len);
                int ri = inspect_exact(bad, c->len);
                int rd = decode_guarded(g_dec, bad, c->len, c->raw_len, out);
                cr_assert(ri == 0 || is_error(ri), "inspect %d at %zu", ri, i);
                cr_assert(rd == 0 || is_error(rd), "decode %d at %zu", rd, i);
                /* Past the header of a raw container lie the tokens. */
                if (k == C_RAW && i >= REPAIR_HEADER && i < REPAIR_HEADER + c->raw_len) {
                    cr_assert_eq(rd, 0, "raw byte %zu changed: %d", i, rd);
                    size_t j = i - REPAIR_HEADER;
                    cr_assert_eq(out[j], (uint8_t)(c->chunk[j] ^ 0xFF));
                    cr_assert_eq(memcmp(out, c->chunk, j), 0);
                    cr_assert_eq(memcmp(out + j + 1, c->chunk + j + 1, c->raw_len - j - 1), 0);
                }
                if (rd == 0)
                    cr_assert_eq(ri, 0, "decode accepted what inspect refused at %zu", i);
            }
            free(out);
            free(bad);
        }
}

Test(corruption, truncated_and_grown_with_checksums_repaired)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *bad = malloc(c->len + 16);
            cr_assert_not_null(bad);
            for (size_t n = REPAIR_HEADER; n < c->len; n++) {
                memcpy(bad, c->bytes, n);
                repair_checksums(bad, n);
                expect_reject(c, bad, n, "repaired truncation", n);
            }
            memcpy(bad, c->bytes, c->len);
            memset(bad + c->len, 0, 16);
            repair_checksums(bad, c->len + 16);
            expect_reject(c, bad, c->len + 16, "repaired growth", c->len);
            free(bad);
        }
}

/* One lie in the header, told with a valid header checksum (and section
 * sums recomputed for the sizes it claims). */
struct lie {
    const char *what;
    void (*apply)(struct kvtc__header *h, int kind);
};

static void l_ntok_up(struct kvtc__header *h, int k) { h->n_tokens++; }
static void l_ntok_down(struct kvtc__header *h, int k) { h->n_tokens--; }
static void l_ntok_huge(struct kvtc__header *h, int k) { h->n_tokens = KVTC_MAX_CHUNK_TOKENS; }
static void l_sink_up(struct kvtc__header *h, int k) { h->sink_tokens++; }
static void l_sink_down(struct kvtc__header *h, int k) { h->sink_tokens--; }
static void l_sinks_moved(struct kvtc__header *h, int k) { h->first_pos = h->first_pos ? 0 : 4; }
static void l_pieces_up(struct kvtc__header *h, int k) { h->n_pieces++; }
static void l_pieces_down(struct kvtc__header *h, int k) { h->n_pieces--; }
static void l_raw_up(struct kvtc__header *h, int k) { h->raw_bytes++; }
static void l_raw_down(struct kvtc__header *h, int k) { h->raw_bytes--; }
static void l_table_up(struct kvtc__header *h, int k) { h->table_bytes += 4; }
static void l_payload_up(struct kvtc__header *h, int k) { h->payload_bytes++; }
static void l_payload_down(struct kvtc__header *h, int k) { h->payload_bytes--; }
static void l_sym_up(struct kvtc__header *h, int k) { h->symbol_bytes++; }
static void l_sym_down(struct kvtc__header *h, int k) { h->symbol_bytes--; }
static void l_sym_piece(struct kvtc__header *h, int k)
{
    h->symbol_bytes += KVTC_PIECE_MAX;
    h->n_pieces++;
    h->table_bytes += 4;
}
static void l_plan_1(struct kvtc__header *h, int k) { h->plan = h->plan == 1 ? 2 : 1; }
static void l_plan_bad(struct kvtc__header *h, int k) { h->plan = KVTC_MAX_PLANS + 3; }
static void l_mode(struct kvtc__header *h, int k) { h->mode ^= 1; }
static void l_stage_a(struct kvtc__header *h, int k) { h->stage = (h->stage + 1) % 3; }
static void l_stage_b(struct kvtc__header *h, int k) { h->stage = (h->stage + 2) % 3; }
static void l_id(struct kvtc__header *h, int k) { h->profile_id ^= 1; }
static void l_layers(struct kvtc__header *h, int k) { h->layout.layers++; }
static void l_heads(struct kvtc__header *h, int k) { h->layout.kv_heads++; }
static void l_hdim(struct kvtc__header *h, int k) { h->layout.head_dim += 2; }
static void l_hdim_odd(struct kvtc__header *h, int k) { h->layout.head_dim--; }
static void l_dtype_wide(struct kvtc__header *h, int k) { h->layout.dtype = KVTC_DTYPE_FP32; }
static void l_dtype_bad(struct kvtc__header *h, int k) { h->layout.dtype = 99; }
static void l_rope_bad(struct kvtc__header *h, int k) { h->layout.rope_style = 7; }

static const struct lie k_lies[] = {
    { "n_tokens+1", l_ntok_up },          { "n_tokens-1", l_ntok_down },
    { "n_tokens max", l_ntok_huge },      { "sink_tokens+1", l_sink_up },
    { "sink_tokens-1", l_sink_down },     { "sinks moved", l_sinks_moved },
    { "n_pieces+1", l_pieces_up },        { "n_pieces-1", l_pieces_down },
    { "raw_bytes+1", l_raw_up },          { "raw_bytes-1", l_raw_down },
    { "table_bytes+4", l_table_up },      { "payload_bytes+1", l_payload_up },
    { "payload_bytes-1", l_payload_down },{ "symbol_bytes+1", l_sym_up },
    { "symbol_bytes-1", l_sym_down },     { "symbol_bytes+piece", l_sym_piece },
    { "another plan", l_plan_1 },         { "plan out of range", l_plan_bad },
    { "mode toggled", l_mode },           { "stage+1", l_stage_a },
    { "stage+2", l_stage_b },             { "profile id", l_id },
    { "layers+1", l_layers },             { "kv_heads+1", l_heads },
    { "head_dim+2", l_hdim },             { "head_dim odd", l_hdim_odd },
    { "dtype fp32", l_dtype_wide },       { "dtype unknown", l_dtype_bad },
    { "rope style unknown", l_rope_bad },
};

/* A raw container holds its tokens as-is and needs no profile or stage:
 * another first_pos (RoPE is not undone for raw tokens) or another stage
 * (it has no pieces) leaves a container that is still right. */
static int lie_is_legit(const char *what, int k)
{
    return k == C_RAW && (!strcmp(what, "sinks moved") || !strncmp(what, "stage", 5));
}

Test(corruption, forged_headers)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            struct kvtc__header h0;
            cr_assert_eq(kvtc__container_parse(c->bytes, c->len, &h0), 0);
            for (size_t i = 0; i < sizeof k_lies / sizeof k_lies[0]; i++) {
                if (lie_is_legit(k_lies[i].what, k))
                    continue;
                struct kvtc__header h = h0;
                k_lies[i].apply(&h, k);
                /* The bytes are kept; only the header changes, so a lie
                 * about sizes is also a container of another length. */
                size_t n = REPAIR_HEADER + h.raw_bytes + h.table_bytes + h.payload_bytes;
                if (h.raw_bytes > (1u << 24) || h.payload_bytes > (1u << 24) ||
                    h.table_bytes > (1u << 24))
                    n = c->len;
                uint8_t *bad = calloc(1, n > c->len ? n : c->len);
                cr_assert_not_null(bad);
                memcpy(bad, c->bytes, c->len);
                kvtc__header_write(&h, bad);
                repair_checksums(bad, n);
                expect_decode_reject(c, bad, n, k_lies[i].what, i);
                /* Also at the original length. */
                if (n != c->len) {
                    memcpy(bad, c->bytes, c->len);
                    kvtc__header_write(&h, bad);
                    repair_checksums(bad, c->len);
                    expect_decode_reject(c, bad, c->len, k_lies[i].what, i);
                }
                free(bad);
            }
        }
}

/* A chunk long enough for several DEFLATE pieces: the table of piece sizes
 * is then worth lying about. */
Test(corruption, piece_table_lies)
{
    const kvtc_layout *l = kvtc_profile_layout(g_prof);
    const uint32_t n_tok = 4096;
    size_t raw = kvtc_chunk_bytes(l, n_tok);
    uint8_t *chunk = malloc(raw);
    cr_assert_not_null(chunk);
    cr_assert_eq(kvtc_synth_chunk(l, n_tok, 64, 99, chunk), 0);
    for (uint32_t s = 0; s < N_STAGES; s++) {
        kvtc_encoder *enc = NULL;
        cr_assert_eq(kvtc_encoder_create(g_prof, 0, s, 0, &enc), 0);
        size_t cap = kvtc_encode_bound(enc, n_tok), len = 0;
        uint8_t *cont = malloc(cap);
        cr_assert_not_null(cont);
        kvtc_chunk ch = { chunk, n_tok, 64, 0 };
        cr_assert_eq(kvtc_encode(enc, &ch, cont, cap, &len), 0);
        struct kvtc__header h;
        cr_assert_eq(kvtc__container_parse(cont, len, &h), 0);
        cr_assert_geq(h.n_pieces, 2, "stage %u: %u pieces", s, h.n_pieces);
        struct container c = { cont, len, chunk, raw, n_tok, 64 };
        cr_assert_eq(decode_guarded(g_dec, cont, len, raw, NULL), 0);
        uint8_t *table = cont + REPAIR_HEADER + h.raw_bytes;
        uint8_t *bad = malloc(len);
        cr_assert_not_null(bad);
        uint8_t *bt = bad + (table - cont);
        for (uint32_t p = 0; p + 1 < h.n_pieces; p++) {
            /* Move a boundary by d bytes; the sum stays right. */
            static const int32_t moves[] = { -3, -1, 1, 7 };
            for (size_t m = 0; m < sizeof moves / sizeof moves[0]; m++) {
                memcpy(bad, cont, len);
                uint32_t a, b;
                memcpy(&a, bt + 4 * p, 4);
                memcpy(&b, bt + 4 * p + 4, 4);
                a = (uint32_t)((int64_t)a + moves[m]);
                b = (uint32_t)((int64_t)b - moves[m]);
                memcpy(bt + 4 * p, &a, 4);
                memcpy(bt + 4 * p + 4, &b, 4);
                repair_checksums(bad, len);
                expect_decode_reject(&c, bad, len, "piece boundary moved", p);
            }
            /* Two pieces swapped in the table only. */
            memcpy(bad, cont, len);
            memcpy(bt + 4 * p, table + 4 * p + 4, 4);
            memcpy(bt + 4 * p + 4, table + 4 * p, 4);
            if (memcmp(bt + 4 * p, table + 4 * p, 8) != 0) {
                repair_checksums(bad, len);
                expect_decode_reject(&c, bad, len, "piece sizes swapped", p);
            }
        }
        free(bad);
        free(cont);
        kvtc_encoder_free(enc);
    }
    free(chunk);
}

/* A profile the loader accepts must work: encode and decode a chunk. */
static void expect_usable(const kvtc_profile *p, const char *what, size_t where)
{
    const kvtc_layout *l = kvtc_profile_layout(p);
    cr_assert_eq(kvtc_layout_check(l), 0);
    const uint32_t n = 6;
    size_t raw = kvtc_chunk_bytes(l, n);
    uint8_t *chunk = calloc(1, raw), *out = malloc(raw);
    cr_assert(chunk && out);
    for (uint32_t plan = 0; plan < kvtc_profile_plan_count(p); plan++) {
        kvtc_encoder *enc = NULL;
        kvtc_decoder *dec = NULL;
        cr_assert_eq(kvtc_encoder_create(p, plan, KVTC_STAGE_DEFLATE, 0, &enc), 0,
                     "%s at %zu: plan %u", what, where, plan);
        cr_assert_eq(kvtc_decoder_create(p, &dec), 0);
        size_t cap = kvtc_encode_bound(enc, n), len = 0;
        uint8_t *cont = malloc(cap);
        cr_assert_not_null(cont);
        kvtc_chunk ch = { chunk, n, 2, 0 }; /* 2 sinks, 4 coded */
        cr_assert_eq(kvtc_encode(enc, &ch, cont, cap, &len), 0, "%s at %zu", what, where);
        int rc = kvtc_decode(dec, cont, len, out, raw, NULL);
        cr_assert_eq(rc, 0, "%s at %zu: own container refused (%d)", what, where, rc);
        free(cont);
        kvtc_encoder_free(enc);
        kvtc_decoder_free(dec);
    }
    free(chunk);
    free(out);
}

/* Flips behind a recomputed checksum: each byte of the fixed fields, and
 * a sample of the floats. Either the loader refuses, or the profile works. */
Test(corruption, profile_flipped_with_checksum_repaired)
{
    size_t len;
    uint8_t *buf = saved_profile(&len);
    uint8_t *bad = malloc(len);
    cr_assert_not_null(bad);
    for (size_t i = 0; i + 8 < len; i += (i < 512 ? 1 : 13)) {
        memcpy(bad, buf, len);
        bad[i] ^= (uint8_t)(i < 512 ? 0xFF : 0x01);
        repair_profile_checksum(bad, len);
        void *in = dup_exact(bad, len);
        kvtc_profile *p = NULL;
        int rc = kvtc_profile_load(in, len, &p);
        free(in);
        cr_assert(rc == 0 || is_error(rc), "load returned %d at %zu", rc, i);
        if (rc == 0) {
            expect_usable(p, "repaired flip", i);
            kvtc_profile_free(p);
        }
    }
    free(bad);
    free(buf);
}

/* Regression: a NaN in a RoPE float the layout does not use passed the
 * layout check, and the loaded profile then refused its own containers
 * (layouts compare floats with ==). Found by fuzz_profile. */
Test(corruption, profile_nan_in_unused_rope_field)
{
    size_t len;
    uint8_t *buf = saved_profile(&len);
    /* "KVTCPROF" u32 version, width, ncomp_k, ncomp_v, n_plans, then the
     * layout: its last two floats (low/high freq factors) end at 76. */
    const size_t low = 8 + 5 * 4 + 10 * 4;
    const uint32_t nan_bits = 0x7FC00000u;
    for (size_t f = 0; f < 2; f++) {
        uint8_t *bad = dup_exact(buf, len);
        memcpy(bad + low + 4 * f, &nan_bits, 4);
        repair_profile_checksum(bad, len);
        expect_profile_reject(bad, len, "NaN rope factor", low + 4 * f);
        free(bad);
    }
    free(buf);
}

/* An error must not poison the decoder: after every kind of rejection the
 * same decoder still decodes the pristine containers, to the same bytes. */
Test(corruption, decoder_survives_errors)
{
    for (uint32_t s = 0; s < N_STAGES; s++)
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            uint8_t *first = malloc(c->raw_len), *again = malloc(c->raw_len);
            cr_assert(first && again);
            cr_assert_eq(decode_guarded(g_dec, c->bytes, c->len, c->raw_len, first), 0);
            uint8_t *bad = dup_exact(c->bytes, c->len);
            for (size_t i = 0; i < c->len; i += 7) {
                bad[i] ^= 0x5A;
                repair_checksums(bad, c->len);
                (void)decode_guarded(g_dec, bad, c->len, c->raw_len, NULL);
                (void)decode_guarded(g_dec, bad, c->len / 2, c->raw_len, NULL);
                memcpy(bad, c->bytes, c->len);
            }
            free(bad);
            cr_assert_eq(decode_guarded(g_dec, c->bytes, c->len, c->raw_len, again), 0);
            cr_assert_eq(memcmp(first, again, c->raw_len), 0, "%s stage %u", kind_name[k], s);
            free(first);
            free(again);
        }
}

/* The encoder's side of the same promise: a destination one byte short is
 * refused with KVTC_ENOSPC and nothing is written past it. */
Test(corruption, encoder_respects_dst_cap)
{
    for (uint32_t s = 0; s < N_STAGES; s++) {
        kvtc_encoder *enc = NULL;
        cr_assert_eq(kvtc_encoder_create(g_prof, 0, s, 0, &enc), 0);
        for (int k = 0; k < N_KINDS; k++) {
            const struct container *c = &g_c[s][k];
            kvtc_chunk ch = { c->chunk, c->n_tokens, c->first_pos,
                              k == C_RAW ? KVTC_CHUNK_RAW : 0 };
            static const size_t short_by[] = { 1, 9, 200 };
            for (size_t i = 0; i < sizeof short_by / sizeof short_by[0]; i++) {
                if (short_by[i] > c->len)
                    continue;
                size_t cap = c->len - short_by[i], len = 0;
                uint8_t *dst = malloc(cap + GUARD);
                cr_assert_not_null(dst);
                memset(dst, POISON, cap + GUARD);
                int rc = kvtc_encode(enc, &ch, dst, cap, &len);
                cr_assert_eq(rc, KVTC_ENOSPC, "%s stage %u cap %zu: %d", kind_name[k], s,
                             cap, rc);
                for (size_t j = cap; j < cap + GUARD; j++)
                    cr_assert_eq(dst[j], POISON, "encoder wrote past dst_cap");
                free(dst);
            }
        }
        kvtc_encoder_free(enc);
    }
}
