/* gpu_huffman_enc.cu - our Huffman-only DEFLATE encoder (huff_core.h), a
 * block of 256 threads per piece, every step spread over the block (a
 * probe of the first version, session 8: one thread building the code and
 * the header and a __match_any_sync histogram were ~80% of a block's time):
 * - byte counts in per-lane 16-bit counters (a bank per lane: no
 *   conflicts, no matching), summed per symbol;
 * - a parallel rank sort of the used symbols;
 * - the code lengths by package-merge, a thread per list entry per level
 *   (kvtc__hc_lengths builds the same lists one entry at a time);
 * - canonical codes from per-warp ballots of each length;
 * - the block header: run-length symbols placed by a scan over the runs,
 *   the code-length code by the same package-merge, its bits OR-ed into
 *   shared words at offsets from a scan;
 * - the bits: a warp per 8 KiB of the piece in 128-byte windows, a lane
 *   per 4-byte word (see the comment at the write below).
 * The bytes equal kvtc__hc_encode_ref's (tests/gpu/test_gpu_huffman.c).
 * docs/perf-notes.md, "The Huffman encoder without serial steps", has the
 * probe's numbers for each step. */
#include <cuda_runtime.h>

#include "gpu_huffman.h"
#include "huff_core.h"

extern "C" {
#include "kvtc_errors.h"
}

#define ENC_T 256u
#define WARP_BYTES (65536u / (ENC_T / 32)) /* a warp's share of a full piece */
#define RING 128u /* a window adds <= 60 words to the <= 1 pending */

#include "gpu_huffman_code.cuh"
static_assert(ENC_T == 256, "a thread per literal (histogram, rank, count)");

/* Shared memory the warp functions below use too (file scope: 32-bit
 * shared addresses, no pointer registers in their loops). scratch: per-lane
 * 16-bit byte counters (two symbols a word), then package-merge's lists,
 * then a ring of RING words per warp. */
__shared__ __align__(16) uint32_t scratch[128 * 32];
__shared__ uint32_t ctab[KVTC_HC_SYMS]; /* code | length << 16 */
__shared__ uint32_t nib[32];            /* lengths as nibbles: 8 symbols a word */

/* A lane's symbols of a window: the 4 bytes at p (4-byte aligned), fewer
 * at the piece's end (*ns of them, none past it). */
__device__ static inline uint32_t load_syms(const uint8_t *s, uint32_t p, uint32_t len,
                                            uint32_t *ns)
{
    if (p + 4 <= len) {
        *ns = 4;
        return *(const uint32_t *)(s + p);
    }
    uint32_t v = 0, n = p < len ? len - p : 0;
    for (uint32_t k = 0; k < n; k++)
        v |= (uint32_t)s[p + k] << (8 * k);
    *ns = n;
    return v;
}

/* ORs the n <= 60 bits of v at bit p of the output into a warp's ring of
 * RING shared words from scratch[ring] (word w of the output at
 * scratch[ring + w % RING]). */
__device__ static inline void ring_or(uint32_t ring, uint32_t p, uint64_t v, uint32_t n)
{
    uint32_t sh = p & 31, w = p >> 5;
    atomicOr(&scratch[ring + w % RING], (uint32_t)(v << sh));
    uint64_t hi = sh ? v >> (32 - sh) : v >> 32; /* from the next word's bit 0 */
    if (sh + n > 32)
        atomicOr(&scratch[ring + (w + 1) % RING], (uint32_t)hi);
    if (sh + n > 64)
        atomicOr(&scratch[ring + (w + 2) % RING], (uint32_t)(hi >> 32));
}

/* Code lengths of a lane's ns symbols of v, from the nibble table. */
__device__ __forceinline__ static uint32_t nib_bits(uint32_t v, uint32_t ns)
{
    uint32_t b = 0;
#pragma unroll
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t sym = (v >> (8 * k)) & 255;
        b += k < ns ? (nib[sym >> 3] >> (4 * (sym & 7))) & 15 : 0;
    }
    return b;
}

/* The bits of a warp's share [w0, w1) of the piece, a sub-range (2^log2
 * >= 256 bytes: whole windows but at the piece's end) at a time: each
 * lane's words of 4 windows loaded before they are counted (loads in
 * flight, not one window's latency after another's), one warp sum per
 * sub-range for its index entry. Returns the total. */
