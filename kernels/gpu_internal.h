/* gpu_internal.h - the GPU codec's context and the helpers its .cu files
 * share. Not installed. */
#ifndef KVTC_KERNELS_GPU_INTERNAL_H
#define KVTC_KERNELS_GPU_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "kvtc_gpu.h"
#include "../codec/container.h"
#include "../codec/internal.h"
}

#define KVTC_GPU_ALIGN 16u
#define KVTC_GPU_MAX_GROUPS 65536u
#define KVTC_GPU_MAX_EVENTS 32u
#define KVTC_GPU_SMALL_GROUP 8u
#define KVTC_GPU_MAX_LANES 4u
#define KVTC_GPU_MAX_SPLIT 16u

/* A device buffer that grows in stream order (cudaMallocAsync), so calls
 * never synchronize the host. */
struct kvtc__dbuf {
    void *p;
    size_t cap;
};

/* A lane of the transform pipeline (gpu_pipe.cu): lane 0 is the caller's
 * stream, the others are context-owned streams forked from it and joined
 * back with events. Each lane has its own cuBLAS handle (a handle's
 * workspace must not be shared by concurrent streams) and its own rows /
 * coefficients / codes buffers, reused by the parts it runs in order. */
struct kvtc__lane {
    cudaStream_t s;               /* NULL for lane 0 (the caller's) */
    cublasHandle_t blas;
    cudaEvent_t started, done;    /* after its first kernel; its last */
    cudaEvent_t gemm_done;        /* after its latest GEMM (mode 1) */
    struct kvtc__dbuf rows, coef, codes, ws;
};

/* A sub-batch: chunks [c0, c0+n), rows [row0, row0+M) of the batch; its
 * chunks' row_start are relative to row0 (the lane's buffers hold one
 * sub-batch at a time). */
struct kvtc__part {
    uint32_t c0, n;
    uint64_t row0, M;
};

/* A cuBLASLt algorithm chosen by timing (gpu_gemm.cu, kvtc__gemm_tune):
 * candidate idx of the heuristic's n, its time and the first one's. */
struct kvtc__algo {
    cublasLtMatmulAlgo_t a;
    int ok;
    uint32_t idx, n;
    float ms, ms_first;
};

/* One quantization group as the kernels read it. */
struct kvtc__dgroup {
    uint32_t start, size, bits, type;
    uint32_t dyn;              /* index among dynamic groups (their per-token
                                  shift/scale slots); UINT32_MAX if static */
    uint16_t sshift, sscale;   /* static groups: the plan's fp16 pair */
};

