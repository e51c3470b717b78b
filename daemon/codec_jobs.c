/* codec_jobs.c - codec work on the libuv thread pool (see codec_jobs.h). */
#include "codec_jobs.h"
#include "codec_gpu.h"

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
    /* The GPU backend and its FIFO (encode/decode items), when set. */
    kvtcd_gpu_codec *gpu;
    kvtcd_codec_item *ghead, *gtail;
    uint32_t gqueued, gpu_running_items;
    int gpu_running;
    kvtcd_codec_stats st;
};

typedef struct job {
    uv_work_t w;
    kvtcd_codec *cj;
    uint32_t n;
    uint64_t ns;
    uint64_t decode_ns, hash_ns; /* decodes: where the time went */
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

static void do_decode(kvtcd_codec *cj, kvtcd_codec_item *it, uint64_t max_out,
                      uint64_t *decode_ns, uint64_t *hash_ns)
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
    /* Straight into the caller's buffer (the reply's blob) when it fits:
     * no malloc, no copy afterwards. */
    it->out = it->dst && n <= it->dst_cap ? it->dst : malloc(n ? n : 1);
    if (!it->out) {
        rc = KVTC_ENOMEM;
        goto out;
    }
    uint64_t t0 = uv_hrtime();
    rc = kvtc_decode(dec, it->src, it->len, it->out, n, NULL);
    if (rc)
        goto out;
    uint64_t t1 = uv_hrtime();
    it->out_len = n;
    /* The one hash of the decoded bytes: the reply carries it so that the
     * client can check what arrived (the raw bytes have no stored
     * checksum; the container's were checked by the get's re-verify and
     * again, per section, by kvtc_decode). */
    it->sum = kvtc_wire_checksum(it->out, n);
    *decode_ns += t1 - t0;
    *hash_ns += uv_hrtime() - t1;
out:
    if (e)
        kvtcd_profile_decoder_give(e, dec);
    else if (dec)
        kvtc_decoder_free(dec);
    kvtcd_profile_unref(e);
    if (rc)
        kvtcd_codec_item_drop_out(it);
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
            do_decode(j->cj, it, it->batch->max_out, &j->decode_ns,
                      &j->hash_ns);
    }
    j->ns = uv_hrtime() - t0;
}

static void on_work(uv_work_t *w)
{
    run_job(w->data);
}

/* ---- scheduling, on the loop thread ---------------------------------------- */

static void pump(kvtcd_codec *cj);
static void pump_gpu(kvtcd_codec *cj);

static void fifo_push(kvtcd_codec_item **head, kvtcd_codec_item **tail,
                      kvtcd_codec_item *it)
{
    it->qnext = NULL;
    if (*tail)
        (*tail)->qnext = it;
    else
        *head = it;
    *tail = it;
}