__device__ __noinline__ static uint32_t warp_bits(const uint8_t *s, uint32_t w0, uint32_t w1,
                                                  uint32_t len, uint32_t log2, uint16_t *ix)
{
    uint32_t lane = threadIdx.x & 31, mine = 0;
    const uint32_t *s32 = (const uint32_t *)s + lane;
    for (uint32_t sr = w0; sr < w1; sr += 1u << log2) { /* none for warps past the piece */
        uint32_t end = sr + (1u << log2) < w1 ? sr + (1u << log2) : w1;
        uint32_t whole = sr + ((end - sr) & ~127u), win = sr, b = 0;
        for (; win + 512 <= whole; win += 512) {
            uint32_t v0 = s32[win / 4], v1 = s32[win / 4 + 32], v2 = s32[win / 4 + 64],
                     v3 = s32[win / 4 + 96];
            b += nib_bits(v0, 4) + nib_bits(v1, 4) + nib_bits(v2, 4) + nib_bits(v3, 4);
        }
        for (; win < whole; win += 128)
            b += nib_bits(s32[win / 4], 4);
        if (whole < end) {
            uint32_t ns, v = load_syms(s, whole + 4 * lane, len, &ns);
            b += nib_bits(v, ns);
        }
        for (uint32_t o = 16; o > 0; o >>= 1)
            b += __shfl_xor_sync(0xffffffffu, b, o);
        if (lane == 0)
            ix[sr >> log2] = (uint16_t)b;
        mine += b;
    }
    return mine;
}

/* One window of a warp: each lane's ns symbols of v OR-ed at its offset
 * into the ring, then the ring's complete words out to d; returns the bit
 * after the window. first_w: the warp's first word, the previous warp's
 * too when shared_first. */
__device__ __forceinline__ static uint32_t win_put(uint32_t v, uint32_t ns, uint32_t ring,
                                                    uint32_t *d, uint32_t pos, uint32_t first_w,
                                                    int shared_first)
{
    uint32_t lane = threadIdx.x & 31, nb = 0;
    uint64_t acc = 0;
#pragma unroll
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t e = k < ns ? ctab[(v >> (8 * k)) & 255] : 0;
        acc |= (uint64_t)(e & 0xffffu) << nb;
        nb += e >> 16;
    }
    uint32_t incl = nb;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint32_t x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += x;
    }
    if (nb)
        ring_or(ring, pos + incl - nb, acc, nb);
    uint32_t from = pos >> 5;
    pos += __shfl_sync(0xffffffffu, incl, 31);
    __syncwarp();
    for (uint32_t wi = from + lane; wi < pos >> 5; wi += 32) { /* complete words */
        uint32_t x = scratch[ring + wi % RING];
        scratch[ring + wi % RING] = 0;
        if (wi == first_w && shared_first)
            atomicOr(d + wi, x);
        else
            d[wi] = x;
    }
    __syncwarp();
    return pos;
}

/* A warp's codes of windows [w0, w1) from bit pos on, the end-of-block
 * code after them if `last`; shared_first: its first word is the
 * previous warp's too. The ring is zeroed but for the header's last bits
 * (warp 0). Whole windows take no bounds checks (bit positions in a
 * piece's output: < 2^20). */
