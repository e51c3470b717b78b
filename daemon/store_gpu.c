/* store_gpu.c - the GPU tier (see store_gpu.h).
 *
 * Memory: one cuMemAlloc'ed slab, carved on the loop thread by
 * extent_alloc.c (segregated fit, coalescing, O(1) per call). Sizes round
 * up to 256 bytes, so every extent is aligned for any copy or kernel.
 *
 * Copies: one worker thread owns two CUDA streams (host->device and
 * device->host, so a promotion and a demotion use both copy engines at
 * once) and STAGE_COUNT pinned staging buffers. Why a thread rather than
 * the loop: the host buffers are pageable, so every byte is memcpy'd into
 * or out of pinned memory (~1 ms per 8 MiB); on the loop that would stall
 * every client for the length of a 100 MiB copy. The worker splits each
 * copy into staging-sized pieces and keeps up to STAGE_COUNT pieces in
 * flight: while the DMA of one piece runs it fills (or drains) the next,
 * so a large copy runs at the slower of memcpy and PCIe, not their sum.
 * One core's memcpy (~10 GB/s) is far below PCIe 5 (~55 GB/s), so each
 * staging memcpy is split over a few helper threads (par_copy.h). Host
 * memory registered with kvtcd_gpu_register_host skips staging entirely.
 * Pieces retire in order (one event per staging buffer); a finished copy
 * goes onto a done list and uv_async wakes the loop, which runs the
 * callbacks. Callbacks therefore never run inline.
 *
 * Ordering: copies of one direction run in submission order on their
 * stream. A copy submitted while copies of the other direction on the same
 * extent are in flight makes its stream wait for the other one first, so
 * write-then-read (or read-then-overwrite) of an extent is never torn. A
 * free while copies of its extent are in flight is deferred until they
 * report, so a reused extent is never written under a pending read. */
#include "store_gpu.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "extent_alloc.h"
#include "kvtc_errors.h"
#include "log.h"
#include "par_copy.h"

#define GPU_ALIGN 256u
#define STAGE_BYTES (8u << 20)
#define STAGE_COUNT 4
#define MAX_REGIONS 8

enum { DIR_H2D = 0, DIR_D2H = 1 };

/* A used block's caller fields (extent_alloc.h): in-flight copies per
 * direction, and whether its free waits for them. */
#define INFLIGHT(e) ((e)->user)
#define FREE_PENDING(e) ((e)->user_flag)

typedef struct job {
    struct job *next;
    kvtcd_xblock *e;
    uint8_t *host;
    uint64_t len;
    uint64_t issued;            /* worker: bytes handed to the GPU */
    uint32_t pieces_out;        /* worker: pieces issued, not retired */
    uint8_t dir;
    uint8_t wait_other;         /* order after the other stream first */
    uint8_t stopped;            /* worker: issue no more pieces */
    uint8_t released;           /* worker: no longer the issuing copy */
    uint8_t direct;             /* host range is registered: no staging */
    int status;
    kvtcd_gpu_cb cb;
    void *arg;
} job;

typedef struct slot {
    job *j;
    uint64_t pos;               /* offset of the piece within the copy */
    uint64_t n;
} slot;

struct kvtcd_gpu {
    uv_loop_t *loop;
    const kvtcd_cuda *cu;
    kvtcd_CUdevice dev;
    kvtcd_CUcontext ctx;
    kvtcd_CUdeviceptr slab;
    kvtcd_CUstream stream[2];
    kvtcd_CUevent ev[STAGE_COUNT];
    kvtcd_CUevent xev;          /* cross-stream ordering */
    uint8_t *stage[STAGE_COUNT];
    kvtcd_pcopy *pc;            /* the worker's memcpy helpers */
    struct {
        uint8_t *base;
        uint64_t len;
    } region[MAX_REGIONS];      /* cuMemHostRegister'ed host memory */
    int nregions;

    kvtcd_xalloc xa;            /* loop thread */

    /* Shared with the worker, under mu. */
    uv_mutex_t mu;
    uv_cond_t cv;
    job *q_head, *q_tail;       /* submitted, not yet taken */
    job *d_head, *d_tail;       /* finished, not yet reported */
    int stop;
    int worker_done;

