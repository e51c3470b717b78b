/* Rails (docs/protocol.md "Rails", docs/kvtcd.md "Transport"): kvtcd
 * --rails N offers N more UCX workers on threads of their own; libkvtc
 * binds them and sends its large puts and gets there, moved by its own
 * thread or by a thread per rail (client/rail_threads.c). Bytes exact from
 * 1 KiB to 64 MiB, batches mixing small and large chunks, many operations
 * in flight, the client's opt-out, and a client killed mid-transfer on a
 * rail frees its session; with rail threads also a caller's epoll loop,
 * a disconnect with puts in flight, an operation timing out, the
 * daemon's death, and gets landing on the rail threads. Over tcp with the local path off: what a client on
 * another host gets. */
#include "itest.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define SPACE 0x5241494cu

static const char *const with_rails[] = {"--rails", "2", NULL};

static kvtc_conn *connect_ucx(const struct itest_daemon *d, uint32_t rails)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_LOCAL | KVTC_CONN_PARAM_FIELD_RAILS |
                                        KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT |
                                        KVTC_CONN_PARAM_FIELD_OP_TIMEOUT,
                          .local = KVTC_LOCAL_OFF,
                          .rails = rails,
                          .connect_timeout_ms = 10000,
                          .op_timeout_ms = 60000};
    int rc = kvtc_connect(d->addr, &p, &c);
    cr_assert_eq(rc, 0, "connect: %s (%s)", kvtc_strerror(rc), kvtc_last_error(NULL));
    return c;
}

static void status_cb(int status, void *arg)
{
    *(int *)arg = status;
}

static uint32_t rails_of(kvtc_conn *c)
{
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    return info.rails;
}

static uint32_t rail_threads_of(kvtc_conn *c)
{
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    return info.rail_threads;
}

/* A connection to d with two rails, moved by threads or not as mode says. */
static kvtc_conn *connect_rails(const struct itest_daemon *d, uint32_t mode)
{
    kvtc_conn *c = connect_ucx(d, mode);
    cr_assert_eq(rails_of(c), 2, "rails not bound: %s", itest_log_tail(d));
    cr_assert_eq(rail_threads_of(c), mode == KVTC_RAILS_THREADS ? 2u : 0u);
    return c;
}

static void roundtrip(kvtc_conn *c, uint32_t base, size_t n)
{
    uint8_t *src = malloc(n), *dst = malloc(n);
    cr_assert(src && dst);
    itest_fill(src, n, base);
    memset(dst, 0xa5, n);
    kvtc_key k = itest_key(SPACE, base);
    cr_assert_eq(kvtc_put(c, &k, src, n), 0, "put %zu: %s", n, kvtc_last_error(c));
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, dst, n, &got), 0, "get %zu: %s", n, kvtc_last_error(c));
    cr_assert_eq(got, n);
    cr_assert(itest_check(dst, n, base), "%zu B came back different", n);
    free(src);
    free(dst);
}

static void bytes_exact(uint32_t mode)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, with_rails);
    kvtc_conn *c = connect_rails(&d, mode);
    static const size_t sizes[] = {1024, 256u << 10, 1u << 20, (4u << 20) + 5, 64u << 20};
    for (uint32_t i = 0; i < 5; i++)
        roundtrip(c, i, sizes[i]);
    char *body = itest_metrics_body(&d);
    double v = 0;
    cr_assert_eq(itest_metric(body, "kvtc_rails", &v), 0);
    cr_expect_eq(v, 2);
    cr_assert_eq(itest_metric(body, "kvtc_rail_binds_total", &v), 0);
    cr_expect_eq(v, 2);
    /* The puts and gets of >= 1 MiB (three sizes, two each) took a rail. */
    cr_assert_eq(itest_metric(body, "kvtc_rail_requests_total", &v), 0);
    cr_expect_eq(v, 6, "requests on rails: %g", v);
    cr_assert_eq(itest_metric(body, "kvtc_errors_total", &v), 0);
    cr_expect_eq(v, 0);
    int n = 0;
    itest_metric_sum(body, "kvtc_rail_cpu_seconds_total", &n);
    cr_expect_eq(n, 2, "one CPU series per rail:\n%s", body);
    free(body);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_rails, bytes_exact_from_1k_to_64m, .timeout = 180)
{
    bytes_exact(KVTC_RAILS_NO_THREADS);
}

