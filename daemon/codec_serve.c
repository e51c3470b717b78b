/* codec_serve.c - the put and get codec steps (see codec_serve.h). */
#include "codec_serve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_gpu.h"
#include "config.h"
#include "kvtc_errors.h"
#include "log.h"

#define ENC(x) KVTC__WIRE__ENCODING__##x

/* The GPU backend as cfg asks. auto without a usable GPU says why once
 * and stays on the CPU; gpu without one is a start failure (an operator
 * who asked for it must not silently get the slower path). */
static int attach_gpu(kvtcd_server *srv, kvtcd_serve *sv)
{
    if (srv->cfg.codec_device == KVTCD_CODEC_DEVICE_CPU) {
        KVTCD_INFO("codec", "codec on the CPU (--codec-device cpu)");
        return 0;
    }
    char why[512] = "";
    kvtcd_gpu_codec *g = NULL;
    int rc = kvtcd_gpu_codec_open((int)srv->cfg.gpu_device, &sv->profiles,
                                  &g, why, sizeof why);
    if (rc == 0) {
        int pj = srv->cfg.gpu_projection;
        kvtcd_gpu_codec_set_projection(g, pj);
        kvtcd_codec_set_gpu(sv->codec, g);
        sv->gpu_projection = pj;
        KVTCD_INFO("codec", "codec on GPU %u (libkvtc_gpu) projection=%s",
                   srv->cfg.gpu_device,
                   kvtcd_gpu_projection_name(pj));
        return 0;
    }
    if (srv->cfg.codec_device == KVTCD_CODEC_DEVICE_GPU) {
        KVTCD_ERROR("codec", "--codec-device gpu: no GPU codec err=\"%s\" "
                             "why=\"%s\"",
                    kvtc_strerror(rc), why);
        return rc;
    }
    KVTCD_WARN("codec", "no GPU codec; compressing on the CPU why=\"%s\"",
               why);
    return 0;
}

int kvtcd_serve_create(kvtcd_server *srv, kvtcd_serve **out)
{
    kvtcd_serve *sv = calloc(1, sizeof *sv);
    if (!sv)
        return KVTC_ENOMEM;
    int rc = kvtcd_profiles_init(&sv->profiles, srv->cfg.data_dir);
    if (rc) {
        free(sv);
        return rc;
    }
    rc = kvtcd_codec_create(srv->loop, &sv->profiles, &sv->codec);
    if (rc) {
        kvtcd_profiles_fini(&sv->profiles);
        free(sv);
        return rc;
    }
    rc = attach_gpu(srv, sv);
    if (rc) {
        kvtcd_codec_destroy(sv->codec);
        kvtcd_profiles_fini(&sv->profiles);
        free(sv);
        return rc;
    }
    *out = sv;
    return 0;
}

void kvtcd_serve_destroy(kvtcd_serve *sv)
{
    if (!sv)
        return;
    kvtcd_codec_destroy(sv->codec);
    kvtcd_profiles_fini(&sv->profiles);
    free(sv);
}

