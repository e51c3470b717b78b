/* huff_core.h - our Huffman-only raw DEFLATE for the codec's pieces (<= 64
 * KiB of symbol bytes), with a sub-range index that lets a GPU decode one
 * piece with many threads at once (docs/container.md, version 2).
 *
 * A piece is either ONE final dynamic-Huffman block holding only literals
 * (HLIT 257, HDIST 1 with a zero-length distance code: RFC 1951 3.2.7's "one
 * distance code of zero bits means ... all literals"; zlib, libdeflate and
 * inflate_core.h all read it), or, when Huffman would not be smaller, stored
 * blocks. Literal codes are length-limited to 15 bits, the code-length code
 * to 7 (the RFC's limits).
 *
 * The index: the piece's n symbols are cut into S = ceil(n / 2^log2)
 * sub-ranges of 2^log2 symbols (the last may be short); entry k (u16) is the
 * bit length of sub-range k's codes. Sub-range k starts at the block's first
 * data bit plus the sum of the entries before it, so each can be decoded on
 * its own. A decoder proves the parallel result equals the serial one by
 * checking that every sub-range ends exactly where the next one starts and
 * that the last ends with the end-of-block code, then the stream's end with
 * zero padding. A stored piece's entries are all zero. 15-bit codes x 4096
 * symbols < 2^16, so log2 is 8..12.
 *
 * One copy compiles for the host (C11: the reference encoder, unit tests
 * against zlib and libdeflate) and the device (gpu_huffman_enc.cu and
 * gpu_huffman_dec.cu run these functions; the GPU encoder's bytes equal
 * kvtc__hc_encode_ref's). Inputs of the decoder are untrusted: it never
 * reads outside [src, src + round_up(len, 4)) nor writes outside the
 * piece's n output bytes. */
#ifndef KVTC_KERNELS_HUFF_CORE_H
#define KVTC_KERNELS_HUFF_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "inflate_core.h"

#define KVTC_HC_LOG2_MIN 8u
#define KVTC_HC_LOG2_MAX 12u
#define KVTC_HC_LOG2_DEFAULT 10u
#define KVTC_HC_SYMS 257u         /* 256 literals + end-of-block */
#define KVTC_HC_HDR_BYTES 480u    /* 17 + 19*3 + 258*(7+7) bits < 3720 */
#define KVTC_HC_MAX_OUT (65536u + 10u) /* two stored blocks of a full piece */

/* Sub-ranges of an n-byte piece. */
KVTC_IHD uint32_t kvtc__hc_subranges(uint32_t n, uint32_t log2)
{
    return (n + (1u << log2) - 1) >> log2;
}

/* Bytes of n symbols as stored blocks (<= 65535 each, 5 bytes of header). */
KVTC_IHD uint32_t kvtc__hc_stored_bytes(uint32_t n)
{
    return n + 5u * ((n + 65534u) / 65535u);
}

/* A built block: codes (bit-reversed, ready to be OR-ed in LSB first),
 * lengths, and the block header's bits (LSB first, zero-padded). */
struct kvtc__hcode {
    uint16_t code[KVTC_HC_SYMS];
    uint8_t len[KVTC_HC_SYMS];
    uint8_t hdr[KVTC_HC_HDR_BYTES];
    uint32_t hdr_bits;
    uint32_t pad_;
    uint64_t data_bits;  /* sum of freq x len over the literals */
};

/* Package-merge's lists (kvtc__hc_lengths): two levels' merged weights
 * (a level holds < 2 x the symbols), which entries of each of <= 15
 * levels are packages, and the leaves each level takes. */
#define KVTC_HC_PM_WORDS ((2u * KVTC_HC_SYMS + 31u) / 32u)
struct kvtc__hc_pm {
    uint32_t w[2][2 * KVTC_HC_SYMS];
    uint32_t pkg[15][KVTC_HC_PM_WORDS];
    uint32_t sel[15];
};

/* Scratch of kvtc__hc_build. */
struct kvtc__hc_ws {
    struct kvtc__hc_pm pm;
    uint32_t clf[19];
    uint16_t cls[19];
    uint16_t clcode[19];
    uint8_t cllen[19];
    uint8_t rle_sym[260];
    uint8_t rle_ext[260];
};

