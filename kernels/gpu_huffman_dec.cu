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
#include <cuda_pipeline.h>
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
 * ncu of one thread's own loads (session 9): warps issued once per 32
 * cycles, the table's shared loads queued in L1TEX behind the lanes'
 * scattered global loads (32 lines a warp load, 2% L1 hits); 16-byte
 * loads a lane (four refills each) still left 58% of stalls on them, and
 * loading further ahead changed nothing: their cost is the scattered
 * requests, not the distance. So the words are staged (session 10): each
 * lane keeps its two current lines of L words of the piece in shared
 * memory, and every chunk of symbols the warp reloads, for each lane that
 * moved into its upper line, the line after it: coalesced, a word a lane
 * (cp.async), 32 / L lanes' lines an instruction. A chunk takes fewer
 * than L words from where it starts (chunk(L) symbols take <= 15 bits
 * each, and buf holds <= 64 bits more), so the two lines always hold
 * them. The lanes store 16 symbols at once and look up the second-level
 * table only when a lane of the warp needs it. */
#ifndef KVTC_INFL_LINE_WORDS
#define KVTC_INFL_LINE_WORDS 32u /* 32: 128-byte lines, chunks of 64 symbols */
#endif
#define LINE_WORDS KVTC_INFL_LINE_WORDS
#define LANE_WORDS (2u * LINE_WORDS + 1u) /* two lines and a pad word (banks spread) */
#define CHUNK (2u * LINE_WORDS)           /* (2L symbols x 15 bits + 64) / 32 < L words */

struct lane_lines {
    uint32_t *sm; /* this lane's LANE_WORDS */
    uint32_t off; /* the piece's word offset in its line */
    uint32_t wi;  /* the next word buf takes */
    int32_t ln;   /* the lower line in sm (word x lies in line (x + off) / L) */
    uint64_t buf;
    uint32_t nb;
};

__device__ __forceinline__ uint32_t ll_take(lane_lines &b)
{
    uint32_t p = b.wi++ + b.off;
    return b.sm[((p / LINE_WORDS) & 1) * LINE_WORDS + p % LINE_WORDS];
}

/* >= 32 bits in buf (two codes' worth). */
__device__ __forceinline__ void ll_refill(lane_lines &b)
{
    if (b.nb <= 32) {
        b.buf |= (uint64_t)ll_take(b) << b.nb;
        b.nb += 32;
    }
}

/* Warp-wide: for each lane in m (its owner), line `line` (the owner's
 * value) of the piece into the owner's slot for it, 32 / L owners an
 * instruction, a word a lane; words outside the piece's [0, nw) are zero. */
