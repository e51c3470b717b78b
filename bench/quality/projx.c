/* projx.c - the codec's encode/decode transform with emulated projection
 * arithmetic (projx.h). Mirrors codec/encode.c and decode.c step for step;
 * only the two GEMMs and the operands fed to them differ by format. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "internal.h"
#include "projx.h"
#include "symbols.h"

#define E4M3_MAX 448.0f

struct kvtc_px {
    const kvtc_profile *p;
    const struct kvtc__plan *plan;
    uint32_t fmt[2];       /* encode, decode */
    uint32_t ku[2];        /* GEMM inner dimension per stream */
    /* GPU-style operands (fmt != FP32), [D][ku] row-major, rounded and, for
     * e4m3, pre-multiplied by their scale; inv_*: the descale factors */
    float *benc[2], *bdec[2];
    float *inv_benc[2];    /* [ku]: per output column (component) */
    float *inv_bdec[2];    /* [D]: per output column (row element) */
    float *s_rows[2];      /* E4M3_STATIC encode: [D] row element scales */
    float *meanw[2];       /* [D]: mean / slab weight (the GPU's centring) */
    struct kvtc__entropy *ent;
    size_t *shift_off, *scale_off, *code_off;
    uint32_t cap;          /* tokens the work buffers hold */
    float *rows, *coef, *aq, *inv_a;
    uint8_t *sym, *table, *zbuf;
    size_t zcap;
};

const char *kvtc_px_fmt_name(uint32_t fmt)
{
    static const char *const n[KVTC_PX_N_FMTS] = {"fp32", "bf16", "e4m3t", "e4m3rc", "e4m3s"};
    return fmt < KVTC_PX_N_FMTS ? n[fmt] : NULL;
}

static float weight(const kvtc_profile *p, int s, uint32_t d)
{
    uint32_t hd = p->layout.kv_heads * p->layout.head_dim;
    return p->slab_w ? p->slab_w[(d / hd) * 2 + (uint32_t)s] : 1.0f;
}

/* One operand element as the tensor core sees it: bf16, or e4m3 of v times
 * its scale (saturating round-to-nearest-even, the cvt instructions' mode). */
static float round_fmt(uint32_t fmt, float v, float scale)
{
    if (fmt == KVTC_PX_BF16)
        return kvtc__bf16_to_f32(kvtc__f32_to_bf16(v));
    return kvtc__e4m3_to_f32(kvtc__f32_to_e4m3(v * scale));
}

static float e4m3_scale(float amax)
{
    return amax > 0 && isfinite(amax) ? E4M3_MAX / amax : 1.0f;
}

/* Round `lines` lines of len elements in place (line l, element k at
 * a[l * line_step + k * elem_step]); e4m3 scales per line (rowcol) or one
 * for all, their inverses into inv[lines] -- inv may be NULL for bf16. */
static void round_lines(uint32_t fmt, float *a, size_t lines, size_t len, size_t line_step,
                        size_t elem_step, float *inv)
{
    float amax_all = 0;
    if (fmt == KVTC_PX_E4M3_TENSOR)
        for (size_t l = 0; l < lines; l++)
            for (size_t k = 0; k < len; k++)
                amax_all = fmaxf(amax_all, fabsf(a[l * line_step + k * elem_step]));
    for (size_t l = 0; l < lines; l++) {
        float *x = a + l * line_step, amax = amax_all;
        if (fmt == KVTC_PX_E4M3_ROWCOL) {
            amax = 0;
            for (size_t k = 0; k < len; k++)
                amax = fmaxf(amax, fabsf(x[k * elem_step]));
        }
        float s = fmt == KVTC_PX_BF16 ? 1.0f : e4m3_scale(amax);
        for (size_t k = 0; k < len; k++)
            x[k * elem_step] = round_fmt(fmt, x[k * elem_step], s);
        if (inv)
            inv[l] = 1.0f / s;
    }
}

/* A [n][m] matrix (row stride ld), scales per row. */
static void round_matrix(uint32_t fmt, float *a, size_t n, size_t m, size_t ld, float *inv)
{
    round_lines(fmt, a, n, m, ld, 1, inv);
}

/* A dense [n][m] matrix, scales per column (e4m3 needs them before
 * rounding, so it rounds column-wise). */
static void round_matrix_cols(uint32_t fmt, float *a, size_t n, size_t m, float *inv)
{
    round_lines(fmt, a, m, n, 1, m, inv);
}

