/* kvtc_gpu.h - the KVTC codec on an NVIDIA GPU (CUDA, sm_90).
 *
 * Reads and writes exactly the container of the CPU codec (kvtc_codec.h,
 * docs/container.md): whatever one encodes, the other decodes. The stages
 * run as CUDA kernels, cuBLAS GEMMs and nvCOMP's batched raw DEFLATE (or
 * our own inflate, kvtc_gpu_params.inflate), many
 * chunks per call, asynchronously on a caller-given stream: no call below
 * synchronizes the host with the device except create/free. With our own
 * Huffman coder (kvtc_gpu_params.deflate) the encoder writes container
 * version 2 (docs/container.md: the same pieces plus a sub-range index,
 * which the CPU decoder reads too) and the decoder decodes such pieces
 * with a thread per sub-range; version 1 containers (the CPU's, nvCOMP's)
 * decode as before, in the same batch.
 *
 * Ownership: a context owns its device copies of the profile's bases and
 * means, its work buffers, its cuBLAS handle; the profile must stay alive
 * while the context exists (it is read on the host). Device buffers passed
 * in are owned by the caller and must stay valid until the stream reaches
 * the end of the call's work.
 *
 * Thread-safety: a context is not thread-safe, and its work buffers are
 * shared by its calls: issue one context's calls from one thread and on one
 * stream (or order the streams yourself). Distinct contexts are independent.
 *
 * Errors: functions return 0 or a negative KVTC_E* code for what the host
 * can see (bad arguments, allocation, launch failures: KVTC_EINVAL,
 * KVTC_ENOMEM, KVTC_ENOTSUP when no usable GPU, KVTC_EIO for other CUDA
 * errors). What only the device can see (corrupt containers, non-finite KV)
 * lands in a per-chunk int32 status array in device memory: 0 or a KVTC_E*
 * code, final once the stream passes the call. A chunk whose status is not
 * 0 has unspecified output. */
#ifndef KVTC_GPU_H
#define KVTC_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st; /* cudaStream_t without the CUDA headers */
typedef struct CUstream_st *kvtc_gpu_stream;

/* 1 when a CUDA device is usable by this process, else 0 (never fails). */
int kvtc_gpu_available(void);

/* Operands of the projections (fp32 accumulation either way). fp16's 11-bit
 * mantissa matters since coefficients are quantized divided by their
 * calibration std: bf16 rounding noise (2^-9 of the row's magnitude) is
 * then amplified on the small components and raised the error ~1.5x on the
 * synthetic tests; fp16 is the default. Rows whose centred values exceed
 * fp16's range (65504) are refused with KVTC_ENOTSUP: use bf16 for them. */
enum kvtc_gpu_gemm {
    KVTC_GPU_GEMM_BF16 = 0, /* bf16 operands */
    KVTC_GPU_GEMM_FP16 = 1  /* fp16 operands (default) */
};

/* Who inflates the DEFLATE pieces when decoding. */
enum kvtc_gpu_inflate {
    KVTC_GPU_INFLATE_NVCOMP = 0, /* nvCOMP's batched Deflate (the default) */
    KVTC_GPU_INFLATE_KVTC = 1    /* ours (kernels/gpu_inflate.cu): every block
                                    type and LZ copies, one thread per piece;
                                    correct but 1.2x slower than nvCOMP on an
                                    H100 (9.2 vs 7.6 ms per GiB of KV, see
                                    docs/perf-notes.md): the comparison and
                                    the base of a sub-piece parallel decoder */
};

/* Who writes the DEFLATE pieces when encoding. */
enum kvtc_gpu_deflate {
    KVTC_GPU_DEFLATE_AUTO = 0,   /* the library's default: ours */
    KVTC_GPU_DEFLATE_NVCOMP = 1, /* nvCOMP's batched Deflate (deflate_algo);
                                    container version 1 */
    KVTC_GPU_DEFLATE_KVTC = 2    /* ours (kernels/huff_core.h): Huffman-only
                                    pieces with a sub-range index; container
                                    version 2 */
};

/* Whether decoding uses the index of version 2 containers. */
enum kvtc_gpu_index {
    KVTC_GPU_INDEX_AUTO = 0, /* the default: on */
    KVTC_GPU_INDEX_ON = 1,   /* indexed pieces: our parallel decoder, a
                                thread per sub-range (the others: inflate) */
    KVTC_GPU_INDEX_OFF = 2   /* every piece through `inflate` (comparisons) */
};

/* Operands of one projection direction (kvtc_gpu_params.enc_gemm,
 * dec_gemm). The encoder and decoder need not agree: coefficients are the
 * same quantities either way, so this is a per-context choice, not a
 * profile or container property (a container encoded with fp8 decodes with
 * fp16 and on the CPU, and vice versa). fp8 is never the default: on real
 * KV (SmolLM2-135M at 16x, docs/perf-notes.md "Projection cost options")
 * it costs +3% KL encoding, +7-8% decoding, +10-12% both, for GEMMs at
 * ~1.8x fp16's rate on an H100 (1330-1440 vs 761 TFLOP/s). One scale per
 * call and direction: an extreme (finite) chunk coarsens its batch
 * neighbours' rounding. The FP8 GEMM takes the first M & ~15 rows of a
 * call, the 16-bit GEMM the rest, and all of them when cuBLASLt refuses
 * FP8 for the shape (a line on stderr; the call still succeeds). The
 * direct decode (KVTC_GPU_PROJ_DIRECT) stays 16-bit. */