/* Ranks used symbols (freq > 0) ascending by (freq, symbol) into sorted;
 * returns how many. Host: insertion sort (the GPU ranks in parallel to the
 * same order). */
KVTC_IHD uint32_t kvtc__hc_sort(const uint32_t *freq, uint32_t n, uint16_t *sorted)
{
    uint32_t m = 0;
    for (uint32_t s = 0; s < n; s++) {
        if (!freq[s])
            continue;
        uint32_t j = m++;
        while (j > 0 && freq[sorted[j - 1]] > freq[s])
            sorted[j] = sorted[j - 1], j--;
        sorted[j] = (uint16_t)s;
    }
    return m;
}

/* Population count, host and device. */
KVTC_IHD uint32_t kvtc__hc_popc(uint32_t v)
{
#ifdef __CUDA_ARCH__
    return (uint32_t)__popc(v);
#else
    return (uint32_t)__builtin_popcount(v);
#endif
}

/* Package-merge's selection, from the package flags of every level: the
 * top level (limit - 1, codes of 1 bit) takes its first 2m - 2 entries;
 * the packages among them expand into the first 2p entries of the level
 * below, and so on down. sel[s] = how many leaves level s takes (always a
 * prefix of the sorted leaves); a leaf's code length is the number of
 * levels that take it. */
KVTC_IHD void kvtc__hc_pm_select(struct kvtc__hc_pm *pm, uint32_t m, uint32_t limit)
{
    uint32_t k = 2 * m - 2;
    for (uint32_t s = limit; s-- > 0;) {
        uint32_t p = 0;
        for (uint32_t j = 0; 32 * j < k; j++) {
            uint32_t wv = pm->pkg[s][j];
            if (k - 32 * j < 32)
                wv &= (1u << (k - 32 * j)) - 1;
            p += kvtc__hc_popc(wv);
        }
        pm->sel[s] = k - p;
        k = 2 * p;
    }
}

/* Code lengths of the m used symbols sorted[0..m) (ascending (frequency,
 * symbol)), at most `limit` bits, complete (Kraft sum exactly 1) when m >=
 * 2, and optimal under the limit: Larmore and Hirschberg's package-merge.
 * Level 0 lists the leaves; level s merges them with the pairwise sums
 * ("packages") of level s - 1's list, a leaf before a package of equal
 * weight. The GPU encoder builds the same lists with a thread per entry
 * (a leaf's place is its index plus the packages lighter than it), so both
 * give the same lengths. Frequencies sum to < 2^31; m <= 2^limit. */
KVTC_IHD void kvtc__hc_lengths(const uint32_t *freq, const uint16_t *sorted, uint32_t m,
                               uint32_t limit, uint8_t *len, struct kvtc__hc_pm *pm)
{
    if (m == 0)
        return;
    if (m == 1) {
        len[sorted[0]] = 1;
        return;
    }
    uint32_t *prev = pm->w[0], *cur = pm->w[1], n = m;
    for (uint32_t i = 0; i < m; i++)
        prev[i] = freq[sorted[i]];
    for (uint32_t s = 0; s < limit; s++)
        for (uint32_t j = 0; j < KVTC_HC_PM_WORDS; j++)
            pm->pkg[s][j] = 0;
    for (uint32_t s = 1; s < limit; s++) {
        uint32_t np = n / 2, i = 0, k = 0, o = 0;
        while (i < m || k < np) {
            uint32_t f = i < m ? freq[sorted[i]] : 0;
            uint32_t pk = k < np ? prev[2 * k] + prev[2 * k + 1] : 0;
            if (i < m && (k == np || f <= pk)) {
                cur[o++] = f, i++;
            } else {
                pm->pkg[s][o >> 5] |= 1u << (o & 31);
                cur[o++] = pk, k++;
            }
        }
        n = o;
        uint32_t *t = prev;
        prev = cur, cur = t;
    }
    kvtc__hc_pm_select(pm, m, limit);
    for (uint32_t i = 0; i < m; i++) {
        uint32_t l = 0;
        for (uint32_t s = 0; s < limit; s++)
            l += i < pm->sel[s];
        len[sorted[i]] = (uint8_t)l;
    }
}

