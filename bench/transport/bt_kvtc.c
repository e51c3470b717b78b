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
    kvtc_conn *c = NULL;
    int rc = kvtc_connect(target, &p, &c);
    if (rc) {
        fprintf(stderr, "kvtc: connect %s: %s\n", target, kvtc_strerror(rc));
        return rc;
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

static void kvtc_bt_close(void *conn)
{
    kvtc_disconnect(conn);
}

static const struct bt_backend backend = {
    .name = "kvtc",
    .connect = kvtc_bt_connect,
    .put = kvtc_bt_put,
    .get = kvtc_bt_get,
    .del = kvtc_bt_del,
    .close = kvtc_bt_close,
};

const struct bt_backend *const bt_kvtc_backend = &backend;