enum kvtc_gpu_proj {
    KVTC_GPU_PROJ_AUTO = 0, /* the `gemm` field's 16-bit type (default) */
    KVTC_GPU_PROJ_FP8 = 1,  /* e4m3 operands, one scale per operand tensor
                               (basis at creation; activations per call,
                               448 / amax on the device), fp32
                               accumulation; needs width % 16 == 0
                               (KVTC_ENOTSUP otherwise) */
    KVTC_GPU_PROJ_DIRECT = 2 /* dec_gemm only: 16-bit in the chunks' dtype,
                               written straight into the canonical chunks
                               by one grouped GEMM per stream over every
                               (layer, chunk) pair, keys' RoPE redone in
                               place: no rows pass (H100, 1 GiB 8B batch:
                               decompress 7.30 vs 7.55 ms, 1.30x the
                               GEMM alone; docs/perf-notes.md gdir, v18).
                               Decodes to other bytes than AUTO, within
                               the same bounds; a second copy of the
                               decode bases on the device; KVTC_ENOTSUP
                               where no stream's head rows are whole
                               16-byte units */
};

/* Which fields of kvtc_gpu_params the caller set (as UCX's field_mask):
 * kvtc_gpu_codec_create reads those and gives every other field its
 * default, so a zeroed struct (or NULL) is the defaults, and a field added
 * later changes nothing for callers that do not name it. */
enum kvtc_gpu_param_field {
    KVTC_GPU_PARAM_FIELD_GEMM = 1u << 0,
    KVTC_GPU_PARAM_FIELD_DEFLATE_ALGO = 1u << 1,
    KVTC_GPU_PARAM_FIELD_DEVICE = 1u << 2,
    KVTC_GPU_PARAM_FIELD_TIMING = 1u << 3,
    KVTC_GPU_PARAM_FIELD_INFLATE = 1u << 4,
    KVTC_GPU_PARAM_FIELD_DEFLATE = 1u << 5,
    KVTC_GPU_PARAM_FIELD_INDEX_LOG2 = 1u << 6,
    KVTC_GPU_PARAM_FIELD_DECODE_INDEX = 1u << 7,
    KVTC_GPU_PARAM_FIELD_ENC_GEMM = 1u << 8,
    KVTC_GPU_PARAM_FIELD_DEC_GEMM = 1u << 9
};

typedef struct kvtc_gpu_params {
    uint64_t field_mask;    /* enum kvtc_gpu_param_field bits; a bit this
                               library does not know is KVTC_EINVAL */
    uint32_t gemm;          /* enum kvtc_gpu_gemm (default fp16) */
    int deflate_algo;       /* nvCOMP Deflate algorithm 0..5 (0, the
                               default: Huffman only, which on quantized
                               symbols is both the fastest and the smallest
                               (docs/perf-notes.md); 1: LZ + Huffman) */
    int device;             /* CUDA device ordinal the context lives on (0) */
    int timing;             /* 1: record per-stage CUDA events (benchmarks;
                               default 0) */
    int inflate;            /* enum kvtc_gpu_inflate (default nvCOMP) */
    int deflate;            /* enum kvtc_gpu_deflate (default auto) */
    int index_log2;         /* ours: 2^index_log2 symbols per sub-range of
                               the index, 8..12 (default, or 0: 9) */
    int decode_index;       /* enum kvtc_gpu_index (default auto) */
    int enc_gemm;           /* enum kvtc_gpu_proj of the encode GEMM (auto) */
    int dec_gemm;           /* enum kvtc_gpu_proj of the decode GEMM (auto) */
} kvtc_gpu_params;

typedef struct kvtc_gpu_codec kvtc_gpu_codec;

/* A context for one profile and one of its plans: uploads bases and means,
 * creates the cuBLAS handles and picks the projections' GEMM algorithms by
 * timing cuBLASLt's candidates (once per process, device and shape: later
 * contexts reuse the pick, so they decode to the same bytes; it needs
 * ~1.5 GiB of scratch for a moment on an 8B-model layout, and falls back
 * to cuBLAS's default GEMM if that fails; the environment variable
 * KVTC_GPU_TUNE_ROWS=0 skips it). params may be NULL for defaults.
 * Synchronous.
 * Errors: KVTC_EINVAL, KVTC_ENOMEM, KVTC_ENOTSUP (no GPU, or a layout the
 * GPU path does not cover), KVTC_EIO. */
int kvtc_gpu_codec_create(const kvtc_profile *p, uint32_t plan, const kvtc_gpu_params *params,
                          kvtc_gpu_codec **out);
