/* calibrate.c - from sample rows of one layout to a profile: means and PCA
 * bases (covariance by BLAS ssyrk, eigendecomposition by LAPACK ssyevr),
 * per-option quantization errors on the calibration rows, one
 * bit-allocation plan per target ratio, bases trimmed to the components
 * that some plan codes. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "calib.h"
#include "plan.h"
#include "profile.h"

struct kvtc_calibrator {
    kvtc_layout layout;
    kvtc_calib_params params;
    uint32_t width;
    float *rows[2];      /* reservoir [max_rows][D] per stream */
    float *scratch[2];   /* one chunk's rows */
    uint64_t *slot;      /* [scratch_tokens]: reservoir slot per row, or UINT64_MAX */
    uint32_t scratch_tokens;
    uint32_t *owner;     /* [max_rows]: the last row of the current add() per slot */
    uint32_t kept;
    uint64_t seen, rng;
    /* after fit: */
    int fitted;
    float *mean[2], *basis[2]; /* [D], [D][pe.ncomp[s]] */
    float *sigma[2];           /* [pe.ncomp[s]] */
    float *slab_w;             /* [layers * 2], copied from params (or 1) */
    struct kvtc__plan_errors pe;
    uint32_t n_plans;
    struct kvtc__plan plans[KVTC_MAX_PLANS];
};

static void free_errors(struct kvtc__plan_errors *pe);