    uv_thread_t thread;
    int thread_started;
    uv_async_t async;
    int closing;
    uint64_t inflight_jobs;     /* loop: submitted, not yet reported */
    void (*closed)(void *arg);
    void *closed_arg;

    kvtcd_gpu_stats st;
};

static char g_last_error[256] = "";
static int g_helpers = -1; /* memcpy helper threads; -1: the default */

void kvtcd__gpu_set_copy_helpers(int n)
{
    g_helpers = n;
}

const char *kvtcd_gpu_last_error(void)
{
    return g_last_error;
}

__attribute__((format(printf, 1, 2)))
static void set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
    va_end(ap);
}

/* ---- allocator ---------------------------------------------------- */

int kvtcd_gpu_alloc(kvtcd_gpu *g, uint64_t len, kvtcd_gpu_loc *out)
{
    if (!g || !out || len == 0)
        return KVTC_EINVAL;
    if (g->closing)
        return KVTC_ECANCELED;
    kvtcd_xblock *e;
    int rc = kvtcd_xalloc_get(&g->xa, len, &e);
    if (rc < 0)
        return rc;
    out->off = e->off;
    out->len = len;
    return 0;
}

/* The used block loc names, or NULL (logged: a caller bug). */
static kvtcd_xblock *find_used(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, const char *op)
{
    kvtcd_xblock *e = loc ? kvtcd_xalloc_find(&g->xa, loc->off) : NULL;
    if (!e || loc->len == 0 || loc->len > e->len) {
        KVTCD_WARN("gpu", "%s of an extent not allocated off=%llu len=%llu",
                   op, loc ? (unsigned long long)loc->off : 0ull,
                   loc ? (unsigned long long)loc->len : 0ull);
        return NULL;
    }
    return e;
}

void kvtcd_gpu_free(kvtcd_gpu *g, const kvtcd_gpu_loc *loc)
{
    if (!g)
        return;
    kvtcd_xblock *e = find_used(g, loc, "free");
    if (!e)
        return;
    if (INFLIGHT(e)[0] || INFLIGHT(e)[1]) {
        /* Released when its last copy reports; meanwhile no new copy can
         * name it. */
        kvtcd_xalloc_hide(&g->xa, e);
        FREE_PENDING(e) = 1;
        return;
    }
    kvtcd_xalloc_put(&g->xa, e);
}

/* ---- worker ------------------------------------------------------- */

static void log_cuda(kvtcd_gpu *g, const char *what, kvtcd_CUresult r)
{
    char buf[160];
    KVTCD_ERROR("gpu", "%s failed: %s", what,
                kvtcd_cuda_strerror(g->cu, r, buf, sizeof buf));
}

/* Worker: a copy is over (all its pieces retired or it was stopped). */
static void job_finish(kvtcd_gpu *g, job *j)
{
    j->next = NULL;
    uv_mutex_lock(&g->mu);
    if (g->d_tail)
        g->d_tail->next = j;
    else
        g->d_head = j;
    g->d_tail = j;
    uv_mutex_unlock(&g->mu);
    uv_async_send(&g->async);
}

static void job_fail(kvtcd_gpu *g, job *j, const char *what, kvtcd_CUresult r)
{
    if (j->status == 0) {
        log_cuda(g, what, r);
        j->status = KVTC_EIO;
    }
    j->stopped = 1;
}

/* Worker: hand the next piece of j to the GPU through staging slot s.
 * Returns 0 when a piece went out (the slot is taken), -1 when j failed. */
