/* profiles.c - the profile registry (see profiles.h). */
#include "profiles.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtc_errors.h"
#include "log.h"

#define SUFFIX ".kvtcp"

int kvtcd_layout_same(const kvtc_layout *a, const kvtc_layout *b)
{
    return a->layers == b->layers && a->kv_heads == b->kv_heads &&
           a->head_dim == b->head_dim && a->dtype == b->dtype &&
           a->chunk_tokens == b->chunk_tokens &&
           a->rope_style == b->rope_style &&
           a->rope_scaling == b->rope_scaling &&
           a->rope_orig_max_pos == b->rope_orig_max_pos &&
           a->rope_theta == b->rope_theta &&
           a->rope_factor == b->rope_factor &&
           a->rope_low_freq_factor == b->rope_low_freq_factor &&
           a->rope_high_freq_factor == b->rope_high_freq_factor;
}

/* ---- entries ------------------------------------------------------------ */

static void free_pool(kvtcd_codec_obj *o, int enc)
{
    while (o) {
        kvtcd_codec_obj *n = o->next;
        if (enc)
            kvtc_encoder_free(o->obj);
        else
            kvtc_decoder_free(o->obj);
        free(o);
        o = n;
    }
}

static void ent_free(kvtcd_profile_ent *e)
{
    for (uint32_t i = 0; i < KVTC_MAX_PLANS; i++)
        free_pool(e->enc[i], 1);
    free_pool(e->dec, 0);
    uv_mutex_destroy(&e->mu);
    kvtc_profile_free(e->p);
    free(e->bytes);
    free(e);
}

void kvtcd_profile_ref(kvtcd_profile_ent *e)
{
    atomic_fetch_add(&e->refs, 1);
}

void kvtcd_profile_unref(kvtcd_profile_ent *e)
{
    if (e && atomic_fetch_sub(&e->refs, 1) == 1)
        ent_free(e);
}

int kvtcd_profile_parse(const void *bytes, size_t len, kvtcd_profile_ent **out)
{
    if (len > KVTCD_PROFILE_MAX_BYTES)
        return KVTC_ENOSPC;
    kvtcd_profile_ent *e = calloc(1, sizeof *e);
    if (!e)
        return KVTC_ENOMEM;
    if (uv_mutex_init(&e->mu) != 0) {
        free(e);
        return KVTC_ENOMEM;
    }
    atomic_init(&e->refs, 1);
    int rc = kvtc_profile_load(bytes, len, &e->p);
    if (rc)
        goto fail;
    e->bytes = malloc(len ? len : 1);
    if (!e->bytes) {
        rc = KVTC_ENOMEM;
        goto fail;
    }
    memcpy(e->bytes, bytes, len);
    e->len = len;
    e->id = kvtc_profile_id(e->p);
    *out = e;
    return 0;
fail:
    ent_free(e);
    return rc;
}

static void file_name(char *buf, size_t cap, const char *dir, uint64_t id,
                      const char *suffix)
{
    snprintf(buf, cap, "%s/%016" PRIx64 "%s", dir, id, suffix);
}

int kvtcd_profile_persist(const char *dir, const kvtcd_profile_ent *e)
{
    char tmp[1200], path[1200];
    /* A unique temporary name: two uploads of one profile may race. */
    static atomic_uint seq;
    char sfx[64];
    snprintf(sfx, sizeof sfx, SUFFIX ".tmp.%d.%u", (int)getpid(),
             atomic_fetch_add(&seq, 1));
    file_name(tmp, sizeof tmp, dir, e->id, sfx);
    file_name(path, sizeof path, dir, e->id, SUFFIX);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        goto fail;
    size_t off = 0;
    while (off < e->len) {
        ssize_t w = write(fd, e->bytes + off, e->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto fail_fd;
        off += (size_t)w;
    }
    /* fsync before rename: after a crash the name points at whole bytes. */
    if (fsync(fd) != 0)
        goto fail_fd;
    if (close(fd) != 0) {
        fd = -1;
        goto fail_fd;
    }
    if (rename(tmp, path) != 0)
        goto fail_unlink;
    return 0;
fail_fd:
    if (fd >= 0)
        close(fd);
fail_unlink:
    unlink(tmp);
fail:
    KVTCD_ERROR("profile", "cannot write profile file path=\"%s\" err=\"%s\"",
                path, strerror(errno));
    return KVTC_EIO;
}

/* ---- registry ----------------------------------------------------------- */

/* Read one file (bounded) and register it; failures are logged. */
static void load_file(kvtcd_profiles *r, const char *path)
{
    uint8_t *buf = NULL;
    kvtcd_profile_ent *e = NULL;
    const char *why = NULL;
    int rc = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        why = "cannot open";
        goto out;
    }
    if ((uint64_t)st.st_size > KVTCD_PROFILE_MAX_BYTES) {
        why = "too large";
        goto out;
    }
    buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        why = "cannot read";
        goto out;
    }
    if ((rc = kvtcd_profile_parse(buf, (size_t)st.st_size, &e))) {
        why = kvtc_strerror(rc);
        goto out;
    }
    kvtcd_profile_ent *got;
    if ((rc = kvtcd_profiles_add(r, e, &got))) {
        why = kvtc_strerror(rc);
        goto out;
    }
    r->loaded++;
    KVTCD_INFO("profile", "loaded id=%016" PRIx64 " bytes=%zu plans=%u "
                          "path=\"%s\"",
               got->id, got->len, kvtc_profile_plan_count(got->p), path);