static uint64_t next_rand(uint64_t *s)
{
    /* splitmix64: deterministic for a given seed, good enough for sampling */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A parallel loop over independent items, on up to one thread per online
 * core (the caller's thread works too). Calibration is CPU-bound in loops
 * whose items write disjoint outputs in a fixed order, so spreading them
 * leaves every result bit-identical to the serial loop. Without threads
 * (pthread_create failing) the caller runs every item itself. */
struct par {
    void (*fn)(void *ctx, uint32_t item);
    void *ctx;
    uint32_t n;
    atomic_uint next;
};

static void *par_worker(void *arg)
{
    struct par *p = arg;
    for (uint32_t i; (i = atomic_fetch_add(&p->next, 1)) < p->n;)
        p->fn(p->ctx, i);
    return NULL;
}

static void par_for(uint32_t n, void (*fn)(void *ctx, uint32_t item), void *ctx)
{
    enum { MAX_THREADS = 64 };
    pthread_t th[MAX_THREADS];
    struct par p = {.fn = fn, .ctx = ctx, .n = n};
    atomic_init(&p.next, 0);
    /* KVTC_CALIB_THREADS caps the threads (1: the serial loop, for
     * before/after timings and for hosts where calibration must stay
     * quiet). */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *cap = getenv("KVTC_CALIB_THREADS");
    if (cap && atol(cap) > 0 && atol(cap) < cores)
        cores = atol(cap);
    uint32_t want = cores < 1 ? 1 : cores > MAX_THREADS ? MAX_THREADS : (uint32_t)cores;
    if (want > n)
        want = n;
    uint32_t started = 0;
    for (; started + 1 < want; started++)
        if (pthread_create(&th[started], NULL, par_worker, &p))
            break;
    par_worker(&p);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
}

int kvtc_calibrator_create(const kvtc_layout *layout, const kvtc_calib_params *params,
                           kvtc_calibrator **out)
{
    int rc = kvtc_layout_check(layout);
    if (rc)
        return rc;
    kvtc_calibrator *cal = calloc(1, sizeof *cal);
    if (!cal)
        return KVTC_ENOMEM;
    cal->layout = *layout;
    if (params)
        cal->params = *params;
    cal->width = (uint32_t)kvtc_row_width(layout);
    if (cal->params.max_rows == 0) {
        /* default: up to 512 MiB of rows for both streams */
        uint64_t fit = (512ull << 20) / (8ull * cal->width);
        cal->params.max_rows = (uint32_t)(fit > 65536 ? 65536 : fit < 1024 ? 1024 : fit);
    }
    if (cal->params.plan_rows == 0) {
        /* as many rows as 2^26 coefficients allow: the planner's error
         * estimates steer every bit, and narrow rows are cheap */
        uint64_t fit = (1ull << 26) / cal->width;
        cal->params.plan_rows = (uint32_t)(fit > 65536 ? 65536 : fit < 4096 ? 4096 : fit);
    }
    if (cal->params.max_components == 0 || cal->params.max_components > cal->width)
        cal->params.max_components = cal->width;
    cal->rng = cal->params.seed ^ 0x6b7674632d63616cull;
    cal->slab_w = malloc(2 * (size_t)layout->layers * sizeof(float));
    if (!cal->slab_w) {
        kvtc_calibrator_free(cal);
        return KVTC_ENOMEM;
    }
    for (uint32_t i = 0; i < 2 * layout->layers; i++) {
        float w = cal->params.slab_weights ? cal->params.slab_weights[i] : 1.0f;
        if (!isfinite(w) || !(w > 0) || w > 1e6f || w < 1e-6f) {
            kvtc_calibrator_free(cal);
            return KVTC_EINVAL;
        }
        cal->slab_w[i] = w;
    }
    cal->params.slab_weights = NULL; /* the caller's array need not outlive create */
    size_t bytes = (size_t)cal->params.max_rows * cal->width * sizeof(float);
    cal->owner = malloc((size_t)cal->params.max_rows * sizeof(uint32_t));
    if (!cal->owner) {
        kvtc_calibrator_free(cal);
        return KVTC_ENOMEM;
    }
    for (int s = 0; s < 2; s++) {
        cal->rows[s] = malloc(bytes);
        if (!cal->rows[s]) {
            kvtc_calibrator_free(cal);
            return KVTC_ENOMEM;
        }
    }
    *out = cal;
    return 0;
}

void kvtc_calibrator_free(kvtc_calibrator *cal)
{
    if (!cal)
        return;
    for (int s = 0; s < 2; s++) {
        free(cal->rows[s]);
        free(cal->scratch[s]);
        free(cal->mean[s]);
        free(cal->basis[s]);
        free(cal->sigma[s]);
    }
    for (uint32_t i = 0; i < cal->n_plans; i++)
        free(cal->plans[i].groups);
    free_errors(&cal->pe);
    free(cal->slab_w);
    free(cal->slot);
    free(cal->owner);
    free(cal);
}

uint64_t kvtc_calibrator_rows(const kvtc_calibrator *cal) { return cal->kept; }

/* kvtc_calibrator_add's parallel parts: items of ADD_BLOCK tokens. */
#define ADD_BLOCK 16u
struct add_job {
    kvtc_calibrator *cal;
    const void *chunk;
    uint32_t n_tokens, first_pos, sinks, n;
    atomic_int rc;
};

/* item = block * 2 + stream */
static void add_convert(void *ctx, uint32_t item)
{
    struct add_job *j = ctx;
    kvtc_calibrator *cal = j->cal;
    int s = (int)(item & 1);
    uint32_t i0 = (item >> 1) * ADD_BLOCK, cnt = j->n - i0 < ADD_BLOCK ? j->n - i0 : ADD_BLOCK;
    int rc = kvtc__chunk_to_rows(&cal->layout, j->chunk, j->n_tokens, j->first_pos,
                                 j->sinks + i0, cnt, s, cal->slab_w,
                                 cal->scratch[s] + (size_t)i0 * cal->width);
    if (rc) {
        int zero = 0;
        atomic_compare_exchange_strong(&j->rc, &zero, rc);
    }
}

static void add_copy(void *ctx, uint32_t item)
{
    struct add_job *j = ctx;
    kvtc_calibrator *cal = j->cal;
    size_t rb = (size_t)cal->width * sizeof(float);
    for (uint32_t i = item * ADD_BLOCK; i < j->n && i < (item + 1) * ADD_BLOCK; i++) {
        uint64_t slot = cal->slot[i];
        if (slot == UINT64_MAX || cal->owner[slot] != i)
            continue;
        for (int s = 0; s < 2; s++)
            memcpy(cal->rows[s] + slot * cal->width, cal->scratch[s] + (size_t)i * cal->width, rb);
    }
}

int kvtc_calibrator_add(kvtc_calibrator *cal, const void *chunk, uint32_t n_tokens,
                        uint32_t first_pos)
{
    if (!cal || cal->fitted || !chunk || n_tokens == 0 || n_tokens > KVTC_MAX_CHUNK_TOKENS ||
        (uint64_t)first_pos + n_tokens > UINT32_MAX)
        return KVTC_EINVAL;
    uint32_t sinks = kvtc__sink_tokens(first_pos, n_tokens), n = n_tokens - sinks;
    if (n == 0)
        return 0;
    if (n_tokens > cal->scratch_tokens) {
        free(cal->slot);
        cal->slot = malloc((size_t)n_tokens * sizeof(uint64_t));
        for (int s = 0; s < 2; s++) {
            free(cal->scratch[s]);
            cal->scratch[s] = malloc((size_t)n_tokens * cal->width * sizeof(float));
        }
        if (!cal->slot || !cal->scratch[0] || !cal->scratch[1]) {
            cal->scratch_tokens = 0;
            return KVTC_ENOMEM;
        }
        cal->scratch_tokens = n_tokens;
    }
    /* RoPE undo into the scratch rows, in blocks of tokens on every core:
     * at 160K tokens of a 32768-wide layout this loop alone is over a
     * minute on one core. All rows are converted (and checked) before the
     * reservoir changes, so a refused chunk leaves it as it was. */
    struct add_job job = {.cal = cal, .chunk = chunk, .n_tokens = n_tokens,
                          .first_pos = first_pos, .sinks = sinks, .n = n};
    atomic_init(&job.rc, 0);
    par_for(2 * ((n + ADD_BLOCK - 1) / ADD_BLOCK), add_convert, &job);
    int rc = atomic_load(&job.rc);
    if (rc)
        return rc;
    /* Slots are drawn serially (the sampling must not depend on threads);
     * a slot drawn twice in one call keeps its last row, as the serial
     * copy did, so only that row (owner[slot]) is copied. */
    for (uint32_t i = 0; i < n; i++, cal->seen++) {
        uint64_t slot = cal->kept < cal->params.max_rows ? cal->kept++
                                                         : next_rand(&cal->rng) % (cal->seen + 1);
        cal->slot[i] = slot < cal->params.max_rows ? slot : UINT64_MAX;
        if (slot < cal->params.max_rows)
            cal->owner[slot] = i;
    }
    par_for((n + ADD_BLOCK - 1) / ADD_BLOCK, add_copy, &job);
    return 0;
}

/* Mean-centre rows[n][D] in place (all of them: the covariance is taken
 * from the centred rows, so n_centred needs no care) and find the top
 * components. At most
 * *k are kept: fewer when the data has fewer non-negligible directions.
 * basis[D][*k] (column c = component c, by descending variance).
 * With fewer rows than the width, the n x n Gram matrix has the same
 * non-zero spectrum at a fraction of the cost: eigenvectors u of X X^T / n
 * give basis vectors X^T u / sqrt(n lambda). */
static int pca(void *ctx, float *rows, uint32_t n, uint32_t n_centred, uint32_t D, uint32_t *k,
               float *mean, float *basis, double *var_total, double *var_kept)
{
    const int gram = n < D;
    const uint32_t m = gram ? n : D;
    int rc = KVTC_ENOMEM;
    const uint32_t want = *k < m ? *k : m;
    float *a = malloc((size_t)m * m * sizeof(float));
    float *w = malloc((size_t)m * sizeof(float));
    float *z = malloc((size_t)m * want * sizeof(float));
    float *sel = calloc((size_t)m * want, sizeof(float));
    lapack_int *isuppz = malloc(2 * (size_t)m * sizeof(lapack_int));
    if (!a || !w || !z || !sel || !isuppz)
        goto out;
    for (uint32_t j = 0; j < D; j++)
        mean[j] = 0;
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t j = 0; j < D; j++)
            mean[j] += rows[(size_t)r * D + j];
    for (uint32_t j = 0; j < D; j++)
        mean[j] /= (float)n;
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t j = 0; j < D; j++)
            rows[(size_t)r * D + j] -= mean[j];
    cblas_ssyrk(CblasRowMajor, CblasUpper, gram ? CblasNoTrans : CblasTrans, (int)m,
                (int)(gram ? D : n), 1.0f / (float)n, rows, (int)D, 0.0f, a, (int)m);
    *var_total = 0;
    for (uint32_t j = 0; j < m; j++)
        *var_total += a[(size_t)j * m + j];
    /* The top `want` eigenpairs only (MRRR). Not ssyevd: Debian 12's LAPACK
     * returns its workspace query as a float that rounds below the need for
     * m >= ~2900, and all eigenvectors cost more than the ones we keep. */
    rc = KVTC_ENUMERICAL;
    lapack_int found = 0;
    if (LAPACKE_ssyevr(LAPACK_ROW_MAJOR, 'V', want == m ? 'A' : 'I', 'U', (lapack_int)m, a,
                       (lapack_int)m, 0, 0, (lapack_int)(m - want + 1), (lapack_int)m, 0.0f,
                       &found, w, z, (lapack_int)want, isuppz) != 0 ||
        found != (lapack_int)want)
        goto out;
    /* Ascending eigenvalues: take from the top, stop at negligible ones. */
    float top = w[want - 1] > 0 ? w[want - 1] : 0;
    uint32_t kk = 0;
    *var_kept = 0;
    for (; kk < want; kk++) {
        float lam = w[want - 1 - kk];
        if (!(lam > top * 1e-7f))
            break;
        *var_kept += lam;
        for (uint32_t d = 0; d < m; d++)
            sel[(size_t)d * want + kk] = z[(size_t)d * want + (want - 1 - kk)];
    }
    if (kk == 0)
        goto out; /* constant data: nothing to learn */
    if (!gram) {
        for (uint32_t d = 0; d < D; d++)
            memcpy(basis + (size_t)d * kk, sel + (size_t)d * want, kk * sizeof(float));
    } else {
        float *tmp = malloc((size_t)D * want * sizeof(float));
        rc = KVTC_ENOMEM;
        if (!tmp)
            goto out;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D, (int)want, (int)n, 1.0f,
                    rows, (int)D, sel, (int)want, 0.0f, tmp, (int)want);
        for (uint32_t c = 0; c < kk; c++) {
            float scale = 1.0f / sqrtf((float)n * w[want - 1 - c]);
            for (uint32_t d = 0; d < D; d++)
                basis[(size_t)d * kk + c] = tmp[(size_t)d * want + c] * scale;
        }
        free(tmp);
    }
    *k = kk;
    rc = 0;
