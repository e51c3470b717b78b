/* libkvtc's asynchronous API folded into a caller's own epoll loop, the
 * batch paths (per-item misses, undersized buffers, frames too large for a
 * UCX AM header), cancellation on disconnect, and connect failures. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define SPACE 0x41535900u
#define N_OPS 24
#define DEPTH 8

static size_t size_of(int i)
{
    /* eager and rendezvous sizes */
    return i % 4 == 0 ? (2u << 20) + 13u * (unsigned)i : 1000u + 4099u * (unsigned)i;
}

/* The scheduler's loop: progress, arm, sleep on the fd until pred holds. */
static void run_loop(kvtc_conn *c, int ep, int (*pred)(void *), void *arg)
{
    for (int spins = 0; spins < 100000 && !pred(arg); spins++) {
        cr_assert_geq(kvtc_progress(c), 0, "progress: %s", kvtc_last_error(c));
        if (pred(arg))
            break;
        int a = kvtc_arm(c);
        cr_assert(a == 0 || a == KVTC_EBUSY, "arm: %d", a);
        if (a == 0) {
            struct epoll_event ev;
            cr_assert_geq(epoll_wait(ep, &ev, 1, 1000), 0);
        }
    }
    cr_assert(pred(arg), "event loop did not finish");
}

static int idle(void *arg)
{
    return kvtc_inflight(arg) == 0;
}

