/* Capacity under a small --host-mem: least-recently-used unpinned chunks go
 * first, pinned chunks survive, and when everything is pinned a put gets
 * FULL (backpressure) instead of anything being dropped. */
#include "itest.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define SPACE 0x45564900u
#define CHUNK (1u << 20)
#define HOST_MEM "16M"

static uint8_t *chunk_buf(uint32_t i)
{
    uint8_t *b = malloc(CHUNK);
    cr_assert_not_null(b);
    itest_fill(b, CHUNK, 0xe000 + i);
    return b;
}

static void put_chunk(kvtc_conn *c, uint32_t i)
{
    uint8_t *b = chunk_buf(i);
    kvtc_key k = itest_key(SPACE, i);
    int rc = kvtc_put(c, &k, b, CHUNK);
    cr_assert_eq(rc, 0, "put %u: %s (%s)", i, kvtc_strerror(rc), kvtc_last_error(c));
    free(b);
}

/* 1 if chunk i is stored (and then byte-exact), 0 if a miss. */
static int has_chunk(kvtc_conn *c, uint32_t i)
{
    uint8_t *b = malloc(CHUNK);
    size_t got = 0;
    kvtc_key k = itest_key(SPACE, i);
    int rc = kvtc_get(c, &k, b, CHUNK, &got);
    cr_assert(rc == 0 || rc == KVTC_ENOENT, "get %u: %s", i, kvtc_strerror(rc));
    if (rc == 0)
        cr_assert(got == CHUNK && itest_check(b, CHUNK, 0xe000 + i), "chunk %u came back different", i);
    free(b);
    return rc == 0;
}

/* Presence through lookup: does not touch the LRU order the way a get does. */
static int present(kvtc_conn *c, uint32_t i)
{
    kvtc_key k = itest_key(SPACE, i);
    size_t hits = 0;
    cr_assert_eq(kvtc_lookup(c, &k, 1, NULL, &hits, NULL), 0);
    return hits == 1;
}

Test(it_eviction, lru_order_and_pins, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, HOST_MEM, 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    kvtc_stats s = itest_stats(c);
    cr_assert(s.field_mask & KVTC_STATS_FIELD_BYTES_CAPACITY);
    cr_assert_leq(s.bytes_capacity, 16u << 20, "capacity %lu over --host-mem " HOST_MEM,
                  (unsigned long)s.bytes_capacity);
    uint32_t cap = (uint32_t)(s.bytes_capacity / CHUNK);
    cr_assert_geq(cap, 4, "capacity %lu B holds < 4 chunks of 1 MiB", (unsigned long)s.bytes_capacity);

    /* Half full: nothing may be evicted yet. */
    uint32_t half = cap / 2;
    for (uint32_t i = 0; i < half; i++)
        put_chunk(c, i);
    cr_assert_eq(itest_stats(c).evictions, 0);
    /* A hit makes chunk 0 the most recently used. LRU order now:
     * 1, 2, ..., half-1, 0, then every later put. */
    cr_assert(has_chunk(c, 0));
    uint32_t order[64], n_order = 0;
    for (uint32_t i = 1; i < half; i++)
        order[n_order++] = i;
    order[n_order++] = 0;
    /* Overfill by a few chunks. */
    uint32_t total = cap + 3;
    for (uint32_t i = half; i < total; i++) {
        put_chunk(c, i);
        order[n_order++] = i;
    }
    s = itest_stats(c);
    cr_assert_geq(s.evictions, 3, "%u MiB into a %lu B store: %lu evictions", total,
                  (unsigned long)s.bytes_capacity, (unsigned long)s.evictions);
    cr_assert_leq(s.bytes_used, s.bytes_capacity);
    /* Exactly the first `evictions` chunks of the LRU order are gone. */
    uint64_t ev = s.evictions;
    for (uint32_t j = 0; j < n_order; j++) {
        int p = present(c, order[j]);
        if (j < ev)
            cr_assert(!p, "chunk %u (LRU position %u) survived, %lu evicted", order[j], j, (unsigned long)ev);
        else
            cr_assert(p, "chunk %u (LRU position %u) evicted, only %lu should go", order[j], j, (unsigned long)ev);
    }
    cr_assert(present(c, 0), "the refreshed chunk 0 was evicted before older ones");

    /* Pin the two least recently used survivors, then push 2x capacity through. */
    uint32_t pinned[2] = {order[ev], order[ev + 1]};
    for (int i = 0; i < 2; i++) {
        kvtc_key k = itest_key(SPACE, pinned[i]);
        int st = 99;
        cr_assert_eq(kvtc_pin(c, &k, 1, NULL, &st), 0);
        cr_assert_eq(st, 0);
    }
    for (uint32_t i = total; i < total + 2 * cap; i++)
        put_chunk(c, i);
    for (int i = 0; i < 2; i++)
        cr_assert(has_chunk(c, pinned[i]), "pinned chunk %u was evicted", pinned[i]);
    /* Older unpinned chunks did go. */
    cr_assert(!present(c, order[ev + 2]));
    cr_assert(present(c, total + 2 * cap - 1));
    /* A pinned chunk cannot be deleted; unpinned it can. */
    kvtc_key k0 = itest_key(SPACE, pinned[0]);
    int st = 0;
    cr_assert_eq(kvtc_delete(c, &k0, 1, NULL, &st), KVTC_EPERM);
    cr_assert_eq(st, KVTC_EPERM, "status of a pinned key's delete: %s", kvtc_strerror(st));
    cr_assert_eq(kvtc_unpin(c, &k0, 1, NULL, &st), 0);
    cr_assert_eq(kvtc_delete(c, &k0, 1, NULL, &st), 0);
    cr_assert(!present(c, pinned[0]));
    s = itest_stats(c);
    cr_assert_leq(s.bytes_used, s.bytes_capacity);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}

