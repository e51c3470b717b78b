/* gpu_decode.cu - many containers back to canonical chunks. The device
 * first proves each container sound (header checksum, every field equal to
 * what the host expects, section checksums, piece table), and only then
 * lets its pieces reach the inflate; a bad container's pieces are replaced
 * by an empty DEFLATE block so the batch stays well formed. Containers of
 * either version may come in one batch (the host cannot tell them apart):
 * a kernel reads each header's version first and lays out its sections;
 * the pieces of version 2 containers (our encoder's, with a sub-range
 * index) go to our parallel decoder (gpu_huffman_dec.cu), the others to
 * params.inflate (nvCOMP's or our serial gpu_inflate.cu), which is given an
 * empty block in place of each indexed piece. Symbols are checked again as they are
 * dequantized (fp8 NaN codes, non-finite shift/scale). */
#include <stdlib.h>
#include <string.h>

#include <nvcomp/deflate.h>

#include "gpu_copy.cuh"
#include "gpu_huffman.h"
#include "gpu_inflate.h"
#include "gpu_internal.h"
#include "huff_core.h"
#include "xxh3_core.h"

static __constant__ uint8_t c_secret_d[KVTC_XXH3_SECRET_SIZE] = KVTC_XXH3_SECRET_BYTES;

struct dec_ex {
    const uint8_t *src;
    uint64_t len, raw_bytes, table_bytes, payload_bytes;
    uint32_t piece_start, n_pieces;
    uint32_t n_tokens, sinks, slab_bytes, bad;
    uint32_t log2;          /* version 2's index granularity (k_dec_layout);
                               0: version 1 */
    uint64_t sym;           /* symbol bytes the plan expects */
};

/* Per piece, what the validation hands to the two decoders. */
struct dec_pieces {
    void *const *slot;       /* host: the piece's aligned slot */
    const size_t *outb;      /* host: its symbol bytes */
    const uint8_t *empty;    /* an empty final stored block (03 00) */
    const void **lp;         /* params.inflate's input: slot or empty */
    size_t *ls, *lb;         /* its size and expected output (0: empty) */
    const uint8_t **hidx;    /* ours: the piece's index; NULL: not ours */
    uint8_t *hlog;           /* its granularity */
    int use_index;           /* params.decode_index is on */
    uint64_t *poff;          /* its offset in the payload (sound containers) */
};

struct dec_plan {
    size_t o_coff, o_ch, o_ex, o_hdr, o_seg, o_slot, o_cmpp, o_outb, o_outp, o_pc, o_empty,
        host_bytes;
    size_t o_cmps, o_outs, o_nvst, o_hash, o_lp, o_ls, o_lb, o_hidx, o_hlog, o_poff, dev_bytes;
};

static void plan_meta(uint32_t n, uint64_t P, size_t coff_bytes, dec_plan *m)
{
    size_t o = 0;
#define TAKE(field, bytes) (m->field = o, o = kvtc__up(o + (bytes), KVTC_GPU_ALIGN))
    TAKE(o_coff, coff_bytes);
    TAKE(o_ch, sizeof(kvtc__dchunk) * n);
    TAKE(o_ex, sizeof(dec_ex) * n);
    TAKE(o_hdr, (size_t)KVTC__HEADER_BYTES * n);
    TAKE(o_seg, sizeof(kvtc__seg) * 3 * n);
    TAKE(o_slot, sizeof(uint64_t) * (3 * (size_t)n + 1));
    TAKE(o_cmpp, sizeof(void *) * P);
    TAKE(o_outb, sizeof(size_t) * P);
    TAKE(o_outp, sizeof(void *) * P);
    TAKE(o_pc, sizeof(uint32_t) * P);
    TAKE(o_empty, 16);
    m->host_bytes = o;
    TAKE(o_cmps, sizeof(size_t) * P);
    TAKE(o_outs, sizeof(size_t) * P);
    TAKE(o_nvst, sizeof(nvcompStatus_t) * P);
    TAKE(o_hash, sizeof(uint64_t) * 3 * n);
    TAKE(o_lp, sizeof(void *) * P);
    TAKE(o_ls, sizeof(size_t) * P);
    TAKE(o_lb, sizeof(size_t) * P);
    TAKE(o_hidx, sizeof(void *) * P);
    TAKE(o_hlog, P);
    TAKE(o_poff, sizeof(uint64_t) * P);
    m->dev_bytes = o;
#undef TAKE
}