Test(client_async, epoll_loop_puts_and_batched_gets, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    int fd = -1;
    cr_assert_eq(kvtc_get_fd(c, &fd), 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);

    /* Puts, DEPTH in flight at a time, each from its own buffer. */
    uint8_t *bufs[N_OPS];
    kvtc_put_item items[N_OPS];
    struct itest_done dn[N_OPS];
    memset(dn, 0, sizeof dn);
    int next = 0;
    while (next < N_OPS || kvtc_inflight(c)) {
        while (next < N_OPS && kvtc_inflight(c) < DEPTH) {
            bufs[next] = malloc(size_of(next));
            itest_fill(bufs[next], size_of(next), 500 + (uint64_t)next);
            items[next] = (kvtc_put_item){.key = itest_key(SPACE, (uint32_t)next),
                                          .data = bufs[next], .size = size_of(next)};
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb,
                                .arg = &dn[next]};
            cr_assert_eq(kvtc_put_batch_async(c, &items[next], 1, &p), 0, "%s",
                         kvtc_last_error(c));
            cr_assert_eq(dn[next].calls, 0, "callback ran inside submit");
            next++;
        }
        cr_assert_geq(kvtc_progress(c), 0);
        if (kvtc_inflight(c) >= DEPTH || next == N_OPS) {
            if (kvtc_arm(c) == 0) {
                struct epoll_event e;
                epoll_wait(ep, &e, 1, 1000);
            }
        }
    }
    for (int i = 0; i < N_OPS; i++) {
        cr_assert_eq(dn[i].calls, 1, "put %d: %d callbacks", i, dn[i].calls);
        cr_assert_eq(dn[i].status, 0, "put %d: %s", i, kvtc_strerror(dn[i].status));
        cr_assert_eq(items[i].status, 0);
    }

    /* One get batch: every stored chunk, a miss, and an undersized buffer. */
    enum { NG = N_OPS + 2 };
    kvtc_get_item g[NG];
    uint8_t *out[NG];
    for (int i = 0; i < NG; i++) {
        size_t cap = i < N_OPS ? size_of(i) : 4096;
        if (i == 3)
            cap = size_of(i) - 1; /* one byte short */
        out[i] = malloc(cap);
        g[i] = (kvtc_get_item){.key = itest_key(SPACE, i < N_OPS ? (uint32_t)i : 9000u + (uint32_t)i),
                               .buf = out[i], .capacity = cap};
    }
    struct itest_done gd = {0};
    kvtc_op_params gp = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &gd};
    cr_assert_eq(kvtc_get_batch_async(c, g, NG, &gp), 0, "%s", kvtc_last_error(c));
    run_loop(c, ep, idle, c);
    cr_assert_eq(gd.calls, 1);
    /* The batch reports its first failing item: item 3's ENOSPC. */
    cr_assert_eq(gd.status, KVTC_ENOSPC, "batch status %s", kvtc_strerror(gd.status));
    for (int i = 0; i < N_OPS; i++) {
        if (i == 3) {
            cr_assert_eq(g[i].status, KVTC_ENOSPC);
            cr_assert_eq(g[i].size, size_of(i), "ENOSPC must report the size");
            continue;
        }
        cr_assert_eq(g[i].status, 0, "get %d: %s", i, kvtc_strerror(g[i].status));
        cr_assert_eq(g[i].size, size_of(i));
        cr_assert(itest_check(out[i], size_of(i), 500 + (uint64_t)i), "chunk %d differs", i);
        cr_assert_eq(g[i].tier, KVTC_TIER_HOST);
    }
    cr_assert_eq(g[N_OPS].status, KVTC_ENOENT);
    cr_assert_eq(g[N_OPS + 1].status, KVTC_ENOENT);

    /* Lookup, pin, unpin, stats, delete, all asynchronously at once. */
    kvtc_key chain[4] = {itest_key(SPACE, 0), itest_key(SPACE, 1), itest_key(SPACE, 7777),
                         itest_key(SPACE, 2)};
    size_t hits = 99;
    uint32_t tiers[4] = {0};
    int pst[2] = {99, 99}, ust[2] = {99, 99}, dst[1] = {99};
    kvtc_stats st;
    struct itest_done d1 = {0}, d2 = {0}, d3 = {0}, d4 = {0};
    kvtc_op_params p1 = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &d1};
    kvtc_op_params p2 = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK | KVTC_OP_PARAM_FIELD_TTL,
                         .cb = itest_done_cb, .arg = &d2, .ttl_ms = 60000};
    kvtc_op_params p3 = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &d3};
    kvtc_op_params p4 = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &d4};
    cr_assert_eq(kvtc_lookup_async(c, chain, 4, &p1, &hits, tiers), 0);
    cr_assert_eq(kvtc_pin_async(c, chain, 2, &p2, pst), 0);
    cr_assert_eq(kvtc_stats_get_async(c, &p3, &st), 0);
    cr_assert_eq(kvtc_delete_async(c, &chain[2], 1, &p4, dst), 0);
    run_loop(c, ep, idle, c);
    cr_assert(d1.calls == 1 && d1.status == 0 && hits == 2);
    cr_assert(tiers[0] == KVTC_TIER_HOST && tiers[1] == KVTC_TIER_HOST);
    cr_assert(d2.calls == 1 && d2.status == 0 && pst[0] == 0 && pst[1] == 0);
    cr_assert(d3.calls == 1 && d3.status == 0);
    cr_assert(st.field_mask & KVTC_STATS_FIELD_CHUNKS);
    cr_assert_eq(st.chunks, N_OPS);
    cr_assert(d4.calls == 1 && d4.status == KVTC_ENOENT && dst[0] == KVTC_ENOENT);
    cr_assert_eq(kvtc_unpin(c, chain, 2, NULL, ust), 0);
    cr_assert(ust[0] == 0 && ust[1] == 0);

    /* Blocking calls refuse a missing callback on the async side only. */
    kvtc_op_params nocb = {0};
    cr_assert_eq(kvtc_lookup_async(c, chain, 1, &nocb, &hits, NULL), KVTC_EINVAL);

    for (int i = 0; i < N_OPS; i++)
        free(bufs[i]);
    for (int i = 0; i < NG; i++)
        free(out[i]);
    close(ep);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* Batches whose request or reply frame exceeds UCX's AM header limit
 * (~8 KiB) travel "in data"; both directions must work. */
