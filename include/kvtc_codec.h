/* kvtc_codec.h - KV-cache transform coding (KVTC) on the CPU.
 *
 * A chunk is the KV of n consecutive tokens across every layer of one model
 * rank, in the canonical layout [layer][k|v][token][kv_head][head_dim].
 * Encoding undoes RoPE on keys, projects each token's cross-layer row onto a
 * PCA basis, quantizes the coefficients with a bit-allocation plan, and codes
 * the bytes as raw DEFLATE pieces (<= 64 KiB each) in a checksummed
 * container (docs/container.md). The first KVTC_SINK_TOKENS tokens of a
 * sequence are stored as-is.
 *
 * Workflow: calibrate (kvtc_calibrator_*) -> profile (.kvtcp file, holding
 * bases and one plan per target ratio) -> encode/decode with contexts made
 * from the profile.
 *
 * Thread-safety: profiles are immutable once built and may be shared by any
 * number of threads. Calibrators, encoders and decoders are not thread-safe;
 * distinct objects may be used concurrently. All buffers are owned by the
 * caller unless a function says otherwise.
 *
 * Errors: every int-returning function returns 0 or a negative KVTC_E* code
 * (kvtc_errors.h). Functions that fail leave their outputs unspecified but
 * never leak. */
#ifndef KVTC_CODEC_H
#define KVTC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVTC_SINK_TOKENS 4      /* leading tokens of a sequence stored as-is */
#define KVTC_PIECE_MAX 65536    /* raw bytes per DEFLATE piece, at most */
#define KVTC_MAX_PLANS 16       /* target ratios per profile, at most */

/* Sanity bounds every layout from a file or the network is checked against. */
#define KVTC_MAX_LAYERS 1024
#define KVTC_MAX_KV_HEADS 1024
#define KVTC_MAX_HEAD_DIM 1024
#define KVTC_MAX_ROW_WIDTH (1u << 20)   /* layers*kv_heads*head_dim */
#define KVTC_MAX_CHUNK_TOKENS 65536

enum kvtc_dtype {
    KVTC_DTYPE_BF16 = 1,
    KVTC_DTYPE_FP16 = 2,
    KVTC_DTYPE_FP32 = 3,
    KVTC_DTYPE_FP8_E4M3 = 4
};

enum kvtc_rope_style {
    KVTC_ROPE_NONE = 0,        /* keys carry no rotary embedding */
    KVTC_ROPE_INTERLEAVED = 1, /* pairs (x[2i], x[2i+1]): GPT-J, llama2.c, GGML */
    KVTC_ROPE_HALF_SPLIT = 2   /* pairs (x[i], x[i+d/2]): Hugging Face Llama */
};

enum kvtc_rope_scaling {
    KVTC_ROPE_SCALING_NONE = 0,
    KVTC_ROPE_SCALING_LINEAR = 1, /* positions divided by factor */
    KVTC_ROPE_SCALING_LLAMA3 = 2  /* Llama 3.1 frequency-dependent scaling */
};

/* Shape of a model rank's KV, shared by every chunk of a profile. */
typedef struct kvtc_layout {
    uint32_t layers;
    uint32_t kv_heads;
    uint32_t head_dim;     /* even when rope_style != NONE */
    uint32_t dtype;        /* enum kvtc_dtype of chunks */
    uint32_t chunk_tokens; /* nominal tokens per chunk; chunks may be shorter */
    uint32_t rope_style;   /* enum kvtc_rope_style */
    uint32_t rope_scaling; /* enum kvtc_rope_scaling */
    uint32_t rope_orig_max_pos; /* LLAMA3: original context length */
    float rope_theta;
    float rope_factor;     /* LINEAR and LLAMA3 */
    float rope_low_freq_factor;  /* LLAMA3 */
    float rope_high_freq_factor; /* LLAMA3 */
} kvtc_layout;

/* 0 when the layout is within the sanity bounds above, else KVTC_EINVAL. */
int kvtc_layout_check(const kvtc_layout *layout);
/* Bytes of one element of dtype (fp8 = 1); 0 for an unknown dtype. */
size_t kvtc_dtype_size(uint32_t dtype);
/* Bytes of a canonical chunk of n_tokens tokens. */
size_t kvtc_chunk_bytes(const kvtc_layout *layout, uint32_t n_tokens);
/* Width of one row: layers * kv_heads * head_dim. */
size_t kvtc_row_width(const kvtc_layout *layout);

/* ---- Profiles ---------------------------------------------------------- */

typedef struct kvtc_profile kvtc_profile;