Test(it_rails, bytes_exact_with_rail_threads, .timeout = 180)
{
    bytes_exact(KVTC_RAILS_THREADS);
}

/* P puts of size bytes in flight at once (keys from base), then P gets
 * into buffers of cap bytes, every byte checked. */
static void pipelined(kvtc_conn *c, uint32_t base, size_t size, size_t cap, int P)
{
    uint8_t *pb[P], *gb[P];
    kvtc_put_item pp[P];
    kvtc_get_item gg[P];
    int pst[P], gst[P];
    memset(pp, 0, sizeof pp);
    memset(gg, 0, sizeof gg);
    for (int i = 0; i < P; i++) {
        pb[i] = malloc(size);
        gb[i] = malloc(cap);
        cr_assert(pb[i] && gb[i]);
        itest_fill(pb[i], size, base + i);
        memset(gb[i], 0xa5, cap);
        pp[i].key = gg[i].key = itest_key(SPACE, base + i);
        pp[i].data = pb[i];
        pp[i].size = size;
        gg[i].buf = gb[i];
        gg[i].capacity = cap;
        pst[i] = gst[i] = 1;
    }
    for (int i = 0; i < P; i++) {
        kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                             .cb = status_cb,
                             .arg = &pst[i]};
        cr_assert_eq(kvtc_put_batch_async(c, &pp[i], 1, &op), 0);
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    for (int i = 0; i < P; i++) {
        cr_expect_eq(pst[i], 0, "pipelined put %d: %s", i, kvtc_strerror(pst[i]));
        kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                             .cb = status_cb,
                             .arg = &gst[i]};
        cr_assert_eq(kvtc_get_batch_async(c, &gg[i], 1, &op), 0);
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    for (int i = 0; i < P; i++) {
        cr_expect_eq(gst[i], 0, "pipelined get %d: %s", i, kvtc_strerror(gst[i]));
        cr_expect_eq(gg[i].size, size);
        cr_expect(itest_check(gb[i], size, base + i), "pipelined chunk %d of %zu B differs", i,
                  size);
        free(pb[i]);
        free(gb[i]);
    }
}

/* Many in flight at once, on both rails and the first endpoint: a batch of
 * small and large chunks, then pipelined single-chunk puts and gets. */
static void batches_and_pipelines(uint32_t mode)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, with_rails);
    kvtc_conn *c = connect_rails(&d, mode);
    enum { N = 6 };
    static const size_t sizes[N] = {8192, 2u << 20, 100, (3u << 20) + 1, 64u << 10, 1u << 20};
    uint8_t *src[N], *dst[N];
    kvtc_put_item pi[N];
    kvtc_get_item gi[N];
    memset(pi, 0, sizeof pi);
    memset(gi, 0, sizeof gi);
    for (int i = 0; i < N; i++) {
        src[i] = malloc(sizes[i]);
        dst[i] = malloc(sizes[i]);
        cr_assert(src[i] && dst[i]);
        itest_fill(src[i], sizes[i], 100 + i);
        pi[i].key = gi[i].key = itest_key(SPACE, 100 + i);
        pi[i].data = src[i];
        pi[i].size = sizes[i];
        gi[i].buf = dst[i];
        gi[i].capacity = sizes[i];
    }
    cr_assert_eq(kvtc_put_batch(c, pi, N, NULL), 0, "batch put: %s", kvtc_last_error(c));
    cr_assert_eq(kvtc_get_batch(c, gi, N, NULL), 0, "batch get: %s", kvtc_last_error(c));
    for (int i = 0; i < N; i++) {
        cr_expect_eq(gi[i].size, sizes[i]);
        cr_expect(itest_check(dst[i], sizes[i], 100 + i), "batch chunk %d differs", i);
    }

    /* 16 puts of 2 MiB in flight, then 16 gets. */
    pipelined(c, 200, 2u << 20, 2u << 20, 16);
    /* Gets whose buffers are large enough for a rail but whose chunks are
     * not: their replies come eagerly, in many tcp fragments, on a rail. */
    pipelined(c, 400, (512u << 10) + 13, 2u << 20, 16);
    for (int i = 0; i < N; i++) {
        free(src[i]);
        free(dst[i]);
    }
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_rails, batches_and_pipelines, .timeout = 180)
{
    batches_and_pipelines(KVTC_RAILS_NO_THREADS);
}