out:
    if (why) {
        r->load_errors++;
        KVTCD_WARN("profile", "profile file skipped path=\"%s\" reason=\"%s\"",
                   path, why);
    }
    if (f)
        fclose(f);
    free(buf);
}

static int load_dir(kvtcd_profiles *r)
{
    DIR *d = opendir(r->dir);
    if (!d) {
        KVTCD_ERROR("profile", "cannot read profile dir=\"%s\" err=\"%s\"",
                    r->dir, strerror(errno));
        return KVTC_EIO;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name), sl = strlen(SUFFIX);
        if (n <= sl || strcmp(de->d_name + n - sl, SUFFIX) != 0)
            continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", r->dir, de->d_name);
        load_file(r, path);
    }
    closedir(d);
    return 0;
}

int kvtcd_profiles_init(kvtcd_profiles *r, const char *data_dir)
{
    memset(r, 0, sizeof *r);
    if (uv_mutex_init(&r->mu) != 0)
        return KVTC_ENOMEM;
    if (!data_dir || !*data_dir)
        return 0;
    if ((size_t)snprintf(r->dir, sizeof r->dir, "%s/profiles", data_dir) >=
        sizeof r->dir) {
        KVTCD_ERROR("profile", "data dir path too long");
        uv_mutex_destroy(&r->mu);
        return KVTC_EINVAL;
    }
    if (mkdir(data_dir, 0755) != 0 && errno != EEXIST)
        goto io;
    if (mkdir(r->dir, 0755) != 0 && errno != EEXIST)
        goto io;
    int rc = load_dir(r);
    if (rc) {
        kvtcd_profiles_fini(r);
        return rc;
    }
    KVTCD_INFO("profile", "profiles dir=\"%s\" loaded=%" PRIu64
                          " skipped=%" PRIu64,
               r->dir, r->loaded, r->load_errors);
    return 0;
io:
    KVTCD_ERROR("profile", "cannot create profile dir=\"%s\" err=\"%s\"",
                r->dir, strerror(errno));
    uv_mutex_destroy(&r->mu);
    return KVTC_EIO;
}

void kvtcd_profiles_fini(kvtcd_profiles *r)
{
    uv_mutex_lock(&r->mu);
    kvtcd_profile_ent *e = r->head;
    r->head = NULL;
    r->count = 0;
    uv_mutex_unlock(&r->mu);
    while (e) {
        kvtcd_profile_ent *n = e->next;
        kvtcd_profile_unref(e);
        e = n;
    }
    uv_mutex_destroy(&r->mu);
}

int kvtcd_profiles_add(kvtcd_profiles *r, kvtcd_profile_ent *e,
                       kvtcd_profile_ent **out)
{
    uv_mutex_lock(&r->mu);
    for (kvtcd_profile_ent *x = r->head; x; x = x->next) {
        if (x->id == e->id) {
            uv_mutex_unlock(&r->mu);
            kvtcd_profile_unref(e);
            *out = x;
            return 0;
        }
    }
    if (r->count >= KVTCD_MAX_PROFILES) {
        uv_mutex_unlock(&r->mu);
        kvtcd_profile_unref(e);
        return KVTC_ENOSPC;
    }
    e->seq = ++r->next_seq;
    e->next = r->head;
    r->head = e;
    r->count++;
    uv_mutex_unlock(&r->mu);
    *out = e;
    return 0;
}

int kvtcd_profiles_reserve(kvtcd_profiles *r)
{
    uv_mutex_lock(&r->mu);
    int rc = r->count + r->reserved >= KVTCD_MAX_PROFILES ? KVTC_ENOSPC : 0;
    if (rc == 0)
        r->reserved++;
    uv_mutex_unlock(&r->mu);
    return rc;
}

void kvtcd_profiles_unreserve(kvtcd_profiles *r)
{
    uv_mutex_lock(&r->mu);
    if (r->reserved > 0)
        r->reserved--;
    uv_mutex_unlock(&r->mu);
}

int kvtcd_profiles_remove(kvtcd_profiles *r, uint64_t id)
{
    uv_mutex_lock(&r->mu);
    kvtcd_profile_ent **pp = &r->head;
    while (*pp && (*pp)->id != id)
        pp = &(*pp)->next;
    kvtcd_profile_ent *e = *pp;
    if (e) {
        *pp = e->next;
        r->count--;
    }
    uv_mutex_unlock(&r->mu);
    if (!e)
        return KVTC_ENOENT;
    if (r->dir[0]) {
        char path[1200];
        file_name(path, sizeof path, r->dir, id, SUFFIX);
        if (unlink(path) != 0 && errno != ENOENT)
            KVTCD_WARN("profile", "cannot remove profile file path=\"%s\" "
                                  "err=\"%s\"",
                       path, strerror(errno));
    }
    kvtcd_profile_unref(e);
    return 0;
}

