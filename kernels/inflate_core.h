/* inflate_core.h - one raw DEFLATE stream (RFC 1951) of at most 64 KiB of
 * output, decoded by one thread: stored, fixed and dynamic Huffman blocks,
 * literals and LZ77 copies alike, so any piece any encoder writes (nvCOMP's
 * Huffman-only blocks, libdeflate's matches) decodes without a fallback.
 * Written so one copy compiles for the host (C11, tests/unit checks it
 * against zlib) and the device (CUDA, gpu_inflate.cu runs it per piece).
 *
 * Table-driven: a 10-bit primary table per code (one shared-memory load per
 * symbol of <= 10 bits, which is nearly all of them on quantized symbols);
 * longer codes, up to DEFLATE's 15 bits, are walked canonically from the
 * per-length counts (rare: each such code has probability <= 2^-11).
 *
 * Safe on any bytes: every count, length, distance and the output size are
 * checked; a bad stream returns a negative KVTC_INFL_E* and never reads
 * outside [src, src + round_up(len, 4)) nor writes outside [dst, dst + cap).
 * Strictness follows zlib: over-subscribed codes, incomplete codes (except a
 * single 1-bit code), a missing end-of-block code, symbols 286/287 and
 * distances 30/31 are errors. The stream must produce exactly cap bytes;
 * input after the final block is ignored, as zlib and libdeflate do.
 *
 * Alignment (the GPU's slots give both): src 4-byte aligned, readable up to
 * the next multiple of 4 (whole 32-bit words are loaded); dst 8-byte
 * aligned (output leaves in 8-byte words, byte by byte only at the end). */
#ifndef KVTC_KERNELS_INFLATE_CORE_H
#define KVTC_KERNELS_INFLATE_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define KVTC_IHD __host__ __device__ static inline
#else
#define KVTC_IHD static inline
#endif

#define KVTC_INFL_PRI 10u          /* primary table bits */
#define KVTC_INFL_MAX_OUT 65536u   /* the container's piece size */
/* The order of the code-length code's lengths (RFC 1951 3.2.7). */
#define KVTC_INFL_CL_ORDER "\x10\x11\x12\x00\x08\x07\x09\x06\x0a\x05\x0b\x04\x0c\x03\x0d\x02\x0e\x01\x0f"

enum {
    KVTC_INFL_EINPUT = -1,   /* read past the end of the input */
    KVTC_INFL_EBLOCK = -2,   /* block type 3, or stored LEN != ~NLEN */
    KVTC_INFL_ECODE = -3,    /* bad code lengths (counts, over/incomplete) */
    KVTC_INFL_ESYM = -4,     /* a bit pattern of no symbol, or symbol 286+ */
    KVTC_INFL_EDIST = -5,    /* distance before the start of the output */
    KVTC_INFL_EOVER = -6,    /* more output than cap */
    KVTC_INFL_ESHORT = -7,   /* less output than cap */
    KVTC_INFL_EARG = -8      /* cap > 64 KiB, or misaligned pointers */
};

/* A canonical Huffman code: pri[bits] = sym | len << 9 for codes of <= 10
 * bits (0: a longer code, or none), count[len] and the symbols sorted by
 * (length, value) for the canonical walk. */
struct kvtc__huff {
    uint16_t pri[1u << KVTC_INFL_PRI];
    uint16_t count[16];
    uint16_t sym[288];
};

/* Per-stream scratch: ~5.6 KiB (the GPU keeps it in shared memory). */
struct kvtc__inflate_ws {
    struct kvtc__huff lit, dist;  /* dist doubles as the code-length code */
    uint8_t lens[320];
};

/* What a stream held (tests and the block-type survey log it). */
struct kvtc__inflate_stats {
    uint32_t stored, fixed, dynamic, matches;
    uint32_t max_code_len;  /* longest literal/length code of dynamic blocks */
};

struct kvtc__ibits {
    const uint32_t *w;
    uint32_t nw, wi, nb;  /* words, next word, bits in buf */
    uint64_t buf;         /* LSB first, as DEFLATE packs */
};

/* Leaves at least 32 bits in buf (zeros past the input: the end checks
 * catch a stream that consumed them). */
KVTC_IHD void kvtc__ib_refill(struct kvtc__ibits *b)
{
    if (b->nb <= 32) {
        uint32_t v = b->wi < b->nw ? b->w[b->wi] : 0;
#ifdef __CUDA_ARCH__
        /* The loads are a serial chain: ask L1 for the line 256 bytes on
         * once per line, so a miss does not stall the decode. */
        if ((b->wi & 31u) == 0 && b->wi + 64 < b->nw)
            asm volatile("prefetch.global.L1 [%0];" ::"l"(b->w + b->wi + 64));
#endif
        b->buf |= (uint64_t)v << b->nb;
        b->nb += 32;
        b->wi++;
    }
}