out:
    free(a);
    free(w);
    free(z);
    free(sel);
    free(isuppz);
    return rc;
}

/* Per-component std of coef[n][k] into sigma; then whiten coef in place
 * (divide by sigma), as the encoder will. */
static int whiten(float *coef, uint32_t n, uint32_t k, float *sigma)
{
    double *var = calloc(k ? k : 1, sizeof(double));
    if (!var)
        return KVTC_ENOMEM;
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t j = 0; j < k; j++)
            var[j] += (double)coef[(size_t)r * k + j] * coef[(size_t)r * k + j];
    for (uint32_t j = 0; j < k; j++) {
        /* floor: a direction with no energy must not blow up 1/sigma */
        double sd = sqrt(var[j] / n);
        sigma[j] = (float)(sd > 1e-12 ? sd : 1e-12);
    }
    free(var);
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t j = 0; j < k; j++)
            coef[(size_t)r * k + j] /= sigma[j];
    return 0;
}

/* Clip levels (in units of the whitened coefficients' std) tried for the
 * static groups of each type. */
static const float static_clips[KVTC__N_QTYPES][6] = {
    {0}, {0.75f, 1.0f, 1.25f, 1.5f, 2.0f, 2.5f}, {1.5f, 2.0f, 2.5f, 3.0f, 3.5f, 4.5f},
    {3.0f, 4.0f, 6.0f, 8.0f, 12.0f, 16.0f}};