static kvtcd_codec_item *fifo_pop(kvtcd_codec_item **head,
                                  kvtcd_codec_item **tail)
{
    kvtcd_codec_item *it = *head;
    *head = it->qnext;
    if (!*head)
        *tail = NULL;
    it->qnext = NULL;
    return it;
}

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
    if (j->decode_ns)
        KVTCD_DEBUG("codec", "CPU job items=%u ms=%.2f decode_ms=%.2f "
                             "hash_ms=%.2f",
                    j->n, j->ns / 1e6, j->decode_ns / 1e6, j->hash_ns / 1e6);
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
    pump_gpu(cj);
    while (cj->qhead && cj->running < KVTCD_CODEC_MAX_JOBS) {
        job *j = calloc(1, sizeof *j);
        if (!j)
            return; /* retried when a running job finishes */
        j->cj = cj;
        j->w.data = j;
        /* Spread what is queued over the free job slots: one request's
         * chunks alone would otherwise decode one after another on one
         * pool thread while the others idle. Under load the share is the
         * full KVTCD_CODEC_JOB_ITEMS, as before. */
        uint32_t slots = KVTCD_CODEC_MAX_JOBS - cj->running;
        uint32_t share = (cj->queued + slots - 1) / slots;
        if (share > KVTCD_CODEC_JOB_ITEMS)
            share = KVTCD_CODEC_JOB_ITEMS;
        uint64_t bytes = 0;
        while (cj->qhead && j->n < share &&
               (j->n == 0 || bytes + cj->qhead->len <= KVTCD_CODEC_JOB_BYTES)) {
            kvtcd_codec_item *it = fifo_pop(&cj->qhead, &cj->qtail);
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

/* ---- the GPU backend's jobs ---------------------------------------------------- */

typedef struct gjob {
    uv_work_t w;
    kvtcd_codec *cj;
    uint32_t n;
    uint64_t ns;
    kvtcd_gpu_run_stats rs;
    kvtcd_codec_item *items[];
} gjob;

/* On a pool thread: the GPU job mostly waits for the device there, which
 * is why only one runs at a time (and it holds one pool thread). */
static void on_gpu_work(uv_work_t *w)
{
    gjob *j = w->data;
    uint64_t t0 = uv_hrtime();
    kvtcd_gpu_codec_run(j->cj->gpu, j->items, j->n, &j->rs);
    j->ns = uv_hrtime() - t0;
}

/* Items the GPU handed back go first in the CPU FIFO (they waited
 * already), in their order. */
static void requeue_front(kvtcd_codec *cj, kvtcd_codec_item **v, uint32_t n)
{
    for (uint32_t i = n; i-- > 0;) {
        kvtcd_codec_item *it = v[i];
        if (!it->on_cpu)
            continue;
        it->rc = 0;
        it->qnext = cj->qhead;
        cj->qhead = it;
        if (!cj->qtail)
            cj->qtail = it;
        cj->queued++;
    }
}

static void on_gpu_after(uv_work_t *w, int status)
{
    gjob *j = w->data;
    kvtcd_codec *cj = j->cj;
    cj->gpu_running = 0;
    cj->gpu_running_items = 0;
    cj->st.gpu_busy_ns += j->ns;
    if (status != 0) { /* canceled: cannot happen here; the CPU does it */
        for (uint32_t i = 0; i < j->n; i++)
            j->items[i]->on_cpu = 1;
        j->rs.to_cpu = j->n;
        j->rs.done = 0;
    }
    KVTCD_DEBUG("codec", "GPU job items=%u done=%u to_cpu=%u ms=%.2f "
                         "stage_ms=%.2f device_ms=%.2f out_ms=%.2f "
                         "in_bytes=%llu out_bytes=%llu",
                j->n, j->rs.done, j->rs.to_cpu, j->ns / 1e6,
                j->rs.stage_ns / 1e6, j->rs.device_ns / 1e6,
                j->rs.out_ns / 1e6, (unsigned long long)j->rs.in_bytes,
                (unsigned long long)j->rs.out_bytes);
    cj->st.gpu_items += j->rs.done;
    cj->st.gpu_fallback += j->rs.to_cpu;
    cj->st.gpu_errors += j->rs.errors;
    /* Requeue before completing anything: an item's batch stays alive
     * while any of its items is not done, so reading on_cpu below is
     * safe even after another batch's done freed that batch's items. */
    requeue_front(cj, j->items, j->n);
    for (uint32_t i = 0; i < j->n; i++)
        if (!j->items[i]->on_cpu)
            item_done(cj, j->items[i]);
    free(j);
    pump(cj);
}

/* Start a GPU job over the GPU FIFO when none runs. */
static void pump_gpu(kvtcd_codec *cj)
{
    if (!cj->gpu || cj->gpu_running || !cj->ghead)
        return;
    uint32_t n = 0;
    uint64_t bytes = 0;
    for (kvtcd_codec_item *it = cj->ghead;
         it && n < KVTCD_GPU_JOB_ITEMS &&
         (n == 0 || bytes + it->len <= KVTCD_GPU_JOB_BYTES);
         it = it->qnext) {
        bytes += it->len;
        n++;
    }
    gjob *j = malloc(sizeof *j + n * sizeof j->items[0]);
    if (!j)
        return; /* retried at the next submit or completion */
    memset(j, 0, sizeof *j);
    j->cj = cj;
    j->w.data = j;
    for (uint32_t i = 0; i < n; i++) {
        j->items[i] = fifo_pop(&cj->ghead, &cj->gtail);
        j->items[i]->on_cpu = 1; /* until the GPU says otherwise */
        cj->gqueued--;
    }
    j->n = n;
    cj->st.gpu_jobs++;
    if (uv_queue_work(cj->loop, &j->w, on_gpu_work, on_gpu_after) == 0) {
        cj->gpu_running = 1;
        cj->gpu_running_items = n;
        return;
    }
    /* No thread for it: the CPU path has its own fallbacks. */
    cj->st.gpu_fallback += n;
    requeue_front(cj, j->items, n);
    free(j);
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
    if (cj->queued || cj->running || cj->gqueued || cj->gpu_running)
        KVTCD_ERROR("codec", "codec scheduler destroyed with work pending "
                             "queued=%u running=%u",
                    cj->queued, cj->running);
    kvtcd_gpu_codec_close(cj->gpu);
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
        it->on_cpu = 0;
        if (cj->gpu && it->kind != KVTCD_CODEC_CHECK) {
            fifo_push(&cj->ghead, &cj->gtail, it);
            cj->gqueued++;
        } else {
            fifo_push(&cj->qhead, &cj->qtail, it);
            cj->queued++;
        }
    }
    pump(cj);
}

void kvtcd_codec_set_gpu(kvtcd_codec *cj, kvtcd_gpu_codec *g)
{
    cj->gpu = g;
}

int kvtcd_codec_uses_gpu(const kvtcd_codec *cj)
{
    return cj->gpu != NULL;
}

const kvtcd_codec_stats *kvtcd_codec_get_stats(const kvtcd_codec *cj)
{
    return &cj->st;
}

uint32_t kvtcd_codec_pending(const kvtcd_codec *cj)
{
    return cj->queued + cj->running_items + cj->gqueued +
           cj->gpu_running_items;
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
