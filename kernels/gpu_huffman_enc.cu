/* gpu_huffman_enc.cu - our Huffman-only DEFLATE encoder (huff_core.h), a
 * block of 256 threads per piece: per-warp byte histograms, a parallel rank
 * sort of the used symbols, the code and block header built by one thread
 * (kvtc__hc_build, a few microseconds), then a bit-parallel write: each
 * thread owns 256 symbols, their bit lengths are scanned across the block,
 * and every thread writes its bits at its offset (boundary words, shared
 * with a neighbour, by atomicOr into the zeroed output; the words between
 * by plain stores). The index entries fall out of the scan. */
#include <cuda_runtime.h>

#include "gpu_huffman.h"
#include "huff_core.h"

extern "C" {
#include "kvtc_errors.h"
}

#define ENC_T 256u
#define ENC_PER 256u /* symbols per thread: 64 KiB / ENC_T */
static_assert(ENC_T == 256, "a thread per literal (histogram, rank, count)");

/* Bits into 32-bit words from bit p on: the first and the last word may be
 * shared with a neighbour (atomicOr), the others are this thread's. */
struct bitw {
    uint32_t *d, w, nb, first;
    uint64_t acc;
};

__device__ static inline void bw_init(bitw *b, uint32_t *d, uint64_t p)
{
    b->d = d, b->w = (uint32_t)(p >> 5), b->nb = (uint32_t)(p & 31), b->first = 1, b->acc = 0;
}

__device__ static inline void bw_put(bitw *b, uint32_t v, uint32_t n)
{
    b->acc |= (uint64_t)v << b->nb;
    b->nb += n;
    if (b->nb >= 32) {
        if (b->first)
            atomicOr(b->d + b->w, (uint32_t)b->acc);
        else
            b->d[b->w] = (uint32_t)b->acc;
        b->first = 0;
        b->w++;
        b->acc >>= 32;
        b->nb -= 32;
    }
}

__device__ static inline void bw_end(bitw *b)
{
    if (b->nb)
        atomicOr(b->d + b->w, (uint32_t)b->acc);
}