Test(client_async, frames_larger_than_an_am_header, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    enum { N = 600, SZ = 700 };
    kvtc_put_item *pi = calloc(N, sizeof *pi);
    kvtc_get_item *gi = calloc(N, sizeof *gi);
    kvtc_key *keys = calloc(N + 1, sizeof *keys);
    uint8_t *src = malloc((size_t)N * SZ), *dst = calloc(N, SZ);
    for (int i = 0; i < N; i++) {
        itest_fill(src + (size_t)i * SZ, SZ, 9000 + (uint64_t)i);
        keys[i] = itest_key(SPACE + 1, (uint32_t)i);
        pi[i] = (kvtc_put_item){.key = keys[i], .data = src + (size_t)i * SZ, .size = SZ};
        gi[i] = (kvtc_get_item){.key = keys[i], .buf = dst + (size_t)i * SZ, .capacity = SZ};
    }
    keys[N] = itest_key(SPACE + 1, 99999);
    cr_assert_eq(kvtc_put_batch(c, pi, N, NULL), 0, "put of %d: %s", N, kvtc_last_error(c));
    cr_assert_eq(kvtc_get_batch(c, gi, N, NULL), 0, "get of %d: %s", N, kvtc_last_error(c));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(gi[i].size, SZ);
        cr_assert(itest_check(dst + (size_t)i * SZ, SZ, 9000 + (uint64_t)i), "chunk %d", i);
    }
    size_t hits = 0;
    cr_assert_eq(kvtc_lookup(c, keys, N + 1, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, N);
    free(pi);
    free(gi);
    free(keys);
    free(src);
    free(dst);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

static int cancel_calls;
static int cancel_status;

static void on_cancel(int status, void *arg)
{
    (void)arg;
    cancel_calls++;
    cancel_status = status;
}

Test(client_async, disconnect_completes_inflight_and_connect_errors, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    size_t n = 32u << 20;
    uint8_t *buf = malloc(n);
    itest_fill(buf, n, 1);
    kvtc_put_item it = {.key = itest_key(SPACE + 2, 0), .data = buf, .size = n};
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = on_cancel};
    cr_assert_eq(kvtc_put_batch_async(c, &it, 1, &p), 0);
    /* Disconnect at once: the callback runs exactly once, inside it. */
    kvtc_disconnect(c);
    cr_assert_eq(cancel_calls, 1);
    cr_assert(cancel_status == 0 || cancel_status == KVTC_ECANCELED, "status %s",
              kvtc_strerror(cancel_status));
    free(buf);
    /* The daemon is fine and serves the next client. */
    c = itest_connect(&d);
    kvtc_stats s = itest_stats(c);
    cr_assert_leq(s.chunks, 1);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);

    /* Nobody listens there any more: a clean error with a reason. */
    kvtc_conn_params cp = {.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT,
                           .connect_timeout_ms = 3000};
    kvtc_conn *none = NULL;
    int rc = kvtc_connect(d.addr, &cp, &none);
    cr_assert(rc == KVTC_ECONN || rc == KVTC_ETIMEDOUT, "connect: %s", kvtc_strerror(rc));
    cr_assert_null(none);
    cr_assert_neq(kvtc_last_error(NULL)[0], '\0');
    cr_assert_eq(kvtc_connect("127.0.0.1:99999", NULL, &none), KVTC_EINVAL);
    cr_assert_eq(kvtc_connect("[::1", NULL, &none), KVTC_EINVAL);
    cr_assert_eq(kvtc_connect(":7700", NULL, &none), KVTC_EINVAL);
}

/* A daemon that stops answering: the operation ends with KVTC_ETIMEDOUT
 * after its own timeout, the connection is failed (later calls KVTC_ECONN,
 * never a hang), and a daemon that dies fails operations at once. */