static int piece_issue(kvtcd_gpu *g, job *j, unsigned s, slot *sl)
{
    const kvtcd_cuda *cu = g->cu;
    kvtcd_CUstream st = g->stream[j->dir];
    kvtcd_CUresult r;
    if (j->issued == 0 && j->wait_other) {
        r = cu->cuEventRecord(g->xev, g->stream[!j->dir]);
        if (r == KVTCD_CUDA_SUCCESS)
            r = cu->cuStreamWaitEvent(st, g->xev, 0);
        if (r != KVTCD_CUDA_SUCCESS) {
            job_fail(g, j, "cuStreamWaitEvent", r);
            return -1;
        }
    }
    uint64_t n = j->len - j->issued;
    if (n > STAGE_BYTES && !j->direct)
        n = STAGE_BYTES;
    kvtcd_CUdeviceptr d = g->slab + j->e->off + j->issued;
    if (j->direct) {
        /* Page-locked already: the DMA engine reads or writes the
         * caller's bytes, one copy for the whole extent. */
        if (j->dir == DIR_H2D)
            r = cu->cuMemcpyHtoDAsync(d, j->host, n, st);
        else
            r = cu->cuMemcpyDtoHAsync(j->host, d, n, st);
    } else if (j->dir == DIR_H2D) {
        kvtcd_pcopy_run(g->pc, g->stage[s], j->host + j->issued, n);
        r = cu->cuMemcpyHtoDAsync(d, g->stage[s], n, st);
    } else {
        r = cu->cuMemcpyDtoHAsync(g->stage[s], d, n, st);
    }
    if (r == KVTCD_CUDA_SUCCESS)
        r = cu->cuEventRecord(g->ev[s], st);
    if (r != KVTCD_CUDA_SUCCESS) {
        job_fail(g, j, j->dir == DIR_H2D ? "cuMemcpyHtoDAsync"
                                         : "cuMemcpyDtoHAsync", r);
        return -1;
    }
    sl->j = j;
    sl->pos = j->issued;
    sl->n = n;
    j->issued += n;
    j->pieces_out++;
    return 0;
}

/* Worker: j stops being the copy that pieces are issued from; it is over
 * once its last piece retires. */
static void job_release(kvtcd_gpu *g, job *j)
{
    j->released = 1;
    if (j->pieces_out == 0)
        job_finish(g, j);
}

/* Worker: the oldest piece, whose event has completed or failed (r). */
static void piece_retire(kvtcd_gpu *g, unsigned s, slot *sl, kvtcd_CUresult r)
{
    job *j = sl->j;
    if (r != KVTCD_CUDA_SUCCESS)
        job_fail(g, j, "copy", r);
    else if (j->dir == DIR_D2H && j->status == 0 && !j->direct)
        kvtcd_pcopy_run(g->pc, j->host + sl->pos, g->stage[s], sl->n);
    sl->j = NULL;
    j->pieces_out--;
    if (j->pieces_out == 0 && j->released)
        job_finish(g, j);
}

static void worker_teardown(kvtcd_gpu *g)
{
    const kvtcd_cuda *cu = g->cu;
    for (int d = 0; d < 2; d++)
        if (g->stream[d])
            cu->cuStreamSynchronize(g->stream[d]);
    for (int s = 0; s < STAGE_COUNT; s++) {
        if (g->ev[s])
            cu->cuEventDestroy(g->ev[s]);
        if (g->stage[s])
            cu->cuMemFreeHost(g->stage[s]);
    }
    if (g->xev)
        cu->cuEventDestroy(g->xev);
    for (int d = 0; d < 2; d++)
        if (g->stream[d])
            cu->cuStreamDestroy(g->stream[d]);
    for (int i = 0; i < g->nregions; i++)
        cu->cuMemHostUnregister(g->region[i].base);
    g->nregions = 0;
    if (g->slab)
        cu->cuMemFree(g->slab);
    kvtcd_pcopy_destroy(g->pc);
    g->pc = NULL;
}

