/* Chunk buffers shared with kvtcd (kvtc_mem_alloc, docs/protocol.md "Local
 * path", region messages): puts from them and gets into them are plain
 * copies in a real kvtcd, byte-exact; freeing a block and getting a new
 * one (usually at the same address) never lets a get land in the old one;
 * a batch mixing shared and ordinary buffers still works (the ordinary
 * path); a disconnect unmaps everything in kvtcd. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x53484d00u

static kvtc_conn *connect_local(const struct itest_daemon *d)
{
    kvtc_conn *c = itest_connect(d);
    kvtc_server_info info;
    cr_assert_eq(kvtc_server_info_get(c, &info), 0);
    cr_assert_eq(info.local_path, 1, "local path not bound: %s", itest_log_tail(d));
    return c;
}

static void *shared_block(kvtc_conn *c, size_t len)
{
    void *p = NULL;
    cr_assert_eq(kvtc_mem_alloc(c, len, &p), 0);
    cr_assert(p);
    cr_assert_eq(kvtc_mem_shared(c, p), 1, "kvtcd did not map the block (KVTC_LOCAL_DEBUG=1 says why)");
    return p;
}

Test(it_local_shared, round_trips_through_shared_blocks, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_local(&d);
    static const size_t sizes[] = {1024, (256u << 10) + 3, 4u << 20, 16u << 20};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    uint8_t *src[NS], *dst[NS];
    kvtc_get_item it[NS];
    for (uint32_t i = 0; i < NS; i++) {
        src[i] = shared_block(c, sizes[i]);
        dst[i] = shared_block(c, sizes[i]);
        itest_fill(src[i], sizes[i], 100 + i);
        kvtc_key k = itest_key(SPACE, i);
        cr_assert_eq(kvtc_put(c, &k, src[i], sizes[i]), 0, "put: %s", kvtc_last_error(c));
        size_t got = 0;
        cr_assert_eq(kvtc_get(c, &k, dst[i], sizes[i], &got), 0, "get %zu: %s", sizes[i],
                     kvtc_last_error(c));
        cr_assert_eq(got, sizes[i]);
        cr_assert(itest_check(dst[i], sizes[i], 100 + i), "%zu B came back different", sizes[i]);
        memset(dst[i], 0, sizes[i]);
        it[i] = (kvtc_get_item){.key = k, .buf = dst[i], .capacity = sizes[i]};
    }
    cr_assert_eq(itest_daemon_metric(&d, "kvtc_local_regions"), 2.0 * NS);
    /* A batch whose destinations are separate blocks: the ordinary copy,
     * still right. */
    cr_assert_eq(kvtc_get_batch(c, it, NS, NULL), 0, "batch: %s", kvtc_last_error(c));
    for (uint32_t i = 0; i < NS; i++) {
        cr_assert_eq(it[i].status, 0);
        cr_assert(itest_check(dst[i], sizes[i], 100 + i));
    }
    /* Puts and gets of >= 256 KiB went the shared way (small ones travel
     * as UCX payloads). */
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_copies_shared_total"), 2.0 * (NS - 1));
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_failures_total"), 0);
    cr_expect_eq(itest_daemon_metric(&d, "kvtc_local_regions_refused_total"), 0);
    for (uint32_t i = 0; i < NS; i++) {
        cr_assert_eq(kvtc_mem_free(c, src[i]), 0);
        cr_assert_eq(kvtc_mem_free(c, dst[i]), 0);
    }
    cr_assert_eq(itest_daemon_metric(&d, "kvtc_local_regions"), 0);
    cr_assert_eq(kvtc_mem_free(c, src[0]), KVTC_EINVAL, "a block freed twice");
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* Free a block, take a new one (the kernel tends to give the same
 * address), get into it: the bytes must be in the new block, every time. */
Test(it_local_shared, reused_addresses_get_the_new_block, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_local(&d);
    const size_t len = 1u << 20;
    uint8_t *src = malloc(len);
    cr_assert(src);
    kvtc_key k = itest_key(SPACE, 50);
    itest_fill(src, len, 50);
    cr_assert_eq(kvtc_put(c, &k, src, len), 0, "put: %s", kvtc_last_error(c));
    uint8_t *prev = NULL;
    int same = 0;
    for (int round = 0; round < 20; round++) {
        uint8_t *b = shared_block(c, len);
        same += b == prev;
        size_t got = 0;
        cr_assert_eq(kvtc_get(c, &k, b, len, &got), 0, "get: %s", kvtc_last_error(c));
        cr_assert_eq(got, len);
        cr_assert(itest_check(b, len, 50), "round %d: the get did not land in the new block", round);
        prev = b;
        cr_assert_eq(kvtc_mem_free(c, b), 0);
    }
    cr_log_info("a new block at the freed one's address in %d of 19 rounds", same);
    cr_expect_geq(itest_daemon_metric(&d, "kvtc_local_copies_shared_total"), 20);
    kvtc_disconnect(c);
    free(src);
    itest_daemon_stop(&d);
}

/* A client that goes away with blocks mapped: kvtcd unmaps them all. */
static int regions_gone(const kvtc_stats *s, void *arg)
{
    (void)s;
    return itest_daemon_metric(arg, "kvtc_local_regions") == 0;
}

Test(it_local_shared, disconnect_unmaps_every_block, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    kvtc_conn *c = connect_local(&d);
    for (int i = 0; i < 8; i++)
        (void)shared_block(c, (size_t)(i + 1) << 16);
    cr_assert_eq(itest_daemon_metric(&d, "kvtc_local_regions"), 8);
    kvtc_disconnect(c);
    kvtc_conn *watch = itest_connect(&d);
    cr_assert(itest_wait_stats(watch, regions_gone, &d, 10000),
                 "kvtcd kept the blocks of a gone client mapped");
    kvtc_disconnect(watch);
    itest_daemon_stop(&d);
}

/* Without the local path the blocks are ordinary memory: same results. */
Test(it_local_shared, blocks_work_without_the_local_path, .timeout = 120)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_TCP);
    itest_daemon_start(&d, "256M", 0, NULL);
    setenv("KVTC_LOCAL", "off", 1);
    kvtc_conn *c = itest_connect(&d);
    unsetenv("KVTC_LOCAL");
    const size_t len = (512u << 10) + 7;
    void *b = NULL;
    cr_assert_eq(kvtc_mem_alloc(c, len, &b), 0);
    cr_assert_eq(kvtc_mem_shared(c, b), 0);
    itest_fill(b, len, 7);
    kvtc_key k = itest_key(SPACE, 77);
    cr_assert_eq(kvtc_put(c, &k, b, len), 0, "put: %s", kvtc_last_error(c));
    memset(b, 0, len);
    size_t got = 0;
    cr_assert_eq(kvtc_get(c, &k, b, len, &got), 0, "get: %s", kvtc_last_error(c));
    cr_assert(got == len && itest_check(b, len, 7));
    cr_assert_eq(itest_daemon_metric(&d, "kvtc_local_regions"), 0);
    kvtc_disconnect(c); /* frees b */
    itest_daemon_stop(&d);
}
