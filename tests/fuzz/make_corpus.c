/* make_corpus.c - writes the seed corpora of the libFuzzer targets:
 *   <dir>/fuzz_decode/   containers made with the fuzz profile: transform
 *                        coded with and without sink tokens, raw, short
 *                        chunks; every stage; every plan; and the DEFLATE
 *                        ones again as container version 2 (the GPU's own
 *                        Huffman pieces with their sub-range index)
 *   <dir>/fuzz_profile/  serialized profiles of a few layouts
 * Built with the same compiler and objects as the fuzzers, so the profile
 * it calibrates is byte-identical to the one fuzz_decode builds at start
 * and the seeds get past the profile-id check. */
#include <errno.h>
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "kvtc_codec.h"
#include "../../codec/container.h"
#include "../../kernels/huff_core.h"
#include "synth.h"

static int write_file(const char *dir, const char *sub, const char *name,
                      const void *buf, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "make_corpus: %s: %s\n", path, strerror(errno));
        return KVTC_EIO;
    }
    int ok = fwrite(buf, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : KVTC_EIO;
}

static int make_dir(const char *dir, const char *sub)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return KVTC_EIO;
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return KVTC_EIO;
    return 0;
}

static int save_profile(const char *dir, const char *name, const kvtc_profile *p)
{
    size_t n = kvtc_profile_size(p);
    void *buf = malloc(n);
    if (!buf)
        return KVTC_ENOMEM;
    int rc = kvtc_profile_save(p, buf, n);
    if (rc == 0)
        rc = write_file(dir, "fuzz_profile", name, buf, n);
    free(buf);
    return rc;
}

/* A version 1 DEFLATE container re-coded as version 2 (what the GPU
 * encoder writes: kernels/huff_core.h's pieces and index) into out (room
 * for len + 4 * KVTC_HC_MAX_OUT + 8 KiB: at most 4 pieces); its length,
 * or 0. */
static size_t to_v2(const uint8_t *c, size_t len, uint32_t log2, uint8_t *out)
{
    static struct kvtc__hcode hc;
    static struct kvtc__hc_ws hw;
    static uint8_t sym[65536], piece[KVTC_HC_MAX_OUT];
    static uint16_t ix[256];
    struct kvtc__header h;
    if (kvtc__container_parse(c, len, &h) || h.mode != KVTC__MODE_CODED ||
        h.stage != KVTC_STAGE_DEFLATE || h.n_pieces > 4)
        return 0;
    const uint8_t *raw = c + KVTC__HEADER_BYTES, *table = raw + h.raw_bytes;
    const uint8_t *pay = table + h.table_bytes;
    uint64_t tb = 4ull * h.n_pieces + 2 * kvtc__index_entries(h.symbol_bytes, log2);
    uint8_t *t2 = out + KVTC__HEADER_BYTES + h.raw_bytes, *i2 = t2 + 4ull * h.n_pieces;
    uint8_t *p2 = t2 + tb;
    uint64_t payload = 0;
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d)
        return 0;
    memcpy(out + KVTC__HEADER_BYTES, raw, h.raw_bytes);
    for (uint32_t i = 0; i < h.n_pieces; i++) {
        uint32_t sz = table[4 * i] | table[4 * i + 1] << 8 | table[4 * i + 2] << 16 |
                      (uint32_t)table[4 * i + 3] << 24;
        uint64_t left = h.symbol_bytes - (uint64_t)i * KVTC_PIECE_MAX;
        uint32_t n = (uint32_t)(left < KVTC_PIECE_MAX ? left : KVTC_PIECE_MAX);
        if (libdeflate_deflate_decompress(d, pay, sz, sym, n, NULL) != LIBDEFLATE_SUCCESS) {
            libdeflate_free_decompressor(d);
            return 0;
        }
        pay += sz;
        uint32_t cl = kvtc__hc_encode_ref(sym, n, log2, piece, ix, &hc, &hw);
        for (int b = 0; b < 4; b++)
            t2[4 * i + b] = (uint8_t)(cl >> (8 * b));
        for (uint32_t k = 0; k < kvtc__hc_subranges(n, log2); k++)
            *i2++ = (uint8_t)ix[k], *i2++ = (uint8_t)(ix[k] >> 8);
        memcpy(p2 + payload, piece, cl);
        payload += cl;
    }
    libdeflate_free_decompressor(d);
    h.index_log2 = log2;
    h.table_bytes = tb;
    h.payload_bytes = payload;
    h.table_sum = XXH3_64bits(t2, tb);
    h.payload_sum = XXH3_64bits(p2, payload);
    kvtc__header_write(&h, out);
    return KVTC__HEADER_BYTES + h.raw_bytes + tb + payload;
}

