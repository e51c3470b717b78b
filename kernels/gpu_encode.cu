/* gpu_encode.cu - many chunks to many containers in one stream-ordered
 * pass: rows -> cuBLAS projection -> quantize -> pack -> batched DEFLATE
 * (ours, gpu_huffman_enc.cu, with the sub-range index of container
 * version 2; or nvCOMP's) over every 64 KiB piece of every chunk ->
 * compaction into the
 * caller's buffer -> section checksums -> headers. Everything the host can
 * know (sizes before the entropy stage, header fields) is computed on the
 * host and uploaded once; what only the device knows (compressed sizes,
 * offsets, checksums) stays on the device. */
#include <stdlib.h>
#include <string.h>

#include <nvcomp/deflate.h>

#include "gpu_copy.cuh"
#include "gpu_huffman.h"
#include "gpu_internal.h"
#include "huff_core.h"
#include "xxh3_core.h"

static __constant__ uint8_t c_secret_e[KVTC_XXH3_SECRET_SIZE] = KVTC_XXH3_SECRET_BYTES;

/* What the assembly kernels need per chunk beyond kvtc__dchunk. */
struct enc_ex {
    const uint8_t *src;     /* the input chunk */
    uint64_t raw_bytes, table_bytes;
    uint32_t piece_start, n_pieces;
    uint32_t n_tokens, sinks; /* sinks = tokens in the raw section */
    uint32_t slab_bytes;      /* one token of one slab */
    uint32_t slabs;
};

struct enc_plan {
    size_t o_coff, o_ch, o_ex, o_hdr, o_inp, o_ins, o_outp, o_pc, o_slot, o_idxo, o_idxp,
        host_bytes;
    size_t o_outs, o_nvst, o_pst, o_idx, o_csize, o_seg, o_hash, o_poff, dev_bytes;
};

/* E: index entries of the batch (ours; 0 with nvCOMP). */
static void plan_meta(uint32_t n, uint64_t P, uint64_t E, size_t coff_bytes, enc_plan *m)
{
    size_t o = 0;
#define TAKE(field, bytes) (m->field = o, o = kvtc__up(o + (bytes), KVTC_GPU_ALIGN))
    TAKE(o_coff, coff_bytes);
    TAKE(o_ch, sizeof(kvtc__dchunk) * n);
    TAKE(o_ex, sizeof(enc_ex) * n);
    TAKE(o_hdr, (size_t)KVTC__HEADER_BYTES * n);
    TAKE(o_inp, sizeof(void *) * P);
    TAKE(o_ins, sizeof(size_t) * P);
    TAKE(o_outp, sizeof(void *) * P);
    TAKE(o_pc, sizeof(uint32_t) * P);
    TAKE(o_slot, sizeof(uint64_t) * (3 * (size_t)n + 1));
    TAKE(o_idxo, sizeof(uint32_t) * (P + 1));
    TAKE(o_idxp, sizeof(uint16_t *) * P);
    m->host_bytes = o;
    TAKE(o_outs, sizeof(size_t) * P);
    TAKE(o_nvst, sizeof(nvcompStatus_t) * P);
    TAKE(o_pst, sizeof(int32_t) * P);
    TAKE(o_idx, sizeof(uint16_t) * E);
    TAKE(o_csize, sizeof(uint64_t) * n);
    TAKE(o_seg, sizeof(kvtc__seg) * 3 * n);
    TAKE(o_hash, sizeof(uint64_t) * 3 * n);
    TAKE(o_poff, sizeof(uint64_t) * P);
    m->dev_bytes = o;
#undef TAKE
}

/* Index entries of a chunk's sym symbol bytes: ours writes the index, nvCOMP
 * none. */
static uint64_t idx_entries(const kvtc_gpu_codec *g, uint64_t sym)
{
    return g->params.deflate == KVTC_GPU_DEFLATE_KVTC
               ? kvtc__index_entries(sym, (uint32_t)g->params.index_log2)
               : 0;
}

