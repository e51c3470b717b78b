/* codec_jobs.c - codec work on the libuv thread pool (see codec_jobs.h). */
#include "codec_jobs.h"

#include <stdlib.h>
#include <string.h>

#include "kvtc_errors.h"
#include "log.h"
#include "wire.h"

struct kvtcd_codec {
    uv_loop_t *loop;
    kvtcd_profiles *reg;
    kvtcd_codec_item *qhead, *qtail;
    uint32_t queued, running_items;
    uint32_t running;
    kvtcd_codec_stats st;
};

typedef struct job {
    uv_work_t w;
    kvtcd_codec *cj;
    uint32_t n;
    uint64_t ns;
    kvtcd_codec_item *items[KVTCD_CODEC_JOB_ITEMS];
} job;

/* ---- the work, on a worker thread ---------------------------------------- */

static void do_encode(kvtcd_codec_item *it)
{
    kvtc_encoder *enc = NULL;
    int rc = kvtcd_profile_encoder_take(it->prof, it->plan, &enc);
    if (rc)
        goto out;
    size_t cap = kvtc_encode_bound(enc, it->n_tokens);
    it->out = malloc(cap ? cap : 1);
    if (!it->out) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    kvtc_chunk ch = {.data = it->src, .n_tokens = it->n_tokens,
                     .first_pos = it->first_pos};
    rc = kvtc_encode(enc, &ch, it->out, cap, &it->out_len);
    if (rc)
        goto out;
    /* The bound is generous: keep only what the container needs. */
    uint8_t *shrunk = realloc(it->out, it->out_len ? it->out_len : 1);
    if (shrunk)
        it->out = shrunk;
    it->sum = kvtc_wire_checksum(it->out, it->out_len);
out:
    kvtcd_profile_encoder_give(it->prof, it->plan, enc);
    it->rc = rc;
}

/* The profile a transform-coded container names, with a reference; NULL
 * for a raw container. */
static int container_profile(kvtcd_profiles *reg, const kvtc_container_info *ci,
                             kvtcd_profile_ent **out)
{
    *out = NULL;
    if (ci->mode == 1)
        return 0;
    kvtcd_profile_ent *e = kvtcd_profiles_get(reg, ci->profile_id);
    if (!e)
        return KVTC_EPROFILE;
    if (!kvtcd_layout_same(kvtc_profile_layout(e->p), &ci->layout) ||
        ci->plan >= kvtc_profile_plan_count(e->p)) {
        kvtcd_profile_unref(e);
        return KVTC_EPROFILE;
    }
    *out = e;
    return 0;
}

static void do_decode(kvtcd_codec *cj, kvtcd_codec_item *it, uint64_t max_out)
{
    kvtcd_profile_ent *e = NULL;
    kvtc_decoder *dec = NULL;
    int rc = kvtc_inspect(it->src, it->len, &it->info);
    if (rc || (rc = container_profile(cj->reg, &it->info, &e)))
        goto out;
    if (it->kind == KVTCD_CODEC_CHECK)
        goto out;
    if (it->info.raw_bytes > max_out) {
        rc = KVTC_ENOSPC;
        goto out;
    }
    rc = e ? kvtcd_profile_decoder_take(e, &dec)
           : kvtc_decoder_create(NULL, &dec);
    if (rc)
        goto out;
    size_t n = (size_t)it->info.raw_bytes;
    it->out = malloc(n ? n : 1);
    if (!it->out) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    rc = kvtc_decode(dec, it->src, it->len, it->out, n, NULL);
    if (rc)
        goto out;
    it->out_len = n;
    it->sum = kvtc_wire_checksum(it->out, n);
out:
    if (e)
        kvtcd_profile_decoder_give(e, dec);
    else if (dec)
        kvtc_decoder_free(dec);
    kvtcd_profile_unref(e);
    if (rc && it->out) {
        free(it->out);
        it->out = NULL;
        it->out_len = 0;
    }
    it->rc = rc;
}

static void run_job(job *j)
{
    uint64_t t0 = uv_hrtime();
    for (uint32_t i = 0; i < j->n; i++) {
        kvtcd_codec_item *it = j->items[i];
        if (it->kind == KVTCD_CODEC_ENCODE)
            do_encode(it);
        else
            do_decode(j->cj, it, it->batch->max_out);
    }
    j->ns = uv_hrtime() - t0;
}

static void on_work(uv_work_t *w)
{
    run_job(w->data);
}

/* ---- scheduling, on the loop thread ---------------------------------------- */

static void pump(kvtcd_codec *cj);

static void item_done(kvtcd_codec *cj, kvtcd_codec_item *it)
{
    kvtcd_codec_stats *st = &cj->st;
    if (it->rc) {
        st->failed++;
    } else if (it->kind == KVTCD_CODEC_ENCODE) {
        st->encoded++;
        st->encode_in_bytes += it->len;
        st->encode_out_bytes += it->out_len;
    } else if (it->kind == KVTCD_CODEC_DECODE) {
        st->decoded++;
        st->decode_in_bytes += it->len;
        st->decode_out_bytes += it->out_len;
    } else {
        st->checked++;
    }
    kvtcd_codec_batch *b = it->batch;
    if (--b->left == 0)
        b->done(b);
}