void kvtc_px_free(kvtc_px *x)
{
    if (!x)
        return;
    for (int s = 0; s < 2; s++) {
        free(x->benc[s]);
        free(x->bdec[s]);
        free(x->inv_benc[s]);
        free(x->inv_bdec[s]);
        free(x->s_rows[s]);
        free(x->meanw[s]);
    }
    kvtc__entropy_free(x->ent);
    free(x->shift_off);
    free(x->scale_off);
    free(x->code_off);
    free(x->rows);
    free(x->coef);
    free(x->aq);
    free(x->inv_a);
    free(x->sym);
    free(x->table);
    free(x->zbuf);
    free(x);
}

/* The GPU's operands for stream s (kernels/gpu_codec.cu): encode basis
 * basis * (1/sigma) * w, decode basis basis * sigma / w, mean / w. */
static int prepare_stream(kvtc_px *x, int s)
{
    const kvtc_profile *p = x->p;
    uint32_t D = p->width, k = p->ncomp[s], ku = x->ku[s];
    size_t n = (size_t)D * (ku ? ku : 1);
    x->meanw[s] = malloc(D * sizeof(float));
    x->benc[s] = malloc(n * sizeof(float));
    x->bdec[s] = malloc(n * sizeof(float));
    x->inv_benc[s] = malloc((ku ? ku : 1) * sizeof(float));
    x->inv_bdec[s] = malloc(D * sizeof(float));
    if (!x->meanw[s] || !x->benc[s] || !x->bdec[s] || !x->inv_benc[s] || !x->inv_bdec[s])
        return KVTC_ENOMEM;
    for (uint32_t d = 0; d < D; d++) {
        float w = weight(p, s, d);
        x->meanw[s][d] = p->mean[s][d] / w;
        for (uint32_t c = 0; c < ku; c++) {
            float b = p->basis[s][(size_t)d * k + c];
            x->benc[s][(size_t)d * ku + c] = b * p->inv_sigma[s][c] * w;
            x->bdec[s][(size_t)d * ku + c] = b * p->sigma[s][c] * (1.0f / w);
        }
    }
    if (x->fmt[0] == KVTC_PX_E4M3_STATIC && ku) {
        /* row element d's calibration std from the profile (all its
         * components), unweighted as the GPU's rows are; its activation
         * scale's inverse folded into basis row d */
        if (!(x->s_rows[s] = malloc(D * sizeof(float))))
            return KVTC_ENOMEM;
        for (uint32_t d = 0; d < D; d++) {
            double v = 0;
            for (uint32_t c = 0; c < k; c++) {
                double b = p->basis[s][(size_t)d * k + c] * (double)p->sigma[s][c];
                v += b * b;
            }
            double sd = sqrt(v) / weight(p, s, d);
            float sc = sd > 1e-30 ? (float)(KVTC_PX_STATIC_SCALE / sd) : 1.0f;
            x->s_rows[s][d] = sc;
            for (uint32_t c = 0; c < ku; c++)
                x->benc[s][(size_t)d * ku + c] /= sc;
        }
    }
    /* E4M3_STATIC's bases: one scale per tensor, as E4M3_TENSOR's */
    uint32_t bf[2] = {x->fmt[0] == KVTC_PX_E4M3_STATIC ? KVTC_PX_E4M3_TENSOR : x->fmt[0],
                      x->fmt[1] == KVTC_PX_E4M3_STATIC ? KVTC_PX_E4M3_TENSOR : x->fmt[1]};
    if (bf[0] != KVTC_PX_FP32 && ku)
        round_matrix_cols(bf[0], x->benc[s], D, ku, x->inv_benc[s]);
    /* decode output column d is row d of bdec: per-row scales there */
    if (bf[1] != KVTC_PX_FP32 && ku)
        round_matrix(bf[1], x->bdec[s], D, ku, ku, x->inv_bdec[s]);
    return 0;
}

int kvtc_px_gemm_dims(const kvtc_profile *p, uint32_t plan, uint32_t *width, uint32_t kused[2])
{
    if (!p || !width || !kused || plan >= p->n_plans)
        return KVTC_EINVAL;
    *width = p->width;
    kused[0] = p->plans[plan].kused[0];
    kused[1] = p->plans[plan].kused[1];
    return 0;
}