/* Canonical code (RFC 1951 3.2.2) of symbol s of the lengths len[0..s],
 * bit-reversed (0 for an unused symbol): the first code of its length, from
 * count[0..16) (codes per length, count[0] = 0), plus the symbols before
 * it of that length. Each symbol on its own: the GPU encoder gives each
 * thread one. */
KVTC_IHD uint16_t kvtc__hc_code_of(const uint8_t *len, uint32_t s, const uint32_t *count)
{
    uint32_t l = len[s], v = 0, r = 0;
    if (!l)
        return 0;
    for (uint32_t k = 1; k <= l; k++)
        v = (v + count[k - 1]) << 1;
    for (uint32_t i = 0; i < s; i++)
        v += len[i] == l;
    for (uint32_t b = 0; b < l; b++)
        r |= ((v >> b) & 1u) << (l - 1 - b);
    return (uint16_t)r;
}

/* Canonical codes of n lengths, bit-reversed. */
KVTC_IHD void kvtc__hc_codes(const uint8_t *len, uint32_t n, uint16_t *code)
{
    uint32_t count[16];
    for (uint32_t l = 0; l < 16; l++)
        count[l] = 0;
    for (uint32_t i = 0; i < n; i++)
        count[len[i]]++;
    count[0] = 0;
    for (uint32_t i = 0; i < n; i++)
        code[i] = kvtc__hc_code_of(len, i, count);
}

/* ORs the n <= 16 bits of v (none above them) at bit *at of a zeroed
 * byte buffer: at most three bytes, each touched only if a bit lands in it. */
KVTC_IHD void kvtc__hc_put(uint8_t *buf, uint32_t *at, uint32_t v, uint32_t n)
{
    uint32_t sh = *at & 7, x = v << sh;
    uint8_t *p = buf + (*at >> 3);
    if (n) {
        p[0] |= (uint8_t)x;
        if (sh + n > 8)
            p[1] |= (uint8_t)(x >> 8);
        if (sh + n > 16)
            p[2] |= (uint8_t)(x >> 16);
    }
    *at += n;
}

/* kvtc__hc_build in three steps, so the GPU can run the middle one (codes
 * and the data's bit count) with a thread per symbol. First: the literal
 * code lengths. */
KVTC_IHD void kvtc__hc_build_lengths(const uint32_t *freq, const uint16_t *sorted, uint32_t m,
                                     struct kvtc__hcode *c, struct kvtc__hc_ws *w)
{
    for (uint32_t s = 0; s < KVTC_HC_SYMS; s++)
        c->len[s] = 0;
    kvtc__hc_lengths(freq, sorted, m, 15, c->len, &w->pm);
}

