/* profile.c - the .kvtcp profile: layout, per-stream means and bases, and
 * the plans. Format (little-endian; docs/container.md):
 *   "KVTCPROF" u32 version u32 width u32 ncomp_k u32 ncomp_v u32 n_plans
 *   layout(48)
 *   n_plans x { f32 target f32 mse_k f32 mse_v u32 n_groups
 *               n_groups x { u32 start u16 size u8 type u8 stream
 *                            [f16 shift f16 scale when type & 0x80: static] } }
 *   f32 slab_w[layers * 2]
 *   f32 mean_k[D] f32 basis_k[D][ncomp_k] f32 sigma_k[ncomp_k]
 *   f32 mean_v[D] f32 basis_v[D][ncomp_v] f32 sigma_v[ncomp_v]
 *   u64 XXH3-64 of everything before it (also the profile id)
 * Loading trusts nothing: every count is bounded and the exact total size
 * is checked before any array is allocated. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "bytes.h"
#include "internal.h"
#include "profile.h"

#define HEADER_BYTES (8 + 4 * 5 + KVTC__LAYOUT_BYTES)

static void plan_info_from_groups(struct kvtc__plan *p)
{
    double bits = 0;
    p->info.key_components = p->info.value_components = 0;
    p->kused[0] = p->kused[1] = 0;
    for (uint32_t g = 0; g < p->n_groups; g++) {
        const struct kvtc__group *gr = &p->groups[g];
        if (gr->start + gr->size > p->kused[gr->stream])
            p->kused[gr->stream] = gr->start + gr->size;
        bits += (double)gr->size * kvtc__qtype_bits(gr->type) +
                (gr->is_static ? 0 : KVTC__GROUP_OVERHEAD_BITS);
        *(gr->stream ? &p->info.value_components : &p->info.key_components) += gr->size;
    }
    p->info.bits_per_token = (float)bits;
    p->info.groups = p->n_groups;
}

void kvtc_profile_free(kvtc_profile *p)
{
    if (!p)
        return;
    for (int s = 0; s < 2; s++) {
        free(p->mean[s]);
        free(p->basis[s]);
        free(p->sigma[s]);
        free(p->inv_sigma[s]);
    }
    free(p->slab_w);
    for (uint32_t i = 0; i < p->n_plans; i++)
        free(p->plans[i].groups);
    free(p);
}

static void serialize(const kvtc_profile *p, struct kvtc__wr *w)
{
    kvtc__put(w, KVTC__PROFILE_MAGIC, 8);
    kvtc__put_u32(w, KVTC__PROFILE_VERSION);
    kvtc__put_u32(w, p->width);
    kvtc__put_u32(w, p->ncomp[0]);
    kvtc__put_u32(w, p->ncomp[1]);
    kvtc__put_u32(w, p->n_plans);
    kvtc__put_layout(w, &p->layout);
    for (uint32_t i = 0; i < p->n_plans; i++) {
        const struct kvtc__plan *pl = &p->plans[i];
        kvtc__put_f32(w, pl->info.target_ratio);
        kvtc__put_f32(w, pl->info.mse_key);
        kvtc__put_f32(w, pl->info.mse_value);
        kvtc__put_u32(w, pl->n_groups);
        for (uint32_t g = 0; g < pl->n_groups; g++) {
            const struct kvtc__group *gr = &pl->groups[g];
            kvtc__put_u32(w, gr->start);
            kvtc__put_u16(w, gr->size);
            kvtc__put_u8(w, (uint8_t)(gr->type | (gr->is_static ? KVTC__STATIC_FLAG : 0)));
            kvtc__put_u8(w, gr->stream);
            if (gr->is_static) {
                kvtc__put_u16(w, gr->sshift);
                kvtc__put_u16(w, gr->sscale);
            }
        }
    }
    for (uint32_t i = 0; i < 2 * p->layout.layers; i++)
        kvtc__put_f32(w, p->slab_w[i]);
    for (int s = 0; s < 2; s++) {
        for (uint32_t j = 0; j < p->width; j++)
            kvtc__put_f32(w, p->mean[s][j]);
        for (size_t j = 0; j < (size_t)p->width * p->ncomp[s]; j++)
            kvtc__put_f32(w, p->basis[s][j]);
        for (uint32_t j = 0; j < p->ncomp[s]; j++)
            kvtc__put_f32(w, p->sigma[s][j]);
    }
}

size_t kvtc_profile_size(const kvtc_profile *p)
{
    struct kvtc__wr w = {0};
    serialize(p, &w);
    return w.len + 8;
}

int kvtc_profile_save(const kvtc_profile *p, void *buf, size_t cap)
{
    size_t need = kvtc_profile_size(p);
    if (cap < need)
        return KVTC_ENOSPC;
    struct kvtc__wr w = {buf, cap, 0};
    serialize(p, &w);
    kvtc__put_u64(&w, p->id);
    return 0;
}

static void set_id(kvtc_profile *p)
{
    size_t n = kvtc_profile_size(p) - 8;
    uint8_t *buf = malloc(n);
    if (!buf) {
        p->id = 0;
        return;
    }
    struct kvtc__wr w = {buf, n, 0};
    serialize(p, &w);
    p->id = XXH3_64bits(buf, n);
    free(buf);
}

/* 1/sigma for the encoder; sigma must be positive and finite. */
static int derive_inv_sigma(kvtc_profile *p)
{
    for (int s = 0; s < 2; s++) {
        p->inv_sigma[s] = malloc((p->ncomp[s] ? p->ncomp[s] : 1) * sizeof(float));
        if (!p->inv_sigma[s])
            return KVTC_ENOMEM;
        for (uint32_t j = 0; j < p->ncomp[s]; j++) {
            float inv = 1.0f / p->sigma[s][j];
            if (!(p->sigma[s][j] > 0) || !isfinite(inv))
                return KVTC_ECORRUPT;
            p->inv_sigma[s][j] = inv;
        }
    }
    return 0;
}