Test(it_eviction, full_when_everything_pinned, .timeout = 60)
{
    struct itest_daemon d;
    itest_setup(ITEST_TLS_SM);
    itest_daemon_start(&d, HOST_MEM, 0, NULL);
    kvtc_conn *c = itest_connect(&d);
    uint32_t cap = (uint32_t)(itest_stats(c).bytes_capacity / CHUNK);
    uint8_t *b = chunk_buf(0);

    /* Store and pin until the daemon pushes back. */
    uint32_t stored = 0;
    int rc = 0;
    for (uint32_t i = 0; i < 2 * cap + 2; i++) {
        kvtc_key k = itest_key(SPACE, i);
        itest_fill(b, CHUNK, 0xe000 + i);
        rc = kvtc_put(c, &k, b, CHUNK);
        if (rc)
            break;
        int st = 99;
        cr_assert_eq(kvtc_pin(c, &k, 1, NULL, &st), 0);
        stored++;
    }
    cr_assert_eq(rc, KVTC_EFULL, "put into an all-pinned store: %s, want KVTC_EFULL", kvtc_strerror(rc));
    cr_assert_geq(stored, cap - 1, "FULL after only %u of ~%u chunks", stored, cap);
    cr_assert_leq(stored, cap);
    cr_assert_neq(kvtc_last_error(c)[0], '\0', "FULL comes with a message");
    kvtc_stats s = itest_stats(c);
    cr_assert_geq(s.rejected_full, 1);
    cr_assert_eq(s.evictions, 0, "pinned chunks were evicted");
    cr_assert_eq(s.chunks, stored);
    /* Nothing acknowledged was dropped, and the daemon still serves. */
    for (uint32_t i = 0; i < stored; i++)
        cr_assert(has_chunk(c, i), "pinned chunk %u lost", i);
    /* FULL is backpressure, not a failed daemon: free one pin and retry. */
    kvtc_key k0 = itest_key(SPACE, 0);
    int st = 0;
    cr_assert_eq(kvtc_unpin(c, &k0, 1, NULL, &st), 0);
    kvtc_key kn = itest_key(SPACE, stored);
    itest_fill(b, CHUNK, 0xe000 + stored);
    rc = kvtc_put(c, &kn, b, CHUNK);
    cr_assert_eq(rc, 0, "put after an unpin: %s", kvtc_strerror(rc));
    cr_assert(!present(c, 0), "the only unpinned chunk should have made room");
    cr_assert(has_chunk(c, stored));
    free(b);
    kvtc_disconnect(c);
    itest_daemon_stop(&d);
}