int kvtc_px_create(const kvtc_profile *p, uint32_t plan, uint32_t enc_fmt, uint32_t dec_fmt,
                   kvtc_px **out)
{
    if (!p || !out || plan >= p->n_plans || enc_fmt >= KVTC_PX_N_FMTS ||
        dec_fmt >= KVTC_PX_N_FMTS)
        return KVTC_EINVAL;
    kvtc_px *x = calloc(1, sizeof *x);
    if (!x)
        return KVTC_ENOMEM;
    x->p = p;
    x->plan = &p->plans[plan];
    x->fmt[0] = enc_fmt;
    x->fmt[1] = dec_fmt;
    x->ku[0] = x->plan->kused[0];
    x->ku[1] = x->plan->kused[1];
    size_t ng = x->plan->n_groups ? x->plan->n_groups : 1;
    int rc = kvtc__entropy_create(KVTC_STAGE_DEFLATE, 0, &x->ent);
    x->shift_off = malloc(ng * sizeof(size_t));
    x->scale_off = malloc(ng * sizeof(size_t));
    x->code_off = malloc(ng * sizeof(size_t));
    if (!rc && (!x->shift_off || !x->scale_off || !x->code_off))
        rc = KVTC_ENOMEM;
    for (int s = 0; !rc && s < 2; s++)
        rc = prepare_stream(x, s);
    if (rc) {
        kvtc_px_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

static int reserve(kvtc_px *x, uint32_t T)
{
    if (T <= x->cap)
        return 0;
    const kvtc_profile *p = x->p;
    uint32_t kmax = p->ncomp[0] > p->ncomp[1] ? p->ncomp[0] : p->ncomp[1];
    size_t symb = kvtc__plan_symbol_bytes(x->plan, T, NULL, NULL, NULL);
    free(x->rows);
    free(x->coef);
    free(x->aq);
    free(x->inv_a);
    free(x->sym);
    free(x->table);
    free(x->zbuf);
    x->zcap = kvtc__entropy_bound(x->ent, symb);
    x->rows = kvtc__aligned_alloc((size_t)T * p->width * sizeof(float));
    x->coef = kvtc__aligned_alloc((size_t)T * (kmax ? kmax : 1) * sizeof(float));
    x->aq = kvtc__aligned_alloc((size_t)T * (kmax ? kmax : 1) * sizeof(float));
    x->inv_a = malloc((size_t)T * sizeof(float));
    x->sym = kvtc__aligned_alloc(symb ? symb : 1);
    x->table = malloc(4 * kvtc__n_pieces(symb) + 4);
    x->zbuf = malloc(x->zcap ? x->zcap : 1);
    x->cap = x->rows && x->coef && x->aq && x->inv_a && x->sym && x->table && x->zbuf ? T : 0;
    return x->cap ? 0 : KVTC_ENOMEM;
}

/* Rows of stream s -> coef[T][k] (components < ku), in the encode format. */
static int project(kvtc_px *x, int s, const void *chunk, uint32_t n, uint32_t first,
                   uint32_t sinks, uint32_t T)
{
    const kvtc_profile *p = x->p;
    uint32_t D = p->width, k = p->ncomp[s], ku = x->ku[s];
    uint32_t fmt = x->fmt[0];
    /* the CPU codec weighs the rows; the GPU folds the weights into the basis */
    int rc = kvtc__chunk_to_rows(&p->layout, chunk, n, first, sinks, T, s,
                                 fmt == KVTC_PX_FP32 ? p->slab_w : NULL, x->rows);
    if (rc)
        return rc;
    const float *mean = fmt == KVTC_PX_FP32 ? p->mean[s] : x->meanw[s];
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t j = 0; j < D; j++)
            x->rows[(size_t)t * D + j] -= mean[j];
    if (fmt == KVTC_PX_FP32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)ku, (int)D, 1.0f,
                    x->rows, (int)D, p->basis[s], (int)k, 0.0f, x->coef, (int)k);
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < ku; j++)
                x->coef[(size_t)t * k + j] *= p->inv_sigma[s][j];
        return 0;
    }
    if (fmt == KVTC_PX_E4M3_STATIC) {
        for (uint32_t t = 0; t < T; t++) {
            for (uint32_t j = 0; j < D; j++)
                x->rows[(size_t)t * D + j] =
                    round_fmt(fmt, x->rows[(size_t)t * D + j], x->s_rows[s][j]);
            x->inv_a[t] = 1.0f; /* the scales are in the basis rows */
        }
    } else {
        round_matrix(fmt, x->rows, T, D, D, x->inv_a);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)ku, (int)D, 1.0f,
                x->rows, (int)D, x->benc[s], (int)ku, 0.0f, x->coef, (int)k);
    if (fmt != KVTC_PX_BF16) /* the epilogue's descale */
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < ku; j++)
                x->coef[(size_t)t * k + j] *= x->inv_a[t] * x->inv_benc[s][j];
    return 0;
}