/* Last: the block header's bits from the lengths (c->len only). */
KVTC_IHD void kvtc__hc_build_header(struct kvtc__hcode *c, struct kvtc__hc_ws *w)
{
    const char *ord = KVTC_INFL_CL_ORDER;
    /* run-length code of the 257 literal/length lengths and the one
     * distance length (0), as one sequence (RFC 1951 3.2.7) */
    uint32_t nr = 0, N = KVTC_HC_SYMS + 1;
    for (uint32_t i = 0; i < 19; i++)
        w->clf[i] = 0;
    for (uint32_t i = 0; i < N;) {
        uint32_t v = i < KVTC_HC_SYMS ? c->len[i] : 0, run = 1;
        while (i + run < N && (i + run < KVTC_HC_SYMS ? c->len[i + run] : 0) == v)
            run++;
        i += run;
        if (v == 0) {
            while (run >= 11) {
                uint32_t r = run < 138 ? run : 138;
                w->rle_sym[nr] = 18, w->rle_ext[nr++] = (uint8_t)(r - 11);
                run -= r;
            }
            if (run >= 3) {
                w->rle_sym[nr] = 17, w->rle_ext[nr++] = (uint8_t)(run - 3);
                run = 0;
            }
        } else {
            w->rle_sym[nr] = (uint8_t)v, w->rle_ext[nr++] = 0;
            run--;
            while (run >= 3) {
                uint32_t r = run < 6 ? run : 6;
                w->rle_sym[nr] = 16, w->rle_ext[nr++] = (uint8_t)(r - 3);
                run -= r;
            }
        }
        while (run--)
            w->rle_sym[nr] = (uint8_t)v, w->rle_ext[nr++] = 0;
    }
    for (uint32_t i = 0; i < nr; i++)
        w->clf[w->rle_sym[i]]++;
    /* the code-length code: <= 7 bits and complete, so a lone used
     * symbol gets a 1-bit partner */
    uint32_t cm = kvtc__hc_sort(w->clf, 19, w->cls);
    if (cm == 1) {
        w->clf[w->cls[0] == 0 ? 1 : 0] = 1;
        cm = kvtc__hc_sort(w->clf, 19, w->cls);
    }
    for (uint32_t i = 0; i < 19; i++)
        w->cllen[i] = 0;
    kvtc__hc_lengths(w->clf, w->cls, cm, 7, w->cllen, &w->pm);
    kvtc__hc_codes(w->cllen, 19, w->clcode);
    uint32_t ncl = 19;
    while (ncl > 4 && w->cllen[(uint8_t)ord[ncl - 1]] == 0)
        ncl--;
    for (uint32_t i = 0; i < KVTC_HC_HDR_BYTES; i++)
        c->hdr[i] = 0;
    uint32_t at = 0;
    kvtc__hc_put(c->hdr, &at, 1, 1);       /* BFINAL */
    kvtc__hc_put(c->hdr, &at, 2, 2);       /* BTYPE 10: dynamic */
    kvtc__hc_put(c->hdr, &at, 0, 5);       /* HLIT: 257 codes */
    kvtc__hc_put(c->hdr, &at, 0, 5);       /* HDIST: 1 code */
    kvtc__hc_put(c->hdr, &at, ncl - 4, 4); /* HCLEN */
    for (uint32_t i = 0; i < ncl; i++)
        kvtc__hc_put(c->hdr, &at, w->cllen[(uint8_t)ord[i]], 3);
    for (uint32_t i = 0; i < nr; i++) {
        uint32_t s = w->rle_sym[i];
        kvtc__hc_put(c->hdr, &at, w->clcode[s], w->cllen[s]);
        if (s >= 16)
            kvtc__hc_put(c->hdr, &at, w->rle_ext[i], s == 16 ? 2 : s == 17 ? 3 : 7);
    }
    c->hdr_bits = at;
}

/* The block for literal counts freq[0..256) (freq[256], end-of-block, is
 * taken as 1) and their used symbols ascending, sorted[0..m): lengths,
 * codes, header bits and the data's bit count. */
KVTC_IHD void kvtc__hc_build(const uint32_t *freq, const uint16_t *sorted, uint32_t m,
                             struct kvtc__hcode *c, struct kvtc__hc_ws *w)
{
    kvtc__hc_build_lengths(freq, sorted, m, c, w);
    kvtc__hc_codes(c->len, KVTC_HC_SYMS, c->code);
    c->data_bits = 0;
    for (uint32_t s = 0; s < 256; s++)
        c->data_bits += (uint64_t)freq[s] * c->len[s];
    kvtc__hc_build_header(c, w);
}

/* Bytes of the Huffman form, or 0 when stored blocks are not larger. */
KVTC_IHD uint32_t kvtc__hc_huff_bytes(const struct kvtc__hcode *c, uint32_t n)
{
    uint64_t bytes = (c->hdr_bits + c->data_bits + c->len[256] + 7) / 8;
    return bytes < kvtc__hc_stored_bytes(n) ? (uint32_t)bytes : 0;
}