__global__ void __launch_bounds__(ENC_T)
    k_huff_enc(const void *const *src, const size_t *src_len, uint64_t n, void *const *dst,
               size_t *dst_len, uint16_t *const *idx, uint32_t log2, int32_t *status)
{
    __shared__ uint32_t hist[ENC_T / 32][256];
    __shared__ uint32_t freq[KVTC_HC_SYMS];
    __shared__ uint16_t sorted[KVTC_HC_SYMS];
    __shared__ kvtc__hcode c;
    __shared__ kvtc__hc_ws w;
    __shared__ uint32_t off[ENC_T + 1], wsum[ENC_T / 32];
    __shared__ uint32_t cnt[16];
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
    for (uint32_t b = t; b < 256; b += ENC_T)
        for (uint32_t k = 0; k < ENC_T / 32; k++)
            hist[k][b] = 0;
    __syncthreads();
    /* Lanes holding the same byte add once (__match_any_sync): quantized
     * symbols are skewed, and 32 lanes hitting one shared counter serialize
     * on the SM's atomic unit (the first version spent ~1.4 ms per GiB
     * here). Loop bounds are warp-uniform; idle lanes carry 256 + lane,
     * which matches no byte and no other lane. */
    const uint32_t *s32 = (const uint32_t *)s;
    uint32_t nq = len / 4;
    for (uint32_t base = warp * 32; base < nq; base += ENC_T) {
        uint32_t q = base + lane, v = q < nq ? s32[q] : 0;
#pragma unroll
        for (uint32_t k = 0; k < 4; k++) {
            uint32_t b = q < nq ? (v >> (8 * k)) & 255 : 256 + lane;
            uint32_t same = __match_any_sync(0xffffffffu, b);
            if (b < 256 && lane == (uint32_t)__ffs(same) - 1)
                atomicAdd(&hist[warp][b], (uint32_t)__popc(same));
        }
    }
    if (t < (len & 3))
        atomicAdd(&hist[warp][s[(len & ~3u) + t]], 1u);
    __syncthreads();
    for (uint32_t b = t; b < 256; b += ENC_T) {
        uint32_t f = 0;
        for (uint32_t k = 0; k < ENC_T / 32; k++)
            f += hist[k][b];
        freq[b] = f;
    }
    if (t == 0)
        freq[256] = 1;
    __syncthreads();
    /* rank of each used symbol by (freq, symbol): kvtc__hc_sort's order */
    for (uint32_t sym = t; sym < KVTC_HC_SYMS; sym += ENC_T) {
        uint32_t f = freq[sym];
        if (!f)
            continue;
        uint32_t r = 0;
        for (uint32_t j = 0; j < KVTC_HC_SYMS; j++) {
            uint32_t g = freq[j];
            r += g && (g < f || (g == f && j < sym));
        }
        sorted[r] = (uint16_t)sym;
    }
    /* used literals (a thread each), plus the end-of-block code */
    uint32_t m = (uint32_t)__syncthreads_count(freq[t] != 0) + 1;
    /* kvtc__hc_build's steps: the lengths (one thread: Moffat-Katajainen
     * is a serial walk), then a thread per symbol for its canonical code
     * and its share of the data's bits while thread 0 writes the header
     * bits, which need only the lengths. The codes and the bit count were
     * thread 0's too before. */
    if (t == 0) {
        kvtc__hc_build_lengths(freq, sorted, m, &c, &w);
        c.data_bits = 0;
        cnt[0] = 0;
    }
    __syncthreads();
    for (uint32_t l = 1; l < 16; l++) {
        uint32_t k = (uint32_t)__syncthreads_count(c.len[t] == l) + (c.len[256] == l);
        if (t == 0)
            cnt[l] = k;
    }
    __syncthreads();
    c.code[t] = kvtc__hc_code_of(c.len, t, cnt);
    uint32_t db = freq[t] * c.len[t]; /* < 2^20 */
    for (uint32_t o = 16; o > 0; o >>= 1)
        db += __shfl_down_sync(0xffffffffu, db, o);
    if (lane == 0)
        atomicAdd((unsigned long long *)&c.data_bits, (unsigned long long)db);
    if (t == 0) {
        c.code[256] = kvtc__hc_code_of(c.len, 256, cnt);
        kvtc__hc_build_header(&c, &w);
    }
    __syncthreads();
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
    /* bit length of this thread's symbols */
    uint32_t a = t * ENC_PER, e = a + ENC_PER < len ? a + ENC_PER : (a < len ? len : a), bits = 0;
    /* (threads past the piece have a == e: no bits, nothing to write) */
    /* 16-byte loads: a thread's 256 bytes are 16 lines of its own, and a
     * byte load per symbol cost a cache wavefront per lane */
    int v16 = ((uintptr_t)s & 15) == 0;
    uint32_t q = a;
    for (; v16 && q + 16 <= e; q += 16) {
        uint4 w4 = *(const uint4 *)(s + q);
        uint32_t w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
        for (int j = 0; j < 16; j++)
            bits += c.len[(w[j >> 2] >> (8 * (j & 3))) & 255];
    }
    for (; q < e; q++)
        bits += c.len[s[q]];
    /* exclusive scan across the block */
    uint32_t incl = bits;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += v;
    }
    if (lane == 31)
        wsum[warp] = incl;
    __syncthreads();
    uint32_t base = 0;
    for (uint32_t k = 0; k < warp; k++)
        base += wsum[k];
    off[t] = base + incl - bits;
    if (t == ENC_T - 1)
        off[ENC_T] = base + incl;
    __syncthreads();
    uint32_t per = (1u << log2) / ENC_PER; /* threads per sub-range */
    for (uint32_t k = t; k < S; k += ENC_T) {
        uint32_t t1 = (k + 1) * per < ENC_T ? (k + 1) * per : ENC_T;
        ix[k] = (uint16_t)(off[t1] - off[k * per]);
    }
    uint64_t total_bits = c.hdr_bits + (uint64_t)off[ENC_T] + c.len[256];
    uint32_t nbytes = (uint32_t)((total_bits + 7) / 8), words = (nbytes + 3) / 4;
    for (uint32_t q = t; q < words; q += ENC_T)
        d[q] = 0;
    __syncthreads();
    /* the header's whole words (bit 0 on: no other thread's bits) by all
     * threads; thread 0 puts only the rest of it before its symbols (it
     * put the whole header a byte at a time before) */
    uint32_t hw = c.hdr_bits / 32;
    for (uint32_t k = t; k < hw; k += ENC_T)
        d[k] = (uint32_t)c.hdr[4 * k] | (uint32_t)c.hdr[4 * k + 1] << 8 |
               (uint32_t)c.hdr[4 * k + 2] << 16 | (uint32_t)c.hdr[4 * k + 3] << 24;
    if (a >= len)
        return; /* past the piece (thread 0 never is: len >= 1) */
    bitw bw;
    bw_init(&bw, d, t == 0 ? 32ull * hw : c.hdr_bits + (uint64_t)off[t]);
    if (t == 0) {
        for (uint32_t q = 32 * hw; q < c.hdr_bits; q += 8)
            bw_put(&bw, c.hdr[q >> 3], c.hdr_bits - q < 8 ? c.hdr_bits - q : 8);
    }
    q = a;
    for (; v16 && q + 16 <= e; q += 16) {
        uint4 w4 = *(const uint4 *)(s + q);
        uint32_t w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
        for (int j = 0; j < 16; j++) {
            uint32_t sym = (w[j >> 2] >> (8 * (j & 3))) & 255;
            bw_put(&bw, c.code[sym], c.len[sym]);
        }
    }
    for (; q < e; q++) {
        uint32_t sym = s[q];
        bw_put(&bw, c.code[sym], c.len[sym]);
    }
    if (a < len && e == len)
        bw_put(&bw, c.code[256], c.len[256]);
    bw_end(&bw);
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