void kvtcd_serve_metrics_each(const kvtcd_serve *sv,
                              void (*fn)(void *ctx, const char *name,
                                         const char *type, const char *help,
                                         uint64_t v),
                              void *ctx)
{
    if (!sv)
        return;
    const kvtcd_codec_stats *st = kvtcd_codec_get_stats(sv->codec);
    fn(ctx, "profiles", "gauge", "Codec profiles the daemon holds.",
       sv->profiles.count);
    fn(ctx, "profile_uploads_total", "counter", "Profiles uploaded.",
       sv->profile_uploads);
    fn(ctx, "profile_deletes_total", "counter", "Profiles deleted.",
       sv->profile_deletes);
    fn(ctx, "codec_jobs_total", "counter",
       "Codec jobs run on the thread pool (each carries up to 64 chunks).",
       st->jobs);
    fn(ctx, "codec_pending", "gauge", "Chunks queued or being coded.",
       kvtcd_codec_pending(sv->codec));
    fn(ctx, "codec_encoded_total", "counter", "Chunks compressed.",
       st->encoded);
    fn(ctx, "codec_encode_in_bytes_total", "counter",
       "Raw bytes of the chunks compressed.", st->encode_in_bytes);
    fn(ctx, "codec_encode_out_bytes_total", "counter",
       "Container bytes the compressed chunks became.", st->encode_out_bytes);
    fn(ctx, "codec_decoded_total", "counter",
       "Stored containers decoded for raw gets.", st->decoded);
    fn(ctx, "codec_decode_out_bytes_total", "counter",
       "Raw bytes decoded for raw gets.", st->decode_out_bytes);
    fn(ctx, "codec_checked_total", "counter",
       "Client containers checked on put.", st->checked);
    fn(ctx, "codec_failed_total", "counter",
       "Codec items that failed (corrupt, profile missing, ...).", st->failed);
    fn(ctx, "codec_busy_microseconds_total", "counter",
       "Worker time spent coding.", st->busy_ns / 1000);
    fn(ctx, "codec_gpu", "gauge",
       "1 when chunks are coded on the GPU (libkvtc_gpu), 0 on the CPU.",
       (uint64_t)kvtcd_codec_uses_gpu(sv->codec));
    fn(ctx, "codec_gpu_projection", "gauge",
       "The GPU codec's projection GEMMs: 0 fp16, 1 fp8 decode, 2 fp8 both, "
       "3 direct decode (--gpu-projection; 0 when coding on the CPU).",
       (uint64_t)(kvtcd_codec_uses_gpu(sv->codec) ? sv->gpu_projection : 0));
    fn(ctx, "codec_gpu_jobs_total", "counter",
       "GPU codec jobs (each one launch per profile and plan).", st->gpu_jobs);
    fn(ctx, "codec_gpu_chunks_total", "counter",
       "Chunks compressed or decoded on the GPU.", st->gpu_items);
    fn(ctx, "codec_gpu_fallback_total", "counter",
       "Chunks the GPU handed to the CPU (raw or non-DEFLATE containers, "
       "device errors, failed launches).",
       st->gpu_fallback);
    fn(ctx, "codec_gpu_errors_total", "counter",
       "GPU codec launches that failed (their chunks ran on the CPU).",
       st->gpu_errors);
    fn(ctx, "codec_gpu_busy_microseconds_total", "counter",
       "Time spent in GPU codec jobs.", st->gpu_busy_ns / 1000);
    fn(ctx, "put_compressed_total", "counter",
       "Chunks stored compressed by the daemon.", sv->put_compressed);
    fn(ctx, "put_raw_no_profile_total", "counter",
       "Chunks that asked for compression and were stored raw: no profile "
       "for their layout.",
       sv->put_raw_no_profile);
    fn(ctx, "put_containers_total", "counter",
       "Client-compressed containers stored.", sv->put_containers);
    fn(ctx, "put_containers_rejected_total", "counter",
       "Client-compressed containers refused (corrupt, unknown profile).",
       sv->put_rejected);
    fn(ctx, "get_decode_failed_total", "counter",
       "Stored containers that did not decode (not served).", sv->get_failed);
}

/* ---- put ------------------------------------------------------------------ */

typedef struct put_ctx {
    uint32_t n;
    float *ratio;             /* 0: store as it came */
    kvtcd_server *srv;
    kvtcd_entry *tmpl;
    kvtcd_blob *blob;         /* the batch as received (borrowed) */
    size_t base;
    int *rc;                  /* per chunk: 0 or KVTC_E* */
    int32_t *item;            /* chunk -> item index, -1 when none */
    size_t *off;              /* where each chunk lies after the step */
    kvtcd_blob *nblob;        /* the compacted copy, when one was made */
    kvtcd_profile_ent **prof; /* per item, referenced */
    kvtcd_codec_batch batch;
    void (*done)(void *arg);
    void *arg;
} put_ctx;

void kvtcd_serve_put_free(void *p)
{
    put_ctx *c = p;
    if (!c)
        return;
    if (c->prof)
        for (uint32_t i = 0; i < c->batch.n; i++)
            kvtcd_profile_unref(c->prof[i]);
    if (c->batch.items)
        for (uint32_t i = 0; i < c->batch.n; i++)
            free(c->batch.items[i].out);
    kvtcd_blob_unref(c->nblob);
    free(c->batch.items);
    free(c->prof);
    free(c->ratio);
    free(c->item);
    free(c->off);
    free(c);
}