__device__ __noinline__ static void warp_write(const uint8_t *s, uint32_t w0, uint32_t w1,
                                               uint32_t len, uint32_t ring, uint32_t *d,
                                               uint32_t pos, int shared_first, int last)
{
    uint32_t lane = threadIdx.x & 31, first_w = pos >> 5, whole = w0 + ((w1 - w0) & ~127u);
    const uint32_t *s32 = (const uint32_t *)s + lane;
    uint32_t next = w0 < whole ? s32[w0 / 4] : 0; /* a window's load ahead */
    for (uint32_t win = w0; win < whole; win += 128) {
        uint32_t v = next;
        if (win + 128 < whole)
            next = s32[win / 4 + 32];
        pos = win_put(v, 4, ring, d, pos, first_w, shared_first);
    }
    if (whole < w1) {
        uint32_t ns, v = load_syms(s, whole + 4 * lane, len, &ns);
        pos = win_put(v, ns, ring, d, pos, first_w, shared_first);
    }
    uint32_t from = pos >> 5; /* the words before it are out */
    if (last) { /* the end of block after the piece's last symbol */
        if (lane == 0)
            ring_or(ring, pos, ctab[256] & 0xffffu, ctab[256] >> 16);
        pos += ctab[256] >> 16;
        __syncwarp();
    }
    uint32_t endw = (pos + 31) >> 5;
    for (uint32_t wi = from + lane; wi < endw; wi += 32) {
        uint32_t x = scratch[ring + wi % RING];
        if ((wi == first_w && shared_first) || (wi + 1 == endw && (pos & 31)))
            atomicOr(d + wi, x); /* a neighbour's word too */
        else
            d[wi] = x;
    }
}