KVTC_IHD uint32_t kvtc__ib_take(struct kvtc__ibits *b, uint32_t n)
{
    uint32_t v = (uint32_t)(b->buf & ((1ull << n) - 1));
    b->buf >>= n;
    b->nb -= n;
    return v;
}

KVTC_IHD uint64_t kvtc__ib_used(const struct kvtc__ibits *b)
{
    return (uint64_t)b->wi * 32 - b->nb;
}

/* Builds h from n code lengths (each <= 15). kind 0: the code-length code
 * (must be complete), 1: literal/length, 2: distance (may be empty). pri 0
 * leaves h->pri unset (the checks, counts and symbols are the same): for a
 * reader with tables of its own (huff_core.h's), 3 KiB of stores less. */
KVTC_IHD int kvtc__huff_build_ex(struct kvtc__huff *h, const uint8_t *len, uint32_t n, int kind,
                                 int pri)
{
    uint16_t offs[16];
    for (int l = 0; l < 16; l++)
        h->count[l] = 0;
    for (uint32_t i = 0; i < n; i++)
        h->count[len[i]]++;
    h->count[0] = 0;
    int left = 1, max = 0;
    for (int l = 1; l < 16; l++) {
        left = (left << 1) - h->count[l];
        if (left < 0)
            return KVTC_INFL_ECODE; /* over-subscribed */
        if (h->count[l])
            max = l;
    }
    /* zlib's rule: incomplete only as one 1-bit code (or no distance code
     * at all); unused patterns then decode to no symbol. */
    if (left > 0 && (kind == 0 || max > 1 || (max == 0 && kind != 2)))
        return KVTC_INFL_ECODE;
    offs[1] = 0;
    for (int l = 1; l < 15; l++)
        offs[l + 1] = (uint16_t)(offs[l] + h->count[l]);
    for (uint32_t i = 0; i < n; i++)
        if (len[i])
            h->sym[offs[len[i]]++] = (uint16_t)i;
    if (!pri)
        return 0;
    for (uint32_t e = 0; e < (1u << KVTC_INFL_PRI); e++)
        h->pri[e] = 0;
    uint32_t code = 0, idx = 0;
    for (uint32_t l = 1; l <= KVTC_INFL_PRI; l++) {
        for (uint32_t k = 0; k < h->count[l]; k++, code++) {
            uint32_t rev = 0; /* codes are sent MSB first: the table is indexed LSB first */
            for (uint32_t b = 0; b < l; b++)
                rev |= ((code >> b) & 1u) << (l - 1 - b);
            uint16_t e = (uint16_t)(h->sym[idx++] | l << 9);
            for (uint32_t at = rev; at < (1u << KVTC_INFL_PRI); at += 1u << l)
                h->pri[at] = e;
        }
        code <<= 1;
    }
    return 0;
}

KVTC_IHD int kvtc__huff_build(struct kvtc__huff *h, const uint8_t *len, uint32_t n, int kind)
{
    return kvtc__huff_build_ex(h, len, n, kind, 1);
}

/* A code longer than the primary table, bit by bit (puff's walk). */
KVTC_IHD int kvtc__huff_slow(const struct kvtc__huff *h, uint64_t bits, uint32_t *used)
{
    int code = 0, first = 0, index = 0;
    for (uint32_t l = 1; l < 16; l++) {
        code |= (int)(bits & 1);
        bits >>= 1;
        int count = h->count[l];
        if (code - count < first) {
            *used = l;
            return h->sym[index + (code - first)];
        }
        index += count;
        first = (first + count) << 1;
        code <<= 1;
    }
    return KVTC_INFL_ESYM;
}

KVTC_IHD int kvtc__huff_decode(const struct kvtc__huff *h, struct kvtc__ibits *b)
{
    kvtc__ib_refill(b);
    uint32_t e = h->pri[b->buf & ((1u << KVTC_INFL_PRI) - 1)], n;
    int sym;
    if (e) {
        n = e >> 9;
        sym = (int)(e & 511);
    } else if ((sym = kvtc__huff_slow(h, b->buf, &n)) < 0) {
        return sym;
    }
    b->buf >>= n;
    b->nb -= n;
    return sym;
}