struct kvtc_gpu_codec {
    const kvtc_profile *p;
    const struct kvtc__plan *plan;
    uint32_t plan_index;
    kvtc_gpu_params params;
    uint32_t D, hd;               /* row width, kv_heads*head_dim */
    uint32_t kp[2];               /* components the plan reaches, per stream */
    uint32_t ld[2];               /* kp rounded up to 16: GEMM dimension and
                                     row stride (tensor cores want aligned
                                     leading dimensions; an odd kp ran the
                                     GEMM 6x slower); padding is zeros */
    uint32_t g0[2], g1[2];        /* group ranges per stream */
    uint32_t ndyn;                /* dynamic groups (per-token shift/scale) */
    /* Group indices split by size: small groups (<= KVTC_GPU_SMALL_GROUP
     * components) get a thread each, larger ones a warp. Per stream s:
     * glist[lo..lo+n) with lo = small0[s] / large0[s]. */
    uint32_t *glist;
    uint32_t small0[2], nsmall[2], large0[2], nlarge[2];
    /* [D][kp] bf16 or fp16, with the profile's per-component sigma folded
     * in: the encoder's columns times 1/sigma (coefficients are quantized
     * divided by sigma), the decoder's times sigma. */
    void *benc[2], *bdec[2];
    float *mean[2];               /* [D] */
    double *inv_freq;             /* [head_dim/2] RoPE frequencies */
    struct kvtc__dgroup *groups;  /* [n_groups] */
    cublasHandle_t blas;          /* lane 0's */
    cublasLtHandle_t lt;          /* GEMMs with an SM count target */
    /* Transform pipeline (gpu_pipe.cu): lanes used, sub-batches per call,
     * SMs the GEMM targets (0: cuBLAS's default GEMM on all SMs). */
    uint32_t n_lanes, lanes_made, split, gemm_sms;
    uint32_t mode;                /* 0: lanes independent; 1: a part's GEMM
                                     waits for the one before it on another
                                     lane; 2: GEMM and memory-bound streams */
    cudaStream_t role_s[2];       /* mode 2: GEMM (highest priority), memory */
    /* GEMM choice (gpu_gemm.cu): [encode, decode, direct][stream], timed
     * at creation; gemm_lt 1: the codec's GEMMs run through cuBLASLt with
     * them (0: cuBLAS's GemmEx, also when tuning failed or is off). */
    struct kvtc__algo algo[3][2];
    uint32_t gemm_lt;
    /* Direct decode (chunk dtype bf16/fp16 with 16-byte rows; off by
     * default, built on request by kvtc__gpu_gemm_set): [D][ldd] in the
     * chunk's dtype (dir_type, a cudaDataType), columns 0..kp the decoder
     * basis, kp and kp+1 the mean's high and low parts (their
     * coefficients are 1), zeros to ldd; NULL when not built or not
     * possible. direct: decoding uses it (the GEMM writes the chunks; keys
     * then get their RoPE in place) instead of bdec + the rows pass. */
    void *bdir[2];
    uint32_t ldd[2], direct;
    int dir_type;
    /* Grouped direct decode (gdir, v18; direct = KVTC_GPU_DIRECT_GROUPED..):
     * the tuned cuBLASLt algorithm of the pointer-array GEMM per stream,
     * and host counters of direct-decode GEMM launches by path (index
     * KVTC_GPU_DIRPATH_*), read by kvtc__gpu_direct_info. */
    struct kvtc__algo algo_grp[2];
    uint64_t dir_runs[3];
    const struct kvtc__dchunk *hch; /* during a decode: host chunk descriptors */
    cudaEvent_t role_ev[8];
    struct kvtc__lane lane[KVTC_GPU_MAX_LANES];
    cudaEvent_t fork;
    size_t max_out;               /* bound of one 64 KiB piece, nvCOMP's or
                                     ours (a slot of the cmp buffer) */
    struct kvtc__dbuf meta, sym, cmp, temp, sizes, bsum;
    void *host_meta;              /* pageable staging for the meta blob */
    size_t host_meta_cap;
    uint32_t *host_T;             /* per chunk: coded tokens */
    size_t *host_roff;            /* per chunk: its code offset row in meta */
    uint32_t host_n_cap;
    /* Pinned staging of the meta blob (gaps, v13): two page-locked
     * buffers used in turn, pin_ev[k] recorded after slot k's upload; a
     * call fills a slot whose last upload has run (cudaEventQuery, never a
     * wait), else the pageable host_meta. hmeta: the buffer this call
     * fills; pin_cur its slot or -1; pin_off: pageable only
     * (KVTC_GPU_PAGEABLE_META=1, or cudaMallocHost failed). */
    void *pin[2];
    size_t pin_cap[2];
    cudaEvent_t pin_ev[2];
    int pin_cur, pin_next, pin_off, pin_init;
    uint8_t *hmeta;
    /* Stage timing (params.timing): an event after each step, the step's
     * stage in ev_stage; read back by kvtc_gpu_stage_times. */
    cudaEvent_t ev[KVTC_GPU_MAX_EVENTS];
    uint8_t ev_stage[KVTC_GPU_MAX_EVENTS];
    uint32_t n_ev;
    int last_encode;
    /* Tiled quantizer (gpu_quant.cu): per stream, items qitem[qi0[s] ..
     * qi0[s] + nqi[s]) partition its columns [0, ld) into runs of whole
     * groups; qtiles[s]: the stream uses the tiled kernels (0: the
     * row-per-block k_quant/k_pack/k_dequant of gpu_rows.cu). */
    struct kvtc__qitem *qitem;
    uint32_t qi0[2], nqi[2], qtiles[2];
    /* fp8 projections (gpu_fp8.cu): NULL unless enc_gemm or dec_gemm is
     * KVTC_GPU_PROJ_FP8. */
    struct kvtc__fp8 *fp8;
};