#define N_CLIPS 6

/* The error measurement's parallel part. Items, each over all rows in row
 * order (so every sum is accumulated as the serial loop did): a block of
 * ERR_BLOCK components for (a) the drop errors, (b) one group size and
 * type, (c) one static type and clip. ERR_BLOCK is a multiple of every
 * group size, so no group straddles two items. On one core this was most
 * of a 32768-wide calibration's fit (2 x 4096 rows x 4096 components). */
#define ERR_BLOCK 1024u
struct err_job {
    const float *coef, *w2, *sigma;
    uint32_t n, k, nb;
    int s;
    struct kvtc__plan_errors *pe;
    double *e; /* static: [type][clip][k] */
};

static void err_item(void *ctx, uint32_t item)
{
    const struct err_job *jb = ctx;
    const uint32_t n = jb->n, k = jb->k, b = item % jb->nb;
    const uint32_t j0 = b * ERR_BLOCK, j1 = k < j0 + ERR_BLOCK ? k : j0 + ERR_BLOCK;
    uint32_t kind = item / jb->nb;
    if (kind == 0) {
        double *drop = jb->pe->drop[jb->s];
        for (uint32_t r = 0; r < n; r++)
            for (uint32_t j = j0; j < j1; j++)
                drop[j] += (double)jb->coef[(size_t)r * k + j] * jb->coef[(size_t)r * k + j] *
                           jb->w2[j];
        return;
    }
    kind--;
    if (kind < KVTC__N_GROUP_SIZES * 3) {
        uint32_t si = kind / 3, t = KVTC__Q_INT2 + kind % 3, size = kvtc__group_sizes[si];
        double *acc = jb->pe->group[jb->s][si][t];
        uint8_t codes[KVTC__MAX_GROUP];
        uint16_t sh, sc;
        for (uint32_t r = 0; r < n; r++) {
            const float *x = jb->coef + (size_t)r * k;
            for (uint32_t g = j0 / size; g * size < j1; g++) {
                uint32_t len = k - g * size < size ? k - g * size : size;
                acc[g] += kvtc__quantize_group(t, x + g * size, len, jb->w2 + g * size, &sh, &sc,
                                               codes);
            }
        }
        return;
    }
    kind -= KVTC__N_GROUP_SIZES * 3;
    uint32_t t = KVTC__Q_INT2 + kind / N_CLIPS, ci = kind % N_CLIPS;
    uint16_t sh, sc;
    uint8_t code;
    kvtc__static_params(t, static_clips[t][ci], &sh, &sc);
    double *et = jb->e + ((size_t)t * N_CLIPS + ci) * k;
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t j = j0; j < j1; j++)
            et[j] += kvtc__quantize_fixed(t, jb->coef + (size_t)r * k + j, 1, NULL, sh, sc, &code);
    for (uint32_t j = j0; j < j1; j++)
        et[j] *= (double)jb->sigma[j] * jb->sigma[j] / n;
}