static void worker(void *arg)
{
    kvtcd_gpu *g = arg;
    const kvtcd_cuda *cu = g->cu;
    slot ring[STAGE_COUNT];
    unsigned head = 0, count = 0;
    job *cur = NULL;
    memset(ring, 0, sizeof ring);
    kvtcd_CUresult r = cu->cuCtxSetCurrent(g->ctx);
    if (r != KVTCD_CUDA_SUCCESS)
        log_cuda(g, "cuCtxSetCurrent", r); /* every copy will fail: EIO */

    for (;;) {
        /* Retire whatever has finished without blocking: completions are
         * reported as soon as their last piece lands. */
        while (count) {
            r = cu->cuEventQuery(g->ev[head]);
            if (r == KVTCD_CUDA_ERROR_NOT_READY)
                break;
            piece_retire(g, head, &ring[head], r);
            head = (head + 1) % STAGE_COUNT;
            count--;
        }
        uv_mutex_lock(&g->mu);
        int stop = g->stop;
        if (!cur && !stop && g->q_head) {
            cur = g->q_head;
            g->q_head = cur->next;
            if (!g->q_head)
                g->q_tail = NULL;
        }
        if (!cur && !count) {
            if (stop) {
                uv_mutex_unlock(&g->mu);
                break;
            }
            uv_cond_wait(&g->cv, &g->mu);
            uv_mutex_unlock(&g->mu);
            continue;
        }
        uv_mutex_unlock(&g->mu);

        if (cur && stop && !cur->stopped) {
            if (cur->status == 0)
                cur->status = KVTC_ECANCELED;
            cur->stopped = 1;
        }
        if (cur && cur->stopped) {
            job_release(g, cur);
            cur = NULL;
            continue;
        }
        if (cur && count < STAGE_COUNT) {
            unsigned s = (head + count) % STAGE_COUNT;
            if (piece_issue(g, cur, s, &ring[s]) == 0)
                count++;
            if (cur->stopped || cur->issued == cur->len) {
                job_release(g, cur);
                cur = NULL;
            }
            continue;
        }
        /* Ring full (or draining): wait for the oldest piece. */
        r = cu->cuEventSynchronize(g->ev[head]);
        piece_retire(g, head, &ring[head], r);
        head = (head + 1) % STAGE_COUNT;
        count--;
    }

    /* Cancel what was never started, then free the device resources here
     * so the loop thread never blocks on the driver. */
    uv_mutex_lock(&g->mu);
    job *q = g->q_head;
    g->q_head = g->q_tail = NULL;
    uv_mutex_unlock(&g->mu);
    while (q) {
        job *n = q->next;
        q->status = KVTC_ECANCELED;
        job_finish(g, q);
        q = n;
    }
    worker_teardown(g);
    uv_mutex_lock(&g->mu);
    g->worker_done = 1;
    uv_mutex_unlock(&g->mu);
    uv_async_send(&g->async);
}

/* ---- loop side ---------------------------------------------------- */

static void on_async_closed(uv_handle_t *h)
{
    kvtcd_gpu *g = h->data;
    void (*closed)(void *) = g->closed;
    void *arg = g->closed_arg;
    g->cu->cuDevicePrimaryCtxRelease(g->dev);
    uv_cond_destroy(&g->cv);
    uv_mutex_destroy(&g->mu);
    kvtcd_xalloc_fini(&g->xa);
    free(g);
    if (closed)
        closed(arg);
}

static void on_async(uv_async_t *a)
{
    kvtcd_gpu *g = a->data;
    uv_mutex_lock(&g->mu);
    job *d = g->d_head;
    g->d_head = g->d_tail = NULL;
    int done = g->worker_done;
    uv_mutex_unlock(&g->mu);
    while (d) {
        job *n = d->next;
        kvtcd_xblock *e = d->e;
        INFLIGHT(e)[d->dir]--;
        if (d->status == 0) {
            if (d->dir == DIR_H2D)
                g->st.bytes_written += d->len;
            else
                g->st.bytes_read += d->len;
        } else if (d->status != KVTC_ECANCELED) {
            g->st.errors++;
        }
        if (FREE_PENDING(e) && !INFLIGHT(e)[0] && !INFLIGHT(e)[1])
            kvtcd_xalloc_put(&g->xa, e);
        g->inflight_jobs--;
        kvtcd_gpu_cb cb = d->cb;
        void *arg = d->arg;
        int status = d->status;
        free(d);
        if (cb)
            cb(arg, status);
        d = n;
    }
    if (done && g->closing && g->thread_started) {
        uv_thread_join(&g->thread);
        g->thread_started = 0;
        uv_close((uv_handle_t *)&g->async, on_async_closed);
    }
}

