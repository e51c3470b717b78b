/* Restarts of a daemon with a disk tier.
 *
 * kill -9 in durable mode while puts are in flight, at random points, over
 * several rounds on the same data dir: every chunk whose put was
 * acknowledged reads back byte-exact after the restart, and a chunk whose
 * put was not acknowledged reads back byte-exact or is a miss, never torn.
 * Both I/O paths (io_uring and the thread pool).
 *
 * Cache mode: once the write-behind has flushed, a SIGTERM and a restart
 * lose nothing; SIGTERM right after the puts flushes the queue while
 * draining.
 *
 * The writer is a thread with its own connection: UCX does not survive a
 * fork of a process that connected. */
#include "test_it_tiers.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SPACE 0x52535400u
#define MAX_CHUNK (2u << 20)
#define MAX_KEYS 4096
#define PRE_PUTS 6      /* acknowledged before each round's writer starts */
#define WINDOW 4        /* writer: requests in flight */
#define BATCH 2         /* writer: chunks per request */

enum { K_NONE = 0, K_TRIED = 1, K_ACKED = 2 };

struct writer_slot {
    kvtc_put_item items[BATCH];
    uint8_t *bufs[BATCH];
    int busy, done, status;
};

struct writer {
    const struct itest_daemon *d;
    _Atomic int *state;          /* per key: K_* */
    _Atomic uint32_t next;       /* next key index to put */
    _Atomic uint32_t acked;      /* acknowledged by this writer */
    _Atomic int stop;
    _Atomic int failed;          /* the connection failed (the kill) */
    struct writer_slot slots[WINDOW];
};

static void slot_done(int status, void *arg)
{
    struct writer_slot *s = arg;
    s->status = status;
    s->done = 1;
}

/* Submit the next BATCH chunks in slot s. Keys are marked tried before the
 * request leaves: after the kill they may or may not be stored. */
static int slot_submit(kvtc_conn *c, struct writer *w, struct writer_slot *s)
{
    for (int j = 0; j < BATCH; j++) {
        uint32_t i = atomic_fetch_add(&w->next, 1);
        if (i >= MAX_KEYS)
            return -1;
        size_t size = tiers_size(SPACE, i, MAX_CHUNK);
        itest_fill(s->bufs[j], size, tiers_seed(SPACE, i));
        memset(&s->items[j], 0, sizeof s->items[j]);
        s->items[j].key = tiers_key(SPACE, i);
        s->items[j].data = s->bufs[j];
        s->items[j].size = size;
        s->items[j].reserved[0] = i; /* ours: which key this was */
        atomic_store(&w->state[i], K_TRIED);
    }
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = slot_done, .arg = s};
    s->done = 0;
    s->busy = 1;
    int rc = kvtc_put_batch_async(c, s->items, BATCH, &p);
    if (rc)
        s->busy = 0;
    return rc;
}

/* A chunk counts as acknowledged only when the whole request succeeded: a
 * lost connection leaves item statuses at 0 without any word from the
 * daemon. */
static void slot_reap(struct writer *w, struct writer_slot *s)
{
    for (int j = 0; j < BATCH; j++) {
        uint32_t i = (uint32_t)s->items[j].reserved[0];
        if (s->status == 0 && s->items[j].status == 0) {
            atomic_store(&w->state[i], K_ACKED);
            atomic_fetch_add(&w->acked, 1);
        }
    }
    if (s->status)
        atomic_store(&w->failed, 1);
    s->busy = 0;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {0};
    p.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT | KVTC_CONN_PARAM_FIELD_OP_TIMEOUT;
    p.connect_timeout_ms = 10000;
    p.op_timeout_ms = 10000;
    if (kvtc_connect(w->d->addr, &p, &c)) {
        atomic_store(&w->failed, 1);
        return NULL;
    }
    int fd = -1;
    kvtc_get_fd(c, &fd);
    for (;;) {
        int idle = 1;
        for (int k = 0; k < WINDOW; k++) {
            struct writer_slot *s = &w->slots[k];
            if (s->busy && s->done) {
                slot_reap(w, s);
                idle = 0;
            }
            if (!s->busy && !atomic_load(&w->stop) && !atomic_load(&w->failed)) {
                if (slot_submit(c, w, s))
                    atomic_store(&w->stop, 1);
                idle = 0;
            }
        }
        int busy = 0;
        for (int k = 0; k < WINDOW; k++)
            busy += w->slots[k].busy;
        if (!busy && (atomic_load(&w->stop) || atomic_load(&w->failed)))
            break;
        if (kvtc_progress(c) > 0 || !idle)
            continue;
        if (kvtc_arm(c) == 0) {
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            poll(&pf, 1, 10);
        }
    }
    kvtc_disconnect(c);
    return NULL;
}