/* Static groups: each component's error for every type and clip (elements
 * quantize independently once shift and scale are fixed; measured by
 * err_item into e), then per group the clip with the least summed error.
 * Errors averaged over rows. */
static int select_static(const double *e, uint32_t k, int s, struct kvtc__plan_errors *pe)
{
    for (uint32_t si = 0; si < KVTC__N_GROUP_SIZES; si++) {
        uint32_t size = kvtc__group_sizes[si], ng = (k + size - 1) / size;
        for (uint32_t t = KVTC__Q_INT2; t <= KVTC__Q_FP8; t++) {
            pe->sgroup[s][si][t] = calloc(ng + 1, sizeof(double));
            pe->sclip[s][si][t] = calloc(ng + 1, sizeof(float));
            if (!pe->sgroup[s][si][t] || !pe->sclip[s][si][t])
                return KVTC_ENOMEM;
            for (uint32_t g = 0; g < ng; g++) {
                double best = -1;
                for (uint32_t ci = 0; ci < N_CLIPS; ci++) {
                    const double *et = e + ((size_t)t * N_CLIPS + ci) * k;
                    double sum = 0;
                    for (uint32_t j = g * size; j < k && j < (g + 1) * size; j++)
                        sum += et[j];
                    if (best < 0 || sum < best) {
                        best = sum;
                        pe->sclip[s][si][t][g] = static_clips[t][ci];
                    }
                }
                pe->sgroup[s][si][t][g] = best;
            }
        }
    }
    return 0;
}

/* Errors, in the original units, of every planner option on the whitened
 * coefficients coef[n][k]. */