Test(it_rails, batches_and_pipelines_with_rail_threads, .timeout = 180)
{
    batches_and_pipelines(KVTC_RAILS_THREADS);
}

/* A scheduler's own loop: the connection's fd wakes for what the rail
 * threads finish too (8 puts then 8 gets of 3 MiB, 4 in flight). */
Test(it_rails, rail_threads_wake_a_callers_epoll_loop, .timeout = 120)
{
    enum { N = 8, DEPTH = 4 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    int fd = -1;
    cr_assert_eq(kvtc_get_fd(c, &fd), 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
    size_t n = (3u << 20) + 7;
    uint8_t *src[N], *dst[N];
    kvtc_put_item pi[N];
    kvtc_get_item gi[N];
    struct itest_done dn[2 * N];
    memset(dn, 0, sizeof dn);
    for (int i = 0; i < N; i++) {
        src[i] = malloc(n);
        dst[i] = malloc(n);
        cr_assert(src[i] && dst[i]);
        itest_fill(src[i], n, 700 + i);
        pi[i] = (kvtc_put_item){.key = itest_key(SPACE + 2, 700 + i), .data = src[i], .size = n};
        gi[i] = (kvtc_get_item){.key = pi[i].key, .buf = dst[i], .capacity = n};
    }
    int next = 0, sleeps = 0;
    for (int spins = 0; spins < 200000; spins++) {
        int done = 0, busy = 0;
        for (int i = 0; i < 2 * N; i++)
            done += dn[i].calls;
        busy = next - done;
        if (done == 2 * N)
            break;
        /* Gets only once every put finished. */
        while (busy < DEPTH && next < 2 * N && (next < N || done >= N)) {
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb,
                                .arg = &dn[next]};
            int rc = next < N ? kvtc_put_batch_async(c, &pi[next], 1, &p)
                              : kvtc_get_batch_async(c, &gi[next - N], 1, &p);
            cr_assert_eq(rc, 0, "submit %d: %s", next, kvtc_last_error(c));
            next++, busy++;
        }
        cr_assert_geq(kvtc_progress(c), 0, "progress: %s", kvtc_last_error(c));
        int a = kvtc_arm(c);
        cr_assert(a == 0 || a == KVTC_EBUSY, "arm: %d", a);
        if (a == 0) {
            struct epoll_event out;
            int w = epoll_wait(ep, &out, 1, 10000);
            cr_assert_eq(w, 1, "the fd did not wake with operations in flight");
            sleeps++;
        }
    }
    for (int i = 0; i < 2 * N; i++)
        cr_expect(dn[i].calls == 1 && dn[i].status == 0, "op %d: %d calls, %s", i, dn[i].calls,
                  kvtc_strerror(dn[i].status));
    for (int i = 0; i < N; i++) {
        cr_expect_eq(gi[i].size, n);
        cr_expect(itest_check(dst[i], n, 700 + i), "chunk %d differs", i);
        free(src[i]);
        free(dst[i]);
    }
    cr_expect_gt(sleeps, 0, "the loop never slept on the fd");
    close(ep);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* With rail threads, every way out completes each operation exactly once:
 * a disconnect with puts in flight, an operation that times out (the
 * connection then fails every call), and the daemon's death. */
Test(it_rails, rail_threads_disconnect_timeout_and_daemon_death, .timeout = 120)
{
    enum { N = 6 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    size_t n = 2u << 20;
    uint8_t *buf[N];
    kvtc_put_item it[N];
    struct itest_done dn[N];
    for (int i = 0; i < N; i++) {
        buf[i] = malloc(n);
        cr_assert(buf[i]);
        itest_fill(buf[i], n, 800 + (uint64_t)i);
    }
    /* Disconnect at once: the callbacks run inside it. */
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    memset(dn, 0, sizeof dn);
    for (int i = 0; i < N; i++) {
        it[i] = (kvtc_put_item){.key = itest_key(SPACE + 3, (uint32_t)i), .data = buf[i], .size = n};
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &dn[i]};
        cr_assert_eq(kvtc_put_batch_async(c, &it[i], 1, &p), 0, "%s", kvtc_last_error(c));
    }
    kvtc_progress(c);
    kvtc_disconnect(c);
    for (int i = 0; i < N; i++)
        cr_expect(dn[i].calls == 1 && (dn[i].status == 0 || dn[i].status == KVTC_ECANCELED),
                  "put %d: %d calls, %s", i, dn[i].calls, kvtc_strerror(dn[i].status));

    /* A stalled daemon: the get times out, the connection is failed. */
    c = connect_rails(&d, KVTC_RAILS_THREADS);
    cr_assert_eq(kvtc_put(c, &it[0].key, buf[0], n), 0, "%s", kvtc_last_error(c));
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    kvtc_op_params tp = {.field_mask = KVTC_OP_PARAM_FIELD_TIMEOUT, .timeout_ms = 500};
    kvtc_get_item g = {.key = it[0].key, .buf = buf[1], .capacity = n};
    cr_assert_eq(kvtc_get_batch(c, &g, 1, &tp), KVTC_ETIMEDOUT, "%s", kvtc_last_error(c));
    cr_assert_eq(kvtc_put(c, &it[0].key, buf[0], n), KVTC_ECONN);
    kvtc_disconnect(c);
    cr_assert_eq(kill(d.pid, SIGCONT), 0);

    /* The daemon dies with puts and gets in flight on the rails. */
    c = connect_rails(&d, KVTC_RAILS_THREADS);
    memset(dn, 0, sizeof dn);
    kvtc_get_item gg[N]; /* the gets' items stay ours until their callbacks */
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    for (int i = 0; i < N; i++) {
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &dn[i]};
        gg[i] = (kvtc_get_item){.key = it[0].key, .buf = buf[i], .capacity = n};
        int rc = i % 2 ? kvtc_get_batch_async(c, &gg[i], 1, &p) : kvtc_put_batch_async(c, &it[i], 1, &p);
        cr_assert_eq(rc, 0, "%s", kvtc_last_error(c));
    }
    kvtc_progress(c);
    itest_daemon_signal_wait(&d, SIGKILL, 5000);
    cr_assert_eq(kvtc_wait_all(c, 20000), 0, "operations still in flight after the daemon died");
    for (int i = 0; i < N; i++)
        cr_expect(dn[i].calls == 1 && dn[i].status == KVTC_ECONN, "op %d: %d calls, %s", i,
                  dn[i].calls, kvtc_strerror(dn[i].status));
    kvtc_disconnect(c);
    for (int i = 0; i < N; i++)
        free(buf[i]);
}

/* A disconnect while rail threads hold replies they kept or copy them into
 * the caller's buffers (pipelined 256 KiB gets): every callback runs once,
 * and a get reported done has every byte right. After 0, 1, 4, 16 and 64
 * progress calls, and so again after a pause in which the rail threads
 * take the replies in (the first progress call then hands them their
 * copies), so that the disconnect meets replies at different stages. */
Test(it_rails, disconnect_while_rail_threads_copy_replies, .timeout = 120)
{
    enum { P = 12 };
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    size_t n = (256u << 10) + 3;
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    uint8_t *src = malloc(n);
    cr_assert(src);
    for (int i = 0; i < P; i++) {
        itest_fill(src, n, 900 + (uint64_t)i);
        kvtc_key k = itest_key(SPACE + 4, (uint32_t)i);
        cr_assert_eq(kvtc_put(c, &k, src, n), 0, "%s", kvtc_last_error(c));
    }
    kvtc_disconnect(c);
    free(src);
    static const int rounds[] = {0, 1, 4, 16, 64, 0, 1, 4, 16, 64};
    uint8_t *buf[P];
    for (int i = 0; i < P; i++)
        cr_assert((buf[i] = malloc(n)));
    for (size_t r = 0; r < sizeof rounds / sizeof rounds[0]; r++) {
        c = connect_rails(&d, KVTC_RAILS_THREADS);
        kvtc_get_item g[P];
        struct itest_done dn[P];
        memset(dn, 0, sizeof dn);
        for (int i = 0; i < P; i++) {
            memset(buf[i], 0xa5, n);
            g[i] = (kvtc_get_item){.key = itest_key(SPACE + 4, (uint32_t)i), .buf = buf[i],
                                   .capacity = n};
            kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                                .cb = itest_done_cb,
                                .arg = &dn[i]};
            cr_assert_eq(kvtc_get_batch_async(c, &g[i], 1, &p), 0, "%s", kvtc_last_error(c));
        }
        if (r >= 5)
            usleep(50000);
        for (int k = 0; k < rounds[r]; k++)
            kvtc_progress(c);
        kvtc_disconnect(c);
        for (int i = 0; i < P; i++) {
            cr_expect_eq(dn[i].calls, 1, "round %zu get %d: %d callbacks", r, i, dn[i].calls);
            cr_expect(dn[i].status == 0 || dn[i].status == KVTC_ECANCELED ||
                          dn[i].status == KVTC_ECONN,
                      "round %zu get %d: %s", r, i, kvtc_strerror(dn[i].status));
            if (dn[i].status == 0)
                cr_expect(g[i].size == n && itest_check(buf[i], n, 900 + (uint64_t)i),
                          "round %zu get %d reported done with other bytes", r, i);
        }
    }
    for (int i = 0; i < P; i++)
        free(buf[i]);
    itest_daemon_stop(&d);
}

