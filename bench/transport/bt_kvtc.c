/* kvtcd through libkvtc's blocking API: the store under test. One
 * kvtc_conn per benchmark connection (a connection is single-threaded). */
#include "bt.h"

#include "kvtc.h"

#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_SPIN_US 200u /* libkvtc's default polling window */

/* KVTC_BENCH_SPIN_US: libkvtc's busy-poll window (its default when unset);
 * the windowed passes poll as long before sleeping on the fd. */
static uint64_t spin_us(void)
{
    const char *spin = getenv("KVTC_BENCH_SPIN_US");
    return spin && *spin ? strtoull(spin, NULL, 10) : WINDOW_SPIN_US;
}

static int kvtc_bt_connect(const char *target, void **conn)
{
    kvtc_conn_params p = {0};
    p.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT | KVTC_CONN_PARAM_FIELD_CLIENT_NAME;
    p.connect_timeout_ms = 20000;
    p.client_name = "kvtc_bench_transport";
    const char *spin = getenv("KVTC_BENCH_SPIN_US");
    if (spin && *spin) {
        p.field_mask |= KVTC_CONN_PARAM_FIELD_SPIN;
        p.spin_us = (uint32_t)spin_us();
    }
    /* KVTC_BENCH_LOCAL=on|off: the local path (protocol 1.3) required or
     * refused, so a row is never labelled with a path it did not take;
     * unset: libkvtc's default. */
    const char *local = getenv("KVTC_BENCH_LOCAL");
    int want_local = local && !strcmp(local, "on");
    if (local && !strcmp(local, "off")) {
        p.field_mask |= KVTC_CONN_PARAM_FIELD_LOCAL;
        p.local = KVTC_LOCAL_OFF;
    }
    kvtc_conn *c = NULL;
    int rc = kvtc_connect(target, &p, &c);
    if (rc) {
        fprintf(stderr, "kvtc: connect %s: %s\n", target, kvtc_strerror(rc));
        return rc;
    }
    kvtc_server_info info;
    if (want_local && (kvtc_server_info_get(c, &info) || !info.local_path)) {
        fprintf(stderr, "kvtc: local path asked for but not bound (set "
                        "KVTC_LOCAL_DEBUG=1 to see why)\n");
        kvtc_disconnect(c);
        return KVTC_ENOTSUP;
    }
    *conn = c;
    return 0;
}

static int kvtc_bt_put(void *conn, const uint8_t key[BT_KEY_LEN], const void *buf, size_t len)
{
    kvtc_key k;
    memcpy(k.bytes, key, BT_KEY_LEN);
    int rc = kvtc_put(conn, &k, buf, len);
    if (rc)
        fprintf(stderr, "kvtc: put: %s\n", kvtc_last_error(conn));
    return rc;
}

static int kvtc_bt_get(void *conn, const uint8_t key[BT_KEY_LEN], void *buf, size_t len)
{
    kvtc_key k;
    size_t got = 0;
    memcpy(k.bytes, key, BT_KEY_LEN);
    int rc = kvtc_get(conn, &k, buf, len, &got);
    if (rc)
        fprintf(stderr, "kvtc: get: %s\n", kvtc_last_error(conn));
    else if (got != len)
        rc = KVTC_ECORRUPT;
    return rc;
}

static int kvtc_bt_del(void *conn, const uint8_t key[BT_KEY_LEN])
{
    kvtc_key k;
    memcpy(k.bytes, key, BT_KEY_LEN);
    return kvtc_delete(conn, &k, 1, NULL, NULL);
}

#define MAX_WINDOW 64
static void wait_fd(kvtc_conn *c)
{
    int fd;
    if (kvtc_get_fd(c, &fd) == 0) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        (void)poll(&p, 1, 10);
    }
}

struct win_slot {
    struct win_state *w;
    size_t i;     /* the operation this slot serves */
    int busy, rc;
    kvtc_put_item pi;
    kvtc_get_item gi;
};

struct win_state {
    const struct bt_window *w;
    struct win_slot slot[MAX_WINDOW];
};

static void win_done(int status, void *arg)
{
    struct win_slot *s = arg;
    s->busy = 0;
    s->rc = status;
}