/* Stored block k of an n-byte piece: its 5 header bytes at dst. */
KVTC_IHD uint32_t kvtc__hc_stored_hdr(uint32_t n, uint32_t k, uint8_t *dst)
{
    uint32_t left = n - k * 65535u, len = left < 65535u ? left : 65535u;
    dst[0] = left <= 65535u;
    dst[1] = (uint8_t)len, dst[2] = (uint8_t)(len >> 8);
    dst[3] = (uint8_t)~len, dst[4] = (uint8_t)(~len >> 8);
    return len;
}

/* The reference encoder (host; the GPU's kernel writes the same bytes):
 * src[0..n), 1 <= n <= 65536, into dst (cap >= KVTC_HC_MAX_OUT) and its
 * index (kvtc__hc_subranges(n, log2) entries). Returns the bytes written. */
KVTC_IHD uint32_t kvtc__hc_encode_ref(const uint8_t *src, uint32_t n, uint32_t log2, uint8_t *dst,
                                      uint16_t *idx, struct kvtc__hcode *c,
                                      struct kvtc__hc_ws *w)
{
    uint32_t freq[KVTC_HC_SYMS];
    uint16_t sorted[KVTC_HC_SYMS];
    for (uint32_t s = 0; s < KVTC_HC_SYMS; s++)
        freq[s] = s == 256;
    for (uint32_t i = 0; i < n; i++)
        freq[src[i]]++;
    uint32_t m = kvtc__hc_sort(freq, KVTC_HC_SYMS, sorted);
    kvtc__hc_build(freq, sorted, m, c, w);
    uint32_t bytes = kvtc__hc_huff_bytes(c, n), S = kvtc__hc_subranges(n, log2);
    for (uint32_t k = 0; k < S; k++)
        idx[k] = 0;
    if (!bytes) {
        uint32_t o = 0;
        for (uint32_t k = 0; k * 65535u < n; k++) {
            uint32_t len = kvtc__hc_stored_hdr(n, k, dst + o);
            for (uint32_t i = 0; i < len; i++)
                dst[o + 5 + i] = src[k * 65535u + i];
            o += 5 + len;
        }
        return o;
    }
    for (uint32_t i = 0; i < bytes; i++)
        dst[i] = 0;
    for (uint32_t i = 0; i < (c->hdr_bits + 7) / 8; i++)
        dst[i] = c->hdr[i];
    uint32_t at = c->hdr_bits;
    for (uint32_t i = 0; i < n; i++) {
        idx[i >> log2] = (uint16_t)(idx[i >> log2] + c->len[src[i]]);
        kvtc__hc_put(dst, &at, c->code[src[i]], c->len[src[i]]);
    }
    kvtc__hc_put(dst, &at, c->code[256], c->len[256]);
    return bytes;
}

/* ---- decoding ---- */

/* Reads a piece's first block header. 0: one final dynamic block, its
 * tables built in ws and *data_start = its first data bit; 1: stored
 * blocks; else a KVTC_INFL_E* code (a fixed or non-final dynamic block is
 * not this encoder's and counts as corrupt). */
KVTC_IHD int kvtc__hd_setup(const uint8_t *src, uint32_t len, struct kvtc__inflate_ws *ws,
                            uint32_t *data_start)
{
    if ((uintptr_t)src & 3)
        return KVTC_INFL_EARG;
    struct kvtc__ibits b = {(const uint32_t *)src, (len + 3) / 4, 0, 0, 0};
    if (len == 0)
        return KVTC_INFL_EINPUT;
    kvtc__ib_refill(&b);
    uint32_t final = kvtc__ib_take(&b, 1), type = kvtc__ib_take(&b, 2);
    if (type == 0)
        return 1;
    if (type != 2 || !final)
        return KVTC_INFL_EBLOCK;
    int rc = kvtc__inflate_dynamic_ex(ws, &b, 0); /* kvtc__hd_table_* build the tables */
    if (rc)
        return rc;
    uint64_t used = kvtc__ib_used(&b);
    if (used > (uint64_t)len * 8)
        return KVTC_INFL_EINPUT;
    *data_start = (uint32_t)used;
    return 0;
}

/* Stored block k of a stored piece: walks the blocks before it (at most
 * two for 64 KiB) and checks lengths; *off / *len = its data in src, *out =
 * where it goes. Returns 1 for the final block, 0 for more, or an error
 * (a block of another type, sizes beyond n or len). */
