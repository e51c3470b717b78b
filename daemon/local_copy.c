/* local_copy.c - the local path's copy workers (see local_copy.h). */
#include "local_copy.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvtc_errors.h"

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
    unsigned polling;              /* workers polling for a job (atomic;
                                      a taker leaves the count under mu) */
    int spin_gate;                 /* 1: polling allowed now (atomic:
                                      set by the loop, read by workers) */
    uint64_t polled_ns;            /* time spent polling (atomic) */
    int quit;                      /* written under mu, read atomically */
    uint64_t spin_ns;
    int yield;                     /* sched_yield while polling
                                      (KVTCD_LOCAL_SPIN_YIELD=0: not) */
    unsigned busy;                 /* loop thread only */
    int closing;                   /* loop thread only */
    unsigned n;                    /* threads started */
    uv_thread_t th[KVTCD_CWORKERS_MAX];
};

/* The oldest queued job, or NULL. Under mu. */
static kvtcd_cjob *take_locked(kvtcd_cworkers *w)
{
    kvtcd_cjob *j = w->head;
    if (!j)
        return NULL;
    w->head = j->next;
    if (!w->head)
        w->tail = NULL;
    __atomic_store_n(&w->queued, w->queued - 1, __ATOMIC_RELEASE);
    j->next = NULL;
    return j;
}

/* Poll until end for a job, while the gate is open. The mutex is only
 * tried, never waited for: a poller that blocked on it would sleep in the
 * kernel like any sleeper (H100 host trace: jobs handed to polling workers
 * still began 6-11 us later). One that loses the race for a job goes on
 * polling rather than to sleep. Returns the job taken, or NULL. */
static kvtcd_cjob *poll_for_job(kvtcd_cworkers *w, uint64_t end)
{
    kvtcd_cjob *j = NULL;
    uint64_t t0 = uv_hrtime(), now = t0;
    __atomic_add_fetch(&w->polling, 1, __ATOMIC_ACQ_REL);
    while (now < end && __atomic_load_n(&w->spin_gate, __ATOMIC_RELAXED) &&
           !__atomic_load_n(&w->quit, __ATOMIC_RELAXED)) {
        if (__atomic_load_n(&w->queued, __ATOMIC_ACQUIRE) &&
            uv_mutex_trylock(&w->mu) == 0) {
            j = take_locked(w);
            if (j) /* leave the count while submit cannot look */
                __atomic_sub_fetch(&w->polling, 1, __ATOMIC_ACQ_REL);
            uv_mutex_unlock(&w->mu);
            if (j)
                break;
        }
        /* Polling yields: a client (or the loop) that the kernel woke on
         * this CPU gets it at once instead of after our window (H100
         * host traces, docs/perf-notes.md "Registered buffers"). */
        if (w->yield)
            sched_yield();
        now = uv_hrtime();
    }
    if (!j)
        __atomic_sub_fetch(&w->polling, 1, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&w->polled_ns, uv_hrtime() - t0, __ATOMIC_RELAXED);
    return j;
}

static void worker_main(void *arg)
{
    kvtcd_cworkers *w = arg;
    /* Right after a job (or at start) the next one of a burst is usually
     * a few microseconds away, and waking a sleeping thread costs about
     * as much as a small copy takes: poll until spin_end. Only while the
     * gate is open: with more threads wanting cores than there are,
     * polling takes one from a client or a copy (the loop closes it,
     * kvtcd_cworkers_set_spin). */
    uint64_t spin_end = uv_hrtime() + w->spin_ns;
    for (;;) {
        kvtcd_cjob *j = NULL;
        if (w->spin_ns && __atomic_load_n(&w->spin_gate, __ATOMIC_ACQUIRE))
            j = poll_for_job(w, spin_end);
        if (!j) {
            uv_mutex_lock(&w->mu);
            while (!w->head && !w->quit) {
                w->sleeping++;
                uv_cond_wait(&w->cv, &w->mu);
                w->sleeping--;
            }
            j = take_locked(w);
            uv_mutex_unlock(&w->mu);
            if (!j)
                break; /* quit, and nothing left queued */
        }
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
        spin_end = uv_hrtime() + w->spin_ns;
    }
}

static void stop_threads(kvtcd_cworkers *w)
{
    uv_mutex_lock(&w->mu);
    __atomic_store_n(&w->quit, 1, __ATOMIC_RELEASE);
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
    w->yield = kvtcd_spin_yield();
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
        (void)pthread_setname_np(w->th[i], "kvtcd-copy"); /* uv_thread_t is a pthread_t */
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
    unsigned q = w->queued + 1;
    __atomic_store_n(&w->queued, q, __ATOMIC_RELEASE);
    /* Polling workers see queued by themselves: a sleeper is woken only
     * for jobs beyond them (the syscall is skipped while enough poll). A
     * poller that gives up leaves the count before it looks at the queue
     * under mu, so it takes the job itself or was not counted here. */
    int wake = w->sleeping && q > __atomic_load_n(&w->polling, __ATOMIC_ACQUIRE);
    uv_mutex_unlock(&w->mu);
    /* After unlocking: the woken thread must not block on mu at once. */
    if (wake)
        uv_cond_signal(&w->cv);
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

int kvtcd_spin_yield(void)
{
    static int v = -1; /* racy first read is harmless: same answer */
    if (v < 0) {
        const char *e = getenv("KVTCD_LOCAL_SPIN_YIELD");
        v = !(e && !strcmp(e, "0"));
    }
    return v;
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