int kvtc__profile_build(const kvtc_layout *layout, uint32_t width, const uint32_t k[2],
                        float *const mean[2], float *const basis[2], float *const sigma[2],
                        const float *slab_w, const struct kvtc__plan *plans, uint32_t n_plans, kvtc_profile **out)
{
    kvtc_profile *p = calloc(1, sizeof *p);
    if (!p)
        return KVTC_ENOMEM;
    p->layout = *layout;
    p->width = width;
    p->n_plans = n_plans;
    if (!(p->slab_w = malloc(2 * (size_t)layout->layers * sizeof(float))))
        goto nomem;
    memcpy(p->slab_w, slab_w, 2 * (size_t)layout->layers * sizeof(float));
    for (uint32_t i = 0; i < n_plans; i++)
        for (uint32_t g = 0; g < plans[i].n_groups; g++) {
            const struct kvtc__group *gr = &plans[i].groups[g];
            uint32_t end = gr->start + gr->size;
            if (end > p->ncomp[gr->stream])
                p->ncomp[gr->stream] = end;
        }
    for (int s = 0; s < 2; s++) {
        uint32_t kc = p->ncomp[s];
        p->mean[s] = malloc((size_t)width * sizeof(float));
        p->basis[s] = malloc((size_t)width * (kc ? kc : 1) * sizeof(float));
        p->sigma[s] = malloc((kc ? kc : 1) * sizeof(float));
        if (!p->mean[s] || !p->basis[s] || !p->sigma[s])
            goto nomem;
        memcpy(p->sigma[s], sigma[s], (size_t)kc * sizeof(float));
        memcpy(p->mean[s], mean[s], (size_t)width * sizeof(float));
        for (size_t d = 0; d < width; d++)
            memcpy(p->basis[s] + d * kc, basis[s] + d * k[s], (size_t)kc * sizeof(float));
    }
    for (uint32_t i = 0; i < n_plans; i++) {
        struct kvtc__plan *dst = &p->plans[i];
        dst->info = plans[i].info;
        dst->n_groups = plans[i].n_groups;
        dst->groups = malloc(sizeof *dst->groups * (dst->n_groups ? dst->n_groups : 1));
        if (!dst->groups)
            goto nomem;
        memcpy(dst->groups, plans[i].groups, sizeof *dst->groups * dst->n_groups);
        plan_info_from_groups(dst);
    }
    if (derive_inv_sigma(p))
        goto nomem;
    set_id(p);
    if (!p->id)
        goto nomem;
    *out = p;
    return 0;
nomem:
    kvtc_profile_free(p);
    return KVTC_ENOMEM;
}