/* Every key tried so far: acknowledged ones exact, the others exact or a
 * miss. */
static void verify_all(kvtc_conn *c, struct writer *w, uint32_t upto, unsigned seed)
{
    for (uint32_t i = 0; i < upto; i++) {
        int st = atomic_load(&w->state[i]);
        if (st == K_NONE)
            continue;
        int got = tiers_get(c, SPACE, i, tiers_size(SPACE, i, MAX_CHUNK), NULL);
        if (st == K_ACKED) {
            cr_assert(got, "acknowledged durable chunk %u (%zu B) lost after kill -9 (KVTC_TEST_SEED=%u)",
                      i, tiers_size(SPACE, i, MAX_CHUNK), seed);
        } else if (got) {
            /* Stored after all (the reply was lost in the kill): it now is
             * acknowledged data for the next rounds. */
            atomic_store(&w->state[i], K_ACKED);
        }
    }
}

static void kill9_rounds(const char *io)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = "durable", .disk_io = io, .host_mem = "64M",
                           .disk_size = "1G"};
    tiers_setup(ITEST_TLS_TCP);
    unsigned seed = tiers_rand_seed("kill9_rounds");
    unsigned rs = seed;
    int rounds = tiers_rounds(6);
    struct writer *w = calloc(1, sizeof *w);
    cr_assert_not_null(w);
    w->state = calloc(MAX_KEYS, sizeof *w->state);
    cr_assert_not_null(w->state);
    for (int k = 0; k < WINDOW; k++)
        for (int j = 0; j < BATCH; j++)
            cr_assert_not_null(w->slots[k].bufs[j] = malloc(MAX_CHUNK));

    itest_daemon_prepare(&d);
    uint32_t total_acked = 0, in_flight_at_kill = 0;
    for (int r = 0; r < rounds; r++) {
        tiers_launch(&d, &o);
        kvtc_conn *c = itest_connect(&d);
        uint32_t upto = atomic_load(&w->next);
        if (r > 0) {
            verify_all(c, w, upto, seed);
            /* After a restart only the disk holds anything. */
            cr_assert_gt(tiers_metric(&d, TIERS_SERIES(TIERS_M_HITS, "disk")), 0,
                         "round %d: no hit on the disk tier after a restart", r);
        }
        /* A few puts acknowledged before the writer starts. */
        for (int k = 0; k < PRE_PUTS; k++) {
            uint32_t i = atomic_fetch_add(&w->next, 1);
            cr_assert_lt(i, MAX_KEYS);
            atomic_store(&w->state[i], K_TRIED);
            int rc = tiers_put(c, SPACE, i, tiers_size(SPACE, i, MAX_CHUNK), NULL);
            cr_assert_eq(rc, 0, "round %d: durable put %u: %s (%s)\n%s", r, i, kvtc_strerror(rc),
                         kvtc_last_error(c), itest_log_tail(&d));
            atomic_store(&w->state[i], K_ACKED);
        }
        /* The writer keeps WINDOW requests in flight; the kill lands after
         * a random number of its acknowledgements and a random delay. */
        atomic_store(&w->stop, 0);
        atomic_store(&w->failed, 0);
        atomic_store(&w->acked, 0);
        w->d = &d;
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, writer_main, w), 0);
        uint32_t want = (uint32_t)(rand_r(&rs) % 24);
        long end = tiers_now_ms() + 20000;
        while (atomic_load(&w->acked) < want && !atomic_load(&w->failed) &&
               !atomic_load(&w->stop) && tiers_now_ms() < end)
            tiers_sleep_ms(2);
        cr_assert(!atomic_load(&w->failed), "round %d: the writer failed before the kill:\n%s", r,
                  itest_log_tail(&d));
        tiers_sleep_ms((int)(rand_r(&rs) % 40));
        cr_assert(itest_daemon_kill9(&d), "round %d: kvtcd was not alive for the kill:\n%s", r,
                  itest_log_tail(&d));
        atomic_store(&w->stop, 1);
        pthread_join(th, NULL);
        total_acked += atomic_load(&w->acked);
        for (uint32_t i = upto; i < atomic_load(&w->next); i++)
            in_flight_at_kill += atomic_load(&w->state[i]) == K_TRIED;
        d.skip_leak_check = "killed";
        kvtc_disconnect(c);
    }
    /* The last kill's survivors, then a clean stop. */
    tiers_launch(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    verify_all(c, w, atomic_load(&w->next), seed);
    cr_assert_gt(total_acked, 0, "the writer never got an acknowledgement in %d rounds", rounds);
    /* The point of the test: kills that land with puts unacknowledged. */
    cr_assert_gt(in_flight_at_kill, 0, "no put was in flight at any of %d kills", rounds);
    uint32_t acked = 0;
    for (uint32_t i = 0; i < atomic_load(&w->next); i++)
        acked += atomic_load(&w->state[i]) == K_ACKED;
    double recovered = tiers_metric_sum(&d, TIERS_M_DISK_RECOVERED);
    cr_assert_geq(recovered, acked, "%u chunks stored (all keys distinct), %.0f records recovered", acked,
                  recovered);
    cr_log_info("%s: %d rounds, %u keys tried, %u acknowledged by the writer, %u in flight at the kills, "
                "%u stored in the end, %.0f recovered at the last start",
                io, rounds, atomic_load(&w->next), total_acked, in_flight_at_kill, acked, recovered);
    kvtc_disconnect(c);
    d.skip_leak_check = NULL;
    itest_daemon_stop(&d);
    for (int k = 0; k < WINDOW; k++)
        for (int j = 0; j < BATCH; j++)
            free(w->slots[k].bufs[j]);
    free(w->state);
    free(w);
}