/* Waits for the device to finish the context's work, then frees it. */
void kvtc_gpu_codec_free(kvtc_gpu_codec *g);

/* One chunk to encode: data is a DEVICE pointer to the canonical layout. */
typedef struct kvtc_gpu_chunk {
    const void *data;
    uint32_t n_tokens;  /* 1..KVTC_MAX_CHUNK_TOKENS */
    uint32_t first_pos;
    uint32_t flags;     /* enum kvtc_chunk_flags */
} kvtc_gpu_chunk;

/* Bytes of device output buffer kvtc_gpu_encode needs for these chunks
 * (containers start at 16-byte aligned offsets). 0 on bad arguments. */
size_t kvtc_gpu_encode_bound(const kvtc_gpu_codec *g, const kvtc_gpu_chunk *chunks, uint32_t n);

/* Encode n chunks (host array of descriptors of device data) into dst
 * (device, dst_cap >= kvtc_gpu_encode_bound). Writes, in device memory,
 * container i at dst + d_offsets[i], d_sizes[i] bytes long (0 when
 * d_status[i] != 0; statuses: KVTC_EINVAL for non-finite KV, KVTC_EIO when
 * the DEFLATE stage fails, KVTC_ENOTSUP for values beyond the fp16 GEMM's
 * range).
 * n <= 65535 per call. Work buffers grow in stream order (cudaMallocAsync)
 * to the largest batch seen. Asynchronous on stream. */
int kvtc_gpu_encode(kvtc_gpu_codec *g, const kvtc_gpu_chunk *chunks, uint32_t n, void *dst,
                    size_t dst_cap, uint64_t *d_offsets, uint64_t *d_sizes, int32_t *d_status,
                    kvtc_gpu_stream stream);

/* One container to decode. The host states what it expects (the store's
 * index knows it); the device checks the container against that and
 * against every checksum and size, exactly as strictly as kvtc_decode. */
typedef struct kvtc_gpu_container {
    uint64_t src_off;   /* container at src + src_off (device) */
    uint64_t src_len;   /* its exact length */
    void *dst;          /* DEVICE output: the canonical chunk */
    uint32_t n_tokens, first_pos;
    uint32_t flags;     /* KVTC_CHUNK_RAW when a raw container is expected */
} kvtc_gpu_container;

/* Decode n containers of this context's profile and plan (or raw ones).
 * Statuses: KVTC_ECORRUPT (checksum, size, symbol or DEFLATE error, or a
 * header that differs from the expectation), KVTC_EVERSION, KVTC_EPROFILE
 * (other profile or plan), KVTC_ENOTSUP (a stage other than DEFLATE).
 * The device never reads outside [src + src_off, src + src_off + src_len)
 * nor writes outside each dst chunk. n <= 65535. Asynchronous on stream. */
int kvtc_gpu_decode(kvtc_gpu_codec *g, const kvtc_gpu_container *items, uint32_t n,
                    const void *src, int32_t *d_status, kvtc_gpu_stream stream);

/* Calibration step 1 on the GPU, in place of kvtc_calibrator_fit (then
 * kvtc_calibrator_plan / kvtc_calibrator_profile as usual): the covariance
 * of the calibrator's rows by cuBLAS (TF32 tensor cores, fp32 accumulation)
 * and its leading eigenvectors by cuSOLVER: syevd of the whole covariance,
 * or, when max_components < width/4 and width > 4096, subspace iteration
 * (4 steps, 64 extra directions, a QR per step) and syevd of the projected
 * matrix. Error measurement and planning stay calibrate.c's (CPU).
 * Synchronous; needs n x width x 4 + width^2 x 4 bytes of device memory.
 * Errors: as kvtc_calibrator_fit, plus KVTC_ENOTSUP (no GPU), KVTC_EIO. */
int kvtc_gpu_calibrator_fit(kvtc_calibrator *cal, int device);

/* Stages of the last encode or decode call, for benchmarks. */
enum kvtc_gpu_stage {
    KVTC_GPU_STAGE_SETUP = 0,   /* metadata upload, status init */
    KVTC_GPU_STAGE_ROWS,        /* chunk -> rows (RoPE, means) or back */
    KVTC_GPU_STAGE_GEMM,        /* cuBLAS projection */
    KVTC_GPU_STAGE_QUANT,       /* quantize + pack, or dequantize */
    KVTC_GPU_STAGE_DEFLATE,     /* nvCOMP batched Deflate / our or nvCOMP's
                                   inflate */
    KVTC_GPU_STAGE_CONTAINER,   /* table, compaction, checksums, headers,
                                   validation, raw sections */
    KVTC_GPU_N_STAGES
};
/* Milliseconds per stage of the context's last call (params.timing = 1);
 * waits for that call to finish. ms has KVTC_GPU_N_STAGES entries.
 * Errors: KVTC_EINVAL when timing is off or no call was made. */
int kvtc_gpu_stage_times(kvtc_gpu_codec *g, float *ms);
const char *kvtc_gpu_stage_name(uint32_t stage);

#ifdef __cplusplus
}
#endif
#endif
