/* Capacity of the tiers under a small --host-mem and --disk-size:
 * - no tier's used bytes ever exceed its capacity (checked on /metrics
 *   after every put, pushing several times the total through);
 * - eviction from the last tier is prefix-aware: a chain a->b->c put first
 *   goes c, b, a (leaf first, although a and b are older), then the leaves
 *   in LRU order;
 * - demotion (host copies dropped or moved down) and promotion (a disk hit
 *   copied back up) keep every byte: more than host RAM holds comes back
 *   exact, and the metrics show both movements. */
#include "test_it_tiers.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x43415000u
#define MiB (1u << 20)
#define CHUNK MiB

/* Put with retries while the daemon pushes back (KVTC_EFULL): freeing disk
 * space may wait for a segment to be unlinked or compacted. */
static int put_retry(kvtc_conn *c, uint32_t space, uint32_t i, size_t size, const kvtc_key *parent,
                     int *pushbacks)
{
    long end = tiers_now_ms() + 10000;
    for (;;) {
        int rc = tiers_put(c, space, i, size, parent);
        if (rc != KVTC_EFULL || tiers_now_ms() > end)
            return rc;
        ++*pushbacks;
        tiers_sleep_ms(20);
    }
}

struct usage {
    double host_used, host_cap, disk_used, disk_cap;
};

static struct usage usage_now(const struct itest_daemon *d)
{
    char *body = itest_metrics_body(d);
    struct usage u;
    cr_assert(!itest_metric(body, TIERS_SERIES(TIERS_M_USED, "host"), &u.host_used) &&
                  !itest_metric(body, TIERS_SERIES(TIERS_M_CAPACITY, "host"), &u.host_cap) &&
                  !itest_metric(body, TIERS_SERIES(TIERS_M_USED, "disk"), &u.disk_used) &&
                  !itest_metric(body, TIERS_SERIES(TIERS_M_CAPACITY, "disk"), &u.disk_cap),
              "tier used/capacity metrics missing:\n%s", body);
    free(body);
    return u;
}

static void check_limits(const struct itest_daemon *d, const char *when, uint32_t i)
{
    struct usage u = usage_now(d);
    cr_assert_leq(u.host_used, u.host_cap, "%s, put %u: host used %.0f > capacity %.0f", when, i,
                  u.host_used, u.host_cap);
    cr_assert_leq(u.disk_used, u.disk_cap, "%s, put %u: disk used %.0f > capacity %.0f", when, i,
                  u.disk_used, u.disk_cap);
}

static void limits(const char *durability, uint32_t space)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = durability, .host_mem = "16M", .disk_size = "32M"};
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    struct usage u0 = usage_now(&d);
    cr_assert_leq(u0.host_cap, 16.0 * MiB, "host capacity %.0f over --host-mem 16M", u0.host_cap);
    cr_assert_leq(u0.disk_cap, 32.0 * MiB, "disk capacity %.0f over --disk-size 32M", u0.disk_cap);
    cr_assert_gt(u0.disk_cap, 0);
    /* Three times host + disk, in odd sizes around 1 MiB. */
    uint32_t n = (uint32_t)(3 * (u0.host_cap + u0.disk_cap) / CHUNK);
    int pushbacks = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t size = CHUNK - 4096 + (i * 4099u) % 8192;
        int rc = put_retry(c, space, i, size, NULL, &pushbacks);
        cr_assert_eq(rc, 0, "%s put %u: %s (%s)\n%s", durability, i, kvtc_strerror(rc),
                     kvtc_last_error(c), itest_log_tail(&d));
        check_limits(&d, durability, i);
    }
    if (pushbacks)
        cr_log_info("%s: %d FULL answers while the disk made room", durability, pushbacks);
    cr_assert_gt(tiers_metric_sum(&d, TIERS_M_EVICTIONS), 0, "%u MiB through 48 MiB of tiers, no eviction", n);
    /* The newest chunk is there. Asked before reading the others back:
     * that makes it the least recently used, and in cache mode the
     * write-behind may still be evicting from the disk (it did so on the
     * H200 host, whose tiers include a GPU). */
    cr_assert(tiers_present(c, space, n - 1), "the newest chunk was evicted");
    /* What is still there is exact. */
    uint32_t present = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t size = CHUNK - 4096 + (i * 4099u) % 8192;
        present += (uint32_t)tiers_get(c, space, i, size, NULL);
        check_limits(&d, "reading back", i);
    }
    cr_assert_geq(present, (uint32_t)(u0.disk_cap / CHUNK / 2),
                  "only %u chunks left of %u in %.0f B of disk", present, n, u0.disk_cap);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_tiers_capacity, limits_never_exceeded_durable, .timeout = 180)
{
    limits("durable", SPACE);
}