static void on_after(uv_work_t *w, int status)
{
    job *j = w->data;
    kvtcd_codec *cj = j->cj;
    if (status != 0) /* canceled: cannot happen here, but stay correct */
        run_job(j);
    cj->running--;
    cj->running_items -= j->n;
    cj->st.busy_ns += j->ns;
    for (uint32_t i = 0; i < j->n; i++)
        item_done(cj, j->items[i]);
    free(j);
    pump(cj);
}

/* Deferred start when the thread pool refused the work: finish it on the
 * loop (slow, but correct) from an idle turn, never inside submit. */
typedef struct inline_job {
    uv_check_t chk;
    job *j;
} inline_job;

static void inline_closed(uv_handle_t *h)
{
    free(h->data);
}

static void inline_run(uv_check_t *c)
{
    inline_job *ij = c->data;
    uv_check_stop(c);
    run_job(ij->j);
    on_after(&ij->j->w, 0);
    c->data = ij;
    uv_close((uv_handle_t *)c, inline_closed);
}

static void pump(kvtcd_codec *cj)
{
    while (cj->qhead && cj->running < KVTCD_CODEC_MAX_JOBS) {
        job *j = calloc(1, sizeof *j);
        if (!j)
            return; /* retried when a running job finishes */
        j->cj = cj;
        j->w.data = j;
        uint64_t bytes = 0;
        while (cj->qhead && j->n < KVTCD_CODEC_JOB_ITEMS &&
               (j->n == 0 || bytes + cj->qhead->len <= KVTCD_CODEC_JOB_BYTES)) {
            kvtcd_codec_item *it = cj->qhead;
            cj->qhead = it->qnext;
            if (!cj->qhead)
                cj->qtail = NULL;
            it->qnext = NULL;
            cj->queued--;
            bytes += it->len;
            j->items[j->n++] = it;
        }
        cj->running++;
        cj->running_items += j->n;
        cj->st.jobs++;
        if (uv_queue_work(cj->loop, &j->w, on_work, on_after) == 0)
            continue;
        inline_job *ij = calloc(1, sizeof *ij);
        if (ij && uv_check_init(cj->loop, &ij->chk) == 0) {
            ij->j = j;
            ij->chk.data = ij;
            uv_check_start(&ij->chk, inline_run);
            continue;
        }
        /* Nothing left to defer with: run it now (done runs inside this
         * call, which only happens when memory is exhausted). */
        free(ij);
        KVTCD_WARN("codec", "thread pool and loop refused a codec job; "
                            "running it inline");
        run_job(j);
        on_after(&j->w, 0);
        return;
    }
}

int kvtcd_codec_create(uv_loop_t *loop, kvtcd_profiles *reg, kvtcd_codec **out)
{
    kvtcd_codec *cj = calloc(1, sizeof *cj);
    if (!cj)
        return KVTC_ENOMEM;
    cj->loop = loop;
    cj->reg = reg;
    *out = cj;
    return 0;
}

void kvtcd_codec_destroy(kvtcd_codec *cj)
{
    if (!cj)
        return;
    if (cj->queued || cj->running)
        KVTCD_ERROR("codec", "codec scheduler destroyed with work pending "
                             "queued=%u running=%u",
                    cj->queued, cj->running);
    free(cj);
}

void kvtcd_codec_submit(kvtcd_codec *cj, kvtcd_codec_batch *b)
{
    b->left = b->n;
    for (uint32_t i = 0; i < b->n; i++) {
        kvtcd_codec_item *it = &b->items[i];
        it->batch = b;
        it->rc = 0;
        it->out = NULL;
        it->out_len = 0;
        it->qnext = NULL;
        if (cj->qtail)
            cj->qtail->qnext = it;
        else
            cj->qhead = it;
        cj->qtail = it;
        cj->queued++;
    }
    pump(cj);
}

const kvtcd_codec_stats *kvtcd_codec_get_stats(const kvtcd_codec *cj)
{
    return &cj->st;
}

uint32_t kvtcd_codec_pending(const kvtcd_codec *cj)
{
    return cj->queued + cj->running_items;
}

/* ---- heap blobs ------------------------------------------------------------ */

typedef struct heap_blob {
    kvtcd_blob b;
    void (*release)(void *arg);
    void *arg;
} heap_blob;

static int heap_alloc(kvtcd_tier *t, size_t size, kvtcd_blob **out)
{
    return KVTC_ENOTSUP; /* blobs are made around existing bytes only */
}

static void heap_release(kvtcd_tier *t, kvtcd_blob *b)
{
    heap_blob *h = (heap_blob *)b;
    t->used -= b->size;
    t->blobs--;
    if (h->release)
        h->release(h->arg);
    else
        free(b->data);
    free(h);
}

static void heap_destroy(kvtcd_tier *t)
{
}

static const kvtcd_tier_ops heap_ops = {heap_alloc, heap_release, heap_destroy};
/* Loop thread only, like every tier; its counters say how many decoded
 * bytes replies hold right now. */
static kvtcd_tier heap_tier = {&heap_ops, "heap", 0, 0, 0, 0};

int kvtcd_heap_blob(void *data, size_t len, void (*release)(void *arg),
                    void *arg, kvtcd_blob **out)
{
    heap_blob *h = calloc(1, sizeof *h);
    if (!h)
        return KVTC_ENOMEM;
    h->b.tier = &heap_tier;
    h->b.refs = 1;
    h->b.data = data;
    h->b.size = len;
    h->release = release;
    h->arg = arg;
    heap_tier.used += len;
    heap_tier.blobs++;
    *out = &h->b;
    return 0;
}