/* KVTC_RAIL_MIN moves the size from which requests take a rail (1 MiB by
 * default): 256 KiB puts and gets take one with it, none without. */
Test(it_rails, rail_min_moves_the_line, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    size_t n = (256u << 10) + 3;
    cr_assert_eq(setenv("KVTC_RAIL_MIN", "262144", 1), 0);
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    roundtrip(c, 600, n);
    kvtc_disconnect(c);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_requests_total"), 2,
                 "a 256 KiB put and get with KVTC_RAIL_MIN=262144");
    cr_assert_eq(unsetenv("KVTC_RAIL_MIN"), 0);
    c = connect_rails(&d, KVTC_RAILS_THREADS);
    roundtrip(c, 601, n);
    kvtc_disconnect(c);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_requests_total"), 2,
                 "256 KiB requests took a rail by default");
    itest_daemon_stop(&d);
}

/* Where the rails have threads, 256 KiB requests behind others in flight
 * take them too (a lone one keeps the first endpoint): their replies come
 * eagerly, and the rail thread that kept each copies it into its buffer.
 * Without threads they stay off the rails. */
Test(it_rails, pipelined_256k_take_rails_with_threads, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    enum { P = 12 };
    size_t n = (256u << 10) + 3;
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    roundtrip(c, 700, n);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_requests_total"), 0,
                 "a lone 256 KiB put or get took a rail");
    pipelined(c, 710, n, n, P);
    /* Each burst's first found nothing in flight. */
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_requests_total"), 2 * (P - 1),
                 "pipelined 256 KiB requests on rails");
    kvtc_disconnect(c);
    c = connect_rails(&d, KVTC_RAILS_NO_THREADS);
    pipelined(c, 730, n, n, P);
    kvtc_disconnect(c);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_requests_total"), 2 * (P - 1),
                 "256 KiB requests took rails without threads");
    itest_daemon_stop(&d);
}