__device__ static inline int kd_neq(const uint8_t *a, const uint8_t *b, uint32_t from, uint32_t to)
{
    int d = 0;
    for (uint32_t i = from; i < to; i++)
        d |= a[i] != b[i];
    return d;
}

__device__ static inline uint32_t kd_u32(const uint8_t *p) { return kvtc__rd32(p); }

/* Thread per container, before the checksums: a version 2 header (as it
 * claims: k_dec_validate checks the claim) moves the table's end and the
 * payload, so the sections to hash are laid out here. A header too damaged
 * to claim it keeps the version 1 layout the host gave. */
__global__ void k_dec_layout(dec_ex *ex, uint32_t n, kvtc__seg *seg)
{
    uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n)
        return;
    const dec_ex E = ex[c];
    if (E.bad)
        return; /* too short for any header */
    const uint8_t *s = E.src;
    uint32_t ver = s[4] | (uint32_t)s[5] << 8, lg = s[10];
    if (ver != 2 || s[11] || lg < KVTC__INDEX_LOG2_MIN || lg > KVTC__INDEX_LOG2_MAX)
        return;
    uint64_t full = E.sym / KVTC_PIECE_MAX, tail = E.sym % KVTC_PIECE_MAX;
    uint64_t entries = full * (KVTC_PIECE_MAX >> lg) + ((tail + (1u << lg) - 1) >> lg);
    uint64_t tb = E.table_bytes + 2 * entries, fixed = KVTC__HEADER_BYTES + E.raw_bytes + tb;
    if (E.len < fixed) {
        ex[c].bad = 1;
        return;
    }
    ex[c].table_bytes = tb;
    ex[c].payload_bytes = E.len - fixed;
    ex[c].log2 = lg;
    seg[3 * c + 1].len = tb;
    seg[3 * c + 2] = {s + fixed, E.len - fixed};
}

/* Warp per container: its final header verdict and its pieces' sizes
 * and decoders. The warp copies the header and the expected one into
 * shared memory (coalesced) for lane 0's checks, then its lanes take the
 * piece table 32 entries at a time, offsets by warp scans. A thread per
 * container did it all (~34 us per GiB on an H100: a chain of dependent
 * global loads, byte by byte). */