int kvtcd_serve_put_prepare(const Kvtc__Wire__PutRequest *put, void **ctx,
                            char *why, size_t why_len)
{
    *ctx = NULL;
    int any = 0;
    for (size_t i = 0; i < put->n_chunks; i++) {
        const Kvtc__Wire__ChunkMeta *m = put->chunks[i];
        if (m->has_target_ratio &&
            (!isfinite(m->target_ratio) ||
             (m->target_ratio != 0 && m->target_ratio < 1))) {
            snprintf(why, why_len, "put: chunk %zu target_ratio %g (must be "
                                   ">= 1, or 0 for raw)",
                     i, (double)m->target_ratio);
            return KVTC_EINVAL;
        }
        int enc = m->has_encoding ? (int)m->encoding : ENC(RAW);
        if (enc == ENC(KVTC) && m->has_target_ratio && m->target_ratio > 0) {
            snprintf(why, why_len, "put: chunk %zu is compressed already and "
                                   "asks for a target_ratio",
                     i);
            return KVTC_EINVAL;
        }
        if (enc == ENC(KVTC) || (m->has_target_ratio && m->target_ratio > 0))
            any = 1;
    }
    if (!any)
        return 0;
    put_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return KVTC_ENOMEM;
    c->n = (uint32_t)put->n_chunks;
    c->ratio = calloc(c->n, sizeof *c->ratio);
    c->item = calloc(c->n, sizeof *c->item);
    c->off = calloc(c->n, sizeof *c->off);
    if (!c->ratio || !c->item || !c->off) {
        kvtcd_serve_put_free(c);
        return KVTC_ENOMEM;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        const Kvtc__Wire__ChunkMeta *m = put->chunks[i];
        c->ratio[i] = m->has_target_ratio ? m->target_ratio : 0;
    }
    *ctx = c;
    return 0;
}

int *kvtcd_serve_put_status(void *p)
{
    return ((put_ctx *)p)->rc;
}

kvtcd_blob *kvtcd_serve_put_where(void *p, uint32_t i, size_t *off)
{
    put_ctx *c = p;
    *off = c->off[i];
    return c->nblob ? c->nblob : c->blob;
}

/* Bytes of chunk i as it will be stored: the item's output or as came. */
static const uint8_t *stored_bytes(put_ctx *c, uint32_t i, size_t *len,
                                   const size_t *in_off)
{
    int32_t k = c->item[i];
    if (k >= 0 && c->batch.items[k].kind == KVTCD_CODEC_ENCODE &&
        c->batch.items[k].out) {
        *len = c->batch.items[k].out_len;
        return c->batch.items[k].out;
    }
    *len = c->tmpl[i].size;
    return c->blob->data + in_off[i];
}

static void put_coded(kvtcd_codec_batch *b)
{
    put_ctx *c = b->arg;
    kvtcd_server *srv = c->srv;
    kvtcd_serve *sv = srv->serve;
    int encoded = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        int32_t k = c->item[i];
        if (k < 0)
            continue;
        kvtcd_codec_item *it = &b->items[k];
        kvtcd_entry *t = &c->tmpl[i];
        if (it->kind == KVTCD_CODEC_CHECK) {
            /* The container's own header is the truth about its chunk:
             * metadata the client sent along must agree with it. */
            if (!it->rc &&
                ((t->has_layout &&
                  !kvtcd_layout_same(&t->layout, &it->info.layout)) ||
                 (t->n_tokens && t->n_tokens != it->info.n_tokens) ||
                 (t->has_layout && t->first_pos != it->info.first_pos)))
                it->rc = KVTC_EINVAL;
            /* Served raw later: its decoded size obeys the chunk limit. */
            if (!it->rc && it->info.raw_bytes > srv->cfg.max_chunk_bytes)
                it->rc = KVTC_ENOSPC;
            if (!it->rc && !t->has_layout) {
                t->layout = it->info.layout;
                t->has_layout = 1;
                t->first_pos = it->info.first_pos;
            }
            if (!it->rc)
                t->n_tokens = it->info.n_tokens;
            if (it->rc) {
                c->rc[i] = it->rc;
                sv->put_rejected++;
                KVTCD_INFO("codec", "client container refused chunk=%u "
                                    "err=\"%s\"",
                           i, kvtc_strerror(it->rc));
            } else {
                sv->put_containers++;
            }
            continue;
        }
        if (it->rc) {
            /* The chunk itself is fine: keep it raw rather than lose it. */
            KVTCD_WARN("codec", "compression failed; chunk stored raw "
                                "err=\"%s\"",
                       kvtc_strerror(it->rc));
            free(it->out);
            it->out = NULL;
            continue;
        }
        encoded++;
    }
    size_t *in_off = c->off; /* offsets as received, until replaced */
    if (encoded) {
        /* One blob sized to what is stored, so the raw batch is freed. */
        uint64_t total = 0;
        for (uint32_t i = 0; i < c->n; i++) {
            size_t len = 0;
            if (c->rc[i] == 0)
                stored_bytes(c, i, &len, in_off);
            total += len;
        }
        int rc = kvtcd_index_reserve(&srv->index, (size_t)total,
                                     kvtcd_now_ms(srv), &c->nblob);
        if (rc) {
            KVTCD_WARN("codec", "no room for the compressed copy; chunks "
                                "stored raw bytes=%llu err=\"%s\"",
                       (unsigned long long)total, kvtc_strerror(rc));
            c->nblob = NULL;
            encoded = 0;
        }
    }
    if (encoded) {
        size_t pos = 0;
        for (uint32_t i = 0; i < c->n; i++) {
            if (c->rc[i] != 0)
                continue;
            size_t len;
            const uint8_t *src = stored_bytes(c, i, &len, in_off);
            memcpy(c->nblob->data + pos, src, len);
            int32_t k = c->item[i];
            if (k >= 0 && b->items[k].kind == KVTCD_CODEC_ENCODE &&
                b->items[k].out) {
                c->tmpl[i].encoding = ENC(KVTC);
                c->tmpl[i].size = len;
                c->tmpl[i].checksum = b->items[k].sum;
                sv->put_compressed++;
            }
            in_off[i] = pos;
            pos += len;
        }
    }
    c->done(c->arg);
}

