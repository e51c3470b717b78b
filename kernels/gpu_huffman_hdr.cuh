/* gpu_huffman_hdr.cuh - a piece's block header read by one warp, for
 * gpu_huffman_dec.cu.
 *
 * Thread 0 alone took ~137k cycles a piece for it (session 9's probe), a
 * sixth of the decoder's block. Here the code-length code, the literal
 * code's counts and each code's rank go across the warp; only the run of
 * code lengths is read serially (a 7-bit lookup a symbol): ~51k cycles.
 * The warp only accepts: any header it does not take (stored blocks, a bad
 * or unusual header, one past its window) goes to thread 0's
 * kvtc__hd_setup, whose verdict is the reference's; a header the warp
 * takes, kvtc__hd_setup takes too, with the same code and first data bit
 * (tests/gpu/test_gpu_huffman.c: damaged headers). */
#ifndef KVTC_KERNELS_GPU_HUFFMAN_HDR_CUH
#define KVTC_KERNELS_GPU_HUFFMAN_HDR_CUH

#include "huff_core.h"

#define HW_WORDS 144u /* 4608 bits >= the longest header, 17 + 57 + 316 x 14 */

struct hdr_ws {
    uint32_t w[HW_WORDS + 1]; /* the piece's first words, zero past its end */
    uint32_t count[16], first[16];
    uint32_t nlen, p0, start;
    uint16_t rank[288]; /* a literal code's place among those of its length */
    uint8_t lens[320];  /* literal/length, then distance code lengths */
    uint8_t cl[20], cl_tab[128]; /* code-length code: lengths, 7-bit table */
};

/* n <= 32 bits at bit pos of w (pos < 32 x HW_WORDS). */
__device__ static inline uint32_t hbits(const uint32_t *w, uint32_t pos, uint32_t n)
{
    uint64_t v = w[pos >> 5] | (uint64_t)w[(pos >> 5) + 1] << 32;
    return (uint32_t)(v >> (pos & 31)) & ((1u << n) - 1);
}

/* kvtc__huff_build_ex's checks on counts c[1..15] (kind 0, 1 or 2). */
__device__ static inline int code_ok(const uint32_t *c, int kind)
{
    int left = 1, max = 0;
    for (int l = 1; l < 16; l++) {
        left = (left << 1) - (int)c[l];
        if (left < 0)
            return 0;
        if (c[l])
            max = l;
    }
    return !(left > 0 && (kind == 0 || max > 1 || (max == 0 && kind != 2)));
}

/* 1 when the warp took the header: h->lens, rank, first, p0, nlen and
 * start (the first data bit) set; 0: thread 0's kvtc__hd_setup decides. */
__device__ static int warp_header(const uint8_t *src, uint32_t len, hdr_ws *h, uint32_t lane)
{
    if (((uintptr_t)src & 3) || len == 0)
        return 0;
    const uint32_t *g = (const uint32_t *)src;
    uint32_t nw = (len + 3) / 4;
    for (uint32_t k = lane; k <= HW_WORDS; k += 32)
        h->w[k] = k < nw && k < HW_WORDS ? g[k] : 0;
    __syncwarp();
    const uint32_t *w = h->w;
    uint32_t hd = hbits(w, 0, 17);
    uint32_t nlen = ((hd >> 3) & 31) + 257, ndist = ((hd >> 8) & 31) + 1, ncode = (hd >> 13) + 4;
    if ((hd & 7) != 5 || nlen > 286 || ndist > 30)
        return 0; /* not one final dynamic block, or bad counts */
    /* the code-length code: lane s has symbol s's length */
    const char *ord = KVTC_INFL_CL_ORDER;
    if (lane < 19)
        h->cl[(uint8_t)ord[lane]] = (uint8_t)(lane < ncode ? hbits(w, 17 + 3 * lane, 3) : 0);
    __syncwarp();
    uint32_t cl = lane < 19 ? h->cl[lane] : 0, c[16] = {0}, code = 0, first = 0;
    for (uint32_t l = 1; l < 8; l++)
        c[l] = __popc(__ballot_sync(~0u, cl == l));
    if (!code_ok(c, 0))
        return 0;
    for (uint32_t l = 1; l < 8; l++) {
        if (l == cl)
            first = code;
        code = (code + c[l]) << 1;
    }
    uint32_t lt = (1u << lane) - 1, m = __match_any_sync(~0u, cl);
    if (cl) /* canonical: its length's first code plus the lower symbols of that length */
        for (uint32_t at = __brev(first + __popc(m & lt)) >> (32 - cl); at < 128; at += 1u << cl)
            h->cl_tab[at] = (uint8_t)(lane | cl << 5);
    __syncwarp();
    /* the run of code lengths, serially */
    uint32_t pos = 17 + 3 * ncode, total = nlen + ndist, bad = 0;
    if (lane == 0) {
        for (uint32_t i = 0; i < total && !bad;) {
            if (pos + 14 > HW_WORDS * 32) {
                bad = 1;
                break;
            }
            uint32_t v = hbits(w, pos, 14), e = h->cl_tab[v & 127], sym = e & 31;
            v >>= e >> 5;
            pos += e >> 5;
            if (sym < 16) {
                h->lens[i++] = (uint8_t)sym;
                continue;
            }
            uint32_t rep, val = 0;
            if (sym == 16) {
                bad = i == 0;
                val = i ? h->lens[i - 1] : 0;
                rep = 3 + (v & 3), pos += 2;
            } else if (sym == 17) {
                rep = 3 + (v & 7), pos += 3;
            } else {
                rep = 11 + (v & 127), pos += 7;
            }
            bad |= i + rep > total;
            for (uint32_t k = 0; k < rep && !bad; k++)
                h->lens[i++] = (uint8_t)val;
        }
        bad |= h->lens[256] == 0 || pos > len * 8;
    }
    if (__shfl_sync(~0u, bad, 0))
        return 0;
    pos = __shfl_sync(~0u, pos, 0);
    __syncwarp();
    /* the literal/length code: counts and ranks, 32 symbols a round */
    if (lane < 16)
        h->count[lane] = 0;
    __syncwarp();
    for (uint32_t r = 0; r < nlen; r += 32) {
        uint32_t sym = r + lane, l = sym < nlen ? h->lens[sym] : 0;
        m = __match_any_sync(~0u, l);
        uint32_t below = __popc(m & lt), base = h->count[l];
        __syncwarp();
        if (l)
            h->rank[sym] = (uint16_t)(base + below);
        if (below == 0)
            h->count[l] += __popc(m);
        __syncwarp();
    }
    for (uint32_t l = 1; l < 16; l++)
        c[l] = h->count[l];
    if (!code_ok(c, 1))
        return 0;
    /* the distance code's checks (ndist <= 30 lengths) */
    uint32_t dl = lane < ndist ? h->lens[nlen + lane] : 0, d[16] = {0};
    for (uint32_t l = 1; l < 16; l++)
        d[l] = __popc(__ballot_sync(~0u, dl == l));
    if (!code_ok(d, 2))
        return 0;
    if (lane == 0) {
        code = 0;
        for (uint32_t l = 1; l < 16; l++) {
            h->first[l] = code;
            if (l == KVTC_HD_PRI)
                h->p0 = code + c[l];
            code = (code + c[l]) << 1;
        }
        h->nlen = nlen;
        h->start = pos;
    }
    __syncwarp();
    return 1;
}

#endif