static int read_floats(struct kvtc__rd *r, size_t n, float **out)
{
    const uint8_t *src = kvtc__take(r, n * 4);
    if (!src)
        return KVTC_ECORRUPT;
    float *f = malloc((n ? n : 1) * sizeof(float));
    if (!f)
        return KVTC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 |
                     (uint32_t)src[4 * i + 2] << 16 | (uint32_t)src[4 * i + 3] << 24;
        memcpy(&f[i], &v, 4);
        if (!isfinite(f[i])) {
            free(f);
            return KVTC_ECORRUPT;
        }
    }
    *out = f;
    return 0;
}

int kvtc_profile_load(const void *buf, size_t len, kvtc_profile **out)
{
    if (!buf || !out)
        return KVTC_EINVAL;
    if (len < HEADER_BYTES + 8 || memcmp(buf, KVTC__PROFILE_MAGIC, 8) != 0)
        return KVTC_ECORRUPT;
    struct kvtc__rd r = {buf, len - 8, 8, 0};
    if (kvtc__get_u32(&r) != KVTC__PROFILE_VERSION)
        return KVTC_EVERSION;
    struct kvtc__rd tail = {buf, len, len - 8, 0};
    uint64_t sum = kvtc__get_u64(&tail);
    if (XXH3_64bits(buf, len - 8) != sum)
        return KVTC_ECORRUPT;
    kvtc_profile *p = calloc(1, sizeof *p);
    if (!p)
        return KVTC_ENOMEM;
    int rc = KVTC_ECORRUPT;
    p->id = sum;
    p->width = kvtc__get_u32(&r);
    p->ncomp[0] = kvtc__get_u32(&r);
    p->ncomp[1] = kvtc__get_u32(&r);
    p->n_plans = kvtc__get_u32(&r);
    kvtc__get_layout(&r, &p->layout);
    uint32_t n_plans = p->n_plans;
    p->n_plans = 0; /* counts plans with allocated groups, for free() */
    if (r.bad || kvtc_layout_check(&p->layout) || p->width != kvtc_row_width(&p->layout) ||
        p->ncomp[0] > p->width || p->ncomp[1] > p->width || n_plans == 0 ||
        n_plans > KVTC_MAX_PLANS)
        goto fail;
    for (uint32_t i = 0; i < n_plans; i++) {
        struct kvtc__plan *pl = &p->plans[i];
        pl->info.target_ratio = kvtc__get_f32(&r);
        pl->info.mse_key = kvtc__get_f32(&r);
        pl->info.mse_value = kvtc__get_f32(&r);
        pl->n_groups = kvtc__get_u32(&r);
        if (r.bad || !isfinite(pl->info.target_ratio) || !isfinite(pl->info.mse_key) ||
            !isfinite(pl->info.mse_value) ||
            pl->n_groups > (uint64_t)p->ncomp[0] + p->ncomp[1] ||
            (uint64_t)pl->n_groups * 8 > r.len - r.off)
            goto fail;
        pl->groups = malloc(sizeof *pl->groups * (pl->n_groups ? pl->n_groups : 1));
        rc = KVTC_ENOMEM;
        if (!pl->groups)
            goto fail;
        rc = KVTC_ECORRUPT;
        p->n_plans = i + 1;
        for (uint32_t g = 0; g < pl->n_groups; g++) {
            struct kvtc__group *gr = &pl->groups[g];
            memset(gr, 0, sizeof *gr);
            gr->start = kvtc__get_u32(&r);
            gr->size = kvtc__get_u16(&r);
            uint8_t type = kvtc__get_u8(&r);
            gr->stream = kvtc__get_u8(&r);
            gr->type = type & (uint8_t)~KVTC__STATIC_FLAG;
            gr->is_static = (type & KVTC__STATIC_FLAG) != 0;
            if (gr->is_static) {
                gr->sshift = kvtc__get_u16(&r);
                gr->sscale = kvtc__get_u16(&r);
            }
        }
        if (r.bad || kvtc__plan_validate(pl, p->ncomp))
            goto fail;
        plan_info_from_groups(pl);
    }
    /* Exact size of the arrays, before allocating them. */
    uint64_t floats = 2ull * p->layout.layers + 2ull * p->width +
                      (uint64_t)(p->width + 1) * (p->ncomp[0] + (uint64_t)p->ncomp[1]);
    if (floats * 4 != r.len - r.off)
        goto fail;
    if ((rc = read_floats(&r, 2 * (size_t)p->layout.layers, &p->slab_w)))
        goto fail;
    for (uint32_t i = 0; i < 2 * p->layout.layers; i++)
        if (!(p->slab_w[i] >= 1e-6f && p->slab_w[i] <= 1e6f)) {
            rc = KVTC_ECORRUPT;
            goto fail;
        }
    for (int s = 0; s < 2; s++) {
        if ((rc = read_floats(&r, p->width, &p->mean[s])) ||
            (rc = read_floats(&r, (size_t)p->width * p->ncomp[s], &p->basis[s])) ||
            (rc = read_floats(&r, p->ncomp[s], &p->sigma[s])))
            goto fail;
    }
    if ((rc = derive_inv_sigma(p)))
        goto fail;
    *out = p;
    return 0;
fail:
    kvtc_profile_free(p);
    return rc;
}