#define VAL_WARPS 4u
__global__ void __launch_bounds__(32 * VAL_WARPS)
    k_dec_validate(const dec_ex *ex, const uint8_t *tmpl, uint32_t n, const uint64_t *hash,
                   uint64_t max_out, size_t *cmps, int32_t *status, dec_pieces pc)
{
    __shared__ uint8_t hs_[VAL_WARPS][KVTC__HEADER_BYTES], ht_[VAL_WARPS][KVTC__HEADER_BYTES];
    uint32_t w = threadIdx.x / 32, lane = threadIdx.x & 31;
    uint32_t c = blockIdx.x * VAL_WARPS + w;
    if (c >= n)
        return; /* warp-uniform */
    const dec_ex E = ex[c];
    const uint8_t *src = E.src, *tg = tmpl + (size_t)c * KVTC__HEADER_BYTES;
    uint8_t *s = hs_[w], *t = ht_[w];
    for (uint32_t k = lane; k < KVTC__HEADER_BYTES; k += 32) {
        s[k] = E.bad ? 0 : src[k]; /* bad: shorter than any header */
        t[k] = tg[k];
    }
    __syncwarp();
    int rc = 0;
    if (lane == 0) {
        uint32_t ver = E.bad ? 0 : s[4] | (uint32_t)s[5] << 8;
        /* t is a version 1 header; version 2 differs in the version, byte
         * 10 (the granularity, which k_dec_layout read) and the table's
         * size */
        if (E.bad || kd_neq(s, t, 0, 4))
            rc = KVTC_ECORRUPT;
        else if (ver != 1 && ver != 2)
            rc = KVTC_EVERSION;
        else if (kvtc__xxh3_short(s, KVTC__HEADER_BYTES - 8, c_secret_d) !=
                 kvtc__rd64(s + KVTC__HEADER_BYTES - 8))
            rc = KVTC_ECORRUPT;
        else if (ver == 2 && (!E.log2 || s[8] != KVTC__MODE_CODED || s[9] != KVTC_STAGE_DEFLATE))
            rc = KVTC_ECORRUPT;
        else if (s[8] == KVTC__MODE_CODED && t[8] == KVTC__MODE_CODED && kd_neq(s, t, 12, 24))
            rc = KVTC_EPROFILE; /* another plan or profile */
        else if (s[8] == KVTC__MODE_CODED && s[9] != KVTC_STAGE_DEFLATE &&
                 s[9] <= KVTC_STAGE_STORE)
            rc = KVTC_ENOTSUP; /* zstd/stored pieces: the CPU decoder reads them */
        else if (kd_neq(s, t, 6, 10) || (ver == 1 && kd_neq(s, t, 10, 12)) ||
                 kd_neq(s, t, 12, 96) || kvtc__rd64(s + 96) != E.table_bytes ||
                 kd_neq(s, t, 112, 120) || kvtc__rd64(s + 104) != E.payload_bytes ||
                 kvtc__rd64(s + 120) != hash[3 * c] || kvtc__rd64(s + 128) != hash[3 * c + 1] ||
                 kvtc__rd64(s + 136) != hash[3 * c + 2])
            rc = KVTC_ECORRUPT;
    }
    rc = __shfl_sync(0xffffffffu, rc, 0);
    const uint8_t *table = src + KVTC__HEADER_BYTES + E.raw_bytes;
    if (!rc) {
        uint64_t total = 0;
        int bad = 0;
        for (uint32_t k = lane; k < E.n_pieces; k += 32) {
            uint32_t sz = kd_u32(table + 4 * k);
            bad |= sz == 0 || sz > max_out;
            total += sz;
        }
        for (uint32_t o = 16; o > 0; o >>= 1)
            total += __shfl_xor_sync(0xffffffffu, total, o);
        if (__any_sync(0xffffffffu, bad) || total != E.payload_bytes)
            rc = KVTC_ECORRUPT;
    }
    int mine = !rc && E.log2 && pc.use_index;
    uint64_t eo = 0, at = 0; /* index entries and payload bytes before this round */
    for (uint32_t k0 = 0; k0 < E.n_pieces; k0 += 32) {
        uint32_t k = k0 + lane;
        int live = k < E.n_pieces;
        uint64_t i = E.piece_start + k;
        uint64_t sz = !live ? 0 : rc ? 2 : kd_u32(table + 4 * k);
        uint64_t ne = live && E.log2 ? (pc.outb[i] + (1u << E.log2) - 1) >> E.log2 : 0;
        uint64_t isz = sz, ine = ne;
        for (uint32_t o = 1; o < 32; o <<= 1) {
            uint64_t a = __shfl_up_sync(0xffffffffu, isz, o), b = __shfl_up_sync(0xffffffffu, ine, o);
            if (lane >= o)
                isz += a, ine += b;
        }
        if (live) {
            cmps[i] = sz;
            pc.poff[i] = at + isz - sz;
            pc.hidx[i] = mine ? table + 4ull * E.n_pieces + 2 * (eo + ine - ne) : NULL;
            pc.hlog[i] = (uint8_t)E.log2;
            pc.lp[i] = mine ? (const void *)pc.empty : pc.slot[i];
            pc.ls[i] = mine ? 2 : sz;
            pc.lb[i] = mine ? 0 : pc.outb[i];
        }
        at += __shfl_sync(0xffffffffu, isz, 31);
        eo += __shfl_sync(0xffffffffu, ine, 31);
    }
    if (lane == 0)
        status[c] = rc;
}

