/* host_prefault.c - background population and pinning of the host slab
 * (see host_prefault.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "host_prefault.h"
#include "kvtc_errors.h"
#include "log.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Work per step: large enough that syscalls are noise (a THP step is two
 * huge pages), small enough that stop and a raised target are seen soon. */
#define STEP (4u << 20)

struct kvtcd_prefault {
    uint8_t *base;
    size_t len;
    size_t page;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* target raised or stop (thread waits) */
    pthread_cond_t done_cv; /* resident grew (kvtcd_prefault_wait) */
    size_t want;            /* under mu */
    int stop;               /* under mu */
    int failed;             /* under mu: populate failed, work ahead no more */
    _Atomic size_t resident;
    _Atomic size_t locked;
    int pin;                /* thread only after start */
    int touch;              /* MADV_POPULATE_WRITE refused: touch pages */
};

/* Fault [p, p + n) in writable. The atomic add of 0 writes (so the page is
 * private and zero-filled once) without changing a byte that another
 * thread may be writing into the same page right now. */
static int populate(struct kvtcd_prefault *pf, uint8_t *p, size_t n)
{
    if (!pf->touch) {
        if (madvise(p, n, MADV_POPULATE_WRITE) == 0)
            return 0;
        if (errno != EINVAL)
            return -errno;
        pf->touch = 1; /* kernel < 5.14 */
        KVTCD_INFO("store", "MADV_POPULATE_WRITE unsupported, touching "
                            "pages to prefault the host slab");
    }
    for (size_t off = 0; off < n; off += pf->page)
        __atomic_fetch_add(p + off, (uint8_t)0, __ATOMIC_RELAXED);
    return 0;
}

static void pin(struct kvtcd_prefault *pf, uint8_t *p, size_t n, size_t end)
{
    if (!pf->pin)
        return;
    if (mlock(p, n) != 0) {
        /* Common without CAP_IPC_LOCK (RLIMIT_MEMLOCK is often 8 MiB):
         * the tier works unpinned, only swap could move its pages. */
        KVTCD_INFO("store", "mlock of the host slab refused at bytes=%zu "
                            "err=\"%s\": continuing unpinned",
                   (size_t)atomic_load(&pf->locked), strerror(errno));
        pf->pin = 0;
        return;
    }
    atomic_store(&pf->locked, end);
}

static void *run(void *arg)
{
    struct kvtcd_prefault *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        size_t from = atomic_load(&pf->resident);
        while (!pf->stop && from >= pf->want)
            pthread_cond_wait(&pf->cv, &pf->mu);
        if (pf->stop)
            break;
        size_t to = (from / STEP + 1) * STEP;
        if (to > pf->want)
            to = pf->want;
        pthread_mutex_unlock(&pf->mu);
        int rc = populate(pf, pf->base + from, to - from);
        if (rc < 0) {
            /* Out of memory or similar: the loop thread's own faults
             * will say so; stop working ahead. */
            KVTCD_WARN("store", "prefault of the host slab failed at "
                                "bytes=%zu err=\"%s\": stopped",
                       from, strerror(-rc));
            pthread_mutex_lock(&pf->mu);
            pf->want = from;
            pf->failed = 1;
            pthread_cond_broadcast(&pf->done_cv);
            continue;
        }
        pin(pf, pf->base + from, to - from, to);
        pthread_mutex_lock(&pf->mu);
        atomic_store(&pf->resident, to);
        pthread_cond_broadcast(&pf->done_cv);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

int kvtcd_prefault_start(uint8_t *base, size_t len, size_t initial_want,
                         int pin_pages, kvtcd_prefault **out)
{
    if (!base || !out)
        return KVTC_EINVAL;
    struct kvtcd_prefault *pf = calloc(1, sizeof *pf);
    if (!pf)
        return KVTC_ENOMEM;
    long pg = sysconf(_SC_PAGESIZE);
    pf->page = pg > 0 ? (size_t)pg : 4096;
    pf->base = base;
    pf->len = len;
    pf->want = initial_want < len ? initial_want : len;
    pf->pin = pin_pages;
    atomic_init(&pf->resident, 0);
    atomic_init(&pf->locked, 0);
    int rc = KVTC_EIO;
    if (pthread_mutex_init(&pf->mu, NULL) != 0)
        goto fail_free;
    if (pthread_cond_init(&pf->cv, NULL) != 0)
        goto fail_mu;
    if (pthread_cond_init(&pf->done_cv, NULL) != 0)
        goto fail_cv;
    if (pthread_create(&pf->thread, NULL, run, pf) != 0)
        goto fail_done_cv;
    (void)pthread_setname_np(pf->thread, "kvtcd-prefault");
    *out = pf;
    return 0;

fail_done_cv:
    pthread_cond_destroy(&pf->done_cv);
fail_cv:
    pthread_cond_destroy(&pf->cv);
fail_mu:
    pthread_mutex_destroy(&pf->mu);
fail_free:
    free(pf);
    KVTCD_ERROR("store", "cannot start the host slab prefault thread");
    return rc;
}

void kvtcd_prefault_want(kvtcd_prefault *p, size_t end)
{
    if (!p)
        return;
    if (end > p->len)
        end = p->len;
    pthread_mutex_lock(&p->mu);
    if (!p->failed && end > p->want) {
        p->want = end;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
}

size_t kvtcd_prefault_resident(const kvtcd_prefault *p)
{
    return p ? atomic_load(&((kvtcd_prefault *)p)->resident) : 0;
}

size_t kvtcd_prefault_locked(const kvtcd_prefault *p)
{
    return p ? atomic_load(&((kvtcd_prefault *)p)->locked) : 0;
}

int kvtcd_prefault_wait(kvtcd_prefault *p, size_t want, int timeout_ms)
{
    if (!p)
        return KVTC_EINVAL;
    if (want > p->len)
        want = p->len;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    /* A target below want never gets there: a failed populate lowers it. */
    while (atomic_load(&p->resident) < want && p->want >= want) {
        if (pthread_cond_timedwait(&p->done_cv, &p->mu, &dl) == ETIMEDOUT) {
            rc = KVTC_ETIMEDOUT;
            break;
        }
    }
    if (rc == 0 && atomic_load(&p->resident) < want)
        rc = KVTC_ETIMEDOUT;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void kvtcd_prefault_stop(kvtcd_prefault *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