/* Record the end of a step of `stage` (no-op unless timing is on). */
static inline void kvtc__mark(kvtc_gpu_codec *g, uint32_t stage, cudaStream_t s)
{
    if (g->params.timing && g->n_ev < KVTC_GPU_MAX_EVENTS) {
        g->ev_stage[g->n_ev] = (uint8_t)stage;
        cudaEventRecord(g->ev[g->n_ev++], s);
    }
}

/* Rounds up to a multiple of a (a power of two). */
__host__ __device__ static inline size_t kvtc__up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }

int kvtc__dbuf_reserve(struct kvtc__dbuf *b, size_t need, cudaStream_t s);
void kvtc__dbuf_free(struct kvtc__dbuf *b);
int kvtc__cuda_err(cudaError_t e, const char *what);
/* g->hmeta with room for need bytes: a free pinned slot, else the
 * pageable buffer. KVTC_ENOMEM. */
int kvtc__host_reserve(kvtc_gpu_codec *g, size_t need);
/* After the call's upload of g->hmeta on s: marks its pinned slot busy
 * until the upload has run. */
void kvtc__host_uploaded(kvtc_gpu_codec *g, cudaStream_t s);
int kvtc__host_chunks(kvtc_gpu_codec *g, uint32_t n);

/* Symbol byte offsets of dynamic group number d (of nd) for T coded tokens
 * (plan.c's layout: shifts of all dynamic groups, then their scales). */
__host__ __device__ static inline size_t kvtc__shift_off(uint32_t d, uint32_t T) { return (size_t)d * T * 2; }
__host__ __device__ static inline size_t kvtc__scale_off(uint32_t nd, uint32_t d, uint32_t T)
{
    return (size_t)nd * T * 2 + (size_t)d * T * 2;
}

/* ---- gpu_hash.cu: XXH3-64 of many device byte ranges ---- */
struct kvtc__seg {
    const uint8_t *p;   /* device */
    uint64_t len;
};
/* seg[i] (device array, lengths may be device-computed) hashed into
 * out[i]. slot_start[i] (device, n+1 entries, host-computed) gives each
 * segment blocks [slot_start[i], slot_start[i+1]) of bsum (8 u64 each); a
 * segment's actual length must not need more. */
int kvtc__hash_segments(const struct kvtc__seg *seg, const uint64_t *slot_start, uint32_t n,
                        uint64_t total_slots, uint64_t *bsum, uint64_t *out, cudaStream_t s);
/* The median of v[0..n) (n >= 1; sorts v): the GEMM timers' reduction. */
static inline float kvtc__median_ms(float *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            float x = v[j];
            v[j] = v[j - 1];
            v[j - 1] = x;
        }
    return v[n / 2];
}

/* Blocks a segment of at most len bytes needs. */
static inline uint64_t kvtc__hash_slots(uint64_t len) { return len > 240 ? (len - 1) / 1024 : 0; }

/* ---- shared kernel helpers (gpu_common.cu) ---- */
/* Per-chunk description that the row kernels read. */
struct kvtc__dchunk {
    const uint8_t *data;   /* canonical chunk (encode: input; decode: output) */
    uint8_t *sym;          /* this chunk's symbol bytes */
    const size_t *code_off;/* per group: its codes' byte offset for this T
                              (kvtc__plan_symbol_bytes, shared by equal T) */
    uint64_t row_start;    /* first row of this chunk's coded tokens */
    uint32_t n_tokens, first_pos, sinks, T;
};
/* vec: every chunk 16-byte aligned, 16-bit dtype, head_dim % 16 == 0
 * (kvtc__rows_vec_ok): 16-byte loads and stores. */
int kvtc__launch_rows_in(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                         uint32_t n_chunks, uint64_t M, void *rows, int32_t *status, int vec,
                         cudaStream_t s);
int kvtc__launch_rows_out(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                          uint32_t n_chunks, uint64_t M, const void *rows,
                          const int32_t *status, int vec, cudaStream_t s);
/* The header a chunk's container carries: what the encoder writes and what
 * the decoder expects to find, from one place. raw: the chunk is stored
 * as-is (no plan, no stage). */