/* Block per piece: into its aligned slot (poff: k_dec_validate's offset in
 * the payload; 16 bytes a store), or an empty final block (03 00). */
__global__ void k_dec_gather(const dec_ex *ex, const uint32_t *piece_chunk, void *const *cmpp,
                             const size_t *cmps, const uint64_t *poff, const int32_t *status)
{
    uint32_t i = blockIdx.x, c = piece_chunk[i];
    uint8_t *dst = (uint8_t *)cmpp[i];
    if (status[c]) {
        if (threadIdx.x < 2)
            dst[threadIdx.x] = threadIdx.x == 0 ? 0x03 : 0x00;
        return;
    }
    const dec_ex E = ex[c];
    const uint8_t *src = E.src + KVTC__HEADER_BYTES + E.raw_bytes + E.table_bytes + poff[i];
    kvtc__block_copy(dst, src, cmps[i], threadIdx.x, blockDim.x);
}

/* nvCOMP's verdicts; indexed pieces (hidx) were ours, not nvCOMP's. */
__global__ void k_dec_check(const uint32_t *piece_chunk, uint64_t P, const size_t *outb,
                            const size_t *outs, const nvcompStatus_t *nvst,
                            const uint8_t *const *hidx, int32_t *status)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= P || hidx[i])
        return;
    if (nvst[i] != nvcompSuccess || outs[i] != outb[i])
        atomicCAS((int *)&status[piece_chunk[i]], 0, KVTC_ECORRUPT);
}

__global__ void k_dec_raw(const dec_ex *ex, const kvtc__dchunk *ch, const int32_t *status)
{
    uint32_t c = blockIdx.y;
    const dec_ex E = ex[c];
    if (status[c] || !E.raw_bytes)
        return;
    const uint8_t *src = E.src + KVTC__HEADER_BYTES;
    uint8_t *dst = (uint8_t *)ch[c].data;
    uint64_t per_slab = (uint64_t)E.sinks * E.slab_bytes, stride = (uint64_t)E.n_tokens * E.slab_bytes;
    uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; r < E.raw_bytes; r += step)
        dst[(r / per_slab) * stride + r % per_slab] = src[r];
}