/* Output in 8-byte words: a byte per store would flood L2 with 1-byte
 * transactions. Bytes [pos & ~7, pos) wait in acc. */
struct kvtc__iout {
    uint64_t *d8;
    uint32_t pos, cap;
    uint64_t acc;
};

KVTC_IHD void kvtc__io_put(struct kvtc__iout *o, uint32_t byte)
{
    o->acc |= (uint64_t)byte << (8 * (o->pos & 7));
    if ((++o->pos & 7) == 0) {
        o->d8[(o->pos >> 3) - 1] = o->acc;
        o->acc = 0;
    }
}

/* Reads back an earlier output byte: from acc while unflushed, else from
 * dst (the thread's own earlier stores). */
KVTC_IHD uint32_t kvtc__io_get(const struct kvtc__iout *o, uint32_t at)
{
    if (at >= (o->pos & ~7u))
        return (uint32_t)(o->acc >> (8 * (at & 7))) & 0xff;
    return ((const uint8_t *)o->d8)[at];
}

/* Fixed codes (RFC 1951 3.2.6). */
KVTC_IHD int kvtc__inflate_fixed(struct kvtc__inflate_ws *ws)
{
    for (uint32_t i = 0; i < 288; i++)
        ws->lens[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    for (uint32_t i = 0; i < 32; i++) /* 30 and 31 complete the code; never valid */
        ws->lens[288 + i] = 5;
    int rc = kvtc__huff_build(&ws->lit, ws->lens, 288, 1);
    return rc ? rc : kvtc__huff_build(&ws->dist, ws->lens + 288, 32, 2);
}

/* A dynamic block's header; lit_pri 0: ws->lit.pri and ws->dist.pri are
 * left unset (kvtc__huff_build_ex). */
KVTC_IHD int kvtc__inflate_dynamic_ex(struct kvtc__inflate_ws *ws, struct kvtc__ibits *b,
                                      int lit_pri)
{
    const char *ord = KVTC_INFL_CL_ORDER;
    kvtc__ib_refill(b);
    uint32_t nlen = kvtc__ib_take(b, 5) + 257, ndist = kvtc__ib_take(b, 5) + 1;
    uint32_t ncode = kvtc__ib_take(b, 4) + 4;
    if (nlen > 286 || ndist > 30)
        return KVTC_INFL_ECODE;
    for (uint32_t i = 0; i < 19; i++)
        ws->lens[i] = 0;
    for (uint32_t i = 0; i < ncode; i++) {
        kvtc__ib_refill(b);
        ws->lens[(uint8_t)ord[i]] = (uint8_t)kvtc__ib_take(b, 3);
    }
    int rc = kvtc__huff_build(&ws->dist, ws->lens, 19, 0);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < nlen + ndist;) {
        int sym = kvtc__huff_decode(&ws->dist, b);
        if (sym < 0)
            return sym;
        if (sym < 16) {
            ws->lens[i++] = (uint8_t)sym;
            continue;
        }
        uint32_t rep, val = 0;
        if (sym == 16) {
            if (i == 0)
                return KVTC_INFL_ECODE; /* repeat of nothing */
            val = ws->lens[i - 1];
            rep = 3 + kvtc__ib_take(b, 2);
        } else if (sym == 17) {
            rep = 3 + kvtc__ib_take(b, 3);
        } else {
            rep = 11 + kvtc__ib_take(b, 7);
        }
        if (i + rep > nlen + ndist)
            return KVTC_INFL_ECODE;
        while (rep--)
            ws->lens[i++] = (uint8_t)val;
    }
    if (ws->lens[256] == 0)
        return KVTC_INFL_ECODE; /* no end-of-block code */
    if ((rc = kvtc__huff_build_ex(&ws->lit, ws->lens, nlen, 1, lit_pri)))
        return rc;
    return kvtc__huff_build_ex(&ws->dist, ws->lens + nlen, ndist, 2, lit_pri);
}

KVTC_IHD int kvtc__inflate_dynamic(struct kvtc__inflate_ws *ws, struct kvtc__ibits *b)
{
    return kvtc__inflate_dynamic_ex(ws, b, 1);
}