Test(it_tiers_capacity, limits_never_exceeded_cache, .timeout = 180)
{
    limits("cache", SPACE + 1);
}

/* The order in which chunks must leave: chain c, b, a (each a leaf once its
 * child is gone), then leaves in put order. ids: 0=a 1=b 2=c, 3.. leaves. */
Test(it_tiers_capacity, prefix_aware_eviction_order, .timeout = 180)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = "durable", .host_mem = "16M", .disk_size = "32M"};
    const uint32_t space = SPACE + 2;
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    int pushbacks = 0;
    kvtc_key ka = tiers_key(space, 0), kb = tiers_key(space, 1);
    cr_assert_eq(put_retry(c, space, 0, CHUNK, NULL, &pushbacks), 0);
    cr_assert_eq(put_retry(c, space, 1, CHUNK, &ka, &pushbacks), 0);
    cr_assert_eq(put_retry(c, space, 2, CHUNK, &kb, &pushbacks), 0);
    uint32_t order[256] = {2, 1, 0}, n_order = 3;
    uint32_t max_leaves = 200;
    uint32_t gone = 0;
    for (uint32_t l = 3; l < 3 + max_leaves && gone < 8; l++) {
        int rc = put_retry(c, space, l, CHUNK, NULL, &pushbacks);
        cr_assert_eq(rc, 0, "leaf %u: %s (%s)", l, kvtc_strerror(rc), kvtc_last_error(c));
        order[n_order++] = l;
        /* What has gone must be a prefix of the order. */
        gone = 0;
        while (gone < n_order && !tiers_present(c, space, order[gone]))
            gone++;
        for (uint32_t j = gone; j < n_order; j++)
            cr_assert(tiers_present(c, space, order[j]),
                      "after leaf %u: %u chunks of the eviction order [c b a l3 l4 ...] are gone, "
                      "but id %u (position %u) is gone too (ids: 0=a 1=b 2=c)",
                      l, gone, order[j], j);
    }
    cr_assert_geq(gone, 4, "the disk never filled: %u evicted", gone);
    cr_log_info("prefix order: %u of %u chunks evicted, in order", gone, n_order);
    /* The survivors are exact. */
    for (uint32_t j = gone; j < n_order; j++)
        cr_assert(tiers_get(c, space, order[j], CHUNK, NULL), "id %u lost", order[j]);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

/* More than host RAM holds, read back twice. Cache mode is paced (the
 * write-behind drains every few chunks) so that host pressure always finds
 * clean copies to drop: without pacing a fast writer may outrun the disk
 * and the daemon may evict dirty chunks, which cache mode allows. */