extern "C" int kvtc_gpu_decode(kvtc_gpu_codec *g, const kvtc_gpu_container *items, uint32_t n,
                               const void *src, int32_t *d_status, kvtc_gpu_stream stream_)
{
    cudaStream_t st = (cudaStream_t)stream_;
    if (!g || !items || !n || n > 65535 || !src || !d_status)
        return KVTC_EINVAL;
    const kvtc_layout *l = &g->p->layout;
    uint64_t M = 0, P = 0, sym_total = 0;
    int rc = kvtc__host_chunks(g, n);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        const kvtc_gpu_container *it = &items[i];
        if (!it->dst || !it->n_tokens || it->n_tokens > KVTC_MAX_CHUNK_TOKENS ||
            (uint64_t)it->first_pos + it->n_tokens > UINT32_MAX ||
            (it->flags & ~(uint32_t)KVTC_CHUNK_RAW))
            return KVTC_EINVAL;
        g->host_T[i] = 0;
        if (it->flags & KVTC_CHUNK_RAW)
            continue;
        g->host_T[i] = it->n_tokens - kvtc__sink_tokens(it->first_pos, it->n_tokens);
        uint32_t sinks = kvtc__sink_tokens(it->first_pos, it->n_tokens);
        uint64_t sym = kvtc__plan_symbol_bytes(g->plan, it->n_tokens - sinks, NULL, NULL, NULL);
        M += it->n_tokens - sinks;
        P += kvtc__n_pieces(sym);
        sym_total += kvtc__up(sym, KVTC_GPU_ALIGN);
    }
    dec_plan mp;
    plan_meta(n, P, kvtc__code_off_rows(g, g->host_T, n, NULL, 0, NULL), &mp);
    /* sub-batches of the transform pipeline (gpu_pipe.cu): a chunk's
     * row_start counts from its sub-batch's first row */
    kvtc__part parts[KVTC_GPU_MAX_SPLIT];
    uint32_t np = kvtc__pipe_split(g, g->host_T, n, M, parts), pi = 0;
    nvcompBatchedDeflateDecompressOpts_t opts = nvcompBatchedDeflateDecompressDefaultOpts;
    size_t temp_bytes = 0;
    int nv = g->params.inflate == KVTC_GPU_INFLATE_NVCOMP;
    rc = kvtc__cuda_err(cudaSetDevice(g->params.device), "cudaSetDevice");
    if (!rc && P && nv &&
        nvcompBatchedDeflateDecompressGetTempSize(P, KVTC_PIECE_MAX, opts, &temp_bytes,
                                                  P * KVTC_PIECE_MAX, st) != nvcompSuccess)
        rc = KVTC_EIO;
    if (rc || (rc = kvtc__host_reserve(g, mp.host_bytes)) ||
        (rc = kvtc__dbuf_reserve(&g->meta, mp.dev_bytes, st)) ||
        (rc = kvtc__dbuf_reserve(&g->sym, sym_total + 16, st)) ||
        (rc = kvtc__dbuf_reserve(&g->cmp, P * g->max_out + 16, st)) ||
        (rc = kvtc__dbuf_reserve(&g->temp, temp_bytes + 16, st)))
        return rc;
    uint8_t *hm = g->hmeta;
    kvtc__dchunk *ch = (kvtc__dchunk *)(hm + mp.o_ch);
    dec_ex *ex = (dec_ex *)(hm + mp.o_ex);
    kvtc__seg *seg = (kvtc__seg *)(hm + mp.o_seg);
    uint64_t *slot = (uint64_t *)(hm + mp.o_slot);
    void **cmpp = (void **)(hm + mp.o_cmpp);
    size_t *outb = (size_t *)(hm + mp.o_outb);
    void **outp = (void **)(hm + mp.o_outp);
    uint32_t *pc = (uint32_t *)(hm + mp.o_pc);
    uint64_t row = 0, symo = 0, piece = 0, slots = 0;
    size_t tb = (size_t)g->hd * kvtc_dtype_size(l->dtype);
    int vec = kvtc__rows_vec_ok(l);
    for (uint32_t i = 0; i < n; i++)
        vec &= ((uintptr_t)items[i].dst & 15) == 0;
    kvtc__code_off_rows(g, g->host_T, n, hm, mp.o_coff, g->host_roff);
    for (uint32_t i = 0; i < n; i++) {
        const kvtc_gpu_container *it = &items[i];
        int raw = (it->flags & KVTC_CHUNK_RAW) != 0;
        uint32_t sinks = raw ? it->n_tokens : kvtc__sink_tokens(it->first_pos, it->n_tokens);
        uint32_t T = it->n_tokens - sinks;
        uint64_t sym = raw ? 0 : kvtc__plan_symbol_bytes(g->plan, T, NULL, NULL, NULL);
        uint32_t pieces = (uint32_t)kvtc__n_pieces(sym);
        const uint8_t *s = (const uint8_t *)src + it->src_off;
        while (i >= parts[pi].c0 + parts[pi].n)
            pi++;
        ch[i] = {(const uint8_t *)it->dst, (uint8_t *)g->sym.p + symo,
                 (const size_t *)((uint8_t *)g->meta.p + g->host_roff[i]), row - parts[pi].row0,
                 it->n_tokens, it->first_pos, sinks, T};
        uint64_t rawb = kvtc_chunk_bytes(l, sinks), fixed = KVTC__HEADER_BYTES + rawb + 4ull * pieces;
        int bad = it->src_len < fixed;
        ex[i] = {s, it->src_len, rawb, 4ull * pieces, bad ? 0 : it->src_len - fixed, (uint32_t)piece,
                 pieces, it->n_tokens, sinks, (uint32_t)tb, (uint32_t)bad, 0, sym};
        kvtc__gpu_header(g, raw, it->first_pos, it->n_tokens, sinks, pieces, rawb, sym,
                         0, hm + mp.o_hdr + (size_t)i * KVTC__HEADER_BYTES);
        uint64_t lens[3] = {rawb, 4ull * pieces, ex[i].payload_bytes};
        const uint8_t *at[3] = {s + KVTC__HEADER_BYTES, s + KVTC__HEADER_BYTES + rawb, s + fixed};
        for (int k = 0; k < 3; k++) {
            seg[3 * i + k] = {bad ? s : at[k], bad ? 0 : lens[k]};
            slot[3 * i + k] = slots;
            /* room for the longest table a version 2 container may
             * have (k_dec_layout sets the actual lengths) */
            slots += kvtc__hash_slots(k == 1 && !bad && pieces
                                          ? seg[3 * i + k].len +
                                                2 * kvtc__index_entries(sym, KVTC__INDEX_LOG2_MIN)
                                          : seg[3 * i + k].len);
        }
        for (uint32_t k = 0; k < pieces; k++, piece++) {
            cmpp[piece] = (uint8_t *)g->cmp.p + piece * g->max_out;
            uint64_t left = sym - (uint64_t)k * KVTC_PIECE_MAX;
            outb[piece] = left < KVTC_PIECE_MAX ? left : KVTC_PIECE_MAX;
            outp[piece] = (uint8_t *)g->sym.p + symo + (uint64_t)k * KVTC_PIECE_MAX;
            pc[piece] = i;
        }
        row += T;
        symo += kvtc__up(sym, KVTC_GPU_ALIGN);
    }
    slot[3 * (size_t)n] = slots;
    memset(hm + mp.o_empty, 0, 16);
    hm[mp.o_empty] = 0x03; /* final, fixed Huffman, end-of-block: no bytes */
    if ((rc = kvtc__dbuf_reserve(&g->bsum, slots * 64 + 64, st)))
        return rc;
    uint8_t *dm = (uint8_t *)g->meta.p;
    g->n_ev = 0;
    kvtc__mark(g, KVTC_GPU_STAGE_SETUP, st);
    rc = kvtc__cuda_err(cudaMemcpyAsync(dm, hm, mp.host_bytes, cudaMemcpyHostToDevice, st),
                        "meta upload");
    kvtc__host_uploaded(g, st);
    if (rc)
        return rc;
    kvtc__mark(g, KVTC_GPU_STAGE_SETUP, st);
    const kvtc__dchunk *dch = (const kvtc__dchunk *)(dm + mp.o_ch);
    const dec_ex *dex = (const dec_ex *)(dm + mp.o_ex);
    uint64_t *hash = (uint64_t *)(dm + mp.o_hash);
    size_t *cmps = (size_t *)(dm + mp.o_cmps), *outs = (size_t *)(dm + mp.o_outs);
    nvcompStatus_t *nvst = (nvcompStatus_t *)(dm + mp.o_nvst);
    const uint32_t *dpc = (const uint32_t *)(dm + mp.o_pc);
    k_dec_layout<<<(n + 127) / 128, 128, 0, st>>>((dec_ex *)(dm + mp.o_ex), n,
                                                  (kvtc__seg *)(dm + mp.o_seg));
    if ((rc = kvtc__hash_segments((const kvtc__seg *)(dm + mp.o_seg),
                                  (const uint64_t *)(dm + mp.o_slot), 3 * n, slots,
                                  (uint64_t *)g->bsum.p, hash, st)))
        return rc;
    dec_pieces pcs = {(void *const *)(dm + mp.o_cmpp), (const size_t *)(dm + mp.o_outb),
                      dm + mp.o_empty, (const void **)(dm + mp.o_lp), (size_t *)(dm + mp.o_ls),
                      (size_t *)(dm + mp.o_lb), (const uint8_t **)(dm + mp.o_hidx),
                      dm + mp.o_hlog, g->params.decode_index == KVTC_GPU_INDEX_ON,
                      (uint64_t *)(dm + mp.o_poff)};
    k_dec_validate<<<(n + VAL_WARPS - 1) / VAL_WARPS, 32 * VAL_WARPS, 0, st>>>(
        dex, dm + mp.o_hdr, n, hash, g->max_out, cmps, d_status, pcs);
    if (P) {
        k_dec_gather<<<(unsigned)P, 256, 0, st>>>(dex, dpc, (void *const *)(dm + mp.o_cmpp), cmps,
                                                  (const uint64_t *)(dm + mp.o_poff), d_status);
        if ((rc = kvtc__cuda_err(cudaGetLastError(), "validate/gather")))
            return rc;
        kvtc__mark(g, KVTC_GPU_STAGE_CONTAINER, st);
        if (!nv) {
            /* Ours (params.inflate): pieces of failed containers are
             * skipped, a bad piece fails its container directly. */
            if ((rc = kvtc__inflate_batch((const void *const *)(dm + mp.o_lp),
                                          (const size_t *)(dm + mp.o_ls),
                                          (void *const *)(dm + mp.o_outp),
                                          (const size_t *)(dm + mp.o_lb), P, dpc, d_status, NULL,
                                          st)))
                return rc;
        } else {
            /* indexed pieces: an empty block each (their verdicts are
             * skipped), into room of their real size */
            if (nvcompBatchedDeflateDecompressAsync(
                    (const void *const *)(dm + mp.o_lp), (const size_t *)(dm + mp.o_ls),
                    (const size_t *)(dm + mp.o_outb), outs, P, g->temp.p, temp_bytes,
                    (void *const *)(dm + mp.o_outp), opts, nvst, st) != nvcompSuccess)
                return KVTC_EIO;
            k_dec_check<<<(unsigned)((P + 255) / 256), 256, 0, st>>>(
                dpc, P, (const size_t *)(dm + mp.o_outb), outs, nvst,
                (const uint8_t *const *)(dm + mp.o_hidx), d_status);
        }
        /* then ours over the indexed pieces (after the other decoder, so
         * nothing it might write over their output survives) */
        if (g->params.decode_index == KVTC_GPU_INDEX_ON &&
            (rc = kvtc__huff_decode_batch((const void *const *)(dm + mp.o_cmpp), cmps,
                                          (void *const *)(dm + mp.o_outp),
                                          (const size_t *)(dm + mp.o_outb),
                                          (const uint8_t *const *)(dm + mp.o_hidx), P,
                                          (uint32_t)g->params.index_log2, dm + mp.o_hlog, dpc,
                                          d_status, st)))
            return rc;
        kvtc__mark(g, KVTC_GPU_STAGE_DEFLATE, st);
    }
    if (M && (rc = kvtc__pipe_decode(g, ch, dch, parts, np, d_status, vec, st)))
        return rc;
    k_dec_raw<<<dim3(64, n), 256, 0, st>>>(dex, dch, d_status);
    kvtc__mark(g, KVTC_GPU_STAGE_CONTAINER, st);
    return kvtc__cuda_err(cudaGetLastError(), "decode");
}