void kvtcd_serve_put_run(kvtcd_server *srv, void *p, kvtcd_entry *tmpl,
                         kvtcd_blob *blob, size_t base, int *rc,
                         void (*done)(void *arg), void *arg)
{
    put_ctx *c = p;
    kvtcd_serve *sv = srv->serve;
    c->srv = srv;
    c->tmpl = tmpl;
    c->blob = blob;
    c->base = base;
    c->rc = rc;
    c->done = done;
    c->arg = arg;
    size_t off = base;
    uint32_t n_items = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        c->off[i] = off;
        off += tmpl[i].size;
        c->item[i] = -1;
        if (rc[i] != 0)
            continue;
        if (tmpl[i].encoding == ENC(KVTC) ||
            (c->ratio[i] > 0 && tmpl[i].has_layout && tmpl[i].size &&
             !(tmpl[i].chunk_flags & KVTCD_CHUNK_LIVE_WINDOW)))
            c->item[i] = (int32_t)n_items++;
    }
    if (n_items) {
        c->batch.items = calloc(n_items, sizeof *c->batch.items);
        c->prof = calloc(n_items, sizeof *c->prof);
        if (!c->batch.items || !c->prof) {
            /* Out of memory: store what came, as it came; refuse
             * containers we could not check. */
            for (uint32_t i = 0; i < c->n; i++)
                if (c->item[i] >= 0 && tmpl[i].encoding == ENC(KVTC))
                    rc[i] = KVTC_ENOMEM;
            free(c->batch.items);
            free(c->prof);
            c->batch.items = NULL;
            c->prof = NULL;
            for (uint32_t i = 0; i < c->n; i++)
                c->item[i] = -1;
            n_items = 0;
        }
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < c->n && n_items; i++) {
        if (c->item[i] < 0)
            continue;
        kvtcd_entry *t = &tmpl[i];
        kvtcd_codec_item *it = &c->batch.items[k];
        it->src = blob->data + c->off[i];
        it->len = t->size;
        if (t->encoding == ENC(KVTC)) {
            it->kind = KVTCD_CODEC_CHECK;
        } else {
            kvtcd_profile_ent *e =
                kvtcd_profiles_for_layout(&sv->profiles, &t->layout);
            uint32_t tokens = t->n_tokens ? t->n_tokens
                                          : t->layout.chunk_tokens;
            if (!e) {
                sv->put_raw_no_profile++;
                c->item[i] = -1;
                continue;
            }
            it->kind = KVTCD_CODEC_ENCODE;
            it->prof = e;
            c->prof[k] = e;
            it->plan = kvtcd_profile_pick_plan(e->p, c->ratio[i]);
            it->n_tokens = tokens;
            it->first_pos = t->first_pos;
        }
        c->item[i] = (int32_t)k++;
    }
    c->batch.n = k;
    if (k == 0) {
        done(arg);
        return;
    }
    c->batch.done = put_coded;
    c->batch.arg = c;
    kvtcd_codec_submit(sv->codec, &c->batch);
}

/* ---- get ------------------------------------------------------------------ */

int kvtcd_serve_get_decodes(int want, int encoding)
{
    return want == ENC(RAW) && encoding == ENC(KVTC);
}