KVTC_IHD int kvtc__hd_stored(const uint8_t *src, uint32_t len, uint32_t n, uint32_t k,
                             uint32_t *off, uint32_t *blen, uint32_t *out)
{
    uint32_t o = 0, produced = 0;
    for (uint32_t i = 0;; i++) {
        if (o + 5 > len)
            return KVTC_INFL_EINPUT;
        uint32_t h = src[o], l = src[o + 1] | (uint32_t)src[o + 2] << 8;
        uint32_t nl = src[o + 3] | (uint32_t)src[o + 4] << 8;
        if ((h & 6) != 0 || (h >> 3) != 0 || l != (~nl & 0xffffu))
            return KVTC_INFL_EBLOCK; /* stored, no stray header bits */
        if (l > len - o - 5)
            return KVTC_INFL_EINPUT;
        if (l > n - produced)
            return KVTC_INFL_EOVER;
        if (i == k) {
            *off = o + 5, *blen = l, *out = produced;
            return h & 1;
        }
        if (h & 1)
            return KVTC_INFL_EBLOCK; /* k past the final block */
        o += 5 + l, produced += l;
    }
}

/* The exact end of a stored piece: the final block (number k) ends at len
 * and fills n. */
KVTC_IHD int kvtc__hd_stored_end(uint32_t len, uint32_t n, uint32_t off, uint32_t blen,
                                 uint32_t out)
{
    return off + blen == len && out + blen == n ? 0 : KVTC_INFL_ESHORT;
}

/* The literal code as the sub-range decoders read it: one lookup for
 * codes of <= 12 bits, two for longer ones, no walk. inflate_core.h's
 * 10-bit table with its canonical walk for longer codes made a warp pay
 * the walk whenever any of its 32 lanes met a long code, which on 256
 * byte symbols is nearly every step (measured: ~1000 cycles per symbol);
 * 12 bits rather than 11 so that a warp's lanes meet a long code less
 * often (the GPU takes the second lookup only when one of them does).
 * pri entry: sym | len << 9 (len 1..15); 0x8000 | b: the codes of > 12
 * bits under this 12-bit prefix are in sec[b..b+8), indexed by the next
 * 3 bits; 0: no code. Each long code opens at most one block: sec holds
 * 257 x 8 entries. */
#define KVTC_HD_PRI 12u
#define KVTC_HD_SEC_BITS (15u - KVTC_HD_PRI)
#define KVTC_HD_SEC (KVTC_HC_SYMS << KVTC_HD_SEC_BITS)
struct kvtc__hd_table {
    uint16_t pri[1u << KVTC_HD_PRI];
    uint16_t sec[KVTC_HD_SEC];
};

#define KVTC_HD_ENTRIES ((1u << KVTC_HD_PRI) + KVTC_HD_SEC)

/* Zeroes entry e < KVTC_HD_ENTRIES (pri, then sec): all of them before any
 * kvtc__hd_table_fill. */
KVTC_IHD void kvtc__hd_table_zero(struct kvtc__hd_table *t, uint32_t e)
{
    if (e < (1u << KVTC_HD_PRI))
        t->pri[e] = 0;
    else if (e < KVTC_HD_ENTRIES)
        t->sec[e - (1u << KVTC_HD_PRI)] = 0;
}

/* The entries of one code: symbol sym, length l (1..15), canonical code
 * `code` (MSB first), p0 = the first KVTC_HD_PRI-bit prefix no short code
 * took. Codes touch disjoint entries (a long prefix's primary entry is
 * written by its first code, whose bits past the prefix are zeros), so
 * the GPU puts codes in parallel, any order. That is why a long code's
 * block of sec is numbered by its prefix's distance from p0: the long
 * codes of a complete code fill the code space's top from p0 on, one
 * block per prefix, at most one per long code (and the same numbering as
 * handing out blocks in code order). */