/* index_log2: 0 for version 1; else version 2 with that index (coded
 * chunks only). */
static inline void kvtc__gpu_header(const kvtc_gpu_codec *g, int raw, uint32_t first_pos,
                                    uint32_t n_tokens, uint32_t sinks, uint32_t pieces,
                                    uint64_t raw_bytes, uint64_t symbol_bytes, uint32_t index_log2,
                                    uint8_t *out)
{
    struct kvtc__header h;
    memset(&h, 0, sizeof h);
    h.mode = raw ? KVTC__MODE_RAW : KVTC__MODE_CODED;
    h.stage = raw ? 0 : KVTC_STAGE_DEFLATE;
    h.plan = raw ? 0 : g->plan_index;
    h.profile_id = raw ? 0 : g->p->id;
    h.layout = g->p->layout;
    h.first_pos = first_pos;
    h.n_tokens = n_tokens;
    h.sink_tokens = sinks;
    h.n_pieces = pieces;
    h.raw_bytes = raw_bytes;
    h.index_log2 = raw ? 0 : index_log2;
    h.table_bytes = 4ull * pieces +
                    (h.index_log2 ? 2 * kvtc__index_entries(symbol_bytes, h.index_log2) : 0);
    h.symbol_bytes = symbol_bytes;
    kvtc__header_write(&h, out);
}

static inline int kvtc__rows_vec_ok(const kvtc_layout *l)
{
    return (l->dtype == KVTC_DTYPE_BF16 || l->dtype == KVTC_DTYPE_FP16) && l->head_dim % 16 == 0;
}
/* ---- gpu_quant.cu: the tiled quantizer ----
 * An item: columns [c0, c1) of one stream and its groups [ga, gb), all
 * inside the columns (c1 - c0 <= KVTC_GPU_QITEM_COLS, gb - ga <=
 * KVTC_GPU_QITEM_GROUPS); a stream's items partition [0, ld). */
#define KVTC_GPU_QITEM_COLS 1024u
#define KVTC_GPU_QITEM_GROUPS 128u
struct kvtc__qitem {
    uint32_t c0, c1, ga, gb;
};
/* Builds g->qitem/qi0/nqi/qtiles from the host copy dg of g->groups (after
 * g0/g1/ld are set); a stream whose groups are not sorted, disjoint and
 * inside [0, ld) keeps the old kernels. Synchronous. 0 or KVTC_ENOMEM /
 * a CUDA error; frees nothing on failure (kvtc__quant_free does). */
int kvtc__quant_init(kvtc_gpu_codec *g, const struct kvtc__dgroup *dg);
void kvtc__quant_free(kvtc_gpu_codec *g);
/* Tiled kernels of a stream (the launchers below dispatch to them when
 * g->qtiles[stream]): quantize + pack in one pass, pack a no-op. */
int kvtc__launch_quant_tiles(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                             uint32_t n_chunks, uint64_t M, const float *coef, cudaStream_t s);
/* coef: 16-bit values, or e4m3 ones (x KVTC_GPU_FP8_DEC_SCALE, saturating)
 * when kvtc__fp8_dec_e4m3(g, stream). */
int kvtc__launch_dequant_tiles(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                               uint32_t n_chunks, uint64_t M, void *coef, int32_t *status,
                               cudaStream_t s);
/* The direct decode's activation (gdir, v18): as kvtc__launch_dequant_tiles
 * in the chunk's dtype (g->dir_type) with row stride ldd, the mean's two
 * coefficients 1 at kp, kp+1 and zeros to ldd (kvtc__direct_basis). */
int kvtc__launch_dequant_tiles_direct(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                                      uint32_t n_chunks, uint64_t M, void *coef, int32_t *status,
                                      cudaStream_t s);
/* Benchmarks and tests: 1 the tiled quantizer and dequantizer where
 * possible (the default, KVTC_GPU_QUANT_TILES_DEFAULT in gpu_quant.cu), 0
 * the row-per-block kernels. KVTC_EINVAL on a NULL context or tiles > 1. */
extern "C" int kvtc__gpu_quant_set(kvtc_gpu_codec *g, uint32_t tiles);
int kvtc__launch_quant(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                       uint32_t n_chunks, uint64_t M, const float *coef, uint8_t *codes,
                       cudaStream_t s);
