/* gpu_huffman_dec.cu - the indexed pieces of our encoder decoded with one
 * thread per sub-range (huff_core.h): a block per piece; its warp 0 reads
 * the block header (gpu_huffman_hdr.cuh; thread 0 the headers the warp
 * does not take, and stored pieces); all threads then fill the decode
 * table (a code each) and turn the index into start bits (a block scan) in
 * shared memory, and every thread decodes exactly its sub-range's symbols
 * from the bit the index gives it (a 12-bit table plus 8-entry blocks for
 * longer codes: no divergent canonical walk, see huff_core.h). Each checks
 * that it ends where the next sub-range starts (the last: the end-of-block
 * code, then zero padding to the stream's exact end), which makes the
 * result the serial decode's; any mismatch fails the piece. Stored pieces
 * are copied by all threads. */
#include <cuda_runtime.h>

#include "gpu_huffman.h"
#include "gpu_huffman_hdr.cuh"
#include "huff_core.h"

extern "C" {
#include "kvtc_errors.h"
}

#define DEC_MAX_T (65536u >> KVTC_HC_LOG2_MIN) /* sub-ranges of a full piece */

__device__ static inline void fail(const uint32_t *group, int32_t *status, uint64_t i, int rc)
{
    if (group)
        atomicCAS((int *)&status[group[i]], 0, KVTC_ECORRUPT);
    else
        atomicCAS((int *)&status[i], 0, rc);
}

/* ---- a sub-range's symbols ----
 * ncu of the one-word-a-refill loop (session 9): warps issued once per 32
 * cycles, stalled on shared loads (the table) queued behind the lanes'
 * scattered 4-byte loads and 8-byte stores in L1TEX, and on the next word.
 * So: a lane reads its words 16 bytes at a time (four refills a load),
 * stores 16 symbols at once, and looks up the second-level table only
 * when a lane of the warp needs it. (The warps then wait mostly on those
 * loads, 58% of stalls, but loading two blocks ahead instead of one did
 * not change the time: their cost is the scattered requests, not the
 * distance.) */

/* A lane's bit reader. Words at or past nw read as 0; a 16-byte block not
 * wholly inside [w, w + nw) is read a word at a time, so no byte outside
 * the piece's words is read. */
struct lane_bits {
    const uint32_t *w;
    int32_t nw, off; /* off: w's word offset in its 16-byte block */
    uint32_t wi;     /* the next word buf takes */
    uint4 cur, nxt;  /* cur: the rest of wi's block; nxt: the block after */
    uint64_t buf;
    uint32_t nb;
};