static void promotion_demotion(const char *durability, uint32_t space)
{
    struct itest_daemon d;
    struct tiers_opts o = {.durability = durability, .host_mem = "16M", .disk_size = "256M"};
    int cache = strcmp(durability, "cache") == 0;
    tiers_setup(ITEST_TLS_TCP);
    tiers_start(&d, &o);
    kvtc_conn *c = itest_connect(&d);
    struct usage u0 = usage_now(&d);
    /* Three times what host RAM holds (bytes, not chunks: sizes vary from
     * 1 B to 2 MiB); the disk holds it all. */
    uint32_t n = 0;
    double total = 0;
    while (total < 3 * u0.host_cap)
        total += (double)tiers_size(space, n++, 2 * CHUNK);
    int pushbacks = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = put_retry(c, space, i, tiers_size(space, i, 2 * CHUNK), NULL, &pushbacks);
        cr_assert_eq(rc, 0, "%s put %u: %s (%s)", durability, i, kvtc_strerror(rc), kvtc_last_error(c));
        check_limits(&d, "filling", i);
        if (cache && i % 4 == 3)
            cr_assert(tiers_wait_metric(&d, TIERS_M_DISK_DIRTY, 0, 1, 20000),
                      "write-behind queue not drained in 20 s\n%s", itest_log_tail(&d));
    }
    double demoted = tiers_metric_sum(&d, TIERS_M_DEMOTIONS);
    cr_assert_gt(demoted, 0, "%u chunks into %.0f B of host RAM, no demotion", n, u0.host_cap);
    cr_assert_eq(tiers_metric_sum(&d, TIERS_M_EVICTIONS), 0,
                 "evictions with a disk that holds everything (%s)", durability);
    /* Twice through, oldest first: the first pass promotes from disk what
     * host RAM dropped; the second finds it moved again. */
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < n; i++) {
            cr_assert(tiers_get(c, space, i, tiers_size(space, i, 2 * CHUNK), NULL),
                      "%s pass %d: chunk %u lost", durability, pass, i);
            check_limits(&d, "reading", i);
        }
    double promoted = tiers_metric_sum(&d, TIERS_M_PROMOTIONS);
    cr_assert_gt(promoted, 0, "gets of disk-only chunks, no promotion");
    cr_log_info("%s: %u chunks (%.1f MiB) through %.0f MiB of host RAM: %.0f demotions, %.0f promotions",
                durability, n, total / MiB, u0.host_cap / MiB, demoted, promoted);
    cr_assert_gt(tiers_metric(&d, TIERS_SERIES(TIERS_M_HITS, "disk")), 0);
    /* libkvtc's Stats says the same as /metrics (read before it: counters
     * only grow). */
    kvtc_stats st;
    cr_assert_eq(kvtc_stats_get(c, NULL, &st), 0, "%s", kvtc_last_error(c));
    const uint64_t tier_bits = KVTC_STATS_FIELD_GPU_BYTES_USED | KVTC_STATS_FIELD_GPU_BYTES_CAPACITY |
                               KVTC_STATS_FIELD_DISK_BYTES_USED | KVTC_STATS_FIELD_DISK_BYTES_CAPACITY |
                               KVTC_STATS_FIELD_DISK_LIVE_BYTES | KVTC_STATS_FIELD_DISK_DIRTY_CHUNKS |
                               KVTC_STATS_FIELD_PROMOTIONS | KVTC_STATS_FIELD_DEMOTIONS |
                               KVTC_STATS_FIELD_DURABLE;
    cr_assert_eq(st.field_mask & tier_bits, tier_bits, "field_mask %#llx",
                 (unsigned long long)st.field_mask);
    cr_assert_eq(!!(st.field_mask & KVTC_STATS_DURABLE), !cache, "durable flag (%s)", durability);
    cr_assert_eq(st.gpu_bytes_capacity, 0);
    cr_assert_eq(st.disk_bytes_capacity, 256u << 20);
    cr_assert_gt(st.disk_live_bytes, 0);
    cr_assert_geq(st.disk_bytes_used, st.disk_live_bytes);
    cr_assert_geq((double)st.promotions, promoted);
    cr_assert_geq((double)st.demotions, demoted);
    if (!cache)
        cr_assert_eq(st.disk_dirty_chunks, 0, "durable mode has no write-behind");
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_tiers_capacity, promotion_demotion_exact_durable, .timeout = 180)
{
    promotion_demotion("durable", SPACE + 3);
}

Test(it_tiers_capacity, promotion_demotion_exact_cache, .timeout = 180)
{
    promotion_demotion("cache", SPACE + 4);
}
