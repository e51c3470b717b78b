/* Limits and metadata through libkvtc: chunks over the daemon's size
 * limit, expiry (put TTL and pin TTL), and layout metadata carried from put
 * to get. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SPACE 0x4c494d00u

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

Test(it_limits, chunk_over_max_chunk_bytes_is_refused, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_assert_eq(info.major, 1);
    cr_assert_gt(info.max_chunk_bytes, 0);
    cr_assert_leq(info.max_chunk_bytes, 64u << 20, "max chunk %lu over the whole store",
                  (unsigned long)info.max_chunk_bytes);
    size_t n = (size_t)info.max_chunk_bytes + 1;
    uint8_t *buf = malloc(n);
    itest_fill(buf, n, 1);
    kvtc_key k = itest_key(SPACE, 1);
    int rc = kvtc_put(c, &k, buf, n);
    cr_assert_eq(rc, KVTC_ENOSPC, "put of max_chunk_bytes + 1: %s", kvtc_strerror(rc));
    /* Exactly the limit is fine, and the connection still works. */
    rc = kvtc_put(c, &k, buf, n - 1);
    cr_assert_eq(rc, 0, "put of max_chunk_bytes: %s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, buf, n, &got), 0);
    cr_assert_eq(got, n - 1);
    cr_assert(itest_check(buf, got, 1));
    free(buf);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_limits, put_ttl_and_pin_ttl_expire, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "16M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    uint8_t buf[4096];
    itest_fill(buf, sizeof buf, 2);
    kvtc_put_item it = {.key = itest_key(SPACE, 2), .data = buf, .size = sizeof buf};
    kvtc_op_params ttl = {.field_mask = KVTC_OP_PARAM_FIELD_TTL, .ttl_ms = 300};
    cr_assert_eq(kvtc_put_batch(c, &it, 1, &ttl), 0);
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &it.key, buf, sizeof buf, &got), 0, "expired too early");
    sleep_ms(700);
    int rc = kvtc_get(c, &it.key, buf, sizeof buf, &got);
    cr_assert_eq(rc, KVTC_ENOENT, "a chunk with a 300 ms TTL still served after 700 ms: %s", kvtc_strerror(rc));

    /* A pin with a TTL protects only for that long: afterwards the chunk is
     * evictable like any other. */
    uint32_t cap = (uint32_t)(itest_stats(c).bytes_capacity >> 20);
    uint8_t *big = malloc(1u << 20);
    itest_fill(big, 1u << 20, 3);
    kvtc_key pk = itest_key(SPACE, 3);
    cr_assert_eq(kvtc_put(c, &pk, big, 1u << 20), 0);
    int st = 99;
    kvtc_op_params pttl = {.field_mask = KVTC_OP_PARAM_FIELD_TTL, .ttl_ms = 300};
    cr_assert_eq(kvtc_pin(c, &pk, 1, &pttl, &st), 0);
    cr_assert_eq(st, 0);
    sleep_ms(700);
    for (uint32_t i = 0; i < cap + 2; i++) {
        kvtc_key k = itest_key(SPACE + 1, i);
        cr_assert_eq(kvtc_put(c, &k, big, 1u << 20), 0, "put %u: %s", i, kvtc_last_error(c));
    }
    size_t hits = 9;
    cr_assert_eq(kvtc_lookup(c, &pk, 1, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, 0, "the pin should have lapsed after 300 ms and the chunk been evicted");
    free(big);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_limits, layout_metadata_round_trips, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, "64M", 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    kvtc_layout lay = {.layers = 4, .kv_heads = 2, .head_dim = 64, .dtype = KVTC_DTYPE_BF16,
                       .chunk_tokens = 16, .rope_style = KVTC_ROPE_HALF_SPLIT,
                       .rope_theta = 10000.0f, .rope_factor = 1.0f};
    size_t n = kvtc_chunk_bytes(&lay, 16);
    cr_assert_eq(n, 4u * 2 * 16 * 2 * 64 * 2);
    uint8_t *buf = malloc(n), *out = malloc(n);
    itest_fill(buf, n, 4);
    kvtc_put_item it = {.field_mask = KVTC_PUT_FIELD_LAYOUT, .key = itest_key(SPACE, 4), .data = buf,
                        .size = n, .layout = &lay, .first_pos = 256, .n_tokens = 16};
    int rc = kvtc_put_batch(c, &it, 1, NULL);
    cr_assert_eq(rc, 0, "%s (%s)", kvtc_strerror(rc), kvtc_last_error(c));
    kvtc_get_item g = {.key = it.key, .buf = out, .capacity = n};
    cr_assert_eq(kvtc_get_batch(c, &g, 1, NULL), 0);
    cr_assert(itest_check(out, g.size, 4));
    cr_assert_eq(g.has_layout, 1);
    cr_assert_eq(g.layout.layers, 4);
    cr_assert_eq(g.layout.kv_heads, 2);
    cr_assert_eq(g.layout.head_dim, 64);
    cr_assert_eq(g.layout.dtype, KVTC_DTYPE_BF16);
    cr_assert_eq(g.layout.rope_style, KVTC_ROPE_HALF_SPLIT);
    cr_assert_eq(g.first_pos, 256);
    cr_assert_eq(g.n_tokens, 16);

    /* A size that does not match the layout and token count is refused. */
    kvtc_put_item bad = it;
    bad.key = itest_key(SPACE, 5);
    bad.size = n - 2;
    rc = kvtc_put_batch(c, &bad, 1, NULL);
    cr_assert_eq(rc, KVTC_EINVAL, "size %zu for a %zu-byte layout: %s", n - 2, n, kvtc_strerror(rc));
    /* So is a layout out of its sanity bounds. */
    kvtc_layout wild = lay;
    wild.layers = 100000;
    bad.size = n;
    bad.layout = &wild;
    rc = kvtc_put_batch(c, &bad, 1, NULL);
    cr_assert_eq(rc, KVTC_EINVAL, "layout with 100000 layers: %s", kvtc_strerror(rc));
    size_t hits = 9;
    cr_assert_eq(kvtc_lookup(c, &bad.key, 1, NULL, &hits, NULL), 0);
    cr_assert_eq(hits, 0);
    free(buf);
    free(out);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}
