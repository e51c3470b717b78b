/* inflate_gen.h - raw DEFLATE test streams for the inflate decoder's tests
 * (tests/unit/test_inflate_core.c on the host, tests/gpu/test_gpu_inflate.c
 * on the device): data of several kinds, compressed by zlib (every level
 * and strategy, flushes that split blocks) and libdeflate (the CPU codec's
 * compressor), and zlib's verdict on any bytes as the reference. */
#ifndef KVTC_TESTS_INFLATE_GEN_H
#define KVTC_TESTS_INFLATE_GEN_H

#include <libdeflate.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static inline uint64_t ig_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

enum { IG_RANDOM, IG_QUANT, IG_TEXT, IG_RUNS, IG_FIB, IG_FEW, IG_N_KINDS };

/* IG_QUANT: skewed like packed int4 codes; IG_TEXT: repeats that LZ finds;
 * IG_FIB: Fibonacci symbol frequencies, which push Huffman codes to the
 * 15-bit limit; IG_FEW: 1-2 distinct bytes (1-bit codes). */
static inline void ig_data(uint8_t *p, size_t n, int kind, uint64_t *s)
{
    static const char *words[] = {"key ", "value ", "cache ", "token ", "layer ", "head "};
    size_t i = 0;
    switch (kind) {
    case IG_RANDOM:
        for (; i < n; i++)
            p[i] = (uint8_t)ig_rand(s);
        break;
    case IG_QUANT:
        for (; i < n; i++) {
            uint32_t a = (uint32_t)(ig_rand(s) % 100), b = (uint32_t)(ig_rand(s) % 100);
            uint32_t lo = a < 40 ? 8 : a < 65 ? 7 : a < 80 ? 9 : (uint32_t)(ig_rand(s) % 16);
            uint32_t hi = b < 40 ? 8 : b < 65 ? 7 : b < 80 ? 9 : (uint32_t)(ig_rand(s) % 16);
            p[i] = (uint8_t)(lo | hi << 4);
        }
        break;
    case IG_TEXT:
        while (i < n) {
            const char *w = words[ig_rand(s) % 6];
            for (size_t k = 0; w[k] && i < n; k++)
                p[i++] = (uint8_t)w[k];
        }
        break;
    case IG_RUNS:
        while (i < n) {
            uint8_t v = (uint8_t)ig_rand(s);
            size_t r = 1 + ig_rand(s) % 300;
            for (size_t k = 0; k < r && i < n; k++)
                p[i++] = v;
        }
        break;
    case IG_FIB: {
        uint32_t f[26] = {1, 1};
        for (int k = 2; k < 26; k++)
            f[k] = f[k - 1] + f[k - 2];
        for (int k = 0; k < 26 && i < n; k++)
            for (uint32_t c = 0; c < f[k] && i < n; c++)
                p[i++] = (uint8_t)(k * 7 + 3);
        for (; i < n; i++)
            p[i] = (uint8_t)(ig_rand(s) % 26 * 7 + 3);
        for (size_t k = n; k > 1; k--) { /* shuffle: no runs for LZ */
            size_t j = ig_rand(s) % k;
            uint8_t t = p[k - 1];
            p[k - 1] = p[j];
            p[j] = t;
        }
        break;
    }
    default:
        for (; i < n; i++)
            p[i] = (uint8_t)(ig_rand(s) % 50 == 0 ? 0x5a : 0xa5);
    }
}

/* A 4-byte aligned copy padded with zeros to a multiple of 4, as the
 * decoder wants its input. */
static inline uint8_t *ig_padded(const uint8_t *p, size_t n)
{
    uint8_t *q = calloc((n + 3) / 4 * 4 + 4, 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

/* zlib raw DEFLATE; flush_every > 0 cuts the input with Z_SYNC_FLUSH (block
 * boundaries and empty stored blocks) and switches level/strategy between
 * cuts (mixed block types in one stream). */
static inline uint8_t *ig_zlib(const uint8_t *in, size_t n, int level, int strategy, int mem,
                               size_t flush_every, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, level, Z_DEFLATED, -15, mem, strategy) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&z, n) + 64 + (flush_every ? 8 * (n / flush_every + 2) : 0);
    uint8_t *out = malloc(cap);
    z.next_out = out;
    z.avail_out = (uInt)cap;
    size_t at = 0;
    int k = 0, rc = Z_OK;
    do {
        size_t step = flush_every && n - at > flush_every ? flush_every : n - at;
        z.next_in = (Bytef *)(in + at);
        z.avail_in = (uInt)step;
        at += step;
        int last = at == n;
        rc = deflate(&z, last ? Z_FINISH : Z_SYNC_FLUSH);
        if (!last && flush_every) {
            static const int strat[] = {Z_DEFAULT_STRATEGY, Z_HUFFMAN_ONLY, Z_FIXED, Z_RLE};
            k++;
            deflateParams(&z, (level + k) % 10, strat[k % 4]);
        }
    } while (at < n);
    *out_len = cap - z.avail_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    uint8_t *q = ig_padded(out, *out_len);
    free(out);
    return q;
}

static inline uint8_t *ig_libdeflate(const uint8_t *in, size_t n, int level, size_t *out_len)
{
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
    if (!c)
        return NULL;
    size_t cap = libdeflate_deflate_compress_bound(c, n);
    uint8_t *out = malloc(cap);
    *out_len = libdeflate_deflate_compress(c, in, n, out, cap);
    libdeflate_free_compressor(c);
    uint8_t *q = *out_len ? ig_padded(out, *out_len) : NULL;
    free(out);
    return q;
}

/* zlib's verdict: 0 when src[0..len) inflates to exactly cap bytes (into
 * out, cap + 1 bytes of room so an overlong stream shows), else -1. */
static inline int ig_ref(const uint8_t *src, size_t len, uint8_t *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK)
        return -2;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap + 1;
    int rc = inflate(&z, Z_FINISH);
    size_t got = z.total_out;
    inflateEnd(&z);
    return rc == Z_STREAM_END && got == cap ? 0 : -1;
}

#endif