/* The gets of session `sess` in trace file PREFIX.<pid>.<sess>.csv
 * (client/trace.c), and how many of them landed on a rail thread. */
static int trace_gets(const char *prefix, uint64_t sess, int *landed)
{
    char path[400], line[256];
    snprintf(path, sizeof path, "%s.%d.%" PRIu64 ".csv", prefix, (int)getpid(), sess);
    FILE *f = fopen(path, "r");
    cr_assert(f, "no trace at %s", path);
    cr_assert(fgets(line, sizeof line, f));
    int gets = 0;
    *landed = 0;
    uint64_t v[6];
    unsigned kind, local, land;
    while (fscanf(f, "%" SCNu64 ",%" SCNu64 ",%u,%u,%" SCNu64 ",%" SCNu64 ",%" SCNu64
                     ",%" SCNu64 ",%u",
                  &v[0], &v[1], &kind, &local, &v[2], &v[3], &v[4], &v[5], &land) == 9) {
        if (kind == 3u) { /* KVTC__OP_GET */
            gets++;
            *landed += land != 0;
        } else {
            cr_expect_eq(land, 0, "a %u landed", kind);
        }
    }
    fclose(f);
    unlink(path);
    return gets;
}

static uint64_t session_of(kvtc_conn *c)
{
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    return info.session_id;
}

