/* par_copy.c - memcpy over helper threads (see par_copy.h). */
#include "par_copy.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "kvtc_errors.h"

struct part {
    uint8_t *dst;
    const uint8_t *src;
    size_t n;
};

struct kvtcd_pcopy {
    uv_mutex_t mu;
    uv_cond_t go, done;
    uint64_t gen;               /* bumped per run: helpers wake on change */
    int pending;                /* helper parts not yet copied */
    int quit;
    int helpers, started;
    struct part part[KVTCD_PCOPY_MAX_HELPERS];
    struct helper {
        kvtcd_pcopy *p;
        int idx;
        uv_thread_t th;
    } h[KVTCD_PCOPY_MAX_HELPERS];
};

static void helper_main(void *arg)
{
    struct helper *h = arg;
    kvtcd_pcopy *p = h->p;
    uint64_t seen = 0;
    uv_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit)
            uv_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        struct part w = p->part[h->idx];
        uv_mutex_unlock(&p->mu);
        if (w.n)
            memcpy(w.dst, w.src, w.n);
        uv_mutex_lock(&p->mu);
        if (--p->pending == 0)
            uv_cond_signal(&p->done);
    }
    uv_mutex_unlock(&p->mu);
}

int kvtcd_pcopy_default_helpers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    long h = n / 4;
    return h < 0 ? 0 : h > 4 ? 4 : (int)h;
}

int kvtcd_pcopy_create(int helpers, kvtcd_pcopy **out)
{
    if (!out || helpers < 0 || helpers > KVTCD_PCOPY_MAX_HELPERS)
        return KVTC_EINVAL;
    kvtcd_pcopy *p = calloc(1, sizeof *p);
    if (!p)
        return KVTC_ENOMEM;
    if (uv_mutex_init(&p->mu) != 0)
        goto fail_mu;
    if (uv_cond_init(&p->go) != 0)
        goto fail_go;
    if (uv_cond_init(&p->done) != 0)
        goto fail_done;
    p->helpers = helpers;
    for (int i = 0; i < helpers; i++) {
        p->h[i].p = p;
        p->h[i].idx = i;
        if (uv_thread_create(&p->h[i].th, helper_main, &p->h[i]) != 0) {
            kvtcd_pcopy_destroy(p);
            return KVTC_ENOMEM;
        }
        (void)pthread_setname_np(p->h[i].th, "kvtcd-pcopy"); /* uv_thread_t is a pthread_t */
        p->started++;
    }
    *out = p;
    return 0;

fail_done:
    uv_cond_destroy(&p->go);
fail_go:
    uv_mutex_destroy(&p->mu);
fail_mu:
    free(p);
    return KVTC_ENOMEM;
}

void kvtcd_pcopy_destroy(kvtcd_pcopy *p)
{
    if (!p)
        return;
    uv_mutex_lock(&p->mu);
    p->quit = 1;
    uv_cond_broadcast(&p->go);
    uv_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++)
        uv_thread_join(&p->h[i].th);
    uv_cond_destroy(&p->done);
    uv_cond_destroy(&p->go);
    uv_mutex_destroy(&p->mu);
    free(p);
}

void kvtcd_pcopy_run(kvtcd_pcopy *p, void *dst, const void *src, size_t n)
{
    if (!p || p->started == 0 || n < KVTCD_PCOPY_MIN_SPLIT) {
        memcpy(dst, src, n);
        return;
    }
    int ways = p->started + 1;
    /* Parts on 4 KiB boundaries: no two threads share a cache line or a
     * page, and each streams whole pages. */
    size_t per = ((n + (size_t)ways - 1) / (size_t)ways + 4095) &
                 ~(size_t)4095;
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t off = per < n ? per : n; /* the caller's part: [0, per) */
    uv_mutex_lock(&p->mu);
    for (int i = 0; i < p->started; i++) {
        size_t len = off < n ? (n - off < per ? n - off : per) : 0;
        p->part[i].dst = d + off;
        p->part[i].src = s + off;
        p->part[i].n = len;
        off += len;
    }
    p->pending = p->started;
    p->gen++;
    uv_cond_broadcast(&p->go);
    uv_mutex_unlock(&p->mu);
    memcpy(d, s, per < n ? per : n);
    uv_mutex_lock(&p->mu);
    while (p->pending)
        uv_cond_wait(&p->done, &p->mu);
    uv_mutex_unlock(&p->mu);
}