static uint64_t chunk_bound(const kvtc_gpu_codec *g, const kvtc_gpu_chunk *c, uint64_t *sym,
                            uint32_t *pieces, uint32_t *sinks)
{
    const kvtc_layout *l = &g->p->layout;
    if (c->flags & KVTC_CHUNK_RAW) {
        *sym = 0;
        *pieces = 0;
        *sinks = c->n_tokens;
        return kvtc__up(KVTC__HEADER_BYTES + kvtc_chunk_bytes(l, c->n_tokens), KVTC_GPU_ALIGN);
    }
    *sinks = kvtc__sink_tokens(c->first_pos, c->n_tokens);
    *sym = kvtc__plan_symbol_bytes(g->plan, c->n_tokens - *sinks, NULL, NULL, NULL);
    *pieces = (uint32_t)kvtc__n_pieces(*sym);
    return kvtc__up(KVTC__HEADER_BYTES + kvtc_chunk_bytes(l, *sinks) + 4ull * *pieces +
                        2 * idx_entries(g, *sym) + (uint64_t)*pieces * g->max_out,
                    KVTC_GPU_ALIGN);
}

static int chunk_ok(const kvtc_gpu_chunk *c)
{
    return c->data && c->n_tokens && c->n_tokens <= KVTC_MAX_CHUNK_TOKENS &&
           (uint64_t)c->first_pos + c->n_tokens <= UINT32_MAX &&
           !(c->flags & ~(uint32_t)KVTC_CHUNK_RAW);
}

extern "C" size_t kvtc_gpu_encode_bound(const kvtc_gpu_codec *g, const kvtc_gpu_chunk *chunks,
                                        uint32_t n)
{
    if (!g || (!chunks && n))
        return 0;
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t sym;
        uint32_t pieces, sinks;
        if (!chunk_ok(&chunks[i]))
            return 0;
        total += chunk_bound(g, &chunks[i], &sym, &pieces, &sinks);
    }
    return total;
}

/* ---- assembly kernels ---- */

/* One block: each chunk's compressed size from its pieces' (and each
 * piece's offset in its payload, poff), then the containers' offsets, an
 * exclusive scan of the aligned sizes across the block (warp shuffles;
 * a thread owns a run of consecutive chunks, <= 64 of 65535). nvst:
 * nvCOMP's piece statuses, or NULL for ours (pst). Was two kernels, the
 * scan's middle serial on one thread. */
__global__ void __launch_bounds__(1024)
    k_enc_scan(const enc_ex *ex, uint32_t n, const size_t *outs, const nvcompStatus_t *nvst,
               const int32_t *pst, int32_t *status, uint64_t *csize, uint64_t *poff,
               uint8_t *dst, uint64_t *offs, uint64_t *sizes, kvtc__seg *seg)
{
    __shared__ uint64_t wsum[32];
    uint32_t t = threadIdx.x, lane = t & 31, w = t >> 5, nw = (blockDim.x + 31) / 32;
    uint32_t per = (n + blockDim.x - 1) / blockDim.x, a = t * per;
    uint32_t b = a + per < n ? a + per : n;
    uint64_t sum = 0;
    for (uint32_t c = a; c < b; c++) {
        uint64_t payload = 0;
        int bad = 0;
        for (uint32_t i = ex[c].piece_start; i < ex[c].piece_start + ex[c].n_pieces; i++) {
            bad |= (nvst ? nvst[i] != nvcompSuccess : pst[i] != 0) || outs[i] == 0 ||
                   outs[i] > 0xffffffffu;
            poff[i] = payload;
            payload += outs[i];
        }
        if (bad)
            status[c] = KVTC_EIO;
        uint64_t cs =
            status[c] ? 0 : KVTC__HEADER_BYTES + ex[c].raw_bytes + ex[c].table_bytes + payload;
        csize[c] = cs;
        sum += kvtc__up(cs, KVTC_GPU_ALIGN);
    }
    uint64_t incl = sum;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        uint64_t v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += v;
    }
    if (lane == 31)
        wsum[w] = incl;
    __syncthreads();
    if (w == 0) {
        uint64_t x = lane < nw ? wsum[lane] : 0, y = x;
        for (uint32_t o = 1; o < 32; o <<= 1) {
            uint64_t v = __shfl_up_sync(0xffffffffu, y, o);
            if (lane >= o)
                y += v;
        }
        if (lane < nw)
            wsum[lane] = y - x; /* warps before this one */
    }
    __syncthreads();
    uint64_t off = wsum[w] + incl - sum;
    for (uint32_t c = a; c < b; c++) {
        uint64_t cs = csize[c], live = cs != 0;
        offs[c] = off;
        sizes[c] = cs;
        uint8_t *base = dst + off;
        seg[3 * c + 0] = {base + KVTC__HEADER_BYTES, live * ex[c].raw_bytes};
        seg[3 * c + 1] = {base + KVTC__HEADER_BYTES + ex[c].raw_bytes, live * ex[c].table_bytes};
        seg[3 * c + 2] = {base + KVTC__HEADER_BYTES + ex[c].raw_bytes + ex[c].table_bytes,
                          live ? cs - KVTC__HEADER_BYTES - ex[c].raw_bytes - ex[c].table_bytes
                               : 0};
        off += kvtc__up(cs, KVTC_GPU_ALIGN);
    }
}