/* Summary of one bit-allocation plan of a profile. */
typedef struct kvtc_plan_info {
    float target_ratio;      /* the ratio asked for at planning */
    float bits_per_token;    /* K+V payload bits of one coded token, scales
                                included, before the entropy stage */
    float mse_key;           /* mean squared error per key element on the
                                calibration rows (RoPE undone) */
    float mse_value;         /* same for values */
    uint32_t key_components; /* components with bits */
    uint32_t value_components;
    uint32_t groups;         /* quantization groups, K and V */
} kvtc_plan_info;

/* Read a profile from memory or a file. Everything is validated (magic,
 * version, checksum, layout bounds, sizes, plans) before it is trusted.
 * Errors: KVTC_ECORRUPT, KVTC_EVERSION, KVTC_EINVAL, KVTC_ENOMEM, KVTC_EIO. */
int kvtc_profile_load(const void *buf, size_t len, kvtc_profile **out);
int kvtc_profile_load_file(const char *path, kvtc_profile **out);
/* Serialized size, and serialization into buf (cap >= that size). */
size_t kvtc_profile_size(const kvtc_profile *p);
int kvtc_profile_save(const kvtc_profile *p, void *buf, size_t cap);
int kvtc_profile_save_file(const kvtc_profile *p, const char *path);
void kvtc_profile_free(kvtc_profile *p);

/* 64-bit id: a hash of the profile's serialized content. */
uint64_t kvtc_profile_id(const kvtc_profile *p);
const kvtc_layout *kvtc_profile_layout(const kvtc_profile *p);
uint32_t kvtc_profile_plan_count(const kvtc_profile *p);
int kvtc_profile_plan_info(const kvtc_profile *p, uint32_t plan,
                           kvtc_plan_info *out);
/* Index of the plan whose target is closest to target_ratio (ties: lower). */
uint32_t kvtc_profile_find_plan(const kvtc_profile *p, float target_ratio);

/* ---- Calibration ------------------------------------------------------- */

typedef struct kvtc_calibrator kvtc_calibrator;

typedef struct kvtc_calib_params {
    uint32_t max_rows;      /* rows kept for PCA; further rows are sampled
                               by reservoir (0: 65536) */
    uint32_t plan_rows;     /* rows the planner measures errors on
                               (0: 2^26 / row width, within 4096..65536) */
    uint32_t max_components;/* cap on kept components per K/V (0: row width) */
    uint64_t seed;          /* reservoir sampling seed */
    float value_weight;     /* planner weight of value errors relative to key
                               errors (0: var_K / var_V, i.e. both streams'
                               relative errors count the same; 1 when
                               slab_weights are given) */
    const float *slab_weights; /* NULL, or 2 * layers importance weights,
                               [layer][k|v], in (1e-6, 1e6): rows are
                               scaled by them before the PCA, so squared
                               errors count as much as the model's
                               sensitivity to that layer's K or V (e.g. sqrt
                               of KL per unit noise power). Stored in the
                               profile; copied at create. */
} kvtc_calib_params;

/* Create a calibrator for layout. params may be NULL for defaults. */
int kvtc_calibrator_create(const kvtc_layout *layout,
                           const kvtc_calib_params *params,
                           kvtc_calibrator **out);
/* Add the rows of one canonical chunk whose first token sits at absolute
 * position first_pos. Sink tokens (position < KVTC_SINK_TOKENS) are skipped,
 * as the paper excludes them from calibration. */
int kvtc_calibrator_add(kvtc_calibrator *cal, const void *chunk,
                        uint32_t n_tokens, uint32_t first_pos);
/* Rows collected so far. */
uint64_t kvtc_calibrator_rows(const kvtc_calibrator *cal);
/* Step 1: means and PCA bases (covariance by BLAS, eigendecomposition by
 * LAPACK) and the squared error of every quantization option on the
 * planning rows. Once per calibrator; no rows may be added afterwards.
 * Errors: KVTC_EINVAL (fewer than 2 rows, or fitted already),
 * KVTC_ENUMERICAL, KVTC_ENOMEM. */
int kvtc_calibrator_fit(kvtc_calibrator *cal);
/* Step 2: one bit-allocation plan for target_ratio (the budget is 16 bits
 * per element / target_ratio, per-group scales counted), solved by dynamic
 * programming over the components; at most KVTC_MAX_PLANS. info may be
 * NULL. Errors: KVTC_EINVAL (not fitted, too many plans, ratio < 1). */
int kvtc_calibrator_plan(kvtc_calibrator *cal, float target_ratio, kvtc_plan_info *info);
/* Step 3: the profile: bases trimmed to the components some plan codes,
 * plans in the order they were made. The caller frees it. */