/* The symbols of one Huffman block, up to its end-of-block code. */
KVTC_IHD int kvtc__inflate_codes(const struct kvtc__inflate_ws *ws, struct kvtc__ibits *b,
                                 struct kvtc__iout *o, uint32_t *matches)
{
    for (;;) {
        int sym = kvtc__huff_decode(&ws->lit, b);
        if (sym < 256) {
            if (sym < 0)
                return sym;
            if (o->pos >= o->cap)
                return KVTC_INFL_EOVER;
            kvtc__io_put(o, (uint32_t)sym);
            continue;
        }
        if (sym == 256)
            return 0;
        uint32_t i = (uint32_t)sym - 257;
        if (i >= 29)
            return KVTC_INFL_ESYM;
        /* base and extra bits of the length and distance codes, computed
         * rather than tabled so host and device share no table */
        uint32_t len;
        if (i < 8) {
            len = 3 + i;
        } else if (i == 28) {
            len = 258;
        } else {
            uint32_t x = (i - 4) >> 2;
            len = ((4 + (i & 3)) << x) + 3 + kvtc__ib_take(b, x);
        }
        int d = kvtc__huff_decode(&ws->dist, b);
        if (d < 0)
            return d;
        if (d >= 30)
            return KVTC_INFL_ESYM;
        uint32_t dist = (uint32_t)d + 1;
        if (d >= 4) {
            uint32_t x = ((uint32_t)d - 2) >> 1;
            dist = ((2 + ((uint32_t)d & 1)) << x) + 1 + kvtc__ib_take(b, x);
        }
        if (dist > o->pos)
            return KVTC_INFL_EDIST;
        if (len > o->cap - o->pos)
            return KVTC_INFL_EOVER;
        (*matches)++;
        for (uint32_t k = 0; k < len; k++)
            kvtc__io_put(o, kvtc__io_get(o, o->pos - dist));
    }
}

/* Decodes src[0..len) into exactly cap bytes at dst. 0 or KVTC_INFL_E*;
 * stats may be NULL. */
KVTC_IHD int kvtc__inflate(const uint8_t *src, uint32_t len, uint8_t *dst, uint32_t cap,
                           struct kvtc__inflate_ws *ws, struct kvtc__inflate_stats *stats)
{
    struct kvtc__inflate_stats st = {0, 0, 0, 0, 0};
    if (cap > KVTC_INFL_MAX_OUT || ((uintptr_t)src & 3) || ((uintptr_t)dst & 7))
        return KVTC_INFL_EARG;
    struct kvtc__ibits b = {(const uint32_t *)src, (len + 3) / 4, 0, 0, 0};
    struct kvtc__iout o = {(uint64_t *)dst, 0, cap, 0};
    uint64_t limit = (uint64_t)len * 8;
    int rc = 0;
    uint32_t final = 0;
    while (!rc && !final) {
        kvtc__ib_refill(&b);
        if (kvtc__ib_used(&b) + 3 > limit)
            return KVTC_INFL_EINPUT;
        final = kvtc__ib_take(&b, 1);
        uint32_t type = kvtc__ib_take(&b, 2);
        if (type == 0) {
            st.stored++;
            kvtc__ib_take(&b, (uint32_t)(-kvtc__ib_used(&b) & 7)); /* to a byte boundary */
            kvtc__ib_refill(&b);
            uint32_t n = kvtc__ib_take(&b, 16), nn = kvtc__ib_take(&b, 16);
            if (n != (~nn & 0xffffu))
                return KVTC_INFL_EBLOCK;
            if (kvtc__ib_used(&b) + (uint64_t)n * 8 > limit)
                return KVTC_INFL_EINPUT;
            if (n > o.cap - o.pos)
                return KVTC_INFL_EOVER;
            for (uint32_t k = 0; k < n; k++) {
                kvtc__ib_refill(&b);
                kvtc__io_put(&o, kvtc__ib_take(&b, 8));
            }
        } else if (type == 3) {
            return KVTC_INFL_EBLOCK;
        } else {
            if (type == 1) {
                st.fixed++;
                rc = kvtc__inflate_fixed(ws);
            } else {
                st.dynamic++;
                rc = kvtc__inflate_dynamic(ws, &b);
                for (uint32_t l = 15; !rc && l > st.max_code_len; l--)
                    if (ws->lit.count[l])
                        st.max_code_len = l;
            }
            if (!rc)
                rc = kvtc__inflate_codes(ws, &b, &o, &st.matches);
        }
    }
    if (stats)
        *stats = st;
    if (rc)
        return rc;
    if (kvtc__ib_used(&b) > limit)
        return KVTC_INFL_EINPUT;
    for (uint32_t at = o.pos & ~7u; at < o.pos; at++)
        dst[at] = (uint8_t)(o.acc >> (8 * (at & 7)));
    return o.pos == cap ? 0 : KVTC_INFL_ESHORT;
}

#endif