/* Block per piece: its table entry, its index entries (idxo: ours, entries
 * [idxo[i], idxo[i+1]) of idx; NULL: nvCOMP's) and its bytes at their
 * place (poff: k_enc_scan's), 16 bytes a store. */
__global__ void k_enc_pieces(const enc_ex *ex, const uint32_t *piece_chunk, void *const *outp,
                             const size_t *outs, const int32_t *status, const kvtc__seg *seg,
                             const uint64_t *poff, const uint32_t *idxo, const uint16_t *idx)
{
    uint32_t i = blockIdx.x, c = piece_chunk[i];
    if (status[c])
        return;
    uint8_t *table = (uint8_t *)seg[3 * c + 1].p, *dst = (uint8_t *)seg[3 * c + 2].p + poff[i];
    uint32_t sz = (uint32_t)outs[i];
    if (threadIdx.x < 4)
        table[4 * (i - ex[c].piece_start) + threadIdx.x] = (uint8_t)(sz >> (8 * threadIdx.x));
    if (idxo) {
        uint32_t e0 = idxo[i], e1 = idxo[i + 1], base = idxo[ex[c].piece_start];
        uint8_t *it = table + 4ull * ex[c].n_pieces + 2ull * (e0 - base);
        for (uint32_t k = threadIdx.x; k < e1 - e0; k += blockDim.x) {
            it[2 * k] = (uint8_t)idx[e0 + k];
            it[2 * k + 1] = (uint8_t)(idx[e0 + k] >> 8);
        }
    }
    kvtc__block_copy(dst, (const uint8_t *)outp[i], sz, threadIdx.x, blockDim.x);
}

/* The raw section: the leading `sinks` tokens of every (layer, k|v) slab. */
__global__ void k_enc_raw(const enc_ex *ex, const int32_t *status, const kvtc__seg *seg)
{
    uint32_t c = blockIdx.y;
    const enc_ex E = ex[c];
    if (status[c] || !E.raw_bytes)
        return;
    uint8_t *dst = (uint8_t *)seg[3 * c].p;
    uint64_t per_slab = (uint64_t)E.sinks * E.slab_bytes, stride = (uint64_t)E.n_tokens * E.slab_bytes;
    uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; r < E.raw_bytes; r += step) {
        uint64_t slab = r / per_slab, w = r % per_slab;
        dst[r] = E.src[slab * stride + w];
    }
}