static int containers(const char *dir, const kvtc_profile *p)
{
    static const struct { uint32_t n_tokens, first_pos, flags; const char *tag; } shapes[] = {
        { 16, 0, 0, "sinks" },             /* first chunk: 4 sink tokens */
        { 16, 32, 0, "kvtc" },             /* a later chunk */
        { 3, 0, 0, "allsinks" },           /* shorter than the sinks */
        { 5, 77, 0, "short" },             /* a tail chunk */
        { 16, 48, KVTC_CHUNK_RAW, "raw" }, /* live window */
    };
    const kvtc_layout *l = kvtc_profile_layout(p);
    uint32_t plans = kvtc_profile_plan_count(p);
    int rc = 0;
    void *chunk = malloc(kvtc_chunk_bytes(l, l->chunk_tokens));
    if (!chunk)
        return KVTC_ENOMEM;
    for (uint32_t plan = 0; plan < plans && rc == 0; plan++) {
        for (uint32_t stage = 0; stage <= KVTC_STAGE_STORE && rc == 0; stage++) {
            kvtc_encoder *enc = NULL;
            rc = kvtc_encoder_create(p, plan, stage, 0, &enc);
            if (rc < 0)
                break;
            size_t cap = kvtc_encode_bound(enc, l->chunk_tokens);
            void *out = malloc(cap);
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0] && rc == 0; s++) {
                /* Raw containers do not depend on the plan: write them once. */
                if ((shapes[s].flags & KVTC_CHUNK_RAW) && plan > 0)
                    continue;
                if (!out) {
                    rc = KVTC_ENOMEM;
                    break;
                }
                rc = kvtc_synth_chunk(l, shapes[s].n_tokens, shapes[s].first_pos,
                                      s + 1, chunk);
                if (rc < 0)
                    break;
                kvtc_chunk ch = { chunk, shapes[s].n_tokens, shapes[s].first_pos,
                                  shapes[s].flags };
                size_t len = 0;
                rc = kvtc_encode(enc, &ch, out, cap, &len);
                if (rc < 0)
                    break;
                char name[64];
                snprintf(name, sizeof name, "%s-p%u-s%u", shapes[s].tag, plan, stage);
                rc = write_file(dir, "fuzz_decode", name, out, len);
                /* these chunks code to a piece or two: each at most
                                 * KVTC_HC_MAX_OUT, plus its index */
                uint8_t *v2 = rc == 0 && stage == KVTC_STAGE_DEFLATE
                                  ? malloc(cap + 4ull * KVTC_HC_MAX_OUT + 8192)
                                  : NULL;
                size_t len2 = v2 ? to_v2(out, len, 8 + (s % 5), v2) : 0;
                if (len2) {
                    snprintf(name, sizeof name, "%s-p%u-v2", shapes[s].tag, plan);
                    rc = write_file(dir, "fuzz_decode", name, v2, len2);
                }
                free(v2);
            }
            free(out);
            kvtc_encoder_free(enc);
        }
    }
    free(chunk);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    kvtc_profile *p = NULL, *q = NULL;
    int rc = make_dir(dir, "fuzz_decode");
    if (rc == 0)
        rc = make_dir(dir, "fuzz_profile");
    if (rc == 0)
        rc = kvtc_synth_fuzz_profile(&p);
    if (rc == 0)
        rc = save_profile(dir, "fuzz-profile", p);
    if (rc == 0)
        rc = containers(dir, p);
    if (rc == 0) {
        /* A second layout exercises other header values: fp16, half-split
         * RoPE with Llama 3 scaling, one plan. */
        kvtc_layout l;
        kvtc_synth_layout(&l);
        l.layers = 3;
        l.kv_heads = 1;
        l.head_dim = 4;
        l.dtype = KVTC_DTYPE_FP16;
        l.rope_style = KVTC_ROPE_HALF_SPLIT;
        l.rope_scaling = KVTC_ROPE_SCALING_LLAMA3;
        l.rope_orig_max_pos = 8192;
        l.rope_factor = 8.0f;
        l.rope_low_freq_factor = 1.0f;
        l.rope_high_freq_factor = 4.0f;
        float target = 4.0f;
        rc = kvtc_synth_profile(&l, 16, &target, 1, &q);
        if (rc == 0)
            rc = save_profile(dir, "half-split-fp16", q);
    }
    kvtc_profile_free(p);
    kvtc_profile_free(q);
    if (rc < 0) {
        fprintf(stderr, "make_corpus: %s\n", kvtc_strerror(rc));
        return 1;
    }
    return 0;
}