/* coef[T][k] (dequantized, zero past the coded ones) -> rows -> out. */
static int reconstruct(kvtc_px *x, int s, uint32_t n, uint32_t first, uint32_t sinks,
                       uint32_t T, void *out)
{
    const kvtc_profile *p = x->p;
    uint32_t D = p->width, k = p->ncomp[s], ku = x->ku[s];
    uint32_t fmt = x->fmt[1];
    if (fmt == KVTC_PX_FP32) {
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < ku; j++)
                x->coef[(size_t)t * k + j] *= p->sigma[s][j];
        if (ku)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)D, (int)ku, 1.0f,
                        x->coef, (int)k, p->basis[s], (int)k, 0.0f, x->rows, (int)D);
        else
            memset(x->rows, 0, (size_t)T * D * sizeof(float));
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < D; j++)
                x->rows[(size_t)t * D + j] += p->mean[s][j];
        return kvtc__rows_to_chunk(&p->layout, x->rows, n, first, sinks, T, s, p->slab_w, out);
    }
    if (ku) {
        for (uint32_t t = 0; t < T; t++)
            memcpy(x->aq + (size_t)t * ku, x->coef + (size_t)t * k, ku * sizeof(float));
        if (fmt == KVTC_PX_E4M3_STATIC) {
            for (uint32_t t = 0; t < T; t++) {
                for (uint32_t j = 0; j < ku; j++)
                    x->aq[(size_t)t * ku + j] =
                        round_fmt(fmt, x->aq[(size_t)t * ku + j], KVTC_PX_STATIC_SCALE);
                x->inv_a[t] = 1.0f / KVTC_PX_STATIC_SCALE;
            }
        } else {
            round_matrix(fmt, x->aq, T, ku, ku, x->inv_a);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)D, (int)ku, 1.0f,
                    x->aq, (int)ku, x->bdec[s], (int)ku, 0.0f, x->rows, (int)D);
    } else {
        memset(x->rows, 0, (size_t)T * D * sizeof(float));
    }
    /* the GEMM writes bf16 rows; the rows kernel adds the mean in fp32 */
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t j = 0; j < D; j++) {
            float v = x->rows[(size_t)t * D + j];
            if (fmt != KVTC_PX_BF16 && ku)
                v *= x->inv_a[t] * x->inv_bdec[s][j];
            x->rows[(size_t)t * D + j] =
                kvtc__bf16_to_f32(kvtc__f32_to_bf16(v)) + x->meanw[s][j];
        }
    return kvtc__rows_to_chunk(&p->layout, x->rows, n, first, sinks, T, s, NULL, out);
}

int kvtc_px_roundtrip(kvtc_px *x, const void *chunk, uint32_t n, uint32_t first, void *out,
                      size_t *stored_bytes)
{
    if (!x || !chunk || !out || !stored_bytes || n == 0 || n > KVTC_MAX_CHUNK_TOKENS ||
        (uint64_t)first + n > UINT32_MAX)
        return KVTC_EINVAL;
    const kvtc_profile *p = x->p;
    const kvtc_layout *l = &p->layout;
    const struct kvtc__plan *plan = x->plan;
    uint32_t sinks = kvtc__sink_tokens(first, n), T = n - sinks;
    int rc = reserve(x, T ? T : 1);
    if (rc)
        return rc;
    memcpy(out, chunk, kvtc_chunk_bytes(l, n)); /* sinks stay as they are */
    size_t symb = kvtc__plan_symbol_bytes(plan, T, x->shift_off, x->scale_off, x->code_off);
    size_t used = 0;
    if (T) {
        memset(x->sym, 0, symb);
        uint32_t g0 = 0;
        for (int s = 0; s < 2; s++) {
            uint32_t g1 = g0;
            while (g1 < plan->n_groups && plan->groups[g1].stream == s)
                g1++;
            if (g1 > g0) {
                if ((rc = project(x, s, chunk, n, first, sinks, T)))
                    return rc;
                kvtc__pack_groups(plan, g0, g1, x->coef, p->ncomp[s], T, x->shift_off,
                                  x->scale_off, x->code_off, x->sym);
            }
            g0 = g1;
        }
        g0 = 0;
        for (int s = 0; s < 2; s++) {
            uint32_t k = p->ncomp[s], g1 = g0;
            while (g1 < plan->n_groups && plan->groups[g1].stream == s)
                g1++;
            memset(x->coef, 0, (size_t)T * (k ? k : 1) * sizeof(float));
            rc = kvtc__unpack_groups(plan, g0, g1, x->sym, k, T, x->shift_off, x->scale_off,
                                     x->code_off, x->coef);
            if (rc)
                return rc;
            g0 = g1;
            if ((rc = reconstruct(x, s, n, first, sinks, T, out)))
                return rc;
        }
    }
    rc = kvtc__entropy_encode(x->ent, x->sym, symb, x->table, x->zbuf, x->zcap, &used);
    if (rc)
        return rc;
    *stored_bytes = KVTC__HEADER_BYTES + kvtc_chunk_bytes(l, sinks) +
                    4 * kvtc__n_pieces(symb) + used;
    return 0;
}