__global__ void k_enc_header(const uint8_t *tmpl, uint32_t n, const uint64_t *csize,
                             const kvtc__seg *seg, const uint64_t *hash)
{
    uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n || csize[c] == 0)
        return;
    uint8_t *h = (uint8_t *)seg[3 * c].p - KVTC__HEADER_BYTES;
    const uint8_t *t = tmpl + (size_t)c * KVTC__HEADER_BYTES;
    uint8_t b[KVTC__HEADER_BYTES];
    for (uint32_t i = 0; i < KVTC__HEADER_BYTES; i++)
        b[i] = t[i];
    uint64_t fields[4] = {seg[3 * c + 2].len, hash[3 * c], hash[3 * c + 1], hash[3 * c + 2]};
    uint32_t at[4] = {104, 120, 128, 136};
    for (int f = 0; f < 4; f++)
        for (int k = 0; k < 8; k++)
            b[at[f] + k] = (uint8_t)(fields[f] >> (8 * k));
    uint64_t hs = kvtc__xxh3_short(b, KVTC__HEADER_BYTES - 8, c_secret_e);
    for (int k = 0; k < 8; k++)
        b[KVTC__HEADER_BYTES - 8 + k] = (uint8_t)(hs >> (8 * k));
    for (uint32_t i = 0; i < KVTC__HEADER_BYTES; i += 8) /* containers are 16-byte aligned */
        *(uint64_t *)(h + i) = kvtc__rd64(b + i);
}

