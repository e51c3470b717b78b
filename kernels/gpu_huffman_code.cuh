/* gpu_huffman_code.cuh - the Huffman code of a piece and its block header
 * built by a block of ENC_T threads (gpu_huffman_enc.cu's), each step
 * spread over the block where kvtc__hc_build (huff_core.h) walks one
 * entry at a time, and giving the same lengths, codes and header bits:
 * - pm_lengths: package-merge, a thread per list entry per level;
 * - par_header: the run-length code of the lengths placed by a scan, the
 *   code-length code by pm_lengths, its bits OR-ed at scanned offsets.
 * Included by gpu_huffman_enc.cu only. */
#ifndef KVTC_KERNELS_GPU_HUFFMAN_CODE_CUH
#define KVTC_KERNELS_GPU_HUFFMAN_CODE_CUH

#include "huff_core.h"

#ifndef ENC_T
#error "ENC_T (the encoder's threads per block) first"
#endif

/* Exclusive prefix sum of v over the block's ENC_T threads; *total gets
 * the sum. ws: ENC_T / 32 words of shared scratch. Every thread calls it. */
__device__ static uint32_t blk_scan(uint32_t v, uint32_t *ws, uint32_t *total)
{
    uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, incl = v;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint32_t u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += u;
    }
    __syncthreads(); /* ws may still be read by a previous scan */
    if (lane == 31)
        ws[warp] = incl;
    __syncthreads();
    uint32_t base = 0, all = 0;
    for (uint32_t k = 0; k < ENC_T / 32; k++) {
        base += k < warp ? ws[k] : 0;
        all += ws[k];
    }
    *total = all;
    return base + incl - v;
}

/* kvtc__hc_lengths with the block's threads: the same package-merge lists
 * (a leaf's place: its index plus the packages lighter than it; a
 * package's: its index plus the leaves not heavier), so the same lengths.
 * lw[0..m): the leaves' weights, ascending (sorted's order); sets
 * len[sorted[i]] for i < m. Block-uniform arguments; ends synchronized. */