int kvtc__launch_pack(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                      uint32_t n_chunks, const uint8_t *codes, cudaStream_t s);
int kvtc__launch_dequant(const kvtc_gpu_codec *g, int stream, const kvtc__dchunk *ch,
                         uint32_t n_chunks, uint64_t M, void *coef, int32_t *status, int direct,
                         cudaStream_t s);
/* Leading `n` tokens of every slab: chunk of `total` tokens <-> part. */
struct kvtc__dcopy {
    const uint8_t *chunk_src; /* to_part: chunk; else part */
    uint8_t *dst;
    uint32_t total, n;
};
/* Host: code offset rows for the distinct T of a batch, appended to a meta
 * blob: for chunk i, its row's offset in the blob into row_off[i]. */
size_t kvtc__code_off_rows(const kvtc_gpu_codec *g, const uint32_t *T, uint32_t n, uint8_t *blob,
                           size_t at, size_t *row_off);
int kvtc__gemm_encode(kvtc_gpu_codec *g, struct kvtc__lane *ln, int stream, uint64_t M,
                      const void *rows, float *coef, cudaStream_t s);
int kvtc__gemm_decode(kvtc_gpu_codec *g, struct kvtc__lane *ln, int stream, uint64_t M,
                      const void *coef, void *rows, cudaStream_t s);
/* Direct decode variants (g->direct; kvtc__gpu_gemm_set): */
#define KVTC_GPU_DIRECT_CHUNKS 1    /* per chunk a GEMM strided over layers (v10) */
#define KVTC_GPU_DIRECT_GROUPED 2   /* per distinct T one pointer-array GEMM over every
                                       (layer, chunk) pair, layer-major: cuBLASLt, else
                                       cublasGemmBatchedEx, else per chunk */
#define KVTC_GPU_DIRECT_BATCHEDEX 3 /* as 2 through cublasGemmBatchedEx only */
#define KVTC_GPU_DIRECT_CHUNK_MAJOR 4 /* as 2 in (chunk, layer) order (measures the order) */
#define KVTC_GPU_DIRECT_MAX 4u
/* Paths a direct-decode GEMM took (g->dir_runs): per chunk strided,
 * cuBLASLt pointer arrays, cublasGemmBatchedEx. */
#define KVTC_GPU_DIRPATH_CHUNK 0
#define KVTC_GPU_DIRPATH_LT 1
#define KVTC_GPU_DIRPATH_BATCHEDEX 2
/* Direct decode of stream `stream` for the n_chunks chunks of hch (HOST
 * copies of the descriptors, row_start relative to coef) and dch (their
 * device copies): the GEMMs write the chunks' coded tokens (mean
 * included, RoPE not yet). The grouped variants build their pointer
 * arrays on s into scratch (a device buffer the call may overwrite: the
 * part's rows buffer, unused by a direct decode) and fall back to the
 * per-chunk GEMMs when it is too small. No host synchronisation. */
int kvtc__gemm_direct(kvtc_gpu_codec *g, struct kvtc__lane *ln, int stream,
                      const kvtc__dchunk *hch, const kvtc__dchunk *dch, uint32_t n_chunks,
                      const void *coef, const struct kvtc__dbuf *scratch, cudaStream_t s);
/* Builds bdir[s] where the layout allows (gpu_codec.cu); 0 also when it
 * does not (bdir[s] stays NULL). Synchronous. */
int kvtc__direct_basis(kvtc_gpu_codec *g, int s);
/* Times cuBLASLt's candidates for the context's shapes and keeps the
 * fastest (g->algo, g->gemm_lt); synchronous, at creation, after the bases
 * and pipe_init. Failures leave GemmEx in use (returns 0). */
int kvtc__gemm_tune(kvtc_gpu_codec *g);
/* Keys of a direct decode: RoPE redone in place on the chunks' coded
 * tokens (the GEMM wrote them unrotated). */
int kvtc__launch_rope_inplace(const kvtc_gpu_codec *g, const kvtc__dchunk *ch, uint32_t n_chunks,
                              uint64_t M, const int32_t *status, cudaStream_t s);