/* A burst of P single-chunk gets of chunks stored under base + i: every
 * third a hit into a buffer that fits, the next a miss, the next a hit
 * into a buffer one byte short. Statuses and bytes as ever. */
static void mixed_gets(kvtc_conn *c, uint32_t base, size_t n, int P)
{
    uint8_t *gb[P];
    kvtc_get_item gg[P];
    int st[P];
    memset(gg, 0, sizeof gg);
    for (int i = 0; i < P; i++) {
        cr_assert((gb[i] = malloc(n)));
        memset(gb[i], 0xa5, n);
        gg[i].key = itest_key(SPACE, i % 3 == 1 ? base + 1000 + i : base + i);
        gg[i].buf = gb[i];
        gg[i].capacity = i % 3 == 2 ? n - 1 : n;
        st[i] = 1;
        kvtc_op_params op = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK,
                             .cb = status_cb,
                             .arg = &st[i]};
        cr_assert_eq(kvtc_get_batch_async(c, &gg[i], 1, &op), 0);
    }
    cr_assert_eq(kvtc_wait_all(c, 60000), 0);
    for (int i = 0; i < P; i++) {
        if (i % 3 == 0) {
            cr_expect_eq(gg[i].status, 0, "get %d: %s", i, kvtc_strerror(gg[i].status));
            cr_expect_eq(gg[i].size, n);
            cr_expect(itest_check(gb[i], n, base + i), "get %d came back different", i);
        } else if (i % 3 == 1) {
            cr_expect_eq(gg[i].status, KVTC_ENOENT, "miss %d: %s", i, kvtc_strerror(gg[i].status));
        } else {
            cr_expect_eq(gg[i].status, KVTC_ENOSPC, "short %d: %s", i, kvtc_strerror(gg[i].status));
            cr_expect_eq(gg[i].size, n, "short %d: size %zu", i, gg[i].size);
        }
        free(gb[i]);
    }
}

/* Landings (client/rail_threads.c): a single-chunk get on a rail with a
 * thread has its reply's bytes copied into its buffer by that thread's
 * reply handler. Every pipelined hit that fits lands so and comes back
 * exact; misses and buffers too small go the usual way with their
 * statuses; KVTC_RAIL_LAND=0 lands none. The trace tells which landed. */