__device__ static void pm_lengths(const uint32_t *lw, const uint16_t *sorted, uint32_t m,
                                  uint32_t limit, uint8_t *len, kvtc__hc_pm *pm)
{
    uint32_t t = threadIdx.x;
    if (m <= 1) {
        if (m == 1 && t == 0)
            len[sorted[0]] = 1;
        __syncthreads();
        return;
    }
    for (uint32_t j = t; j < limit * KVTC_HC_PM_WORDS; j += ENC_T)
        pm->pkg[j / KVTC_HC_PM_WORDS][j % KVTC_HC_PM_WORDS] = 0;
    for (uint32_t i = t; i < m; i += ENC_T)
        pm->w[0][i] = lw[i];
    __syncthreads();
    uint32_t n = m;
    for (uint32_t s = 1; s < limit; s++) {
        const uint32_t *prev = pm->w[(s - 1) & 1];
        uint32_t *cur = pm->w[s & 1], np = n / 2;
        for (uint32_t x = t; x < m + np; x += ENC_T) {
            uint32_t lo = 0, hi, v, pos;
            if (x < m) {
                v = lw[x], hi = np;
                while (lo < hi) {
                    uint32_t mid = (lo + hi) >> 1;
                    if (prev[2 * mid] + prev[2 * mid + 1] < v)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                pos = x + lo;
            } else {
                uint32_t k = x - m;
                v = prev[2 * k] + prev[2 * k + 1], hi = m;
                while (lo < hi) {
                    uint32_t mid = (lo + hi) >> 1;
                    if (lw[mid] <= v)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                pos = k + lo;
                atomicOr(&pm->pkg[s][pos >> 5], 1u << (pos & 31));
            }
            cur[pos] = v;
        }
        n = m + np;
        __syncthreads();
    }
    if (t < 32) { /* kvtc__hc_pm_select, a word of flags a lane */
        uint32_t k = 2 * m - 2;
        for (uint32_t s = limit; s-- > 0;) {
            uint32_t wv = 0;
            if (t < KVTC_HC_PM_WORDS && 32 * t < k) {
                wv = pm->pkg[s][t];
                if (k - 32 * t < 32)
                    wv &= (1u << (k - 32 * t)) - 1;
            }
            uint32_t p = (uint32_t)__popc(wv);
            for (uint32_t o = 16; o > 0; o >>= 1)
                p += __shfl_xor_sync(0xffffffffu, p, o);
            if (t == 0)
                pm->sel[s] = k - p;
            k = 2 * p;
        }
    }
    __syncthreads();
    for (uint32_t i = t; i < m; i += ENC_T) {
        uint32_t l = 0;
        for (uint32_t s = 0; s < limit; s++)
            l += i < pm->sel[s];
        len[sorted[i]] = (uint8_t)l;
    }
    __syncthreads();
}

/* Run-length symbols of a run of r >= 1 lengths v (kvtc__hc_build_header's
 * rules): how many, or, with sym != NULL, written there too. */
__device__ static uint32_t rle_run(uint32_t v, uint32_t r, uint8_t *sym, uint8_t *ext)
{
    uint32_t n = 0;
    if (v == 0) {
        while (r >= 11) {
            uint32_t k = r < 138 ? r : 138;
            if (sym)
                sym[n] = 18, ext[n] = (uint8_t)(k - 11);
            n++, r -= k;
        }
        if (r >= 3) {
            if (sym)
                sym[n] = 17, ext[n] = (uint8_t)(r - 3);
            n++, r = 0;
        }
    } else {
        if (sym)
            sym[n] = (uint8_t)v, ext[n] = 0;
        n++, r--;
        while (r >= 3) {
            uint32_t k = r < 6 ? r : 6;
            if (sym)
                sym[n] = 16, ext[n] = (uint8_t)(k - 3);
            n++, r -= k;
        }
    }
    for (; r > 0; r--) {
        if (sym)
            sym[n] = (uint8_t)v, ext[n] = 0;
        n++;
    }
    return n;
}

/* ORs the n <= 25 bits of v at bit `at` of zeroed shared words. */
__device__ static inline void hw_put(uint32_t *hw, uint32_t at, uint32_t v, uint32_t n)
{
    uint32_t sh = at & 31;
    atomicOr(hw + (at >> 5), v << sh);
    if (sh + n > 32)
        atomicOr(hw + (at >> 5) + 1, v >> (32 - sh));
}

/* The first canonical code of length l (RFC 1951 3.2.2) from the counts
 * of codes per length (count[0] = 0). */
__device__ static inline uint32_t first_code(const uint32_t *count, uint32_t l)
{
    uint32_t v = 0;
    for (uint32_t k = 1; k <= l; k++)
        v = (v + count[k - 1]) << 1;
    return v;
}

/* The header's state in shared memory. */
struct hdr_sh {
    uint32_t starts[(KVTC_HC_SYMS + 1 + 31) / 32]; /* run starts of the 258 lengths */
    uint32_t clf[19], lw[19], cnt[16], ncl, cm;
    uint16_t cls[19], clcode[19];
    uint8_t cllen[19];
    uint8_t sym[2 * ENC_T], ext[2 * ENC_T];
};

/* kvtc__hc_build_header with the block's threads: the same symbols, code
 * and bits, OR-ed into hw (KVTC_HC_HDR_BYTES / 4 words, zeroed here);
 * sets c->hdr_bits. c->len complete. ws: blk_scan's scratch. */
__device__ static void par_header(kvtc__hcode *c, hdr_sh *h, kvtc__hc_pm *pm, uint32_t *hw,
                                  uint32_t *ws)
{
    const uint32_t N = KVTC_HC_SYMS + 1; /* 257 literal/length lengths + 1 distance */
    uint32_t t = threadIdx.x, total;
    for (uint32_t k = t; k < KVTC_HC_HDR_BYTES / 4; k += ENC_T)
        hw[k] = 0;
    if (t < sizeof h->starts / 4)
        h->starts[t] = 0;
    if (t < 19)
        h->clf[t] = 0, h->cllen[t] = 0;
    if (t == 0)
        h->ncl = 4;
    __syncthreads();
#define LEN_AT(i) ((i) < KVTC_HC_SYMS ? (uint32_t)c->len[i] : 0u)
    for (uint32_t i = t; i < N; i += ENC_T)
        if (i == 0 || LEN_AT(i) != LEN_AT(i - 1))
            atomicOr(&h->starts[i >> 5], 1u << (i & 31));
    __syncthreads();
    /* thread t: positions 2t and 2t + 1; a run's symbols at its start */
    uint32_t r_len[2] = {0, 0}, cnt = 0;
    for (uint32_t j = 0; j < 2; j++) {
        uint32_t i = 2 * t + j;
        if (i >= N || !(h->starts[i >> 5] >> (i & 31) & 1))
            continue;
        uint32_t e = i + 1; /* the next start, or N */
        while (e < N) {
            uint32_t wv = h->starts[e >> 5] >> (e & 31);
            if (wv) {
                e += (uint32_t)__ffs(wv) - 1;
                break;
            }
            e = (e | 31) + 1;
        }
        r_len[j] = (e < N ? e : N) - i;
        cnt += rle_run(LEN_AT(i), r_len[j], NULL, NULL);
    }
    uint32_t o = blk_scan(cnt, ws, &total), nr = total;
    for (uint32_t j = 0; j < 2; j++)
        if (r_len[j]) {
            uint32_t i = 2 * t + j, k = rle_run(LEN_AT(i), r_len[j], h->sym + o, h->ext + o);
            for (uint32_t q = 0; q < k; q++)
                atomicAdd(&h->clf[h->sym[o + q]], 1u);
            o += k;
        }
#undef LEN_AT
    __syncthreads();
    /* the code-length code: <= 7 bits and complete, so a lone used symbol
     * gets a 1-bit partner (kvtc__hc_build_header's order: rank by
     * (count, symbol)) */
    uint32_t mine = t < 19 ? h->clf[t] : 0;
    uint32_t cm = (uint32_t)__syncthreads_count(mine != 0);
    if (cm == 1) {
        if (mine)
            h->clf[t == 0 ? 1 : 0] = 1;
        cm = 2;
    }
    __syncthreads();
    if (t < 19 && h->clf[t]) {
        uint32_t f = h->clf[t], r = 0;
        for (uint32_t j = 0; j < 19; j++)
            r += h->clf[j] && (h->clf[j] < f || (h->clf[j] == f && j < t));
        h->cls[r] = (uint16_t)t;
        h->lw[r] = f;
    }
    __syncthreads();
    pm_lengths(h->lw, h->cls, cm, 7, h->cllen, pm);
    const char *ord = KVTC_INFL_CL_ORDER;
    if (t < 16)
        h->cnt[t] = 0;
    __syncthreads();
    if (t < 19) {
        if (h->cllen[t])
            atomicAdd(&h->cnt[h->cllen[t]], 1u);
        if (h->cllen[(uint8_t)ord[t]])
            atomicMax(&h->ncl, t + 1);
    }
    __syncthreads();
    if (t < 19)
        h->clcode[t] = kvtc__hc_code_of(h->cllen, t, h->cnt);
    __syncthreads();
    uint32_t ncl = h->ncl;
    if (t == 0) /* BFINAL 1, BTYPE 10, HLIT 257, HDIST 1, HCLEN */
        hw_put(hw, 0, 1u | 2u << 1 | (ncl - 4) << 13, 17);
    if (t < ncl)
        hw_put(hw, 17 + 3 * t, h->cllen[(uint8_t)ord[t]], 3);
    uint32_t b[2] = {0, 0};
    for (uint32_t j = 0; j < 2; j++) {
        uint32_t q = 2 * t + j;
        if (q < nr) {
            uint32_t s = h->sym[q];
            b[j] = h->cllen[s] + (s < 16 ? 0 : s == 16 ? 2 : s == 17 ? 3 : 7);
        }
    }
    uint32_t at = 17 + 3 * ncl + blk_scan(b[0] + b[1], ws, &total);
    for (uint32_t j = 0; j < 2; j++) {
        uint32_t q = 2 * t + j;
        if (q >= nr)
            continue;
        uint32_t s = h->sym[q], l = h->cllen[s];
        hw_put(hw, at, h->clcode[s] | (uint32_t)h->ext[q] << l, b[j]);
        at += b[j];
    }
    if (t == 0)
        c->hdr_bits = 17 + 3 * ncl + total;
    __syncthreads();
}

#endif
