/* internal.h - codec internals shared by the files of codec/ (and the GPU
 * kernels later). Not installed. */
#ifndef KVTC_CODEC_INTERNAL_H
#define KVTC_CODEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kvtc_codec.h"

/* Quantization types of a group of PCA coefficients. */
enum kvtc__qtype { KVTC__Q_DROP = 0, KVTC__Q_INT2 = 1, KVTC__Q_INT4 = 2, KVTC__Q_FP8 = 3 };
#define KVTC__N_QTYPES 4
#define KVTC__GROUP_OVERHEAD_BITS 32 /* fp16 shift + fp16 scale per token */
#define KVTC__MAX_GROUP 1024
static const uint32_t kvtc__group_sizes[] = {1, 16, 64, 256, 1024};
#define KVTC__N_GROUP_SIZES 5

static inline uint32_t kvtc__qtype_bits(uint32_t t)
{
    return t == KVTC__Q_INT2 ? 2 : t == KVTC__Q_INT4 ? 4 : t == KVTC__Q_FP8 ? 8 : 0;
}

/* A run of consecutive components of one stream coded with one type. */
struct kvtc__group {
    uint32_t start;  /* first component */
    uint16_t size;   /* 1..KVTC__MAX_GROUP */
    uint8_t type;    /* KVTC__Q_INT2..FP8 (dropped runs are not stored) */
    uint8_t stream;  /* 0 keys, 1 values */
    /* Static groups keep one fp16 shift and scale, fitted at calibration,
     * instead of a per-token pair: no 32-bit overhead per token, which
     * narrow rows (small models) cannot afford. Whitening makes it work. */
    uint8_t is_static;
    uint16_t sshift, sscale;
};
#define KVTC__STATIC_FLAG 0x80 /* on the type byte in the profile file */

struct kvtc__plan {
    kvtc_plan_info info;
    uint32_t n_groups;           /* keys' groups first, then values' */
    struct kvtc__group *groups;
    uint32_t kused[2];           /* per stream, 1 + the last coded component:
                                    projections stop there */
};

struct kvtc_profile {
    kvtc_layout layout;
    uint32_t width;              /* row width D */
    uint32_t ncomp[2];           /* kept components: keys, values */
    float *mean[2];              /* [D] */
    float *basis[2];             /* [D][ncomp], row-major: column c = component c */
    float *sigma[2];             /* [ncomp]: calibration std of each coefficient;
                                    coefficients are quantized divided by it, so
                                    a group's components share one range */
    float *inv_sigma[2];         /* [ncomp]: 1/sigma, derived at build/load */
    float *slab_w;               /* [layers][k|v]: importance weights the rows
                                    are multiplied by before the projection,
                                    so the planner's squared error tracks the
                                    model's sensitivity (all 1: none given) */
    uint32_t n_plans;
    struct kvtc__plan plans[KVTC_MAX_PLANS];
    uint64_t id;
};

/* ---- numeric.c: element conversions ---- */
uint16_t kvtc__f32_to_f16(float f);
float kvtc__f16_to_f32(uint16_t h);
uint16_t kvtc__f32_to_bf16(float f);
float kvtc__bf16_to_f32(uint16_t h);
uint8_t kvtc__f32_to_e4m3(float f);   /* round to nearest even, saturating */
float kvtc__e4m3_to_f32(uint8_t v);   /* NaN for 0x7f/0xff */
static inline int kvtc__e4m3_is_nan(uint8_t v) { return (v & 0x7f) == 0x7f; }
static inline int kvtc__f16_is_finite(uint16_t h) { return (h & 0x7c00) != 0x7c00; }

/* ---- quant.c: one group of one token ---- */
/* Quantize x[0..n) with type, writing shift/scale (fp16 bits) and codes
 * (one code per byte, unpacked); returns the squared error, each element's
 * weighted by w2[j] when w2 is not NULL. */
double kvtc__quantize_group(uint32_t type, const float *x, uint32_t n, const float *w2,
                            uint16_t *shift, uint16_t *scale, uint8_t *codes);
/* Quantize with a given shift and scale (static groups); squared error as
 * above. */
double kvtc__quantize_fixed(uint32_t type, const float *x, uint32_t n, const float *w2,
                            uint16_t shift, uint16_t scale, uint8_t *codes);
/* Static shift/scale covering [-clip, clip] for a type. */
void kvtc__static_params(uint32_t type, float clip, uint16_t *shift, uint16_t *scale);
/* Reconstruct; returns 0, or KVTC_ECORRUPT for a NaN fp8 code or a
 * non-finite shift/scale. */
int kvtc__dequantize_group(uint32_t type, const uint8_t *codes, uint32_t n,
                           uint16_t shift, uint16_t scale, float *out);

/* ---- rows.c: canonical chunk <-> rows ---- */
/* Rows of stream s (0 keys, 1 values) of tokens [t0, t0+n) of a chunk of
 * n_tokens tokens, as floats [n][D]; keys get RoPE undone; each layer's
 * part multiplied by slab_w[layer * 2 + s] (NULL: 1). */
int kvtc__chunk_to_rows(const kvtc_layout *l, const void *chunk, uint32_t n_tokens,
                        uint32_t first_pos, uint32_t t0, uint32_t n, int stream,
                        const float *slab_w, float *rows);
/* Inverse: write rows back (divided by the weights, keys with RoPE redone)
 * into the chunk. */
int kvtc__rows_to_chunk(const kvtc_layout *l, float *rows, uint32_t n_tokens,
                        uint32_t first_pos, uint32_t t0, uint32_t n, int stream,
                        const float *slab_w, void *chunk);
/* Tokens of a chunk stored as-is at its start (attention sinks). */
static inline uint32_t kvtc__sink_tokens(uint32_t first_pos, uint32_t n_tokens)
{
    if (first_pos >= KVTC_SINK_TOKENS)
        return 0;
    uint32_t s = KVTC_SINK_TOKENS - first_pos;
    return s < n_tokens ? s : n_tokens;
}

/* ---- plan.c ---- */
/* Symbol bytes of n coded tokens under a plan, and the byte offsets of each
 * group's shifts, scales and codes within them (arrays of n_groups; may be
 * NULL). */
size_t kvtc__plan_symbol_bytes(const struct kvtc__plan *p, uint32_t n,
                               size_t *shift_off, size_t *scale_off, size_t *code_off);
int kvtc__plan_validate(const struct kvtc__plan *p, const uint32_t ncomp[2]);

/* ---- profile.c ---- */
int kvtc__layout_equal(const kvtc_layout *a, const kvtc_layout *b);

/* ---- misc ---- */
void *kvtc__aligned_alloc(size_t bytes); /* 64-byte aligned, zeroed; NULL on failure */
int kvtc__mul_overflow(size_t a, size_t b, size_t *out);

#endif
