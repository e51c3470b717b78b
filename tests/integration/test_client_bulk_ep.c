/* The bulk endpoint (kvtc_bulk_mode, docs/protocol.md "Bulk endpoint"):
 * bound when asked for, bytes exact over it, a clean fallback when the
 * daemon offers none, and a client killed while using it frees its
 * session. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPACE 0x42554c00u

static kvtc_conn *connect_bulk(const struct itest_daemon *d, uint32_t mode)
{
    kvtc_conn *c = NULL;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_BULK |
                                        KVTC_CONN_PARAM_FIELD_CONNECT_TIMEOUT |
                                        KVTC_CONN_PARAM_FIELD_OP_TIMEOUT,
                          .bulk = mode,
                          .connect_timeout_ms = 10000,
                          .op_timeout_ms = 30000};
    int rc = kvtc_connect(d->addr, &p, &c);
    cr_assert_eq(rc, 0, "connect: %s (%s)", kvtc_strerror(rc), kvtc_last_error(NULL));
    return c;
}

static void roundtrip(kvtc_conn *c, uint32_t base)
{
    static const size_t sizes[] = {1000, 256u << 10, (16u << 20) + 5};
    for (uint32_t i = 0; i < 3; i++) {
        size_t n = sizes[i];
        uint8_t *src = malloc(n), *dst = malloc(n);
        cr_assert(src && dst);
        itest_fill(src, n, base + i);
        kvtc_key k = itest_key(SPACE, base + i);
        cr_assert_eq(kvtc_put(c, &k, src, n), 0, "put %zu: %s", n, kvtc_last_error(c));
        size_t got = 0;
        cr_assert_eq(kvtc_get(c, &k, dst, n, &got), 0, "get %zu: %s", n, kvtc_last_error(c));
        cr_assert_eq(got, n);
        cr_assert(itest_check(dst, n, base + i), "%zu B came back different", n);
        free(src);
        free(dst);
    }
}

Test(client_bulk_ep, bound_and_exact, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_bulk(&d, KVTC_BULK_AUTO);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_expect_eq(info.bulk_endpoint, 1, "bulk endpoint not bound: %s", itest_log_tail(&d));
    roundtrip(c, 0);
    /* A plain client beside it still works, and the daemon counts two
     * sessions (a bound endpoint is not a session of its own). */
    kvtc_conn *plain = connect_bulk(&d, KVTC_BULK_OFF);
    cr_assert_eq(kvtc_server_info_get(plain, &info), 0);
    cr_expect_eq(info.bulk_endpoint, 0);
    roundtrip(plain, 10);
    kvtc_stats s = itest_stats(plain);
    cr_expect_eq(s.sessions, 2, "sessions %lu", (unsigned long)s.sessions);
    kvtc_disconnect(plain);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(client_bulk_ep, daemon_without_it_falls_back, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    const char *extra[] = {"--bulk-endpoint", "off", NULL};
    itest_daemon_start(&d, "256M", 0, extra);
    kvtc_conn *c = connect_bulk(&d, KVTC_BULK_ALWAYS);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_expect_eq(info.bulk_endpoint, 0);
    roundtrip(c, 20);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

static char tell_bulk(const kvtc_server_info *info)
{
    return info->bulk_endpoint ? 's' : 'n';
}

/* A client putting 32 MiB chunks over its bulk endpoint is killed. */
Test(client_bulk_ep, killed_client_frees_session, .timeout = 90)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "512M", 0, NULL);
    struct itest_putter pt;
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_BULK, .bulk = KVTC_BULK_AUTO};
    char said = itest_putter_start(&pt, &d, &p, 32u << 20, SPACE + 1, tell_bulk);
    cr_expect_eq(said, 's', "child's bulk endpoint not bound");
    /* Connected before the kill, as a scheduler would be. */
    kvtc_conn *c = itest_connect(&d);
    itest_putter_go(&pt);
    itest_putter_kill(&pt, 300);
    cr_expect(itest_wait_stats(c, itest_one_session, NULL, 20000),
              "the killed client's session is still open: %s", itest_log_tail(&d));
    roundtrip(c, 30); /* still serving */
    kvtc_disconnect(c);
    cr_assert(itest_daemon_alive(&d));
    itest_daemon_stop(&d);
}
