/* The local path's copy workers end to end (daemon/local_copy.h): many
 * small and large copies in flight from several clients, byte-exact, with
 * small copies batched over the workers and run on the loop (both
 * policies forced with KVTCD_LOCAL_SMALL, whatever this machine's default);
 * a put's reply means its bytes are stored even when copies finish out of
 * order; a disconnect with copies queued behind one busy worker stops
 * every write before kvtc_disconnect returns; a client killed with copies
 * queued leaves the daemon serving. */
#include "itest.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPACE 0x4c435000u

static void start(struct itest_daemon *d, const char *small, const char *threads,
                  const char *spin_us)
{
    itest_setup(ITEST_TLS_TCP);
    /* The daemon inherits the environment (Criterion runs each test in
     * its own process). */
    setenv("KVTCD_LOCAL_SMALL", small, 1);
    setenv("KVTCD_LOCAL_SPIN_US", spin_us, 1);
    const char *extra[] = {"--local-copy-threads", threads, NULL};
    itest_daemon_start(d, "512M", 0, extra);
}

static kvtc_conn *connect_local(const char *addr)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT |
                                        KVTC_CONN_PARAM_FIELD_OP_TIMEOUT,
                          .connect_timeout_ms = 30000,
                          .op_timeout_ms = 120000};
    if (kvtc_connect(addr, &p, &c))
        return NULL;
    kvtc_server_info info;
    if (kvtc_server_info_get(c, &info) || !info.local_path) {
        kvtc_disconnect(c);
        return NULL;
    }
    return c;
}

/* Every local request made exactly one copy, counted where it ran;
 * returns the loop's share. */
static double copies_add_up(const struct itest_daemon *d)
{
    double loop = itest_daemon_metric(d, "kvtc_local_copies_loop_total");
    double workers = itest_daemon_metric(d, "kvtc_local_copies_workers_total");
    double reqs = itest_daemon_metric(d, "kvtc_local_puts_total") + itest_daemon_metric(d, "kvtc_local_gets_total");
    cr_expect(loop >= 0 && workers >= 0, "copy counters missing");
    cr_expect_eq(loop + workers, reqs, "copies on the loop %.0f + on workers %.0f != local "
                                       "requests %.0f", loop, workers, reqs);
    cr_expect_eq(itest_daemon_metric(d, "kvtc_local_copies_in_flight"), 0);
    return loop;
}

static void count_done(int status, void *arg)
{
    (void)status;
    ++*(int *)arg;
}

/* Sizes of one client's chunks: mostly below the 1 MiB inline limit, a
 * few above (those go to the workers at once), odd lengths throughout. */
static size_t size_of(uint32_t who, uint32_t i)
{
    if (i % 11 == 5)
        return (1u << 20) + who * 4099u + i;
    return 4096u + ((i * 92821u + who * 7919u) % (900u << 10));
}

enum { DEPTH = 32 };

/* One client: rounds of DEPTH puts in flight (each round overwrites the
 * same keys with new bytes), then DEPTH gets in flight, checked; then
 * puts of new keys and gets of the round's keys in flight together.
 * Returns 0, or what went wrong (2 connect, 3 put, 4 get, 5 bytes). */