KVTC_IHD void kvtc__hd_table_put(struct kvtc__hd_table *t, uint32_t sym, uint32_t l,
                                 uint32_t code, uint32_t p0)
{
    uint32_t rev = 0;
    for (uint32_t b = 0; b < l; b++)
        rev |= ((code >> b) & 1u) << (l - 1 - b);
    uint16_t e = (uint16_t)(sym | l << 9);
    if (l <= KVTC_HD_PRI) {
        for (uint32_t at = rev; at < (1u << KVTC_HD_PRI); at += 1u << l)
            t->pri[at] = e;
        return;
    }
    uint32_t extra = l - KVTC_HD_PRI, blk = (code >> extra) - p0;
    if ((blk + 1) << KVTC_HD_SEC_BITS > KVTC_HD_SEC)
        return; /* cannot happen for a complete code */
    if ((code & ((1u << extra) - 1)) == 0) /* the prefix's first (leftmost) code: one writer */
        t->pri[rev & ((1u << KVTC_HD_PRI) - 1)] = (uint16_t)(0x8000 | blk << KVTC_HD_SEC_BITS);
    for (uint32_t at = rev >> KVTC_HD_PRI; at < (1u << KVTC_HD_SEC_BITS); at += 1u << extra)
        t->sec[(blk << KVTC_HD_SEC_BITS) + at] = e;
}

/* The entries of code j of the canonical code inflate_core.h built (counts
 * and symbols sorted by length, then value; j < the number of codes). */
KVTC_IHD void kvtc__hd_table_fill(const struct kvtc__huff *h, struct kvtc__hd_table *t, uint32_t j)
{
    uint32_t code = 0, first = 0, l = 1, p0 = 0;
    for (; l <= 15; l++) {
        if (l == KVTC_HD_PRI)
            p0 = code + h->count[l];
        if (j - first < h->count[l])
            break;
        first += h->count[l];
        code = (code + h->count[l]) << 1;
    }
    if (l <= 15)
        kvtc__hd_table_put(t, h->sym[j], l, code + (j - first), p0);
}

/* Number of codes of h. */
KVTC_IHD uint32_t kvtc__hd_codes(const struct kvtc__huff *h)
{
    uint32_t n = 0;
    for (uint32_t l = 1; l <= 15; l++)
        n += h->count[l];
    return n;
}

/* The whole table, serially (host reference of the GPU's parallel fill). */
KVTC_IHD void kvtc__hd_table_build(const struct kvtc__huff *h, struct kvtc__hd_table *t)
{
    for (uint32_t e = 0; e < KVTC_HD_ENTRIES; e++)
        kvtc__hd_table_zero(t, e);
    for (uint32_t j = 0, n = kvtc__hd_codes(h); j < n; j++)
        kvtc__hd_table_fill(h, t, j);
}

KVTC_IHD int kvtc__hd_sym(const struct kvtc__hd_table *t, struct kvtc__ibits *b)
{
    kvtc__ib_refill(b);
    uint32_t e = t->pri[b->buf & ((1u << KVTC_HD_PRI) - 1)];
    if (e & 0x8000)
        e = t->sec[(e & 0x7fff) +
                   ((uint32_t)(b->buf >> KVTC_HD_PRI) & ((1u << KVTC_HD_SEC_BITS) - 1))];
    uint32_t n = (e >> 9) & 15;
    if (!n)
        return KVTC_INFL_ESYM;
    b->buf >>= n;
    b->nb -= n;
    return (int)(e & 511);
}

/* Decodes exactly `count` literals from bit `start` into dst (8-byte
 * aligned, count bytes); *end = the bit after them. */