Test(it_rails, gets_land_on_rail_threads, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    char dir[256], prefix[300];
    snprintf(dir, sizeof dir, "%s/kvtc-land-XXXXXX", kvtc_test_tmpdir());
    cr_assert(mkdtemp(dir));
    snprintf(prefix, sizeof prefix, "%s/t", dir);
    setenv("KVTC_TRACE", prefix, 1);
    enum { P = 12 };
    size_t n = (256u << 10) + 3;
    kvtc_conn *c = connect_rails(&d, KVTC_RAILS_THREADS);
    uint64_t sess = session_of(c);
    pipelined(c, 800, n, n, P);
    mixed_gets(c, 800, n, P);
    kvtc_disconnect(c);
    int landed = 0;
    cr_expect_eq(trace_gets(prefix, sess, &landed), 2 * P);
    /* Each burst's first found nothing in flight and kept the first
     * endpoint; of the mixed burst's others, the fitting hits (3, 6, 9). */
    cr_expect_eq(landed, (P - 1) + 3, "gets landed: %d", landed);

    setenv("KVTC_RAIL_LAND", "0", 1);
    c = connect_rails(&d, KVTC_RAILS_THREADS);
    unsetenv("KVTC_RAIL_LAND");
    sess = session_of(c);
    pipelined(c, 840, n, n, P);
    mixed_gets(c, 840, n, P);
    kvtc_disconnect(c);
    cr_expect_eq(trace_gets(prefix, sess, &landed), 2 * P);
    cr_expect_eq(landed, 0, "KVTC_RAIL_LAND=0, yet %d landed", landed);
    unsetenv("KVTC_TRACE");
    rmdir(dir);
    itest_daemon_stop(&d);
}

/* A client that says no, and a daemon with none: the first endpoint
 * carries everything, as before 1.4. */
Test(it_rails, off_on_either_side, .timeout = 120)
{
    struct itest_daemon d, plain;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, with_rails);
    kvtc_conn *c = connect_ucx(&d, KVTC_RAILS_OFF);
    cr_expect_eq(rails_of(c), 0);
    roundtrip(c, 300, 4u << 20);
    kvtc_disconnect(c);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_rail_binds_total"), 0);
    itest_daemon_stop(&d);

    const char *none[] = {"--rails", "0", NULL}; /* auto gives some on >= 8 CPUs */
    itest_daemon_start(&plain, "256M", 0, none);
    c = connect_ucx(&plain, KVTC_RAILS_AUTO);
    cr_expect_eq(rails_of(c), 0);
    roundtrip(c, 301, 4u << 20);
    kvtc_disconnect(c);
    cr_expect_eq(itest_daemon_metric(&plain, "kvtc_rails"), 0);
    itest_daemon_stop(&plain);
}

static char tell_rails(const kvtc_server_info *info)
{
    return info->rails == 2 ? 'r' : 'n';
}

/* A client putting 32 MiB chunks over the rails (with threads) is killed. */
Test(it_rails, killed_client_frees_session, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "512M", 0, with_rails);
    struct itest_putter pt;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_LOCAL | KVTC_CONN_PARAM_FIELD_RAILS,
                          .local = KVTC_LOCAL_OFF,
                          .rails = KVTC_RAILS_THREADS};
    char said = itest_putter_start(&pt, &d, &p, 32u << 20, SPACE + 1, tell_rails);
    cr_expect_eq(said, 'r', "the putter's rails not bound");
    kvtc_conn *c = itest_connect(&d);
    itest_putter_go(&pt);
    itest_putter_kill(&pt, 300);
    cr_expect(itest_wait_stats(c, itest_one_session, NULL, 20000),
              "the killed client's session is still open: %s", itest_log_tail(&d));
    /* Nothing it had in flight is left behind. */
    double ops = -1;
    for (int i = 0; i < 200 && (ops = itest_daemon_metric(&d, "kvtc_inflight_ops")) != 0; i++)
        usleep(50 * 1000);
    cr_expect_eq(ops, 0, "transfers still in flight: %s", itest_log_tail(&d));
    kvtc_disconnect(c);
    c = connect_ucx(&d, KVTC_RAILS_AUTO); /* still serving, rails too */
    cr_expect_eq(rails_of(c), 2);
    roundtrip(c, 500, 8u << 20);
    kvtc_disconnect(c);
    cr_assert(itest_daemon_alive(&d));
    itest_daemon_stop(&d);
}