__device__ __forceinline__ void ll_load(uint32_t m, int32_t line, const uint32_t *w, int32_t nw,
                                        uint32_t off, uint32_t *warp_sm, uint32_t lane)
{
    while (m) {
        uint32_t o = 32; /* this lane's owner: the (lane / L)-th lowest of m */
#pragma unroll
        for (uint32_t q = 0; q < 32 / LINE_WORDS; q++) {
            uint32_t b = m ? __ffs(m) - 1 : 32;
            o = q == lane / LINE_WORDS ? b : o;
            m &= m ? m - 1 : 0;
        }
        int32_t l = __shfl_sync(~0u, line, o & 31);
        if (o < 32) {
            int32_t x = l * (int32_t)LINE_WORDS + (int32_t)(lane % LINE_WORDS) - (int32_t)off;
            uint32_t *d = warp_sm + o * LANE_WORDS + (l & 1) * LINE_WORDS + lane % LINE_WORDS;
            if (x >= 0 && x < nw)
                __pipeline_memcpy_async(d, w + x, 4);
            else
                *d = 0;
        }
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncwarp(); /* the other lanes' copies are visible */
}

/* One literal off buf (>= 15 valid bits), as kvtc__hd_sym reads it; a code
 * of no symbol or a symbol past 255 sets bad (checked once a run: the run
 * fails all the same). The second-level lookup is a branch of the lanes
 * that are here, taken when one of them has a long code. */
__device__ __forceinline__ uint32_t ll_sym(const uint16_t *pri, const uint16_t *sec,
                                           lane_lines &b, uint32_t &bad)
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

/* Symbols [i, stop) of a run into dst (8-byte aligned; a16: 16-byte), 16
 * a store, one refill per two symbols (a refill leaves >= 32 bits, two
 * codes take <= 30). */
__device__ __forceinline__ void decode_span(const uint16_t *pri, const uint16_t *sec,
                                            lane_lines &b, uint8_t *dst, uint32_t &i,
                                            uint32_t stop, int a16, uint32_t &bad)
{
    for (; i + 16 <= stop; i += 16) {
        uint32_t v[16];
#pragma unroll
        for (int k = 0; k < 16; k += 2) {
            ll_refill(b);
            v[k] = ll_sym(pri, sec, b, bad);
            v[k + 1] = ll_sym(pri, sec, b, bad);
        }
        uint4 q = make_uint4(pack4(v), pack4(v + 4), pack4(v + 8), pack4(v + 12));
        if (a16) {
            *(uint4 *)(dst + i) = q;
        } else {
            *(uint2 *)(dst + i) = make_uint2(q.x, q.y);
            *(uint2 *)(dst + i + 8) = make_uint2(q.z, q.w);
        }
    }
    for (; i < stop; i++) { /* a piece's last few */
        ll_refill(b);
        dst[i] = (uint8_t)ll_sym(pri, sec, b, bad);
    }
}

/* kvtc__hd_run's result: `count` literals from bit `start` into dst
 * (8-byte aligned), *end = the bit after them; same words read, symbols
 * and end bit as the reference. Warp-wide: all 32 lanes call it, count 0
 * for a lane without a sub-range; warp_sm = the warp's 32 x LANE_WORDS
 * words of shared memory. */
__device__ static int run_staged(const uint16_t *pri, const uint16_t *sec, const uint8_t *src,
                                 uint32_t len, uint64_t start, uint32_t count, uint8_t *dst,
                                 uint64_t *end, uint32_t *warp_sm, uint32_t lane)
{
    const uint32_t *w = (const uint32_t *)src;
    int32_t nw = (int32_t)((len + 3) / 4);
    int live = count && (int64_t)(start >> 5) < nw;
    int rc = count && !live ? KVTC_INFL_EINPUT : 0;
    lane_lines b;
    b.sm = warp_sm + lane * LANE_WORDS;
    b.off = (uint32_t)(((uintptr_t)w >> 2) % LINE_WORDS);
    b.wi = live ? (uint32_t)(start >> 5) : 0;
    b.ln = (int32_t)((b.wi + b.off) / LINE_WORDS);
    uint32_t m = __ballot_sync(~0u, live);
    ll_load(m, b.ln, w, nw, b.off, warp_sm, lane);
    ll_load(m, b.ln + 1, w, nw, b.off, warp_sm, lane);
    uint32_t sh = (uint32_t)(start & 31), bad = 0, i = 0, n = live ? count : 0;
    b.buf = live ? ll_take(b) >> sh : 0;
    b.nb = live ? 32 - sh : 64;
    int a16 = ((uintptr_t)dst & 15) == 0;
    uint32_t chunks = __reduce_max_sync(~0u, (n + CHUNK - 1) / CHUNK);
    for (uint32_t c = 0; c < chunks; c++) {
        /* lanes whose words moved into their upper line get the line
         * after it, into the lower slot (its words are taken: the
         * syncwarp orders the lanes' reads of it before the copies) */
        __syncwarp();
        int need = live && (int32_t)((b.wi + b.off) / LINE_WORDS) > b.ln;
        b.ln += need;
        ll_load(__ballot_sync(~0u, need), b.ln + 1, w, nw, b.off, warp_sm, lane);
        decode_span(pri, sec, b, dst, i, (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n, a16, bad);
    }
    *end = (uint64_t)b.wi * 32 - b.nb;
    return rc ? rc : bad ? KVTC_INFL_ESYM : 0;
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
    /* warp-uniform trips (run_staged is warp-wide): lane k - k0 */
    extern __shared__ __align__(16) uint32_t lines[]; /* nt x LANE_WORDS */
    for (uint32_t k0 = t - lane; k0 < S; k0 += blockDim.x) {
        uint32_t k = k0 + lane, count = k >= S ? 0 : k + 1 < S ? 1u << log2 : cnt - (k << log2);
        uint64_t end = 0;
        int rc = run_staged(tab.pri, tab.sec, s, len, k < S ? start[k] : 0, count,
                            d + ((size_t)k << log2), &end, lines + (t - lane) * LANE_WORDS, lane);
        if (k >= S)
            continue;
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
    threads = threads < 32 ? 32 : threads;
    dim3 grid((unsigned)(n < 65535 ? n : 65535), (unsigned)((n + 65534) / 65535));
    size_t sm = (size_t)threads * LANE_WORDS * 4; /* the lanes' lines (run_staged) */
    if (cudaFuncSetAttribute(k_huff_dec, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm) !=
        cudaSuccess)
        return KVTC_EIO;
    k_huff_dec<<<grid, threads, sm, (cudaStream_t)stream>>>(src, src_len, dst, dst_len, idx, n,
                                                           log2, plog, group, status);
    return cudaGetLastError() == cudaSuccess ? 0 : KVTC_EIO;
}