KVTC_IHD int kvtc__hd_run(const struct kvtc__hd_table *lit, const uint8_t *src, uint32_t len,
                          uint64_t start, uint32_t count, uint8_t *dst, uint64_t *end)
{
    uint32_t nw = (len + 3) / 4, wi = (uint32_t)(start >> 5);
    struct kvtc__ibits b = {(const uint32_t *)src, nw, wi < nw ? wi : nw, 0, 0};
    if (wi >= nw)
        return KVTC_INFL_EINPUT;
    kvtc__ib_refill(&b);
    kvtc__ib_take(&b, (uint32_t)(start & 31));
    struct kvtc__iout o = {(uint64_t *)dst, 0, count, 0};
    for (uint32_t i = 0; i < count; i++) {
        int sym = kvtc__hd_sym(lit, &b);
        if (sym < 0)
            return sym;
        if (sym > 255)
            return KVTC_INFL_ESYM; /* end-of-block or a length: not here */
        kvtc__io_put(&o, (uint32_t)sym);
    }
    for (uint32_t at = o.pos & ~7u; at < o.pos; at++)
        dst[at] = (uint8_t)(o.acc >> (8 * (at & 7)));
    *end = kvtc__ib_used(&b);
    return 0;
}

/* After the last sub-range (ending at bit `at`): the end-of-block code,
 * then zero padding to exactly len bytes. */
KVTC_IHD int kvtc__hd_tail(const struct kvtc__hd_table *lit, const uint8_t *src, uint32_t len,
                           uint64_t at)
{
    uint32_t nw = (len + 3) / 4, wi = (uint32_t)(at >> 5);
    if (wi >= nw)
        return KVTC_INFL_EINPUT;
    struct kvtc__ibits b = {(const uint32_t *)src, nw, wi, 0, 0};
    kvtc__ib_refill(&b);
    kvtc__ib_take(&b, (uint32_t)(at & 31));
    if (kvtc__hd_sym(lit, &b) != 256)
        return KVTC_INFL_ESYM;
    uint64_t e = kvtc__ib_used(&b);
    if ((e + 7) / 8 != len)
        return e > (uint64_t)len * 8 ? KVTC_INFL_EINPUT : KVTC_INFL_ESHORT;
    uint32_t pad = (uint32_t)((8 - (e & 7)) & 7);
    return kvtc__ib_take(&b, pad) == 0 ? 0 : KVTC_INFL_EBLOCK;
}

/* Entry k of an index read from (possibly unaligned) bytes. */
KVTC_IHD uint32_t kvtc__hd_entry(const uint8_t *idx, uint32_t k)
{
    return idx[2 * k] | (uint32_t)idx[2 * k + 1] << 8;
}

/* The reference decoder (host; the GPU runs the same steps, one thread
 * per sub-range): src[0..len) (4-byte aligned, readable to a multiple of
 * 4) with its index into exactly n bytes at dst (8-byte aligned). */
KVTC_IHD int kvtc__hd_piece(const uint8_t *src, uint32_t len, const uint8_t *idx, uint32_t log2,
                            uint8_t *dst, uint32_t n, struct kvtc__inflate_ws *ws,
                            struct kvtc__hd_table *tab)
{
    if (n == 0 || n > KVTC_INFL_MAX_OUT || log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX ||
        ((uintptr_t)dst & 7))
        return KVTC_INFL_EARG;
    uint32_t S = kvtc__hc_subranges(n, log2), start = 0;
    int rc = kvtc__hd_setup(src, len, ws, &start);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        for (uint32_t k = 0; k < S; k++)
            if (kvtc__hd_entry(idx, k))
                return KVTC_INFL_EBLOCK;
        for (uint32_t k = 0;; k++) {
            uint32_t off, blen, out;
            int fin = kvtc__hd_stored(src, len, n, k, &off, &blen, &out);
            if (fin < 0)
                return fin;
            for (uint32_t i = 0; i < blen; i++)
                dst[out + i] = src[off + i];
            if (fin)
                return kvtc__hd_stored_end(len, n, off, blen, out);
        }
    }
    kvtc__hd_table_build(&ws->lit, tab);
    uint64_t at = start;
    for (uint32_t k = 0; k < S; k++) {
        uint32_t count = k + 1 < S ? 1u << log2 : n - (k << log2);
        uint64_t end, want = at + kvtc__hd_entry(idx, k);
        if ((rc = kvtc__hd_run(tab, src, len, at, count, dst + ((size_t)k << log2), &end)))
            return rc;
        if (end != want)
            return KVTC_INFL_ESHORT;
        at = want;
    }
    return kvtc__hd_tail(tab, src, len, at);
}

#endif