/* ---- gpu_fp8.cu: e4m3 projections (params.enc_gemm / dec_gemm) ---- */
/* e4m3 bases from benc/bdec and the per-lane state, when either direction
 * asks for fp8 (after the bases and ld; synchronous). KVTC_ENOTSUP when the
 * row width is not a multiple of 16; kvtc__fp8_free cleans up failures. */
int kvtc__fp8_init(kvtc_gpu_codec *g);
void kvtc__fp8_free(kvtc_gpu_codec *g);
/* 1 when direction dir (0 encode, 1 decode) runs in fp8. */
int kvtc__fp8_on(const kvtc_gpu_codec *g, int dir);
/* The decode activation's static scale (fp8b, v15): the dequantized
 * coefficients are whitened (divided by the profile's calibration sigma,
 * so about unit variance for every component), and the e4m3 activation is
 * coefficient x KVTC_GPU_FP8_DEC_SCALE: 1 sigma -> 16, saturating at 448
 * = 28 sigma. A constant, not the batch's amax: a chunk's activation
 * depends only on its own symbols, never on its batch-mates. The GEMM
 * descales by 1/KVTC_GPU_FP8_DEC_SCALE (a device scalar like the basis
 * scale). Per-component scales would all be this one after whitening. */
#define KVTC_GPU_FP8_DEC_SCALE 16.0f
/* 1 when the dequantizer writes the decode activation of stream as e4m3
 * ([M][ld] bytes, x KVTC_GPU_FP8_DEC_SCALE) instead of 16 bits: fp8 decode
 * on and the stream on the tiled dequantizer (the row-per-block kernels
 * write 16 bits and kvtc__fp8_decode converts with the same scale). */
int kvtc__fp8_dec_e4m3(const kvtc_gpu_codec *g, int stream);
/* Encode: as kvtc__gemm_encode with e4m3 operands (the 16-bit activation
 * converted first with the batch's amax, on s) for the first *done rows
 * (M & ~15, or 0 when cuBLASLt cannot run the FP8 GEMM): the caller
 * projects the rest in 16 bits. 0, or < 0 an error. */
int kvtc__fp8_encode(kvtc_gpu_codec *g, struct kvtc__lane *ln, int stream, uint64_t M,
                     const void *rows, float *coef, cudaStream_t s, uint64_t *done);
/* Decode: coef holds e4m3 (kvtc__fp8_dec_e4m3) or 16-bit coefficients; all
 * M rows go through the FP8 GEMM (the last M % 16 as a zero-padded 16-row
 * GEMM into scratch), so every row gets the same arithmetic wherever it
 * sits in the batch. When cuBLASLt refuses, *done < M and *rest points at
 * 16-bit coefficients of rows [*done, M) (the e4m3 values widened, or
 * coef's own rows) for the caller's 16-bit GEMM. 0, or < 0 an error. */
int kvtc__fp8_decode(kvtc_gpu_codec *g, struct kvtc__lane *ln, int stream, uint64_t M,
                     const void *coef, void *rows, cudaStream_t s, uint64_t *done,
                     const void **rest);
/* Tests and benchmarks: GEMM calls that ran in fp8 and that fell back to
 * 16 bits since creation (host counters; KVTC_EINVAL on NULLs). */
extern "C" int kvtc__gpu_fp8_info(const kvtc_gpu_codec *g, uint64_t *runs, uint64_t *fallbacks);
/* The FP8 GEMMs alone (no activation conversion), both streams, over M
 * rows of scratch data: medians of iters (ms). Synchronous; KVTC_EINVAL
 * without fp8, KVTC_ENOTSUP when cuBLASLt has no FP8 algorithm. */
extern "C" int kvtc__gpu_fp8_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, float *enc_ms,
                                       float *dec_ms);

/* ---- gpu_pipe.cu: the transform stages over lanes and sub-batches ---- */
/* Lanes and the pipeline defaults at context creation (synchronous). */
int kvtc__pipe_init(kvtc_gpu_codec *g);
void kvtc__pipe_free(kvtc_gpu_codec *g);
/* Split a batch (host T[i]: coded tokens per chunk, M in all) into at most
 * KVTC_GPU_MAX_SPLIT sub-batches of about equal rows; returns their count
 * (>= 1; parts with M == 0 hold only raw or all-sink chunks). */