extern "C" int kvtc_gpu_encode(kvtc_gpu_codec *g, const kvtc_gpu_chunk *chunks, uint32_t n,
                               void *dst, size_t dst_cap, uint64_t *d_offsets, uint64_t *d_sizes,
                               int32_t *d_status, kvtc_gpu_stream stream_)
{
    cudaStream_t st = (cudaStream_t)stream_;
    if (!g || !chunks || !n || !dst || !d_offsets || !d_sizes || !d_status)
        return KVTC_EINVAL;
    const kvtc_layout *l = &g->p->layout;
    uint64_t M = 0, P = 0, sym_total = 0, bound = 0, slots = 0, E = 0;
    int ours = g->params.deflate == KVTC_GPU_DEFLATE_KVTC;
    uint32_t lg = ours ? (uint32_t)g->params.index_log2 : 0;
    if (n > 65535)
        return KVTC_EINVAL;
    int rc = kvtc__host_chunks(g, n);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t sym;
        uint32_t pieces, sinks;
        if (!chunk_ok(&chunks[i]))
            return KVTC_EINVAL;
        bound += chunk_bound(g, &chunks[i], &sym, &pieces, &sinks);
        g->host_T[i] = chunks[i].flags & KVTC_CHUNK_RAW ? 0 : chunks[i].n_tokens - sinks;
        M += g->host_T[i];
        P += pieces;
        E += idx_entries(g, sym);
        sym_total += kvtc__up(sym, KVTC_GPU_ALIGN);
    }
    if (bound > dst_cap)
        return KVTC_ENOSPC;
    enc_plan mp;
    plan_meta(n, P, E, kvtc__code_off_rows(g, g->host_T, n, NULL, 0, NULL), &mp);
    /* sub-batches of the transform pipeline (gpu_pipe.cu): a chunk's
     * row_start counts from its sub-batch's first row */
    kvtc__part parts[KVTC_GPU_MAX_SPLIT];
    uint32_t np = kvtc__pipe_split(g, g->host_T, n, M, parts), pi = 0;
    rc = kvtc__cuda_err(cudaSetDevice(g->params.device), "cudaSetDevice");
    nvcompBatchedDeflateCompressOpts_t opts = nvcompBatchedDeflateCompressDefaultOpts;
    opts.algorithm = g->params.deflate_algo;
    size_t temp_bytes = 0;
    if (!rc && P && !ours &&
        nvcompBatchedDeflateCompressGetTempSize(P, KVTC_PIECE_MAX, opts, &temp_bytes,
                                                P * KVTC_PIECE_MAX, st) != nvcompSuccess)
        rc = KVTC_EIO;
    if (rc || (rc = kvtc__host_reserve(g, mp.host_bytes)) ||
        (rc = kvtc__dbuf_reserve(&g->meta, mp.dev_bytes, st)) ||
        (rc = kvtc__dbuf_reserve(&g->sym, sym_total + 16, st)) ||
        (rc = kvtc__dbuf_reserve(&g->cmp, P * g->max_out + 16, st)) ||
        (rc = kvtc__dbuf_reserve(&g->temp, temp_bytes + 16, st)))
        return rc;
    /* Host side of the meta blob. */
    uint8_t *hm = g->hmeta, *dm = (uint8_t *)g->meta.p;
    kvtc__dchunk *ch = (kvtc__dchunk *)(hm + mp.o_ch);
    enc_ex *ex = (enc_ex *)(hm + mp.o_ex);
    const void **inp = (const void **)(hm + mp.o_inp);
    size_t *ins = (size_t *)(hm + mp.o_ins);
    void **outp = (void **)(hm + mp.o_outp);
    uint32_t *pc = (uint32_t *)(hm + mp.o_pc);
    uint64_t *slot = (uint64_t *)(hm + mp.o_slot);
    uint32_t *idxo = (uint32_t *)(hm + mp.o_idxo);
    uint16_t **idxp = (uint16_t **)(hm + mp.o_idxp);
    uint64_t eo = 0;
    uint64_t row = 0, symo = 0, piece = 0;
    size_t tb = (size_t)g->hd * kvtc_dtype_size(l->dtype);
    int vec = kvtc__rows_vec_ok(l);
    for (uint32_t i = 0; i < n; i++)
        vec &= ((uintptr_t)chunks[i].data & 15) == 0;
    kvtc__code_off_rows(g, g->host_T, n, hm, mp.o_coff, g->host_roff);
    for (uint32_t i = 0; i < n; i++) {
        const kvtc_gpu_chunk *c = &chunks[i];
        uint64_t sym;
        uint32_t pieces, sinks;
        chunk_bound(g, c, &sym, &pieces, &sinks);
        int raw = (c->flags & KVTC_CHUNK_RAW) != 0;
        uint32_t T = raw ? 0 : c->n_tokens - sinks;
        while (i >= parts[pi].c0 + parts[pi].n)
            pi++;
        ch[i] = {(const uint8_t *)c->data, (uint8_t *)g->sym.p + symo,
                 (const size_t *)(dm + g->host_roff[i]), row - parts[pi].row0, c->n_tokens,
                 c->first_pos, sinks, T};
        ex[i] = {(const uint8_t *)c->data, kvtc_chunk_bytes(l, sinks),
                 4ull * pieces + 2 * idx_entries(g, sym),
                 (uint32_t)piece, pieces, c->n_tokens, sinks, (uint32_t)tb, 2 * l->layers};
        kvtc__gpu_header(g, raw, c->first_pos, c->n_tokens, sinks, pieces, ex[i].raw_bytes, sym,
                         lg, hm + mp.o_hdr + (size_t)i * KVTC__HEADER_BYTES);
        for (uint32_t k = 0; k < pieces; k++, piece++) {
            inp[piece] = (uint8_t *)g->sym.p + symo + (uint64_t)k * KVTC_PIECE_MAX;
            ins[piece] = sym - (uint64_t)k * KVTC_PIECE_MAX < KVTC_PIECE_MAX
                             ? sym - (uint64_t)k * KVTC_PIECE_MAX
                             : KVTC_PIECE_MAX;
            outp[piece] = (uint8_t *)g->cmp.p + piece * g->max_out;
            pc[piece] = i;
            idxo[piece] = (uint32_t)eo;
            idxp[piece] = (uint16_t *)(dm + mp.o_idx) + eo;
            eo += ours ? kvtc__hc_subranges((uint32_t)ins[piece], lg) : 0;
        }
        uint64_t lens[3] = {ex[i].raw_bytes, ex[i].table_bytes, (uint64_t)pieces * g->max_out};
        for (int s = 0; s < 3; s++) {
            slot[3 * i + s] = slots;
            slots += kvtc__hash_slots(lens[s]);
        }
        row += T;
        symo += kvtc__up(sym, KVTC_GPU_ALIGN);
    }
    slot[3 * (size_t)n] = slots;
    idxo[P] = (uint32_t)eo;
    if ((rc = kvtc__dbuf_reserve(&g->bsum, slots * 64 + 64, st)))
        return rc;
    dm = (uint8_t *)g->meta.p;
    g->n_ev = 0;
    kvtc__mark(g, KVTC_GPU_STAGE_SETUP, st);
    /* From a pinned slot (its reuse waits for this upload's event) or,
     * pageable, staged by the driver before it returns; no device sync
     * either way. */
    rc = kvtc__cuda_err(cudaMemcpyAsync(dm, hm, mp.host_bytes, cudaMemcpyHostToDevice, st),
                        "meta upload");
    kvtc__host_uploaded(g, st);
    if (rc || (rc = kvtc__cuda_err(cudaMemsetAsync(d_status, 0, sizeof(int32_t) * n, st), "status")))
        return rc;
    kvtc__mark(g, KVTC_GPU_STAGE_SETUP, st);
    const kvtc__dchunk *dch = (const kvtc__dchunk *)(dm + mp.o_ch);
    const enc_ex *dex = (const enc_ex *)(dm + mp.o_ex);
    if (M && (rc = kvtc__pipe_encode(g, dch, parts, np, d_status, vec, st)))
        return rc;
    size_t *outs = (size_t *)(dm + mp.o_outs);
    nvcompStatus_t *nvst = (nvcompStatus_t *)(dm + mp.o_nvst);
    int32_t *pst = (int32_t *)(dm + mp.o_pst);
    if (P && ours &&
        (rc = kvtc__huff_encode_batch((const void *const *)(dm + mp.o_inp),
                                      (const size_t *)(dm + mp.o_ins), P,
                                      (void *const *)(dm + mp.o_outp), outs,
                                      (uint16_t *const *)(dm + mp.o_idxp), lg, pst, st)))
        return rc;
    if (P && !ours &&
        nvcompBatchedDeflateCompressAsync((const void *const *)(dm + mp.o_inp),
                                               (const size_t *)(dm + mp.o_ins), KVTC_PIECE_MAX, P,
                                               g->temp.p, temp_bytes, (void *const *)(dm + mp.o_outp),
                                               outs, opts, nvst, st) != nvcompSuccess)
        return KVTC_EIO;
    kvtc__mark(g, KVTC_GPU_STAGE_DEFLATE, st);
    uint64_t *csize = (uint64_t *)(dm + mp.o_csize);
    kvtc__seg *seg = (kvtc__seg *)(dm + mp.o_seg);
    uint64_t *hash = (uint64_t *)(dm + mp.o_hash);
    uint64_t *poff = (uint64_t *)(dm + mp.o_poff);
    k_enc_scan<<<1, 1024, 0, st>>>(dex, n, outs, ours ? NULL : nvst, pst, d_status, csize, poff,
                                   (uint8_t *)dst, d_offsets, d_sizes, seg);
    if (P)
        k_enc_pieces<<<(unsigned)P, 256, 0, st>>>(dex, (const uint32_t *)(dm + mp.o_pc),
                                                  (void *const *)(dm + mp.o_outp), outs, d_status,
                                                  seg, poff,
                                                  ours ? (const uint32_t *)(dm + mp.o_idxo) : NULL,
                                                  (const uint16_t *)(dm + mp.o_idx));
    k_enc_raw<<<dim3(64, n), 256, 0, st>>>(dex, d_status, seg);
    if ((rc = kvtc__cuda_err(cudaGetLastError(), "assemble")) ||
        (rc = kvtc__hash_segments(seg, (const uint64_t *)(dm + mp.o_slot), 3 * n, slots,
                                  (uint64_t *)g->bsum.p, hash, st)))
        return rc;
    k_enc_header<<<(n + 127) / 128, 128, 0, st>>>(dm + mp.o_hdr, n, csize, seg, hash);
    kvtc__mark(g, KVTC_GPU_STAGE_CONTAINER, st);
    return kvtc__cuda_err(cudaGetLastError(), "header");
}