static int submit(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, uint8_t *host,
                  uint64_t len, int dir, kvtcd_gpu_cb cb, void *arg)
{
    if (!g || !loc || !host || len == 0)
        return KVTC_EINVAL;
    if (g->closing)
        return KVTC_ECANCELED;
    kvtcd_xblock *e = find_used(g, loc, dir == DIR_H2D ? "write" : "read");
    if (!e || len > loc->len)
        return KVTC_EINVAL;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return KVTC_ENOMEM;
    j->e = e;
    j->host = host;
    j->len = len;
    j->dir = (uint8_t)dir;
    j->wait_other = INFLIGHT(e)[!dir] != 0;
    for (int i = 0; i < g->nregions; i++) {
        if (host >= g->region[i].base &&
            len <= g->region[i].len &&
            (uint64_t)(host - g->region[i].base) <= g->region[i].len - len) {
            j->direct = 1;
            break;
        }
    }
    j->cb = cb;
    j->arg = arg;
    INFLIGHT(e)[dir]++;
    g->inflight_jobs++;
    uv_mutex_lock(&g->mu);
    if (g->q_tail)
        g->q_tail->next = j;
    else
        g->q_head = j;
    g->q_tail = j;
    uv_cond_signal(&g->cv);
    uv_mutex_unlock(&g->mu);
    return 0;
}

int kvtcd_gpu_write(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, const void *src,
                    uint64_t len, kvtcd_gpu_cb cb, void *arg)
{
    /* The worker only reads through this pointer for a write. */
    return submit(g, loc, (uint8_t *)(uintptr_t)src, len, DIR_H2D, cb, arg);
}

int kvtcd_gpu_read(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, void *dst,
                   uint64_t len, kvtcd_gpu_cb cb, void *arg)
{
    return submit(g, loc, dst, len, DIR_D2H, cb, arg);
}

int kvtcd_gpu_register_host(kvtcd_gpu *g, void *base, uint64_t len)
{
    if (!g || !base || len == 0)
        return KVTC_EINVAL;
    if (g->closing)
        return KVTC_ECANCELED;
    if (g->nregions == MAX_REGIONS)
        return KVTC_ENOSPC;
    const kvtcd_cuda *cu = g->cu;
    kvtcd_CUresult r = cu->cuCtxPushCurrent(g->ctx);
    if (r == KVTCD_CUDA_SUCCESS) {
        r = cu->cuMemHostRegister(base, len, KVTCD_CU_MEMHOSTREGISTER_PORTABLE);
        kvtcd_CUcontext popped;
        cu->cuCtxPopCurrent(&popped);
    }
    if (r != KVTCD_CUDA_SUCCESS) {
        char buf[160];
        KVTCD_WARN("gpu", "cuMemHostRegister of %llu bytes refused: %s; "
                   "copies of that memory go through staging",
                   (unsigned long long)len,
                   kvtcd_cuda_strerror(cu, r, buf, sizeof buf));
        return r == KVTCD_CUDA_ERROR_OUT_OF_MEMORY ? KVTC_ENOMEM : KVTC_EIO;
    }
    /* Only the loop reads the table (submit); the worker sees j->direct,
     * and the table again at teardown, after the stop handshake. */
    g->region[g->nregions].base = base;
    g->region[g->nregions].len = len;
    g->nregions++;
    return 0;
}

void kvtcd_gpu_get_stats(const kvtcd_gpu *g, kvtcd_gpu_stats *out)
{
    if (!out)
        return;
    if (!g) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = g->st;
    out->used = g->xa.used;
}

void kvtcd_gpu_close(kvtcd_gpu *g, void (*closed)(void *arg), void *arg)
{
    if (!g || g->closing)
        return;
    g->closing = 1;
    g->closed = closed;
    g->closed_arg = arg;
    uv_mutex_lock(&g->mu);
    g->stop = 1;
    uv_cond_signal(&g->cv);
    uv_mutex_unlock(&g->mu);
    /* The worker's last uv_async_send leads on_async to join it and close
     * the handle; closed() runs from that handle's close callback. */
}