/* Start operation i in slot j (the asynchronous API). */
static int win_start(kvtc_conn *c, struct win_state *st, size_t i, size_t j)
{
    const struct bt_window *w = st->w;
    struct win_slot *s = &st->slot[j];
    kvtc_key k;
    w->next(w->arg, i, j, k.bytes);
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = win_done, .arg = s};
    s->i = i;
    s->busy = 1;
    s->rc = 0;
    int rc;
    if (w->put) {
        s->pi = (kvtc_put_item){.key = k, .data = w->bufs[j], .size = w->len};
        rc = kvtc_put_batch_async(c, &s->pi, 1, &p);
    } else {
        s->gi = (kvtc_get_item){.key = k, .buf = w->bufs[j], .capacity = w->len};
        rc = kvtc_get_batch_async(c, &s->gi, 1, &p);
    }
    if (rc)
        s->busy = 0;
    return rc;
}

/* At most w->depth single-chunk requests in flight on one connection, a
 * new one submitted from the completion of the last. */
static int kvtc_bt_window(void *conn, const struct bt_window *w)
{
    struct win_state st = {.w = w};
    size_t depth = w->depth < w->n ? w->depth : w->n, next = 0, busy = 0;
    int rc = 0;
    if (depth > MAX_WINDOW)
        return KVTC_EINVAL;
    for (size_t j = 0; j < depth && !rc; j++, next++, busy++)
        rc = win_start(conn, &st, next, j);
    uint64_t idle_since = bt_now_ns(), spin_ns = spin_us() * 1000u;
    while (busy && !rc) {
        int got = kvtc_progress(conn);
        if (got < 0) {
            rc = got;
            break;
        }
        /* Like libkvtc's blocking calls: poll a while, yielding the CPU
         * to whatever the kernel woke on it (the daemon's thread, on
         * loopback), then sleep on the fd. */
        if (got > 0)
            idle_since = bt_now_ns();
        else if (bt_now_ns() - idle_since > spin_ns && kvtc_arm(conn) == 0)
            wait_fd(conn);
        else
            sched_yield();
        for (size_t j = 0; j < depth && !rc; j++) {
            struct win_slot *s = &st.slot[j];
            if (s->busy || s->i == SIZE_MAX)
                continue;
            if ((rc = s->rc) == 0 && !w->put && s->gi.size != w->len)
                rc = KVTC_ECORRUPT;
            if (rc)
                break;
            w->done(w->arg, s->i, j);
            s->i = SIZE_MAX;
            busy--;
            if (next < w->n) {
                rc = win_start(conn, &st, next++, j);
                busy += rc == 0;
            }
        }
    }
    /* Started operations must finish before their items go out of scope. */
    int wrc = kvtc_wait_all(conn, -1);
    if (rc || (rc = wrc))
        fprintf(stderr, "kvtc: pipelined %s: %s (%s)\n", w->put ? "put" : "get", kvtc_strerror(rc),
                kvtc_last_error(conn));
    return rc;
}

static void kvtc_bt_close(void *conn)
{
    kvtc_disconnect(conn);
}

/* KVTC_BENCH_SHM=on: value buffers shared with kvtcd (kvtc_mem_alloc), and
 * a connection whose daemon did not take them fails rather than measure
 * the ordinary path under this label. */
static int kvtc_bt_alloc(void *conn, size_t len, void **out)
{
    const char *e = getenv("KVTC_BENCH_SHM");
    if (!(e && !strcmp(e, "on"))) {
        *out = malloc(len);
        return *out ? 0 : KVTC_ENOMEM;
    }
    int rc = kvtc_mem_alloc(conn, len, out);
    if (!rc && !kvtc_mem_shared(conn, *out)) {
        fprintf(stderr, "kvtc: buffer not shared with kvtcd (KVTC_LOCAL_DEBUG=1 says why)\n");
        kvtc_mem_free(conn, *out);
        *out = NULL;
        rc = KVTC_ENOTSUP;
    }
    return rc;
}

static void kvtc_bt_release(void *conn, void *buf)
{
    const char *e = getenv("KVTC_BENCH_SHM");
    if (e && !strcmp(e, "on"))
        kvtc_mem_free(conn, buf);
    else
        free(buf);
}

static const struct bt_backend backend = {
    .name = "kvtc",
    .connect = kvtc_bt_connect,
    .put = kvtc_bt_put,
    .get = kvtc_bt_get,
    .del = kvtc_bt_del,
    .close = kvtc_bt_close,
    .window = kvtc_bt_window,
    .alloc = kvtc_bt_alloc,
    .release = kvtc_bt_release,
};

const struct bt_backend *const bt_kvtc_backend = &backend;