static int traffic(const char *addr, uint32_t who, int rounds)
{
    kvtc_conn *c = connect_local(addr);
    if (!c)
        return 2;
    uint8_t *src[DEPTH], *dst[DEPTH];
    kvtc_put_item pi[DEPTH];
    kvtc_get_item gi[DEPTH];
    int bad = 0;
    for (uint32_t i = 0; i < DEPTH; i++) {
        src[i] = malloc(size_of(who, i));
        dst[i] = malloc(size_of(who, i));
        if (!src[i] || !dst[i])
            return 2;
    }
    for (int r = 0; r < rounds && !bad; r++) {
        int done = 0;
        kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = count_done,
                             .arg = &done};
        memset(pi, 0, sizeof pi);
        memset(gi, 0, sizeof gi);
        for (uint32_t i = 0; i < DEPTH && !bad; i++) {
            uint64_t seed = ((uint64_t)who << 32) | ((uint64_t)r << 16) | i;
            itest_fill(src[i], size_of(who, i), seed);
            pi[i].key = itest_key(SPACE + who, i);
            pi[i].data = src[i];
            pi[i].size = size_of(who, i);
            if (kvtc_put_batch_async(c, &pi[i], 1, &op))
                bad = 3;
        }
        if (kvtc_wait_all(c, 120000) || done != DEPTH)
            bad = bad ? bad : 3;
        for (uint32_t i = 0; i < DEPTH && !bad; i++)
            if (pi[i].status)
                bad = 3;
        /* Every put answered: each get must see its round's bytes. */
        done = 0;
        for (uint32_t i = 0; i < DEPTH && !bad; i++) {
            memset(dst[i], 0, size_of(who, i));
            gi[i].key = pi[i].key;
            gi[i].buf = dst[i];
            gi[i].capacity = size_of(who, i);
            if (kvtc_get_batch_async(c, &gi[i], 1, &op))
                bad = 4;
        }
        /* New keys' puts in flight beside the gets. */
        kvtc_put_item np[DEPTH / 4];
        memset(np, 0, sizeof np);
        for (uint32_t i = 0; i < DEPTH / 4 && !bad; i++) {
            np[i].key = itest_key(SPACE + who, 1000 + (uint32_t)r * 64 + i);
            np[i].data = src[i];
            np[i].size = size_of(who, i);
            if (kvtc_put_batch_async(c, &np[i], 1, &op))
                bad = 3;
        }
        if (kvtc_wait_all(c, 120000) || done != DEPTH + DEPTH / 4)
            bad = bad ? bad : 4;
        for (uint32_t i = 0; i < DEPTH && !bad; i++) {
            uint64_t seed = ((uint64_t)who << 32) | ((uint64_t)r << 16) | i;
            if (gi[i].status || gi[i].size != size_of(who, i))
                bad = 4;
            else if (!itest_check(dst[i], gi[i].size, seed))
                bad = 5;
        }
        for (uint32_t i = 0; i < DEPTH / 4 && !bad; i++)
            if (np[i].status)
                bad = 3;
    }
    kvtc_disconnect(c);
    for (uint32_t i = 0; i < DEPTH; i++) {
        free(src[i]);
        free(dst[i]);
    }
    return bad;
}

static void clients(const struct itest_daemon *d, int n, int rounds)
{
    pid_t pids[16];
    cr_assert_leq(n, 16);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0)
            _exit(traffic(d->addr, (uint32_t)i, rounds));
    }
    for (int i = 0; i < n; i++) {
        int st = 0;
        cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "client %d: status 0x%x (2 connect, 3 put, 4 get, 5 bytes): %s", i, st,
                  itest_log_tail(d));
    }
}

/* Small copies batched over two workers (and one at a time on the loop
 * when alone), four clients with 32 requests in flight each. */
Test(it_local_copy, batched_many_in_flight, .timeout = 240)
{
    struct itest_daemon d;
    start(&d, "batch", "2", "20");
    clients(&d, 4, 3);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_gets_total"), 4 * 3 * DEPTH);
    copies_add_up(&d);
    /* Pipelining clients: most copies overlap on the workers. */
    cr_expect_gt(itest_daemon_metric(&d, "kvtc_local_copies_workers_total"),
                 itest_daemon_metric(&d, "kvtc_local_copies_loop_total"));
    itest_daemon_stop(&d);
}

/* The same traffic with small copies on the loop (the few-core policy)
 * and one worker for the large ones. */
Test(it_local_copy, inline_many_in_flight, .timeout = 240)
{
    struct itest_daemon d;
    start(&d, "inline", "1", "0");
    clients(&d, 4, 2);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    cr_expect_gt(copies_add_up(&d), 0, "no small copy ran on the loop");
    /* The workers took exactly the copies of 1 MiB and more (every 11th
     * chunk and one of the puts of new keys per round and client). */
    cr_expect_gt(itest_daemon_metric(&d, "kvtc_local_copies_workers_total"), 0);
    itest_daemon_stop(&d);
}

/* One client, one connection, every copy to the workers
 * (KVTCD_LOCAL_INLINE_MAX=0): replies out of order, bytes where they
 * belong. */