/* ---- open --------------------------------------------------------- */

static int cuda_fail(kvtcd_gpu *g, const char *what, kvtcd_CUresult r)
{
    char buf[160];
    kvtcd_cuda_strerror(g->cu, r, buf, sizeof buf);
    set_error("%s: %s", what, buf);
    return r == KVTCD_CUDA_ERROR_OUT_OF_MEMORY ? KVTC_ENOMEM : KVTC_EIO;
}

int kvtcd_gpu_open(uv_loop_t *loop, int device, uint64_t capacity,
                   kvtcd_gpu **out)
{
    if (!loop || !out || device < 0 || capacity < GPU_ALIGN ||
        capacity > (1ull << 50)) {
        set_error("invalid arguments (device >= 0, capacity >= 256 bytes "
                  "and <= 1 PiB)");
        return KVTC_EINVAL;
    }
    *out = NULL;
    capacity &= ~(uint64_t)(GPU_ALIGN - 1);
    const kvtcd_cuda *cu = NULL;
    char why[200];
    int rc = kvtcd_cuda_load(&cu, why, sizeof why);
    if (rc < 0) {
        set_error("no CUDA driver: %s", why);
        return KVTC_ENOTSUP;
    }
    int ndev = 0;
    kvtcd_CUresult r = cu->cuDeviceGetCount(&ndev);
    if (r != KVTCD_CUDA_SUCCESS || device >= ndev) {
        snprintf(why, sizeof why, "device %d requested, %d present", device,
                 r == KVTCD_CUDA_SUCCESS ? ndev : 0);
        set_error("no CUDA device: %s", why);
        return KVTC_ENOTSUP;
    }

    kvtcd_gpu *g = calloc(1, sizeof *g);
    if (!g) {
        set_error("out of host memory");
        return KVTC_ENOMEM;
    }
    g->loop = loop;
    g->cu = cu;
    g->st.capacity = capacity;
    int ctx_retained = 0, ctx_pushed = 0, sync_init = 0;

    r = cu->cuDeviceGet(&g->dev, device);
    if (r != KVTCD_CUDA_SUCCESS) {
        cuda_fail(g, "cuDeviceGet", r);
        rc = KVTC_ENOTSUP;
        goto fail;
    }
    if (cu->cuDeviceGetName(g->st.device_name, sizeof g->st.device_name,
                            g->dev) != KVTCD_CUDA_SUCCESS)
        snprintf(g->st.device_name, sizeof g->st.device_name, "GPU %d",
                 device);
    r = cu->cuDevicePrimaryCtxRetain(&g->ctx, g->dev);
    if (r != KVTCD_CUDA_SUCCESS) {
        /* e.g. the device is in exclusive-process mode and taken */
        cuda_fail(g, "cuDevicePrimaryCtxRetain", r);
        rc = KVTC_ENOTSUP;
        goto fail;
    }
    ctx_retained = 1;
    /* Push/pop rather than set: the loop thread's current context (if
     * another module uses one) is left as it was. */
    r = cu->cuCtxPushCurrent(g->ctx);
    if (r != KVTCD_CUDA_SUCCESS) {
        rc = cuda_fail(g, "cuCtxPushCurrent", r);
        goto fail;
    }
    ctx_pushed = 1;
    r = cu->cuMemAlloc(&g->slab, capacity);
    if (r != KVTCD_CUDA_SUCCESS) {
        g->slab = 0;
        rc = cuda_fail(g, "cuMemAlloc (slab)", r);
        goto fail;
    }
    for (int s = 0; s < STAGE_COUNT; s++) {
        void *p = NULL;
        r = cu->cuMemHostAlloc(&p, STAGE_BYTES, KVTCD_CU_MEMHOSTALLOC_PORTABLE);
        if (r != KVTCD_CUDA_SUCCESS) {
            rc = cuda_fail(g, "cuMemHostAlloc (staging)", r);
            goto fail;
        }
        g->stage[s] = p;
        r = cu->cuEventCreate(&g->ev[s], KVTCD_CU_EVENT_DISABLE_TIMING);
        if (r != KVTCD_CUDA_SUCCESS) {
            g->ev[s] = NULL;
            rc = cuda_fail(g, "cuEventCreate", r);
            goto fail;
        }
    }
    r = cu->cuEventCreate(&g->xev, KVTCD_CU_EVENT_DISABLE_TIMING);
    if (r != KVTCD_CUDA_SUCCESS) {
        g->xev = NULL;
        rc = cuda_fail(g, "cuEventCreate", r);
        goto fail;
    }
    for (int d = 0; d < 2; d++) {
        r = cu->cuStreamCreate(&g->stream[d], KVTCD_CU_STREAM_NON_BLOCKING);
        if (r != KVTCD_CUDA_SUCCESS) {
            g->stream[d] = NULL;
            rc = cuda_fail(g, "cuStreamCreate", r);
            goto fail;
        }
    }
    kvtcd_CUcontext popped;
    cu->cuCtxPopCurrent(&popped);
    ctx_pushed = 0;

    int helpers = g_helpers >= 0 ? g_helpers : kvtcd_pcopy_default_helpers();
    rc = kvtcd_pcopy_create(helpers, &g->pc);
    if (rc < 0) {
        set_error("cannot start %d copy helper threads", helpers);
        goto fail;
    }
    rc = kvtcd_xalloc_init(&g->xa, capacity, GPU_ALIGN);
    if (rc < 0) {
        set_error("out of host memory");
        goto fail;
    }

    if (uv_mutex_init(&g->mu) != 0) {
        set_error("uv_mutex_init failed");
        rc = KVTC_ENOMEM;
        goto fail;
    }
    if (uv_cond_init(&g->cv) != 0) {
        uv_mutex_destroy(&g->mu);
        set_error("uv_cond_init failed");
        rc = KVTC_ENOMEM;
        goto fail;
    }
    sync_init = 1;
    if (uv_async_init(loop, &g->async, on_async) != 0) {
        set_error("uv_async_init failed");
        rc = KVTC_EIO;
        goto fail;
    }
    g->async.data = g;
    if (uv_thread_create(&g->thread, worker, g) != 0) {
        set_error("cannot start the copy thread");
        /* The handle is live now: close it through the loop like a normal
         * close, with the worker already "done". */
        g->closing = 1;
        g->worker_done = 1;
        if (cu->cuCtxPushCurrent(g->ctx) == KVTCD_CUDA_SUCCESS) {
            worker_teardown(g);
            cu->cuCtxPopCurrent(&popped);
        }
        uv_close((uv_handle_t *)&g->async, on_async_closed);
        return KVTC_ENOMEM;
    }
    g->thread_started = 1;
    KVTCD_INFO("gpu", "tier open device=%d name=\"%s\" capacity=%llu "
               "staging=%dx%u copy_threads=%d", device, g->st.device_name,
               (unsigned long long)capacity, STAGE_COUNT, STAGE_BYTES,
               1 + helpers);
    *out = g;
    return 0;

fail:
    if (ctx_pushed) {
        kvtcd_CUcontext popped2;
        cu->cuCtxPopCurrent(&popped2);
    }
    /* Nothing is queued yet: the worker's teardown frees exactly what
     * open created (NULL members are skipped). */
    if (ctx_retained) {
        if (cu->cuCtxPushCurrent(g->ctx) == KVTCD_CUDA_SUCCESS) {
            worker_teardown(g);
            kvtcd_CUcontext popped3;
            cu->cuCtxPopCurrent(&popped3);
        }
        cu->cuDevicePrimaryCtxRelease(g->dev);
    }
    kvtcd_pcopy_destroy(g->pc);
    if (sync_init) {
        uv_cond_destroy(&g->cv);
        uv_mutex_destroy(&g->mu);
    }
    if (rc != KVTC_ENOTSUP)
        KVTCD_ERROR("gpu", "tier open failed device=%d capacity=%llu: %s",
                    device, (unsigned long long)capacity, g_last_error);
    kvtcd_xalloc_fini(&g->xa);
    free(g);
    return rc;
}