int kvtc_calibrator_profile(kvtc_calibrator *cal, kvtc_profile **out);
/* All three steps: fit, one plan per target ratio, profile. */
int kvtc_calibrator_finish(kvtc_calibrator *cal, const float *target_ratios,
                           uint32_t n_targets, kvtc_profile **out);
void kvtc_calibrator_free(kvtc_calibrator *cal);

/* ---- Encode / decode --------------------------------------------------- */

enum kvtc_stage {
    KVTC_STAGE_DEFLATE = 0, /* raw DEFLATE pieces (RFC 1951), the default */
    KVTC_STAGE_ZSTD = 1,    /* one zstd frame per piece */
    KVTC_STAGE_STORE = 2    /* pieces stored uncompressed */
};

enum kvtc_chunk_flags {
    KVTC_CHUNK_RAW = 1u << 0 /* store every token as-is (live window) */
};

/* One chunk to encode. */
typedef struct kvtc_chunk {
    const void *data;   /* canonical layout, layout.dtype */
    uint32_t n_tokens;  /* 1..KVTC_MAX_CHUNK_TOKENS */
    uint32_t first_pos; /* absolute position of the first token */
    uint32_t flags;     /* enum kvtc_chunk_flags */
} kvtc_chunk;

typedef struct kvtc_encoder kvtc_encoder;
typedef struct kvtc_decoder kvtc_decoder;

/* An encoder for one profile and plan. The profile must outlive it.
 * stage: enum kvtc_stage; level: DEFLATE 1..12 or zstd 1..19 (0: default). */
int kvtc_encoder_create(const kvtc_profile *p, uint32_t plan, uint32_t stage,
                        int level, kvtc_encoder **out);
void kvtc_encoder_free(kvtc_encoder *enc);
/* Largest container an encoder can produce for n_tokens tokens. */
size_t kvtc_encode_bound(const kvtc_encoder *enc, uint32_t n_tokens);
/* Encode one chunk into dst. Errors: KVTC_EINVAL, KVTC_ENOSPC (dst_cap too
 * small: size it with kvtc_encode_bound), KVTC_ENOMEM. */
int kvtc_encode(kvtc_encoder *enc, const kvtc_chunk *chunk, void *dst,
                size_t dst_cap, size_t *dst_len);

/* A decoder. p may be NULL: then only containers of raw chunks decode. */
int kvtc_decoder_create(const kvtc_profile *p, kvtc_decoder **out);
void kvtc_decoder_free(kvtc_decoder *dec);

/* What a container says about itself (validated header). */
typedef struct kvtc_container_info {
    uint32_t version;
    uint32_t mode;          /* 0: transform coded, 1: raw */
    uint32_t stage;         /* enum kvtc_stage */
    uint32_t plan;          /* plan index in the profile */
    uint64_t profile_id;    /* 0 for raw containers */
    kvtc_layout layout;
    uint32_t n_tokens;
    uint32_t first_pos;
    uint32_t sink_tokens;   /* tokens stored as-is at the start */
    uint32_t pieces;
    uint64_t container_bytes;
    uint64_t raw_bytes;     /* bytes of the decoded chunk */
} kvtc_container_info;

/* Validate a container's header and every section checksum without a
 * profile, and describe it. Never reads outside [src, src+len). */
int kvtc_inspect(const void *src, size_t len, kvtc_container_info *info);
/* Decode a container into dst (canonical layout, the container's dtype;
 * dst_cap >= info.raw_bytes). Rejects, with KVTC_ECORRUPT, KVTC_EVERSION or
 * KVTC_EPROFILE, any container whose checksums, sizes, layout or profile id
 * do not match; never reads outside [src, src+len) or writes past
 * dst+dst_cap. info may be NULL. */
int kvtc_decode(kvtc_decoder *dec, const void *src, size_t len, void *dst,
                size_t dst_cap, kvtc_container_info *info);

/* ---- Helpers shared with tools and tests ------------------------------- */

/* Undo (inverse=1) or apply (inverse=0) RoPE in place on n vectors of
 * head_dim floats, vector i at absolute position pos[i]. */
void kvtc_rope_apply(const kvtc_layout *layout, float *x, size_t n,
                     const uint32_t *pos, int inverse);
/* Convert n elements between a chunk dtype and float. */
int kvtc_to_float(uint32_t dtype, const void *src, float *dst, size_t n);
int kvtc_from_float(uint32_t dtype, const float *src, void *dst, size_t n);

const char *kvtc_version_string(void);

#ifdef __cplusplus
}
#endif
#endif