typedef struct dec_ctx {
    kvtcd_server *srv;
    kvtcd_serve_dec *d;
    kvtcd_blob **dst;           /* per item: its host-slab target, or NULL */
    kvtcd_codec_batch batch;
    void (*done)(void *arg);
    void *arg;
} dec_ctx;

static void decoded(kvtcd_codec_batch *b)
{
    dec_ctx *c = b->arg;
    kvtcd_serve *sv = c->srv->serve;
    for (uint32_t j = 0; j < b->n; j++) {
        kvtcd_codec_item *it = &b->items[j];
        kvtcd_serve_dec *d = &c->d[j];
        d->rc = it->rc;
        kvtcd_blob *nb = NULL;
        if (!d->rc && it->out && it->out == it->dst) {
            nb = c->dst[j]; /* decoded in place: its reference moves */
            c->dst[j] = NULL;
        } else if (!d->rc) {
            d->rc = kvtcd_heap_blob(it->out, it->out_len, NULL, NULL, &nb);
        }
        if (!d->rc) {
            it->out = NULL; /* the blob owns it */
            kvtcd_blob_unref(*d->blob);
            *d->blob = nb;
            d->seg->p = nb->data;
            d->seg->len = it->out_len;
            d->sum = it->sum;
            sv->get_decoded++;
        } else {
            kvtcd_codec_item_drop_out(it);
            sv->get_failed++;
            KVTCD_ERROR("codec", "stored container did not decode; not "
                                 "served err=\"%s\"",
                        kvtc_strerror(d->rc));
        }
    }
    void (*done)(void *) = c->done;
    void *arg = c->arg;
    for (uint32_t j = 0; j < b->n; j++)
        if (c->dst[j])
            kvtcd_blob_unref(c->dst[j]); /* unused: failed or moved */
    free(c->dst);
    free(c->batch.items);
    free(c);
    done(arg);
}

/* Completion without any job: from the loop's next turn, as promised. */
typedef struct dec_fail {
    uv_check_t chk;
    void (*done)(void *arg);
    void *arg;
} dec_fail;

static void dec_fail_closed(uv_handle_t *h)
{
    free(h->data);
}

static void dec_fail_run(uv_check_t *h)
{
    dec_fail *f = h->data;
    uv_check_stop(h);
    f->done(f->arg);
    uv_close((uv_handle_t *)h, dec_fail_closed);
}

void kvtcd_serve_decode(kvtcd_server *srv, kvtcd_serve_dec *d, uint32_t n,
                        void (*done)(void *arg), void *arg)
{
    dec_ctx *c = n ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->batch.items = calloc(n, sizeof *c->batch.items);
        c->dst = calloc(n, sizeof *c->dst);
    }
    if (!c || !c->batch.items || !c->dst) {
        if (c) {
            free(c->batch.items);
            free(c->dst);
            free(c);
        }
        for (uint32_t j = 0; j < n; j++)
            d[j].rc = KVTC_ENOMEM;
        dec_fail *f = calloc(1, sizeof *f);
        if (!f || uv_check_init(srv->loop, &f->chk) != 0) {
            free(f);
            done(arg); /* nothing left to defer with */
            return;
        }
        f->chk.data = f;
        f->done = done;
        f->arg = arg;
        uv_check_start(&f->chk, dec_fail_run);
        return;
    }
    c->srv = srv;
    c->d = d;
    c->done = done;
    c->arg = arg;
    const char *old_path = getenv("KVTCD_DECODE_MALLOC");
    int in_slab = !(old_path && old_path[0] == '1') && srv->host;
    for (uint32_t j = 0; j < n; j++) {
        kvtcd_codec_item *it = &c->batch.items[j];
        it->kind = KVTCD_CODEC_DECODE;
        it->src = d[j].seg->p;
        it->len = d[j].seg->len;
        d[j].rc = 0;
        /* The reply's buffer up front, on the loop thread (the tier is
         * loop-thread only): the worker or the GPU's staging copy writes
         * the chunk there once, and the send reads it from there. */
        uint64_t want = d[j].raw_bytes;
        if (in_slab && want && want <= srv->cfg.max_chunk_bytes &&
            kvtcd_tier_alloc(srv->host, (size_t)want, &c->dst[j]) == 0) {
            it->dst = c->dst[j]->data;
            it->dst_cap = (size_t)want;
        }
    }
    c->batch.n = n;
    c->batch.max_out = srv->cfg.max_chunk_bytes;
    c->batch.done = decoded;
    c->batch.arg = c;
    kvtcd_codec_submit(srv->serve->codec, &c->batch);
}