Test(it_local_copy, all_on_workers, .timeout = 240)
{
    struct itest_daemon d;
    setenv("KVTCD_LOCAL_INLINE_MAX", "0", 1);
    start(&d, "batch", "3", "0");
    cr_expect_eq(traffic(d.addr, 9, 4), 0, "%s", itest_log_tail(&d));
    cr_expect_eq(copies_add_up(&d), 0, "a copy ran on the loop with KVTCD_LOCAL_INLINE_MAX=0");
    itest_daemon_stop(&d);
}

/* One worker, many 512 KiB gets queued behind each other: a disconnect
 * while most still wait stops every write before kvtc_disconnect
 * returns, and the daemon serves the next connection. */
Test(it_local_copy, disconnect_with_copies_queued, .timeout = 120)
{
    struct itest_daemon d;
    start(&d, "batch", "1", "0");
    kvtc_conn *c = connect_local(d.addr);
    cr_assert_not_null(c, "no local path: %s", itest_log_tail(&d));
    enum { K = 64 };
    size_t n = 512u << 10;
    uint8_t *src = malloc(n);
    itest_fill(src, n, 77);
    kvtc_key keys[K];
    for (uint32_t i = 0; i < K; i++) {
        keys[i] = itest_key(SPACE, 500 + i);
        cr_assert_eq(kvtc_put(c, &keys[i], src, n), 0, "%s", kvtc_last_error(c));
    }
    for (int round = 0; round < 3; round++) {
        itest_disconnect_round(c, keys, K, n, round);
        cr_assert(itest_daemon_alive(&d));
        c = connect_local(d.addr);
        cr_assert_not_null(c);
    }
    kvtc_disconnect(c);
    cr_expect_eq(traffic(d.addr, 3, 1), 0, "%s", itest_log_tail(&d));
    free(src);
    itest_daemon_stop(&d);
}

/* Clients killed with small puts and gets queued on one worker: their
 * copies end (ECANCELED or ESRCH), the sessions go, the daemon serves on. */
Test(it_local_copy, killed_clients_with_copies_queued, .timeout = 120)
{
    struct itest_daemon d;
    start(&d, "batch", "1", "0");
    enum { NK = 3 };
    pid_t pids[NK];
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    for (int k = 0; k < NK; k++) {
        pids[k] = fork();
        cr_assert_geq(pids[k], 0);
        if (pids[k] == 0) {
            close(ready[0]);
            kvtc_conn *c = connect_local(d.addr);
            if (!c)
                _exit(2);
            size_t n = 300u << 10;
            uint8_t *b = malloc(n * 16);
            itest_fill(b, n * 16, 5);
            int done = 0;
            kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                                 .cb = count_done, .arg = &done};
            kvtc_put_item pi[16];
            kvtc_get_item gi[16];
            if (write(ready[1], "r", 1) != 1)
                _exit(4);
            for (uint32_t r = 0;; r++) {
                memset(pi, 0, sizeof pi);
                memset(gi, 0, sizeof gi);
                for (uint32_t i = 0; i < 16; i++) {
                    pi[i].key = itest_key(SPACE + 100 + (uint32_t)k, i);
                    pi[i].data = b + i * n;
                    pi[i].size = n;
                    gi[i].key = pi[i].key;
                    gi[i].buf = b + i * n;
                    gi[i].capacity = n;
                    if (r % 2 == 0)
                        kvtc_put_batch_async(c, &pi[i], 1, &op);
                    else
                        kvtc_get_batch_async(c, &gi[i], 1, &op);
                }
                kvtc_wait_all(c, -1);
            }
        }
    }
    close(ready[1]);
    for (int k = 0; k < NK; k++) {
        char x;
        cr_assert_eq(read(ready[0], &x, 1), 1, "client %d did not start", k);
    }
    close(ready[0]);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    for (int k = 0; k < NK; k++) {
        kill(pids[k], SIGKILL);
        waitpid(pids[k], NULL, 0);
    }
    cr_assert(itest_daemon_alive(&d), "daemon died with its clients: %s", itest_log_tail(&d));
    kvtc_conn *c = connect_local(d.addr);
    cr_assert_not_null(c);
    cr_expect(itest_wait_stats(c, itest_one_session, NULL, 15000),
              "the killed clients' sessions never ended");
    kvtc_disconnect(c);
    cr_expect_eq(traffic(d.addr, 4, 1), 0, "%s", itest_log_tail(&d));
    itest_daemon_stop(&d);
}
