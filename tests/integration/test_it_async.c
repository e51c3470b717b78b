/* libkvtc's asynchronous API folded into a caller's own poll() loop over
 * real UCX: many operations in flight on one connection, every callback
 * exactly once, results right. */
#include "itest.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x41535900u
#define N 64

/* The documented loop: progress; arm; sleep on the fd only when armed. */
static void drive(kvtc_conn *c, int timeout_ms)
{
    int fd = -1;
    cr_assert_eq(kvtc_get_fd(c, &fd), 0);
    while (kvtc_inflight(c) > 0) {
        int n = kvtc_progress(c);
        cr_assert_geq(n, 0, "kvtc_progress: %s", kvtc_strerror(n));
        if (kvtc_inflight(c) == 0)
            break; /* nothing left to wake up for */
        int rc = kvtc_arm(c);
        if (rc == KVTC_EBUSY)
            continue;
        cr_assert_eq(rc, 0, "kvtc_arm: %s", kvtc_strerror(rc));
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, timeout_ms);
        cr_assert_geq(pr, 0);
        /* Armed with operations in flight: the fd must wake us. */
        cr_assert_gt(pr, 0, "fd silent for %d ms with %zu ops in flight (lost wake-up)", timeout_ms,
                     kvtc_inflight(c));
    }
}

static void many_in_flight(const char *tls)
{
    struct itest_daemon d;
    itest_setup(tls);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);

    kvtc_put_item put[N];
    kvtc_get_item get[N];
    struct itest_done ps[N], gs[N];
    memset(ps, 0, sizeof ps);
    memset(gs, 0, sizeof gs);
    uint8_t *src[N], *dst[N];
    for (int i = 0; i < N; i++) {
        size_t n = i % 8 == 0 ? (2u << 20) + (size_t)i : 1000 + 513 * (size_t)i;
        src[i] = malloc(n);
        dst[i] = malloc(n);
        itest_fill(src[i], n, 300 + (uint64_t)i);
        put[i] = (kvtc_put_item){.key = itest_key(SPACE, (uint32_t)i), .data = src[i], .size = n};
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &ps[i]};
        /* One request per chunk: N independent operations in flight. */
        int rc = kvtc_put_batch_async(c, &put[i], 1, &p);
        cr_assert_eq(rc, 0, "submit put %d: %s", i, kvtc_strerror(rc));
        cr_assert_eq(ps[i].calls, 0, "callback ran inside the submit call");
    }
    cr_assert_geq(kvtc_inflight(c), 1);
    drive(c, 10000);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(ps[i].calls, 1, "put %d: callback ran %d times", i, ps[i].calls);
        cr_assert_eq(ps[i].status, 0, "put %d: %s", i, kvtc_strerror(ps[i].status));
    }

    size_t hits = 0;
    struct itest_done ls = {0};
    kvtc_key chain[2] = {put[0].key, put[1].key};
    kvtc_op_params lp = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &ls};
    cr_assert_eq(kvtc_lookup_async(c, chain, 2, &lp, &hits, NULL), 0);
    for (int i = 0; i < N; i++) {
        get[i] = (kvtc_get_item){.key = put[i].key, .buf = dst[i], .capacity = put[i].size};
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &gs[i]};
        cr_assert_eq(kvtc_get_batch_async(c, &get[i], 1, &p), 0);
    }
    drive(c, 10000);
    cr_assert_eq(ls.calls, 1);
    cr_assert_eq(hits, 2);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(gs[i].calls, 1, "get %d: callback ran %d times", i, gs[i].calls);
        cr_assert_eq(gs[i].status, 0, "get %d: %s", i, kvtc_strerror(gs[i].status));
        cr_assert_eq(get[i].size, put[i].size);
        cr_assert(itest_check(dst[i], get[i].size, 300 + (uint64_t)i), "get %d came back different", i);
    }
    /* Disconnect with operations still in flight: each completes, canceled or done, exactly once. */
    struct itest_done late[4] = {{0}};
    for (int i = 0; i < 4; i++) {
        kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = itest_done_cb, .arg = &late[i]};
        get[i].status = 0;
        cr_assert_eq(kvtc_get_batch_async(c, &get[i], 1, &p), 0);
    }
    kvtc_disconnect(c);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(late[i].calls, 1, "in-flight op %d at disconnect: callback ran %d times", i, late[i].calls);
    for (int i = 0; i < N; i++) {
        free(src[i]);
        free(dst[i]);
    }
    itest_daemon_stop(&d);
}

Test(it_async, many_in_flight_driven_by_poll_shared_memory, .timeout = 60)
{
    many_in_flight(ITEST_TLS_SM);
}

Test(it_async, many_in_flight_driven_by_poll_tcp, .timeout = 60)
{
    many_in_flight(ITEST_TLS_TCP);
}