Test(it_tiers_restart, kill9_durable_threads, .timeout = 240)
{
    kill9_rounds("threads");
}

Test(it_tiers_restart, kill9_durable_uring, .timeout = 240)
{
    tiers_require_uring();
    kill9_rounds("uring");
}

#define CSPACE 0x43414300u
#define CN 48
#define CMAX (512u << 10)

static void put_many(kvtc_conn *c, uint32_t space, uint32_t n, size_t max)
{
    for (uint32_t i = 0; i < n; i++) {
        int rc = tiers_put(c, space, i, tiers_size(space, i, max), NULL);
        cr_assert_eq(rc, 0, "cache put %u: %s (%s)", i, kvtc_strerror(rc), kvtc_last_error(c));
    }
}

static void expect_all(kvtc_conn *c, uint32_t space, uint32_t n, size_t max, const char *when)
{
    for (uint32_t i = 0; i < n; i++)
        cr_assert(tiers_get(c, space, i, tiers_size(space, i, max), NULL), "%s: chunk %u lost",
                  when, i);
}

Test(it_tiers_restart, cache_mode_flushed_then_sigterm, .timeout = 90)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = "cache"};
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    put_many(c, CSPACE, CN, CMAX);
    /* Cache mode acknowledges from memory: wait for the write-behind. */
    cr_assert(tiers_wait_metric(&d, TIERS_M_DISK_DIRTY, 0, 1, 20000),
              "the write-behind queue did not drain in 20 s:\n%s", itest_log_tail(&d));
    kvtc_disconnect(c);
    int st = itest_daemon_signal_wait(&d, SIGTERM, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d\n%s", st,
              itest_log_tail(&d));
    tiers_launch(&d, &o);
    c = itest_connect(&d);
    expect_all(c, CSPACE, CN, CMAX, "restart after a flushed write-behind");
    cr_assert_geq(tiers_metric(&d, TIERS_SERIES(TIERS_M_HITS, "disk")), CN,
                  "after a restart every hit comes from the disk tier");
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_tiers_restart, cache_mode_sigterm_drains_queue, .timeout = 90)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = "cache"};
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    put_many(c, CSPACE + 1, CN, CMAX);
    kvtc_disconnect(c);
    /* At once: the drain flushes what is queued (a few MiB: well within
     * the drain deadline). */
    int st = itest_daemon_signal_wait(&d, SIGTERM, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d\n%s", st,
              itest_log_tail(&d));
    tiers_launch(&d, &o);
    c = itest_connect(&d);
    expect_all(c, CSPACE + 1, CN, CMAX, "restart after SIGTERM with a queued write-behind");
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}