__device__ __forceinline__ uint4 load_block(const uint32_t *w, int32_t a, int32_t nw)
{
    if (a >= 0 && a + 4 <= nw)
        return __ldg((const uint4 *)(w + a));
    uint32_t v[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        v[k] = a + k >= 0 && a + k < nw ? __ldg(w + a + k) : 0;
    return make_uint4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ uint32_t lb_take(lane_bits &b)
{
    uint32_t v = b.cur.x;
    b.cur = make_uint4(b.cur.y, b.cur.z, b.cur.w, 0);
    if (((++b.wi + b.off) & 3) == 0) { /* into the next block */
        b.cur = b.nxt;
        b.nxt = load_block(b.w, (int32_t)b.wi + 4, b.nw);
    }
    return v;
}

/* Positioned at bit `start` (its word < nw). */
__device__ __forceinline__ void lb_init(lane_bits &b, const uint32_t *w, uint32_t nw,
                                        uint64_t start)
{
    b.w = w, b.nw = (int32_t)nw, b.off = (int32_t)(((uintptr_t)w >> 2) & 3);
    b.wi = (uint32_t)(start >> 5);
    int32_t skip = ((int32_t)b.wi + b.off) & 3, a = (int32_t)b.wi - skip;
    b.cur = load_block(w, a, b.nw);
    b.nxt = load_block(w, a + 4, b.nw);
    for (int32_t k = 0; k < skip; k++)
        b.cur = make_uint4(b.cur.y, b.cur.z, b.cur.w, 0);
    uint32_t sh = (uint32_t)(start & 31);
    b.buf = lb_take(b) >> sh;
    b.nb = 32 - sh;
}

/* >= 32 bits in buf (two codes' worth). */
__device__ __forceinline__ void lb_refill(lane_bits &b)
{
    if (b.nb <= 32) {
        b.buf |= (uint64_t)lb_take(b) << b.nb;
        b.nb += 32;
    }
}

/* One literal off buf (>= 15 valid bits), as kvtc__hd_sym reads it; a code
 * of no symbol or a symbol past 255 sets bad (checked once a run: the run
 * fails all the same). The second-level lookup is a branch of the lanes
 * that are here, taken when one of them has a long code. */
__device__ __forceinline__ uint32_t lb_sym(const uint16_t *pri, const uint16_t *sec,
                                           lane_bits &b, uint32_t &bad)
{
    uint32_t e = pri[(uint32_t)b.buf & ((1u << KVTC_HD_PRI) - 1)];
    if (__any_sync(__activemask(), e & 0x8000) && (e & 0x8000))
        e = sec[(e & 0x7fff) + (((uint32_t)b.buf >> KVTC_HD_PRI) & ((1u << KVTC_HD_SEC_BITS) - 1))];
    uint32_t n = (e >> 9) & 15;
    bad |= (n == 0) | (e & 0x100);
    b.buf >>= n;
    b.nb -= n;
    return e & 0xff;
}

__device__ __forceinline__ uint32_t pack4(const uint32_t *v)
{
    return v[0] | v[1] << 8 | v[2] << 16 | v[3] << 24;
}

/* kvtc__hd_run's result: `count` literals from bit `start` into dst
 * (8-byte aligned), *end = the bit after them. One refill per two
 * symbols (a refill leaves >= 32 bits, two codes take <= 30). Same words
 * read, symbols and end bit as the reference. */
__device__ static int run_lean(const uint16_t *pri, const uint16_t *sec, const uint8_t *src,
                               uint32_t len, uint64_t start, uint32_t count, uint8_t *dst,
                               uint64_t *end)
{
    uint32_t nw = (len + 3) / 4, bad = 0, i = 0;
    if ((start >> 5) >= nw)
        return KVTC_INFL_EINPUT;
    lane_bits b;
    lb_init(b, (const uint32_t *)src, nw, start);
    int a16 = ((uintptr_t)dst & 15) == 0;
    for (; i + 16 <= count; i += 16) {
        uint32_t v[16];
#pragma unroll
        for (int k = 0; k < 16; k += 2) {
            lb_refill(b);
            v[k] = lb_sym(pri, sec, b, bad);
            v[k + 1] = lb_sym(pri, sec, b, bad);
        }
        uint4 q = make_uint4(pack4(v), pack4(v + 4), pack4(v + 8), pack4(v + 12));
        if (a16) {
            *(uint4 *)(dst + i) = q;
        } else {
            *(uint2 *)(dst + i) = make_uint2(q.x, q.y);
            *(uint2 *)(dst + i + 8) = make_uint2(q.z, q.w);
        }
    }
    for (; i < count; i++) { /* a piece's last few */
        lb_refill(b);
        dst[i] = (uint8_t)lb_sym(pri, sec, b, bad);
    }
    *end = (uint64_t)b.wi * 32 - b.nb;
    return bad ? KVTC_INFL_ESYM : 0;
}

/* Where a stored piece's (at most two) blocks are. */
struct stored_blocks {
    uint32_t off[2], len[2], out[2];
};

/* Thread 0's verdict on a piece whose header the warp did not take, rc
 * that of the argument checks: 0, one dynamic block (*data = its first
 * data bit, its code in ws); 1 or 2, stored blocks (in st); 3, skip it
 * (its container failed); < 0, a KVTC_INFL_E* error. */
__device__ static int serial_verdict(int rc, const uint8_t *s, uint32_t len, uint32_t cnt,
                                     uint32_t log2, const uint8_t *ix, kvtc__inflate_ws *ws,
                                     uint32_t *data, stored_blocks *st)
{
    if (rc)
        return rc;
    if ((rc = kvtc__hd_setup(s, len, ws, data)) != 1)
        return rc;
    /* stored: zero entries, at most two blocks (<= 65535 each) */
    for (uint32_t k = 0, S = kvtc__hc_subranges(cnt, log2); k < S; k++)
        if (kvtc__hd_entry(ix, k))
            return KVTC_INFL_EBLOCK;
    for (uint32_t k = 0;; k++) {
        uint32_t o, l, out;
        int fin = kvtc__hd_stored(s, len, cnt, k, &o, &l, &out);
        if (fin < 0 || k >= 2)
            return fin < 0 ? fin : KVTC_INFL_EBLOCK;
        st->off[k] = o, st->len[k] = l, st->out[k] = out;
        if (fin)
            return (rc = kvtc__hd_stored_end(len, cnt, o, l, out)) ? rc : 1 + (int)k;
    }
}

__global__ void __launch_bounds__(DEC_MAX_T)
    k_huff_dec(const void *const *src, const size_t *src_len, void *const *dst,
               const size_t *dst_len, const uint8_t *const *idx, uint64_t n, uint32_t log2_,
               const uint8_t *plog, const uint32_t *group, int32_t *status)
{
    __shared__ kvtc__inflate_ws ws;
    __shared__ kvtc__hd_table tab;
    __shared__ uint32_t start[DEC_MAX_T + 1];
    __shared__ stored_blocks st;
    __shared__ uint32_t wsum[DEC_MAX_T / 32], data_s;
    __shared__ int verdict, fast_s;
    __shared__ hdr_ws hs;
    uint64_t i = blockIdx.x + (uint64_t)blockIdx.y * gridDim.x;
    uint32_t t = threadIdx.x;
    if (i >= n || !idx[i])
        return; /* not indexed: another decoder's */
    const uint8_t *s = (const uint8_t *)src[i], *ix = idx[i];
    uint8_t *d = (uint8_t *)dst[i];
    size_t len_ = src_len[i], cnt_ = dst_len[i];
    uint32_t len = (uint32_t)len_, cnt = (uint32_t)cnt_, log2 = plog ? plog[i] : log2_;
    if (t < 32) { /* warp 0: the verdict and the header */
        int rc = 0;
        if (t == 0) {
            if (!group)
                status[i] = 0;
            /* read once, by one thread: another piece of the container may
             * fail it meanwhile, and the block must agree on skipping */
            if (group && status[group[i]])
                rc = 3;
            if (cnt_ == 0 || cnt_ > KVTC_INFL_MAX_OUT || len_ == 0 || len_ > KVTC_HC_MAX_OUT ||
                log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX)
                rc = KVTC_INFL_EARG;
        }
        rc = __shfl_sync(~0u, rc, 0);
        int fast = !rc && warp_header(s, len, &hs, t);
        if (t == 0) {
            uint32_t data = fast ? hs.start : 0;
            if (!fast)
                rc = serial_verdict(rc, s, len, cnt, log2, ix, &ws, &data, &st);
            fast_s = fast, data_s = data, verdict = rc;
        }
    }
    __syncthreads();
    int v = verdict;
    if (v == 3)
        return; /* its container already failed: the piece is moot */
    if (v < 0) {
        if (t == 0)
            fail(group, status, i, v);
        return;
    }
    if (v > 0) {
        for (int k = 0; k < v; k++)
            for (uint32_t b = t; b < st.len[k]; b += blockDim.x)
                d[st.out[k] + b] = s[st.off[k] + b];
        return;
    }
    uint32_t S = kvtc__hc_subranges(cnt, log2), nt = blockDim.x, lane = t & 31;
    /* the table: zeroed, then a code per thread; start[k] = the first data
     * bit plus the index entries before k: a block scan over runs of
     * consecutive entries (S may exceed the threads when the container's
     * granularity is finer than the launch's) */
    for (uint32_t e = t; e < KVTC_HD_ENTRIES; e += nt)
        kvtc__hd_table_zero(&tab, e);
    uint32_t per = (S + nt - 1) / nt, k0 = t * per < S ? t * per : S;
    uint32_t k1 = k0 + per < S ? k0 + per : S, sum = 0;
    for (uint32_t k = k0; k < k1; k++)
        sum += kvtc__hd_entry(ix, k);
    uint32_t incl = sum;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint32_t x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += x;
    }
    if (lane == 31)
        wsum[t / 32] = incl;
    __syncthreads();
    uint32_t run = data_s + incl - sum;
    for (uint32_t w = 0; w < t / 32; w++)
        run += wsum[w];
    if (t == 0)
        start[0] = data_s;
    for (uint32_t k = k0; k < k1; k++) {
        run += kvtc__hd_entry(ix, k);
        start[k + 1] = run;
    }
    if (fast_s) {
        for (uint32_t sym = t; sym < hs.nlen; sym += nt)
            if (hs.lens[sym])
                kvtc__hd_table_put(&tab, sym, hs.lens[sym], hs.first[hs.lens[sym]] + hs.rank[sym],
                                   hs.p0);
    } else {
        for (uint32_t j = t, nc = kvtc__hd_codes(&ws.lit); j < nc; j += nt)
            kvtc__hd_table_fill(&ws.lit, &tab, j);
    }
    __syncthreads();
    for (uint32_t k = t; k < S; k += blockDim.x) {
        uint32_t count = k + 1 < S ? 1u << log2 : cnt - (k << log2);
        uint64_t end = 0;
        int rc = run_lean(tab.pri, tab.sec, s, len, start[k], count, d + ((size_t)k << log2), &end);
        if (!rc && end != start[k + 1])
            rc = KVTC_INFL_ESHORT;
        if (!rc && k + 1 == S)
            rc = kvtc__hd_tail(&tab, s, len, start[S]);
        if (rc)
            fail(group, status, i, rc);
    }
}

extern "C" int kvtc__huff_decode_batch(const void *const *src, const size_t *src_len,
                                       void *const *dst, const size_t *dst_len,
                                       const uint8_t *const *idx, uint64_t n, uint32_t log2,
                                       const uint8_t *plog, const uint32_t *group,
                                       int32_t *status, kvtc_gpu_stream stream)
{
    if (log2 < KVTC_HC_LOG2_MIN || log2 > KVTC_HC_LOG2_MAX)
        return KVTC_EINVAL;
    if (!n)
        return 0;
    uint32_t threads = 65536u >> log2;
    dim3 grid((unsigned)(n < 65535 ? n : 65535), (unsigned)((n + 65534) / 65535));
    k_huff_dec<<<grid, threads < 32 ? 32 : threads, 0, (cudaStream_t)stream>>>(
        src, src_len, dst, dst_len, idx, n, log2, plog, group, status);
    return cudaGetLastError() == cudaSuccess ? 0 : KVTC_EIO;
}
