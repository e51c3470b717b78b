/* kvtcd through libkvtc's blocking API: the store under test. One
 * kvtc_conn per benchmark connection (a connection is single-threaded). */
#include "bt.h"

#include "kvtc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int kvtc_bt_connect(const char *target, void **conn)
{
    kvtc_conn_params p = {0};
    p.field_mask = KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT | KVTC_CONN_PARAM_FIELD_CLIENT_NAME;
    p.connect_timeout_ms = 20000;
    p.client_name = "kvtc_bench_transport";
    /* KVTC_BENCH_SPIN_US: libkvtc's busy-poll window (its default when unset). */
    const char *spin = getenv("KVTC_BENCH_SPIN_US");
    if (spin && *spin) {
        p.field_mask |= KVTC_CONN_PARAM_FIELD_SPIN;
        p.spin_us = (uint32_t)strtoul(spin, NULL, 10);
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

#define MAX_MANY 64

struct many_state {
    int done;
    int rc;
};

static void many_done(int status, void *arg)
{
    struct many_state *m = arg;
    m->done++;
    if (status && !m->rc)
        m->rc = status;
}

/* n single-chunk requests in flight on one connection (the asynchronous
 * API), then wait for all of them. */
static int kvtc_bt_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                        size_t n, int put)
{
    kvtc_put_item pi[MAX_MANY];
    kvtc_get_item gi[MAX_MANY];
    struct many_state m = {0, 0};
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = many_done, .arg = &m};
    size_t submitted = 0;
    int rc = 0;
    if (n > MAX_MANY)
        return KVTC_EINVAL;
    for (size_t i = 0; i < n && !rc; i++) {
        if (put) {
            pi[i] = (kvtc_put_item){.data = bufs[i], .size = len};
            memcpy(pi[i].key.bytes, keys[i], BT_KEY_LEN);
            rc = kvtc_put_batch_async(conn, &pi[i], 1, &p);
        } else {
            gi[i] = (kvtc_get_item){.buf = bufs[i], .capacity = len};
            memcpy(gi[i].key.bytes, keys[i], BT_KEY_LEN);
            rc = kvtc_get_batch_async(conn, &gi[i], 1, &p);
        }
        if (!rc)
            submitted++;
    }
    /* Submitted operations must finish before their items go out of scope. */
    int wrc = kvtc_wait_all(conn, -1);
    if (rc || (rc = wrc) || (rc = m.rc)) {
        fprintf(stderr, "kvtc: pipelined %s: %s (%s)\n", put ? "put" : "get", kvtc_strerror(rc),
                kvtc_last_error(conn));
        return rc;
    }
    for (size_t i = 0; !put && i < n; i++)
        if (gi[i].size != len)
            return KVTC_ECORRUPT;
    return (size_t)m.done == submitted ? 0 : KVTC_EIO;
}

static int kvtc_bt_put_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                            size_t n)
{
    return kvtc_bt_many(conn, keys, bufs, len, n, 1);
}

static int kvtc_bt_get_many(void *conn, const uint8_t (*keys)[BT_KEY_LEN], void *const *bufs, size_t len,
                            size_t n)
{
    return kvtc_bt_many(conn, keys, bufs, len, n, 0);
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
    .put_many = kvtc_bt_put_many,
    .get_many = kvtc_bt_get_many,
    .alloc = kvtc_bt_alloc,
    .release = kvtc_bt_release,
};

const struct bt_backend *const bt_kvtc_backend = &backend;