kvtcd_profile_ent *kvtcd_profiles_get(kvtcd_profiles *r, uint64_t id)
{
    uv_mutex_lock(&r->mu);
    kvtcd_profile_ent *e = r->head;
    while (e && e->id != id)
        e = e->next;
    if (e)
        kvtcd_profile_ref(e);
    uv_mutex_unlock(&r->mu);
    return e;
}

kvtcd_profile_ent *kvtcd_profiles_for_layout(kvtcd_profiles *r,
                                             const kvtc_layout *l)
{
    uv_mutex_lock(&r->mu);
    /* Newest first: the list is kept in upload order. */
    kvtcd_profile_ent *e = r->head;
    while (e && !kvtcd_layout_same(kvtc_profile_layout(e->p), l))
        e = e->next;
    if (e)
        kvtcd_profile_ref(e);
    uv_mutex_unlock(&r->mu);
    return e;
}

uint32_t kvtcd_profiles_list(kvtcd_profiles *r, kvtcd_profile_ent **out,
                             uint32_t max)
{
    uint32_t n = 0;
    uv_mutex_lock(&r->mu);
    for (kvtcd_profile_ent *e = r->head; e && n < max; e = e->next) {
        kvtcd_profile_ref(e);
        out[n++] = e;
    }
    uv_mutex_unlock(&r->mu);
    return n;
}

uint32_t kvtcd_profile_pick_plan(const kvtc_profile *p, float target)
{
    uint32_t n = kvtc_profile_plan_count(p), best = UINT32_MAX, top = 0;
    float best_r = 0, top_r = -1;
    for (uint32_t i = 0; i < n; i++) {
        kvtc_plan_info pi;
        if (kvtc_profile_plan_info(p, i, &pi))
            continue;
        if (pi.target_ratio > top_r) {
            top_r = pi.target_ratio;
            top = i;
        }
        if (pi.target_ratio >= target &&
            (best == UINT32_MAX || pi.target_ratio < best_r)) {
            best = i;
            best_r = pi.target_ratio;
        }
    }
    return best != UINT32_MAX ? best : top;
}

/* ---- pools --------------------------------------------------------------- */

static void *pool_take(kvtcd_profile_ent *e, kvtcd_codec_obj **head,
                       uint32_t *n)
{
    uv_mutex_lock(&e->mu);
    kvtcd_codec_obj *o = *head;
    if (o) {
        *head = o->next;
        (*n)--;
    }
    uv_mutex_unlock(&e->mu);
    if (!o)
        return NULL;
    void *obj = o->obj;
    free(o);
    return obj;
}

/* 0 when kept; -1 when the pool is full or memory is short (free it). */
static int pool_give(kvtcd_profile_ent *e, kvtcd_codec_obj **head,
                     uint32_t *n, void *obj)
{
    kvtcd_codec_obj *o = malloc(sizeof *o);
    if (!o)
        return -1;
    o->obj = obj;
    uv_mutex_lock(&e->mu);
    int kept = *n < KVTCD_PROFILE_POOL_MAX;
    if (kept) {
        o->next = *head;
        *head = o;
        (*n)++;
    }
    uv_mutex_unlock(&e->mu);
    if (!kept)
        free(o);
    return kept ? 0 : -1;
}

int kvtcd_profile_encoder_take(kvtcd_profile_ent *e, uint32_t plan,
                               kvtc_encoder **out)
{
    if (plan >= KVTC_MAX_PLANS || plan >= kvtc_profile_plan_count(e->p))
        return KVTC_EINVAL;
    *out = pool_take(e, &e->enc[plan], &e->n_enc[plan]);
    if (*out)
        return 0;
    return kvtc_encoder_create(e->p, plan, KVTC_STAGE_DEFLATE, 0, out);
}

void kvtcd_profile_encoder_give(kvtcd_profile_ent *e, uint32_t plan,
                                kvtc_encoder *enc)
{
    if (enc && pool_give(e, &e->enc[plan], &e->n_enc[plan], enc) < 0)
        kvtc_encoder_free(enc);
}

int kvtcd_profile_decoder_take(kvtcd_profile_ent *e, kvtc_decoder **out)
{
    *out = pool_take(e, &e->dec, &e->n_dec);
    if (*out)
        return 0;
    return kvtc_decoder_create(e->p, out);
}

void kvtcd_profile_decoder_give(kvtcd_profile_ent *e, kvtc_decoder *dec)
{
    if (dec && pool_give(e, &e->dec, &e->n_dec, dec) < 0)
        kvtc_decoder_free(dec);
}