uint32_t kvtc__pipe_split(const kvtc_gpu_codec *g, const uint32_t *T, uint32_t n, uint64_t M,
                          struct kvtc__part *parts);
/* Encode: rows -> GEMM -> quantize -> pack of every (part, stream), spread
 * over the lanes; on return the caller's stream waits for all of it.
 * dch: device chunk descriptors with part-relative row_start. */
int kvtc__pipe_encode(kvtc_gpu_codec *g, const kvtc__dchunk *dch, const struct kvtc__part *parts,
                      uint32_t np, int32_t *d_status, int vec, cudaStream_t st);
/* Decode: dequantize -> GEMM -> rows of every (part, stream). */
/* hch: the host copy of dch (direct decode launches a GEMM per chunk). */
int kvtc__pipe_decode(kvtc_gpu_codec *g, const kvtc__dchunk *hch, const kvtc__dchunk *dch,
                      const struct kvtc__part *parts, uint32_t np, int32_t *d_status, int vec,
                      cudaStream_t st);
/* Benchmarks and tests: lanes 1..KVTC_GPU_MAX_LANES (1: everything on the
 * caller's stream, the serial order), split 1..KVTC_GPU_MAX_SPLIT,
 * gemm_sms 0 (cuBLAS default) or the SMs cuBLASLt's GEMM should target,
 * mode 0 (lanes independent), 1 (GEMMs of different lanes one after the
 * other) or 2 (lanes must be 2: all GEMMs on a high-priority stream, all
 * other stages on a low-priority one, double-buffered).
 * Synchronous (creates streams and handles). KVTC_EINVAL out of range. */
extern "C" int kvtc__gpu_pipeline(kvtc_gpu_codec *g, uint32_t lanes, uint32_t split,
                                  uint32_t gemm_sms, uint32_t mode);
/* Benchmarks and tests (gpu_gemm.cu): use_lt 1 the tuned cuBLASLt
 * algorithms, 0 cuBLAS's GemmEx; direct 0 the rows pass, 1..4 a direct
 * decode variant (KVTC_GPU_DIRECT_*). Synchronous; KVTC_EINVAL when the
 * context has no such choice. */
extern "C" int kvtc__gpu_gemm_set(kvtc_gpu_codec *g, uint32_t use_lt, uint32_t direct);
/* Direct-decode GEMM launches since creation by path (KVTC_GPU_DIRPATH_*
 * order: per chunk, cuBLASLt pointer arrays, GemmBatchedEx) into out[3].
 * Host counters; KVTC_EINVAL on NULLs. */
extern "C" int kvtc__gpu_direct_info(const kvtc_gpu_codec *g, uint64_t *out);
/* The tuned choice of kind 0 encode, 1 decode, 2 direct (per chunk), 3
 * grouped direct (pointer arrays), per stream: the heuristic's candidate
 * idx of n, its time and the first candidate's (ms, one GEMM at the
 * tuning shape). KVTC_EINVAL if none. */
extern "C" int kvtc__gpu_gemm_info(const kvtc_gpu_codec *g, int kind, int stream, uint32_t *idx,
                                   uint32_t *n, float *ms, float *ms_first);
/* The plan's projection GEMMs alone, as the codec runs them (same
 * algorithms): both streams' encode GEMMs and both decode GEMMs (not the
 * direct ones) over M rows of scratch data; medians of iters. Synchronous.
 * noise 0: the rows are one constant; 1: pseudo-random in [-2, 2) (a
 * GEMM's power, so its clock, depends on how many bits toggle). */
extern "C" int kvtc__gpu_gemm_time(kvtc_gpu_codec *g, uint64_t M, int iters, int noise,
                                   float *enc_ms, float *dec_ms);
/* Benchmarks: the encode (ld x M x D, fp32 out) and decode (D x M x ld)
 * shapes alone on scratch data, tuned as at creation: out[0..3] = encode
 * heuristic-first ms, encode best ms, decode first, decode best. */
extern "C" int kvtc__gpu_gemm_probe(uint32_t D, uint64_t M, uint32_t ld, int fp16, float *out);

#endif