__global__ void __launch_bounds__(ENC_T, 8) /* 8 blocks an SM: ~1000 pieces in one wave */
    k_huff_enc(const void *const *src, const size_t *src_len, uint64_t n, void *const *dst,
               size_t *dst_len, uint16_t *const *idx, uint32_t log2, int32_t *status)
{
    __shared__ uint32_t freq[KVTC_HC_SYMS], lw[KVTC_HC_SYMS];
    __shared__ uint16_t sorted[KVTC_HC_SYMS];
    __shared__ kvtc__hcode c;
    __shared__ hdr_sh h;
    __shared__ uint32_t hw[KVTC_HC_HDR_BYTES / 4];
    __shared__ uint32_t ws[ENC_T / 32];
    __shared__ uint32_t lcount[ENC_T / 32][16], cnt[16], wbits[ENC_T / 32];
    static_assert(sizeof(kvtc__hc_pm) <= sizeof scratch, "package-merge lists fit the counters");
    kvtc__hc_pm *pm = (kvtc__hc_pm *)scratch; /* the counts are summed by then */
    uint64_t i = blockIdx.x + (uint64_t)blockIdx.y * gridDim.x;
    uint32_t t = threadIdx.x, lane = t & 31, warp = t >> 5;
    if (i >= n)
        return;
    size_t len_ = src_len[i];
    if (len_ == 0 || len_ > 65536) {
        if (t == 0)
            status[i] = KVTC_EINVAL, dst_len[i] = 0;
        return;
    }
    uint32_t len = (uint32_t)len_;
    const uint8_t *s = (const uint8_t *)src[i];
    uint8_t *d8 = (uint8_t *)dst[i];
    uint32_t *d = (uint32_t *)dst[i];
    uint16_t *ix = idx[i];
    for (uint32_t k = t; k < 128 * 32; k += ENC_T)
        scratch[k] = 0;
    __syncthreads();
    /* A lane's counters live in its own bank: no two lanes of a warp ever
     * touch one bank, skewed data or not. <= 8 x 256 bytes per counter. */
#define COUNT_BYTE(b) atomicAdd(&scratch[((b) >> 1) * 32 + lane], 1u << (((b) & 1) << 4))
#define COUNT_WORD(v)                                                                              \
    do {                                                                                           \
        COUNT_BYTE((v) & 255);                                                                     \
        COUNT_BYTE(((v) >> 8) & 255);                                                              \
        COUNT_BYTE(((v) >> 16) & 255);                                                             \
        COUNT_BYTE((v) >> 24);                                                                     \
    } while (0)
    uint32_t done = 0;
    if (((uintptr_t)s & 15) == 0) {
        uint32_t nv = len / 16;
        uint32_t q = t;
        for (; q + ENC_T < nv; q += 2 * ENC_T) { /* two loads in flight */
            uint4 a4 = ((const uint4 *)s)[q], b4 = ((const uint4 *)s)[q + ENC_T];
            COUNT_WORD(a4.x);
            COUNT_WORD(a4.y);
            COUNT_WORD(a4.z);
            COUNT_WORD(a4.w);
            COUNT_WORD(b4.x);
            COUNT_WORD(b4.y);
            COUNT_WORD(b4.z);
            COUNT_WORD(b4.w);
        }
        if (q < nv) {
            uint4 a4 = ((const uint4 *)s)[q];
            COUNT_WORD(a4.x);
            COUNT_WORD(a4.y);
            COUNT_WORD(a4.z);
            COUNT_WORD(a4.w);
        }
        done = nv * 16;
    } else { /* 4-byte aligned (the API's promise) */
        uint32_t nq = len / 4;
        for (uint32_t q = t; q < nq; q += ENC_T) {
            uint32_t v = ((const uint32_t *)s)[q];
            COUNT_WORD(v);
        }
        done = nq * 4;
    }
    for (uint32_t q = done + t; q < len; q += ENC_T)
        COUNT_BYTE(s[q]);
#undef COUNT_WORD
#undef COUNT_BYTE
    __syncthreads();
    {
        uint32_t row = t >> 1, sh = (t & 1) << 4, f = 0;
        for (uint32_t j = 0; j < 32; j++) /* rotated: the warp's 16 rows in 16 banks */
            f += scratch[row * 32 + ((j + row) & 31)] >> sh & 0xffffu;
        freq[t] = f;
    }
    if (t == 0)
        freq[256] = 1;
    __syncthreads();
    /* rank of each used symbol by (freq, symbol): kvtc__hc_sort's order */
    for (uint32_t sym = t; sym < KVTC_HC_SYMS; sym += ENC_T) {
        uint32_t f = freq[sym];
        c.len[sym] = 0;
        if (!f)
            continue;
        uint32_t r = 0;
        for (uint32_t j = 0; j < KVTC_HC_SYMS; j++) {
            uint32_t g = freq[j];
            r += g && (g < f || (g == f && j < sym));
        }
        sorted[r] = (uint16_t)sym;
        lw[r] = f;
    }
    /* used literals (a thread each), plus the end-of-block code */
    uint32_t m = (uint32_t)__syncthreads_count(freq[t] != 0) + 1;
    pm_lengths(lw, sorted, m, 15, c.len, pm);
    /* canonical codes (kvtc__hc_code_of's): the first code of each length
     * plus the symbols of that length before this one, counted by a
     * ballot per length and warp */
    uint32_t l = c.len[t], before = 0;
    for (uint32_t k = 1; k < 16; k++) {
        uint32_t bal = __ballot_sync(0xffffffffu, l == k);
        if (l == k)
            before = (uint32_t)__popc(bal & ((1u << lane) - 1));
        if (lane == 0)
            lcount[warp][k] = (uint32_t)__popc(bal);
    }
    __syncthreads();
    if (t < 16) {
        uint32_t k = 0;
        for (uint32_t w = 0; w < ENC_T / 32; w++)
            k += t ? lcount[w][t] : 0;
        cnt[t] = k + (t && c.len[256] == t);
    }
    __syncthreads();
    uint32_t first = first_code(cnt, l);
    for (uint32_t w = 0; l && w < warp; w++)
        before += lcount[w][l];
    uint32_t code = l ? __brev(first + before) >> (32 - l) : 0;
    c.code[t] = (uint16_t)code; /* as kvtc__hc_build fills it; the write reads ctab */
    ctab[t] = code | l << 16;
    uint32_t db = freq[t] * l; /* < 2^20 */
    for (uint32_t o = 16; o > 0; o >>= 1)
        db += __shfl_down_sync(0xffffffffu, db, o);
    if (lane == 0)
        wbits[warp] = db;
    if (t == 0) {
        uint32_t le = c.len[256], eb = 0;
        for (uint32_t w = 0; w < ENC_T / 32; w++)
            eb += lcount[w][le]; /* every literal of its length comes first */
        uint32_t ec = __brev(first_code(cnt, le) + eb) >> (32 - le);
        c.code[256] = (uint16_t)ec;
        ctab[256] = ec | le << 16;
    }
    __syncthreads();
    if (t == 0) {
        uint64_t bits = 0;
        for (uint32_t w = 0; w < ENC_T / 32; w++)
            bits += wbits[w];
        c.data_bits = bits;
    }
    par_header(&c, &h, pm, hw, ws);
    uint32_t bytes = kvtc__hc_huff_bytes(&c, len);
    uint32_t S = kvtc__hc_subranges(len, log2);
    if (bytes == 0) {
        /* stored blocks (rare: incompressible pieces) */
        uint32_t nb = (len + 65534u) / 65535u, total = len + 5 * nb;
        for (uint32_t k = 0; k < nb; k++) {
            uint32_t o = k * 65540u; /* 65535 + 5 per earlier block */
            if (t == 0)
                kvtc__hc_stored_hdr(len, k, d8 + o);
            uint32_t bl = len - k * 65535u < 65535u ? len - k * 65535u : 65535u;
            for (uint32_t b = t; b < bl; b += ENC_T)
                d8[o + 5 + b] = s[k * 65535u + b];
        }
        for (uint32_t b = total + t; b < ((total + 3) & ~3u); b += ENC_T)
            d8[b] = 0;
        for (uint32_t k = t; k < S; k += ENC_T)
            ix[k] = 0;
        if (t == 0)
            dst_len[i] = total, status[i] = 0;
        return;
    }
    /* The write, a warp per 8 KiB of the piece in windows of 128 bytes
     * (a 4-byte word a lane, loads coalesced): first each window's bits
     * (lengths from the nibble table: its 32 words sit in 32 banks), the
     * index entries and the warp's total; then, from the warp's first bit
     * (the header's length plus the warps before), each lane's 4 codes
     * OR-ed at its offset (a warp scan) into a ring of shared words, whose
     * complete words go out as coalesced stores. The first and last word
     * of a warp's bits may be a neighbour's too: OR-ed into the zeroed
     * output. (A thread per 256 contiguous symbols, the first version,
     * was bound by the L1's wavefronts: 32 lines per load and per store.) */
    if (t < 32) {
        uint32_t v = 0;
        for (uint32_t k = 0; k < 8; k++)
            v |= (uint32_t)c.len[8 * t + k] << (4 * k);
        nib[t] = v;
    }
    __syncthreads();
    uint32_t w0 = warp * WARP_BYTES, w1 = w0 + WARP_BYTES < len ? w0 + WARP_BYTES : len;
    uint32_t mine = warp_bits(s, w0, w1, len, log2, ix);
    if (lane == 0)
        wbits[warp] = mine;
    __syncthreads();
    uint32_t pos = c.hdr_bits;
    for (uint32_t w = 0; w < warp; w++)
        pos += wbits[w];
    uint64_t total_bits = c.hdr_bits + c.data_bits + c.len[256];
    uint32_t nbytes = (uint32_t)((total_bits + 7) / 8), words = (nbytes + 3) / 4;
    for (uint32_t q = t; q < words; q += ENC_T)
        d[q] = 0;
    uint32_t ring = warp * RING; /* package-merge is done with scratch */
    for (uint32_t k = lane; k < RING; k += 32)
        scratch[ring + k] = 0;
    __syncthreads();
    /* the header's whole words (bit 0 on: nobody else's bits); its last
     * bits start warp 0's ring */
    uint32_t hwn = c.hdr_bits / 32;
    for (uint32_t k = t; k < hwn; k += ENC_T)
        d[k] = hw[k];
    if (t == 0 && (c.hdr_bits & 31))
        scratch[ring + hwn % RING] = hw[hwn];
    __syncwarp();
    if (w0 < len)
        warp_write(s, w0, w1, len, ring, d, pos, warp > 0 && (pos & 31), w1 == len);
    if (t == 0)
        dst_len[i] = nbytes, status[i] = 0;
}

extern "C" int kvtc__huff_encode_batch(const void *const *src, const size_t *src_len, uint64_t n,
                                       void *const *dst, size_t *dst_len, uint16_t *const *idx,
                                       uint32_t log2, int32_t *status, kvtc_gpu_stream stream)
{
    if (log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX)
        return KVTC_EINVAL;
    if (!n)
        return 0;
    dim3 grid((unsigned)(n < 65535 ? n : 65535), (unsigned)((n + 65534) / 65535));
    k_huff_enc<<<grid, ENC_T, 0, (cudaStream_t)stream>>>(src, src_len, n, dst, dst_len, idx, log2,
                                                         status);
    return cudaGetLastError() == cudaSuccess ? 0 : KVTC_EIO;
}