int kvtc_profile_load_file(const char *path, kvtc_profile **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? KVTC_ENOENT : KVTC_EIO;
    int rc = KVTC_EIO;
    uint8_t *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        goto out;
    rc = KVTC_ENOMEM;
    if (!(buf = malloc(n ? (size_t)n : 1)))
        goto out;
    rc = KVTC_EIO;
    if (fread(buf, 1, (size_t)n, f) != (size_t)n)
        goto out;
    rc = kvtc_profile_load(buf, (size_t)n, out);
out:
    free(buf);
    fclose(f);
    return rc;
}

int kvtc_profile_save_file(const kvtc_profile *p, const char *path)
{
    size_t n = kvtc_profile_size(p);
    uint8_t *buf = malloc(n);
    if (!buf)
        return KVTC_ENOMEM;
    char tmp[4096];
    int rc = KVTC_EINVAL;
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        goto out;
    kvtc_profile_save(p, buf, n);
    rc = KVTC_EIO;
    FILE *f = fopen(tmp, "wb");
    if (!f)
        goto out;
    /* write, flush, then rename: a crash never leaves a half profile */
    int ok = fwrite(buf, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    free(buf);
    return rc;
}

uint64_t kvtc_profile_id(const kvtc_profile *p) { return p->id; }
const kvtc_layout *kvtc_profile_layout(const kvtc_profile *p) { return &p->layout; }
uint32_t kvtc_profile_plan_count(const kvtc_profile *p) { return p->n_plans; }

int kvtc_profile_plan_info(const kvtc_profile *p, uint32_t plan, kvtc_plan_info *out)
{
    if (!p || !out || plan >= p->n_plans)
        return KVTC_EINVAL;
    *out = p->plans[plan].info;
    return 0;
}

uint32_t kvtc_profile_find_plan(const kvtc_profile *p, float target_ratio)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < p->n_plans; i++)
        if (fabsf(p->plans[i].info.target_ratio - target_ratio) <
            fabsf(p->plans[best].info.target_ratio - target_ratio))
            best = i;
    return best;
}