static int measure_errors(const float *coef, uint32_t n, uint32_t k, const float *sigma, int s,
                          struct kvtc__plan_errors *pe)
{
    float *w2 = malloc((k ? k : 1) * sizeof(float));
    double *e = calloc((size_t)KVTC__N_QTYPES * N_CLIPS * (k ? k : 1), sizeof(double));
    pe->drop[s] = calloc(k ? k : 1, sizeof(double));
    int rc = KVTC_ENOMEM;
    if (!w2 || !e || !pe->drop[s])
        goto out;
    for (uint32_t j = 0; j < k; j++)
        w2[j] = sigma[j] * sigma[j];
    for (uint32_t si = 0; si < KVTC__N_GROUP_SIZES; si++)
        for (uint32_t t = KVTC__Q_INT2; t <= KVTC__Q_FP8; t++) {
            uint32_t size = kvtc__group_sizes[si];
            pe->group[s][si][t] = calloc((k + size - 1) / size + 1, sizeof(double));
            if (!pe->group[s][si][t])
                goto out;
        }
    struct err_job jb = {.coef = coef, .w2 = w2, .sigma = sigma, .n = n, .k = k,
                         .nb = (k + ERR_BLOCK - 1) / ERR_BLOCK, .s = s, .pe = pe, .e = e};
    if (k)
        par_for(jb.nb * (1 + KVTC__N_GROUP_SIZES * 3 + 3 * N_CLIPS), err_item, &jb);
    if ((rc = select_static(e, k, s, pe)))
        goto out;
    for (uint32_t j = 0; j < k; j++)
        pe->drop[s][j] /= n;
    for (uint32_t si = 0; si < KVTC__N_GROUP_SIZES; si++)
        for (uint32_t t = KVTC__Q_INT2; t <= KVTC__Q_FP8; t++)
            for (uint32_t g = 0; g * kvtc__group_sizes[si] < k; g++)
                pe->group[s][si][t][g] /= n;
out:
    free(w2);
    free(e);
    return rc;
}

static void free_errors(struct kvtc__plan_errors *pe)
{
    for (int s = 0; s < 2; s++) {
        free(pe->drop[s]);
        for (uint32_t si = 0; si < KVTC__N_GROUP_SIZES; si++)
            for (uint32_t t = 0; t < KVTC__N_QTYPES; t++) {
                free(pe->group[s][si][t]);
                free(pe->sgroup[s][si][t]);
                free(pe->sclip[s][si][t]);
            }
    }
}

int kvtc_calibrator_fit(kvtc_calibrator *cal) { return kvtc__calibrator_fit_pca(cal, pca, NULL); }