Test(client_async, timeout_and_daemon_death, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    kvtc_key k = itest_key(SPACE + 3, 1);
    uint8_t buf[4096];
    itest_fill(buf, sizeof buf, 3);
    cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), 0);

    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_TIMEOUT, .timeout_ms = 400};
    kvtc_get_item g = {.key = k, .buf = buf, .capacity = sizeof buf};
    uint64_t t0 = (uint64_t)time(NULL);
    cr_assert_eq(kvtc_get_batch(c, &g, 1, &p), KVTC_ETIMEDOUT, "%s", kvtc_last_error(c));
    cr_assert_leq((uint64_t)time(NULL) - t0, 5);
    cr_assert_eq(g.status, KVTC_ETIMEDOUT);
    cr_assert_eq(kvtc_put(c, &k, buf, sizeof buf), KVTC_ECONN);
    kvtc_disconnect(c);
    cr_assert_eq(kill(d.pid, SIGCONT), 0);

    /* The daemon serves new clients after the stall. */
    c = itest_connect(&d);
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, buf, sizeof buf, &got), 0);
    cr_assert(got == sizeof buf && itest_check(buf, sizeof buf, 3));

    /* Death of the daemon with an operation in flight. */
    struct itest_done dd = {0};
    kvtc_op_params ap = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &dd};
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    cr_assert_eq(kvtc_get_batch_async(c, &g, 1, &ap), 0);
    kvtc_progress(c);
    itest_daemon_signal_wait(&d, SIGKILL, 5000);
    cr_assert_eq(kvtc_wait_all(c, 20000), 0, "operation still in flight after the daemon died");
    cr_assert_eq(dd.calls, 1);
    cr_assert_eq(dd.status, KVTC_ECONN, "status %s", kvtc_strerror(dd.status));
    cr_assert_eq(kvtc_stats_get(c, NULL, &(kvtc_stats){0}), KVTC_ECONN);
    kvtc_disconnect(c);
}

/* Puts pipelined over UCX wait for their turn (one bulk send at a time,
 * client/conn.c) or for the checker thread's checksums (client/checker.c).
 * Neither may strand them: a disconnect completes every one exactly once,
 * and so does the daemon's death. */
Test(client_async, pipelined_puts_complete_on_disconnect_and_daemon_death, .timeout = 120)
{
    enum { N = 6 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    size_t n = 2u << 20;
    uint8_t *buf[N];
    kvtc_put_item it[N];
    for (int i = 0; i < N; i++) {
        buf[i] = malloc(n);
        itest_fill(buf[i], n, 40 + (uint64_t)i);
    }
    for (int round = 0; round < 2; round++) {
        kvtc_conn *c = itest_connect(&d);
        struct itest_done dn[N];
        memset(dn, 0, sizeof dn);
        if (round == 1)
            cr_assert_eq(kill(d.pid, SIGSTOP), 0);
        for (int i = 0; i < N; i++) {
            it[i] = (kvtc_put_item){.key = itest_key(SPACE + 5, (uint32_t)(round * N + i)),
                                    .data = buf[i], .size = n};
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &dn[i]};
            cr_assert_eq(kvtc_put_batch_async(c, &it[i], 1, &p), 0, "%s", kvtc_last_error(c));
        }
        kvtc_progress(c);
        if (round == 0) {
            kvtc_disconnect(c); /* at once: the callbacks run inside it */
        } else {
            itest_daemon_signal_wait(&d, SIGKILL, 5000);
            cr_assert_eq(kvtc_wait_all(c, 20000), 0, "puts still in flight after the daemon died");
        }
        for (int i = 0; i < N; i++) {
            cr_expect_eq(dn[i].calls, 1, "round %d put %d: %d callbacks", round, i, dn[i].calls);
            if (round == 1)
                cr_expect_eq(dn[i].status, KVTC_ECONN, "put %d: %s", i, kvtc_strerror(dn[i].status));
            else
                cr_expect(dn[i].status == 0 || dn[i].status == KVTC_ECANCELED, "put %d: %s", i,
                          kvtc_strerror(dn[i].status));
        }
        if (round == 1)
            kvtc_disconnect(c);
    }
    for (int i = 0; i < N; i++)
        free(buf[i]);
}
