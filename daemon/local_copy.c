/* local_copy.c - the local path's copy workers (see local_copy.h). */
#include "local_copy.h"

#include <stdlib.h>
#include <unistd.h>

#include "kvtc_errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

struct kvtcd_cworkers {
    uv_loop_t *loop;
    uv_async_t async;              /* workers -> loop: jobs done */
    uv_mutex_t mu;
    uv_cond_t cv;
    kvtcd_cjob *head, *tail;       /* queued, oldest first (mu) */
    kvtcd_cjob *dhead, *dtail;     /* run, done not called yet (mu) */
    unsigned queued;               /* length of the queue: written under
                                      mu, read by polling workers without */
    unsigned sleeping;             /* workers in uv_cond_wait (mu) */
    int spin_gate;                 /* 1: polling allowed now (atomic:
                                      set by the loop, read by workers) */
    uint64_t polled_ns;            /* time spent polling (atomic) */
    int quit;                      /* (mu) */
    uint64_t spin_ns;
    unsigned busy;                 /* loop thread only */
    int closing;                   /* loop thread only */
    unsigned n;                    /* threads started */
    uv_thread_t th[KVTCD_CWORKERS_MAX];
};

static void worker_main(void *arg)
{
    kvtcd_cworkers *w = arg;
    uv_mutex_lock(&w->mu);
    for (;;) {
        if (!w->head && !w->quit && w->spin_ns &&
            __atomic_load_n(&w->spin_gate, __ATOMIC_ACQUIRE)) {
            /* Right after a job (or at start): the next one of a burst is
             * usually a few microseconds away, and waking a sleeping
             * thread costs about as much as a small copy takes. Only
             * while the gate is open: with more threads wanting cores
             * than there are, polling takes one from a client or a copy
             * (the loop closes it, kvtcd_cworkers_set_spin). */
            uv_mutex_unlock(&w->mu);
            uint64_t t0 = uv_hrtime(), end = t0 + w->spin_ns, now = t0;
            while (!__atomic_load_n(&w->queued, __ATOMIC_ACQUIRE) &&
                   __atomic_load_n(&w->spin_gate, __ATOMIC_RELAXED) &&
                   (now = uv_hrtime()) < end)
                CPU_RELAX();
            __atomic_add_fetch(&w->polled_ns, now - t0, __ATOMIC_RELAXED);
            uv_mutex_lock(&w->mu);
        }
        while (!w->head && !w->quit) {
            w->sleeping++;
            uv_cond_wait(&w->cv, &w->mu);
            w->sleeping--;
        }
        if (!w->head)
            break; /* quit, and nothing left queued */
        kvtcd_cjob *j = w->head;
        w->head = j->next;
        if (!w->head)
            w->tail = NULL;
        __atomic_store_n(&w->queued, w->queued - 1, __ATOMIC_RELEASE);
        uv_mutex_unlock(&w->mu);

        j->next = NULL;
        j->run(j);

        uv_mutex_lock(&w->mu);
        if (w->dtail)
            w->dtail->next = j;
        else
            w->dhead = j;
        w->dtail = j;
        uv_mutex_unlock(&w->mu);
        /* The handle outlives this call: close joins the threads first. */
        uv_async_send(&w->async);
        uv_mutex_lock(&w->mu);
    }
    uv_mutex_unlock(&w->mu);
}

static void stop_threads(kvtcd_cworkers *w)
{
    uv_mutex_lock(&w->mu);
    w->quit = 1;
    uv_cond_broadcast(&w->cv);
    uv_mutex_unlock(&w->mu);
    for (unsigned i = 0; i < w->n; i++)
        uv_thread_join(&w->th[i]);
    w->n = 0;
}

static void on_closed(uv_handle_t *h)
{
    kvtcd_cworkers *w = h->data;
    uv_cond_destroy(&w->cv);
    uv_mutex_destroy(&w->mu);
    free(w);
}

static void finish_close(kvtcd_cworkers *w)
{
    stop_threads(w);
    uv_close((uv_handle_t *)&w->async, on_closed);
}

static void on_async(uv_async_t *h)
{
    kvtcd_cworkers *w = h->data;
    uv_mutex_lock(&w->mu);
    kvtcd_cjob *j = w->dhead;
    w->dhead = w->dtail = NULL;
    uv_mutex_unlock(&w->mu);
    while (j) {
        kvtcd_cjob *next = j->next;
        j->next = NULL;
        w->busy--;
        j->done(j); /* may free j, may submit more */
        j = next;
    }
    if (w->closing && !w->busy)
        finish_close(w);
}

int kvtcd_cworkers_create(uv_loop_t *loop, unsigned threads, unsigned spin_us,
                          kvtcd_cworkers **out)
{
    *out = NULL;
    if (!loop || threads == 0 || threads > KVTCD_CWORKERS_MAX)
        return KVTC_EINVAL;
    kvtcd_cworkers *w = calloc(1, sizeof *w);
    if (!w)
        return KVTC_ENOMEM;
    w->loop = loop;
    w->spin_ns = (uint64_t)spin_us * 1000u;
    w->spin_gate = 1;
    if (uv_mutex_init(&w->mu) != 0) {
        free(w);
        return KVTC_ENOMEM;
    }
    if (uv_cond_init(&w->cv) != 0) {
        uv_mutex_destroy(&w->mu);
        free(w);
        return KVTC_ENOMEM;
    }
    if (uv_async_init(loop, &w->async, on_async) != 0) {
        uv_cond_destroy(&w->cv);
        uv_mutex_destroy(&w->mu);
        free(w);
        return KVTC_ENOMEM;
    }
    w->async.data = w;
    for (unsigned i = 0; i < threads; i++) {
        if (uv_thread_create(&w->th[i], worker_main, w) != 0) {
            finish_close(w); /* joins those started, frees w */
            return KVTC_ENOMEM;
        }
        w->n++;
    }
    *out = w;
    return 0;
}

void kvtcd_cworkers_submit(kvtcd_cworkers *w, kvtcd_cjob *job)
{
    job->next = NULL;
    w->busy++;
    uv_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    __atomic_store_n(&w->queued, w->queued + 1, __ATOMIC_RELEASE);
    /* A polling worker sees queued by itself; a sleeping one needs the
     * signal (the syscall is skipped while every worker polls). */
    if (w->sleeping)
        uv_cond_signal(&w->cv);
    uv_mutex_unlock(&w->mu);
}

void kvtcd_cworkers_set_spin(kvtcd_cworkers *w, int on)
{
    if (w)
        __atomic_store_n(&w->spin_gate, on ? 1 : 0, __ATOMIC_RELEASE);
}

uint64_t kvtcd_cworkers_polled_ns(const kvtcd_cworkers *w)
{
    return w ? __atomic_load_n(&w->polled_ns, __ATOMIC_RELAXED) : 0;
}

unsigned kvtcd_cworkers_busy(const kvtcd_cworkers *w)
{
    return w ? w->busy : 0;
}

void kvtcd_cworkers_close(kvtcd_cworkers *w)
{
    if (!w || w->closing)
        return;
    w->closing = 1;
    if (!w->busy)
        finish_close(w);
}

unsigned kvtcd_cworkers_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN) / 2;
    return n < 2 ? 2u : n > 8 ? 8u : (unsigned)n;
}

unsigned kvtcd_cworkers_default_spin_us(void)
{
    return sysconf(_SC_NPROCESSORS_ONLN) >= 8 ? KVTCD_CWORKERS_SPIN_US : 0u;
}