int kvtc__calibrator_fit_pca(kvtc_calibrator *cal, kvtc__pca_fn pca_fn, void *pca_ctx)
{
    if (!cal || cal->fitted)
        return KVTC_EINVAL;
    if (cal->kept < 2)
        return KVTC_EINVAL;
    const uint32_t D = cal->width, n = cal->kept, kmax = cal->params.max_components;
    /* The planner measures its errors on rows the PCA did not see: in-sample
     * errors make the tail of a wide basis look far cheaper than it is on
     * new KV (2-3x on SmolLM2, 11K rows of width 5760). So unless the rows
     * outnumber the width 16 to 1 (then the fit generalizes and more
     * planning rows matter more), a quarter of the (randomly ordered)
     * reservoir is held out, up to plan_rows; tiny calibrations plan
     * in-sample. */
    const uint32_t quarter = n / 4;
    const uint32_t held = n >= 64 && (uint64_t)n < 16ull * D
                              ? (quarter < cal->params.plan_rows ? quarter : cal->params.plan_rows)
                              : 0;
    const uint32_t np = held ? held : n < cal->params.plan_rows ? n : cal->params.plan_rows;
    cal->pe = (struct kvtc__plan_errors){.width = D};
    double var_all[2] = {0, 0};
    float *coef = malloc((size_t)np * kmax * sizeof(float));
    int rc = KVTC_ENOMEM;
    if (!coef)
        goto out;
    for (int s = 0; s < 2; s++) {
        cal->mean[s] = malloc((size_t)D * sizeof(float));
        cal->basis[s] = malloc((size_t)D * kmax * sizeof(float));
        rc = KVTC_ENOMEM;
        if (!cal->mean[s] || !cal->basis[s])
            goto out;
        double var_total, var_kept;
        uint32_t k = kmax;
        float *plan_rows = cal->rows[s];
        rc = pca_fn(pca_ctx, plan_rows + (size_t)held * D, n - held, held ? 0 : np, D, &k,
                    cal->mean[s], cal->basis[s], &var_total, &var_kept);
        if (rc)
            goto out;
        cal->pe.ncomp[s] = k;
        var_all[s] = var_total;
        /* Held-out rows are centred by the fitted mean (in-sample ones were
         * centred by the fit). */
        for (uint32_t r = 0; r < held; r++)
            for (uint32_t j = 0; j < D; j++)
                plan_rows[(size_t)r * D + j] -= cal->mean[s][j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)np, (int)k, (int)D, 1.0f,
                    plan_rows, (int)D, cal->basis[s], (int)k, 0.0f, coef, (int)k);
        /* Energy outside the kept components: measured on the planning rows
         * (orthonormal basis: row energy minus coefficient energy). */
        double tail = 0;
        for (uint32_t r = 0; held && r < np; r++) {
            double e = 0;
            for (uint32_t j = 0; j < D; j++)
                e += (double)plan_rows[(size_t)r * D + j] * plan_rows[(size_t)r * D + j];
            for (uint32_t c = 0; c < k; c++)
                e -= (double)coef[(size_t)r * k + c] * coef[(size_t)r * k + c];
            tail += e > 0 ? e : 0;
        }
        cal->pe.tail[s] = held ? tail / np : var_total > var_kept ? var_total - var_kept : 0;
        rc = KVTC_ENOMEM;
        if (!(cal->sigma[s] = malloc((size_t)(k ? k : 1) * sizeof(float))))
            goto out;
        if ((rc = whiten(coef, np, k, cal->sigma[s])))
            goto out;
        rc = measure_errors(coef, np, k, cal->sigma[s], s, &cal->pe);
        if (rc)
            goto out;
    }
    /* Keys carry most of the energy; weighing raw squared errors alone would
     * starve the values. By default both streams' relative errors count. */
    cal->pe.weight[0] = 1.0;
    int weighted = 0;
    for (uint32_t i = 0; i < 2 * cal->layout.layers; i++)
        weighted |= cal->slab_w[i] != 1.0f;
    cal->pe.weight[1] = cal->params.value_weight > 0 ? cal->params.value_weight
                        : weighted ? 1.0 /* the slab weights already say what matters */
                        : var_all[1] > 0 ? var_all[0] / var_all[1] : 1.0;
    /* The rows are centred now and no longer needed: give the memory back. */
    for (int s = 0; s < 2; s++) {
        free(cal->rows[s]);
        cal->rows[s] = NULL;
    }
    cal->fitted = 1;
out:
    free(coef);
    return rc;
}

int kvtc_calibrator_plan(kvtc_calibrator *cal, float target_ratio, kvtc_plan_info *info)
{
    if (!cal || !cal->fitted || cal->n_plans >= KVTC_MAX_PLANS || !isfinite(target_ratio) ||
        target_ratio < 1.0f || target_ratio > 4096.0f)
        return KVTC_EINVAL;
    struct kvtc__plan *plan = &cal->plans[cal->n_plans];
    double budget = 2.0 * cal->width * 16.0 / target_ratio;
    int rc = kvtc__plan_solve(&cal->pe, budget, plan);
    if (rc)
        return rc;
    plan->info.target_ratio = target_ratio;
    cal->n_plans++;
    if (info)
        *info = plan->info;
    return 0;
}

int kvtc_calibrator_profile(kvtc_calibrator *cal, kvtc_profile **out)
{
    if (!cal || !cal->fitted || cal->n_plans == 0 || !out)
        return KVTC_EINVAL;
    return kvtc__profile_build(&cal->layout, cal->width, cal->pe.ncomp, cal->mean, cal->basis,
                               cal->sigma, cal->slab_w, cal->plans, cal->n_plans, out);
}

int kvtc_calibrator_finish(kvtc_calibrator *cal, const float *target_ratios, uint32_t n_targets,
                           kvtc_profile **out)
{
    if (!cal || !target_ratios || n_targets == 0 || n_targets > KVTC_MAX_PLANS || !out)
        return KVTC_EINVAL;
    for (uint32_t i = 0; i < n_targets; i++)
        if (!isfinite(target_ratios[i]) || target_ratios[i] < 1.0f || target_ratios[i] > 4096.0f)
            return KVTC_EINVAL;
    int rc = kvtc_calibrator_fit(cal);
    for (uint32_t i = 0; !rc && i < n_targets; i++)
        rc = kvtc_calibrator_plan(cal, target_ratios[i], NULL);
    return rc ? rc : kvtc_calibrator_profile(cal, out);
}
