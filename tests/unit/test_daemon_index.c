/* kvtcd internals without a network: the host tier's capacity accounting,
 * the index (namespaces, replace, LRU eviction, pins and their TTLs, put
 * TTLs, chain lookup) and the configuration (sizes, addresses, INI files,
 * flags overriding the file, bad values). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "index.h"
#include "kvtc_errors.h"
#include "log.h"
#include "tier.h"
#include "wire.h"
#include "test_util.h"

static void make_key(uint8_t key[32], uint32_t i)
{
    memset(key, 0, 32);
    memcpy(key, &i, sizeof i);
    key[31] = 0xa5;
}

/* Put a chunk of size bytes (filled with byte i) under key i. */
static int put(kvtcd_index *ix, uint32_t ns, uint32_t i, size_t size,
               uint64_t now, uint64_t expire)
{
    kvtcd_blob *b = NULL;
    int rc = kvtcd_index_reserve(ix, size, now, &b);
    if (rc < 0)
        return rc;
    memset(b->data, (int)(i & 0xff), size);
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = ns;
    make_key(t.key, i);
    t.size = size;
    t.checksum = kvtc_wire_checksum(b->data, size);
    t.expire_ms = expire;
    rc = kvtcd_index_insert(ix, &t, b, 0, now, NULL);
    kvtcd_blob_unref(b); /* the entry holds its own reference */
    return rc;
}

/* As put, with key parent (a stored or absent chunk) as the parent link. */
static int put_child(kvtcd_index *ix, uint32_t ns, uint32_t i, uint32_t parent,
                     size_t size, uint64_t now, uint64_t expire)
{
    kvtcd_blob *b = NULL;
    int rc = kvtcd_index_reserve(ix, size, now, &b);
    if (rc < 0)
        return rc;
    memset(b->data, (int)(i & 0xff), size);
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = ns;
    make_key(t.key, i);
    make_key(t.parent, parent);
    t.has_parent = 1;
    t.size = size;
    t.expire_ms = expire;
    rc = kvtcd_index_insert(ix, &t, b, 0, now, NULL);
    kvtcd_blob_unref(b);
    return rc;
}

static uint32_t children(kvtcd_index *ix, uint32_t ns, uint32_t i)
{
    uint8_t k[32];
    make_key(k, i);
    return kvtcd_index_children(ix, ns, k);
}

static kvtcd_entry *get(kvtcd_index *ix, uint32_t ns, uint32_t i, uint64_t now)
{
    uint8_t k[32];
    make_key(k, i);
    return kvtcd_index_find(ix, ns, k, now);
}

struct fixture {
    kvtcd_tier *tier;
    kvtcd_index ix;
    uint32_t ns;
};

static void setup(struct fixture *f, uint64_t capacity)
{
    kvtcd_log_set_level(KVTCD_LOG_ERROR);
    cr_assert_eq(kvtcd_store_host_create(capacity, NULL, &f->tier), 0);
    cr_assert_eq(kvtcd_index_init(&f->ix, f->tier), 0);
    cr_assert_eq(kvtcd_index_namespace(&f->ix, "default", &f->ns), 0);
}

static void teardown(struct fixture *f)
{
    kvtcd_index_fini(&f->ix);
    cr_assert_eq(f->tier->used, 0, "blobs leaked: %llu bytes",
                 (unsigned long long)f->tier->used);
    cr_assert_eq(f->tier->blobs, 0);
    kvtcd_tier_destroy(f->tier);
}

Test(daemon_store, capacity_accounting_and_refcounts)
{
    kvtcd_tier *t;
    cr_assert_eq(kvtcd_store_host_create(10000, NULL, &t), 0);
    kvtcd_blob *a, *b, *c;
    cr_assert_eq(kvtcd_tier_alloc(t, 6000, &a), 0);
    cr_assert_eq(((uintptr_t)a->data) % 4096, 0, "blob not page-aligned");
    cr_assert_eq(kvtcd_tier_alloc(t, 4000, &b), 0);
    cr_assert_eq(t->used, 10000);
    cr_assert_eq(kvtcd_tier_alloc(t, 1, &c), KVTC_EFULL);
    cr_assert_eq(kvtcd_tier_alloc(t, 20000, &c), KVTC_EFULL);
    /* An extra reference (an in-flight send) keeps the bytes counted. */
    kvtcd_blob_ref(a);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 10000);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 4000);
    cr_assert_eq(kvtcd_tier_alloc(t, 0, &c), 0, "empty chunks are allowed");
    kvtcd_blob_unref(c);
    kvtcd_blob_unref(b);
    cr_assert_eq(t->used, 0);
    cr_assert_eq(t->blobs, 0);
    kvtcd_tier_destroy(t);
}

Test(daemon_store, freed_buffers_are_reused_within_capacity)
{
    kvtcd_tier *t;
    cr_assert_eq(kvtcd_store_host_create(3u << 20, NULL, &t), 0);
    kvtcd_blob *a, *b;
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 20, &a), 0);
    uint8_t *first = a->data;
    memset(a->data, 0x11, 1u << 20);
    kvtcd_blob_unref(a);
    cr_assert_eq(t->used, 0);
    /* Same page-rounded size: the cached buffer comes back. */
    cr_assert_eq(kvtcd_tier_alloc(t, (1u << 20) - 100, &a), 0);
    cr_assert_eq(a->data, first);
    cr_assert_eq(a->size, (1u << 20) - 100);
    cr_assert_eq(t->used, (1u << 20) - 100);
    kvtcd_blob_unref(a);
    /* A size that needs the cached bytes' room: the cache gives way. */
    cr_assert_eq(kvtcd_tier_alloc(t, 5u << 19, &b), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 20, &a), KVTC_EFULL);
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 19, &a), 0);
    cr_assert_eq(t->used, 3u << 20);
    kvtcd_blob_unref(a);
    kvtcd_blob_unref(b);
    cr_assert_eq(t->used, 0);
    cr_assert_eq(t->blobs, 0);
    kvtcd_tier_destroy(t); /* frees the cache; ASan checks */
}

Test(daemon_index, insert_find_replace_remove)
{
    struct fixture f;
    setup(&f, 1 << 20);
    cr_assert_eq(put(&f.ix, f.ns, 1, 1000, 0, 0), 0);
    kvtcd_entry *e = get(&f.ix, f.ns, 1, 0);
    cr_assert_not_null(e);
    cr_assert_eq(e->size, 1000);
    cr_assert_eq(e->blob->data[0], 1);
    cr_assert_null(get(&f.ix, f.ns, 2, 0));
    /* Replacing keeps one entry, frees the old bytes and keeps pins. */
    kvtcd_index_pin(&f.ix, e, 1, 0, 0);
    cr_assert_eq(put(&f.ix, f.ns, 1, 3000, 1, 0), 0);
    cr_assert_eq(f.ix.count, 1);
    cr_assert_eq(f.tier->used, 3000);
    e = get(&f.ix, f.ns, 1, 1);
    cr_assert_eq(e->size, 3000);
    cr_assert(kvtcd_entry_pinned(e, 1));
    kvtcd_index_remove(&f.ix, e);
    cr_assert_eq(f.ix.count, 0);
    cr_assert_eq(f.tier->used, 0);
    teardown(&f);
}

Test(daemon_index, namespaces_are_disjoint)
{
    struct fixture f;
    setup(&f, 1 << 20);
    uint32_t other, again;
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "tenant-b", &other), 0);
    cr_assert_neq(other, f.ns);
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "tenant-b", &again), 0);
    cr_assert_eq(again, other);
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "", &again), KVTC_EINVAL);
    cr_assert_eq(put(&f.ix, f.ns, 7, 100, 0, 0), 0);
    cr_assert_null(get(&f.ix, other, 7, 0), "a tenant saw another's key");
    cr_assert_eq(put(&f.ix, other, 7, 200, 0, 0), 0);
    cr_assert_eq(get(&f.ix, f.ns, 7, 0)->size, 100);
    cr_assert_eq(get(&f.ix, other, 7, 0)->size, 200);
    teardown(&f);
}

Test(daemon_index, lru_eviction_order_and_touch)
{
    struct fixture f;
    setup(&f, 10 * 1000);
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, i, 0), 0);
    cr_assert_eq(f.tier->used, 10000);
    /* Touch 0 so that 1 is now the least recently used. */
    kvtcd_index_touch(&f.ix, get(&f.ix, f.ns, 0, 10), 10);
    cr_assert_eq(put(&f.ix, f.ns, 100, 1000, 11, 0), 0);
    cr_assert_eq(f.ix.evictions, 1);
    cr_assert_not_null(get(&f.ix, f.ns, 0, 11));
    cr_assert_null(get(&f.ix, f.ns, 1, 11));
    cr_assert_not_null(get(&f.ix, f.ns, 2, 11));
    /* A chunk needing 2.5 slots evicts the next three least recent. */
    cr_assert_eq(put(&f.ix, f.ns, 101, 2500, 12, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 2, 12));
    cr_assert_null(get(&f.ix, f.ns, 3, 12));
    cr_assert_null(get(&f.ix, f.ns, 4, 12));
    cr_assert_not_null(get(&f.ix, f.ns, 5, 12));
    cr_assert_leq(f.tier->used, f.tier->capacity);
    /* Larger than the whole store: refused without evicting anything. */
    size_t before = f.ix.count;
    cr_assert_eq(put(&f.ix, f.ns, 102, 20000, 13, 0), KVTC_EFULL);
    cr_assert_eq(f.ix.count, before);
    teardown(&f);
}

Test(daemon_index, pins_block_eviction_until_unpinned_or_lapsed)
{
    struct fixture f;
    setup(&f, 3000);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, 0, 0), 0);
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 0, 0), 1, 0, 0);      /* forever */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 1, 0), 1, 100, 0);    /* 100 ms */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 2, 0), 1, 0, 0);
    /* Everything pinned: backpressure, nothing dropped. */
    cr_assert_eq(put(&f.ix, f.ns, 10, 1000, 50, 0), KVTC_EFULL);
    cr_assert_eq(f.ix.count, 3);
    /* Key 1's pin lapses at 100 ms: then it is evictable. */
    cr_assert(kvtcd_entry_pinned(get(&f.ix, f.ns, 1, 99), 99));
    cr_assert_not(kvtcd_entry_pinned(get(&f.ix, f.ns, 1, 100), 100));
    cr_assert_eq(put(&f.ix, f.ns, 10, 1000, 150, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 1, 150));
    /* Two pins need two unpins. */
    kvtcd_entry *e2 = get(&f.ix, f.ns, 2, 150);
    kvtcd_index_pin(&f.ix, e2, 1, 0, 150);
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert(kvtcd_entry_pinned(e2, 150));
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert_not(kvtcd_entry_pinned(e2, 150));
    /* Unpinning an unpinned key is harmless. */
    kvtcd_index_pin(&f.ix, e2, 0, 0, 150);
    cr_assert_eq(e2->pins, 0);
    /* A TTL pin on top of a permanent one does not shorten it. */
    kvtcd_entry *e0 = get(&f.ix, f.ns, 0, 150);
    kvtcd_index_pin(&f.ix, e0, 1, 10, 150);
    cr_assert(kvtcd_entry_pinned(e0, 100000));
    /* Key 2 (unpinned) is the one evicted now. */
    cr_assert_eq(put(&f.ix, f.ns, 11, 1000, 200, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 2, 200));
    cr_assert_not_null(get(&f.ix, f.ns, 0, 200));
    teardown(&f);
}

Test(daemon_index, put_ttl_expires)
{
    struct fixture f;
    setup(&f, 1 << 20);
    cr_assert_eq(put(&f.ix, f.ns, 1, 100, 0, 500), 0);
    cr_assert_not_null(get(&f.ix, f.ns, 1, 499));
    cr_assert_null(get(&f.ix, f.ns, 1, 500));
    cr_assert_eq(f.ix.expirations, 1);
    cr_assert_eq(f.tier->used, 0);
    teardown(&f);
}

Test(daemon_index, chain_lookup_counts_leading_hits)
{
    struct fixture f;
    setup(&f, 1 << 20);
    uint8_t keys[6][32];
    const uint8_t *kp[6];
    for (uint32_t i = 0; i < 6; i++) {
        make_key(keys[i], i);
        kp[i] = keys[i];
    }
    for (uint32_t i = 0; i < 6; i++)
        if (i != 3)
            cr_assert_eq(put(&f.ix, f.ns, i, 64, 0, 0), 0);
    int tiers[6] = {0};
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp, 6, 0, tiers), 3);
    cr_assert_eq(tiers[0], KVTC__WIRE__TIER__TIER_HOST);
    cr_assert_eq(tiers[2], KVTC__WIRE__TIER__TIER_HOST);
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp + 3, 3, 0, NULL), 0);
    cr_assert_eq(kvtcd_index_lookup(&f.ix, f.ns, kp + 4, 2, 0, NULL), 2);
    teardown(&f);
}

Test(daemon_index, many_entries_grow_the_table)
{
    struct fixture f;
    setup(&f, 64ull << 20);
    for (uint32_t i = 0; i < 5000; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 16, 0, 0), 0);
    cr_assert_gt(f.ix.nbuckets, 1024);
    for (uint32_t i = 0; i < 5000; i += 97) {
        kvtcd_entry *e = get(&f.ix, f.ns, i, 0);
        cr_assert_not_null(e, "key %u lost after growing", i);
        cr_assert_eq(e->blob->data[0], (uint8_t)(i & 0xff));
    }
    teardown(&f);
}

/* ---- prefix-aware eviction ------------------------------------------------ */

/* Which of keys [0, n) are still stored, as a bit mask. */
static uint64_t present(kvtcd_index *ix, uint32_t ns, uint32_t n, uint64_t now)
{
    uint64_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (get(ix, ns, i, now))
            m |= 1ull << i;
    return m;
}

Test(daemon_evict, leaf_before_parent_then_recency)
{
    struct fixture f;
    setup(&f, 5 * 1000);
    /* Two chains, oldest first: 0 <- 1 <- 2 and 3 <- 4. */
    cr_assert_eq(put(&f.ix, f.ns, 0, 1000, 0, 0), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 1, 0, 1000, 1, 0), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 2, 1, 1000, 2, 0), 0);
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 3, 0), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 4, 3, 1000, 4, 0), 0);
    /* The LRU tail is 0, but 2 is the least recent leaf; then the chain
     * shrinks from its end: 1, then 0; then the other chain: 4, 3. */
    uint32_t order[] = {2, 1, 0, 4, 3};
    uint64_t left = 0x1f;
    for (uint32_t k = 0; k < 5; k++) {
        cr_assert_eq(put(&f.ix, f.ns, 10 + k, 1000, 10 + k, 0), 0);
        left &= ~(1ull << order[k]);
        cr_assert_eq(present(&f.ix, f.ns, 5, 20), left,
                     "step %u: present %#llx, want %#llx", k,
                     (unsigned long long)present(&f.ix, f.ns, 5, 20),
                     (unsigned long long)left);
        cr_assert_eq(f.ix.evictions, k + 1);
    }
    teardown(&f);
}

Test(daemon_evict, recency_breaks_ties_between_leaves)
{
    struct fixture f;
    setup(&f, 4 * 1000);
    for (uint32_t i = 0; i < 4; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, i, 0), 0);
    /* All leaves: plain LRU; touching 0 and 1 makes 2 then 3 go first. */
    kvtcd_index_touch(&f.ix, get(&f.ix, f.ns, 0, 5), 5);
    kvtcd_index_touch(&f.ix, get(&f.ix, f.ns, 1, 6), 6);
    cr_assert_eq(put(&f.ix, f.ns, 10, 1000, 7, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 4, 7), 0xb);
    cr_assert_eq(put(&f.ix, f.ns, 11, 1000, 8, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 4, 8), 0x3);
    cr_assert_eq(put(&f.ix, f.ns, 12, 1000, 9, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 4, 9), 0x2);
    teardown(&f);
}

Test(daemon_evict, pins_are_never_evicted_even_as_leaves)
{
    struct fixture f;
    setup(&f, 3 * 1000);
    cr_assert_eq(put(&f.ix, f.ns, 0, 1000, 0, 0), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 1, 0, 1000, 1, 0), 0);
    cr_assert_eq(put(&f.ix, f.ns, 2, 1000, 2, 0), 0);
    /* Leaves 1 and 2; pin 1: 2 goes although 1 is less recent. */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 1, 3), 1, 0, 3);
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 4, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 4, 4), 0xb);
    /* Now only the parent 0 (pinned child 1) and leaf 3 are evictable:
     * 3 is a leaf and goes before the parent. */
    cr_assert_eq(put(&f.ix, f.ns, 4, 1000, 5, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 5, 5), 0x13);
    /* Pin 4: the parent 0 is the last evictable entry, and goes. */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 4, 6), 1, 0, 6);
    cr_assert_eq(put(&f.ix, f.ns, 5, 1000, 6, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 6, 6), 0x32);
    /* Everything pinned: FULL, nothing dropped. */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 5, 7), 1, 0, 7);
    cr_assert_eq(put(&f.ix, f.ns, 6, 1000, 7, 0), KVTC_EFULL);
    cr_assert_eq(present(&f.ix, f.ns, 7, 7), 0x32);
    cr_assert_eq(children(&f.ix, f.ns, 0), 1, "1 is still 0's child");
    teardown(&f);
}

Test(daemon_evict, expired_goes_first_even_as_parent)
{
    struct fixture f;
    setup(&f, 3 * 1000);
    cr_assert_eq(put(&f.ix, f.ns, 0, 1000, 0, 0), 0);           /* leaf */
    cr_assert_eq(put(&f.ix, f.ns, 1, 1000, 1, 50), 0);          /* TTL */
    cr_assert_eq(put_child(&f.ix, f.ns, 2, 1, 1000, 2, 0), 0);  /* 1's */
    /* At 100 key 1 (a parent, more recent than leaf 0) has expired. */
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 100, 0), 0);
    cr_assert_eq(present(&f.ix, f.ns, 4, 100), 0xd);
    cr_assert_eq(f.ix.expirations, 1);
    cr_assert_eq(f.ix.evictions, 0);
    /* A pinned expired entry stays (pins outrank TTLs). */
    cr_assert_eq(put(&f.ix, f.ns, 4, 1000, 101, 150), 0);       /* evicts 0 */
    kvtcd_index_pin(&f.ix, get(&f.ix, f.ns, 4, 102), 1, 0, 102);
    cr_assert_eq(put(&f.ix, f.ns, 5, 1000, 200, 0), 0);
    cr_assert_not_null(get(&f.ix, f.ns, 4, 200));
    teardown(&f);
}

Test(daemon_evict, window_of_parents_takes_the_least_recent)
{
    struct fixture f;
    uint32_t n = KVTCD_EVICT_WINDOW + 6;
    setup(&f, (uint64_t)(2 * n) * 100);
    /* n roots, then a child of each: the oldest window is all parents. */
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 100, i, 0), 0);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(put_child(&f.ix, f.ns, 1000 + i, i, 100, n + i, 0), 0);
    /* While the window holds only roots (parents), the least recent root
     * goes: roots 0..6 (the 7th put sees exactly 64 roots). */
    for (uint32_t k = 0; k < 7; k++)
        cr_assert_eq(put(&f.ix, f.ns, 5000 + k, 100, 3 * n + k, 0), 0);
    for (uint32_t i = 0; i < 7; i++)
        cr_assert_null(get(&f.ix, f.ns, i, 4 * n), "root %u", i);
    cr_assert_not_null(get(&f.ix, f.ns, 7, 4 * n));
    for (uint32_t i = 0; i < n; i++)
        cr_assert_not_null(get(&f.ix, f.ns, 1000 + i, 4 * n));
    /* Now the window reaches child 1000, a leaf: it goes before root 7. */
    cr_assert_eq(put(&f.ix, f.ns, 5007, 100, 4 * n, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 1000, 4 * n));
    cr_assert_not_null(get(&f.ix, f.ns, 7, 4 * n));
    teardown(&f);
}

Test(daemon_evict, child_counts_follow_arrival_replace_and_removal)
{
    struct fixture f;
    setup(&f, 1 << 20);
    uint32_t other;
    cr_assert_eq(kvtcd_index_namespace(&f.ix, "other", &other), 0);
    /* Children before their parent. */
    cr_assert_eq(put_child(&f.ix, f.ns, 11, 10, 10, 0, 0), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 12, 10, 10, 0, 0), 0);
    cr_assert_eq(children(&f.ix, f.ns, 10), 2);
    cr_assert_eq(children(&f.ix, other, 10), 0, "counts are per tenant");
    cr_assert_eq(put(&f.ix, f.ns, 10, 10, 1, 0), 0);
    cr_assert_eq(children(&f.ix, f.ns, 10), 2);
    /* Putting a child again does not count it twice; re-parenting moves
     * its count. */
    cr_assert_eq(put_child(&f.ix, f.ns, 11, 10, 10, 2, 0), 0);
    cr_assert_eq(children(&f.ix, f.ns, 10), 2);
    cr_assert_eq(put_child(&f.ix, f.ns, 12, 20, 10, 3, 0), 0);
    cr_assert_eq(children(&f.ix, f.ns, 10), 1);
    cr_assert_eq(children(&f.ix, f.ns, 20), 1);
    /* Re-put without a parent; removal; expiry. */
    cr_assert_eq(put(&f.ix, f.ns, 12, 10, 4, 0), 0);
    cr_assert_eq(children(&f.ix, f.ns, 20), 0);
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 11, 5));
    cr_assert_eq(children(&f.ix, f.ns, 10), 0);
    cr_assert_eq(put_child(&f.ix, f.ns, 13, 10, 10, 6, 100), 0);
    cr_assert_eq(children(&f.ix, f.ns, 10), 1);
    cr_assert_null(get(&f.ix, f.ns, 13, 100));
    cr_assert_eq(children(&f.ix, f.ns, 10), 0);
    cr_assert_eq(f.ix.ccount, 0, "zero counts are freed");
    /* Removing the parent leaves its children's count in place. */
    cr_assert_eq(put_child(&f.ix, f.ns, 14, 10, 10, 7, 0), 0);
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 10, 7));
    cr_assert_eq(children(&f.ix, f.ns, 10), 1);
    teardown(&f);
}

Test(daemon_evict, capacity_never_exceeded_under_random_load)
{
    struct fixture f;
    setup(&f, 200 * 1000);
    srand(42);
    uint32_t stored_ok = 0;
    for (uint32_t step = 0; step < 4000; step++) {
        uint32_t k = (uint32_t)rand() % 600;
        size_t size = 100 + (size_t)(rand() % 3000);
        int rc = (k % 3) ? put_child(&f.ix, f.ns, k, k - 1, size, step, 0)
                         : put(&f.ix, f.ns, k, size, step,
                               (k % 7 == 0) ? step + 50 : 0);
        cr_assert(rc == 0 || rc == KVTC_EFULL, "rc %d", rc);
        stored_ok += rc == 0;
        cr_assert_leq(f.tier->used, f.tier->capacity);
        if (rand() % 10 == 0) {
            kvtcd_entry *e = get(&f.ix, f.ns, (uint32_t)rand() % 600, step);
            if (e)
                kvtcd_index_pin(&f.ix, e, rand() % 2, 20, step);
        }
    }
    cr_assert_gt(stored_ok, 3000);
    /* The child counts agree with what is stored. */
    for (uint32_t k = 0; k < 600; k++) {
        uint32_t want = (k + 1) % 3 && get(&f.ix, f.ns, k + 1, 5000) &&
                        get(&f.ix, f.ns, k + 1, 5000)->has_parent;
        cr_assert_eq(children(&f.ix, f.ns, k), want, "key %u", k);
    }
    teardown(&f);
}

/* Drop hook calls, as the tier policy sees them. */
static int g_drops;
static uint8_t g_drop_state;
static void on_drop(void *arg, kvtcd_entry *e)
{
    (void)arg;
    g_drops++;
    g_drop_state = e->disk_state;
}

Test(daemon_evict, clean_host_copies_go_before_any_eviction)
{
    struct fixture f;
    setup(&f, 3 * 1000);
    f.ix.lower_tiers = 1; /* a disk tier, as kvtcd_tiers_open says */
    g_drops = 0;
    kvtcd_index_set_drop_hook(&f.ix, on_drop, NULL);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, i, 0), 0);
    /* Key 2 (the most recent) also lies on disk: its host copy goes
     * first, the chunk stays (served from disk). */
    kvtcd_entry *e2 = get(&f.ix, f.ns, 2, 3);
    e2->disk_state = KVTCD_DISK_CLEAN;
    e2->dloc.seg = 7;
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 4, 0), 0);
    cr_assert_eq(f.ix.evictions, 0);
    cr_assert_eq(f.ix.tc[KVTCD_T_HOST].demotions, 1);
    e2 = get(&f.ix, f.ns, 2, 4);
    cr_assert_not_null(e2);
    cr_assert_null(e2->blob);
    cr_assert_eq(kvtcd_entry_wire_tier(e2), KVTC__WIRE__TIER__TIER_DISK);
    cr_assert_eq(g_drops, 0);
    /* Next put: the host holds only dirty copies, so the LRU leaf 0 is
     * evicted; the disk-only entry is not a host victim. */
    cr_assert_eq(put(&f.ix, f.ns, 4, 1000, 5, 0), 0);
    cr_assert_null(get(&f.ix, f.ns, 0, 5));
    cr_assert_not_null(get(&f.ix, f.ns, 2, 5));
    cr_assert_eq(g_drops, 1);
    cr_assert_eq(g_drop_state, KVTCD_DISK_NONE);
    /* Removing the disk-only entry tells the hook (it frees the loc). */
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 2, 6));
    cr_assert_eq(g_drops, 2);
    cr_assert_eq(g_drop_state, KVTCD_DISK_CLEAN);
    /* An entry with no copy at all is refused. */
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    make_key(t.key, 99);
    cr_assert_eq(kvtcd_index_insert(&f.ix, &t, NULL, 0, 7, NULL), KVTC_EINVAL);
    teardown(&f);
}

Test(daemon_evict, writes_in_flight_are_not_host_victims)
{
    struct fixture f;
    setup(&f, 2 * 1000);
    f.ix.lower_tiers = 1; /* a disk tier, as kvtcd_tiers_open says */
    cr_assert_eq(put(&f.ix, f.ns, 0, 1000, 0, 0), 0);
    cr_assert_eq(put(&f.ix, f.ns, 1, 1000, 1, 0), 0);
    get(&f.ix, f.ns, 0, 2)->disk_state = KVTCD_DISK_WRITING;
    cr_assert_eq(put(&f.ix, f.ns, 2, 1000, 3, 0), 0);
    cr_assert_not_null(get(&f.ix, f.ns, 0, 3));
    cr_assert_null(get(&f.ix, f.ns, 1, 3));
    get(&f.ix, f.ns, 2, 4)->disk_state = KVTCD_DISK_WRITING;
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 4, 0), KVTC_EFULL);
    /* Finished writes make them clean: then they make room at once. */
    get(&f.ix, f.ns, 0, 5)->disk_state = KVTCD_DISK_CLEAN;
    get(&f.ix, f.ns, 2, 5)->disk_state = KVTCD_DISK_NONE;
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 5, 0), 0);
    cr_assert_eq(f.ix.evictions, 1);
    cr_assert_null(get(&f.ix, f.ns, 0, 5)->blob);
    get(&f.ix, f.ns, 0, 6)->disk_state = KVTCD_DISK_NONE; /* no hook here */
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 0, 6));
    teardown(&f);
}

/* The host list holds exactly the entries with a host copy, least recent
 * last, whatever a lower tier holds. */
static void expect_host_list(const kvtcd_index *ix, const uint32_t *keys, size_t n)
{
    size_t i = 0;
    const kvtcd_entry *prev = NULL;
    for (const kvtcd_entry *e = ix->host_head; e; prev = e, e = e->host_next, i++) {
        uint8_t k[32];
        cr_assert_lt(i, n, "host list longer than %zu", n);
        make_key(k, keys[i]);
        cr_assert(!memcmp(e->key, k, 32), "host list entry %zu is not key %u", i, keys[i]);
        cr_assert_not_null(e->blob);
        cr_assert_eq(e->host_prev, prev);
    }
    cr_assert_eq(i, n, "host list has %zu entries, not %zu", i, n);
    cr_assert_eq(ix->host_tail, prev);
}

/* Behind a large disk tier the LRU's tail is chunks only the disk holds.
 * Making host room walks the host copies alone: a clean one goes (the
 * chunk stays), else the least recent host chunk is evicted, and the
 * disk-only ones are never looked at (they once were, all of them, on
 * every put into a full host tier). */
Test(daemon_evict, host_room_looks_at_host_copies_only)
{
    struct fixture f;
    setup(&f, 3 * 1000);
    f.ix.lower_tiers = 1; /* a disk tier, as kvtcd_tiers_open says */
    enum { DISK_ONLY = 5000 };
    kvtcd_entry t;
    memset(&t, 0, sizeof t);
    t.ns = f.ns;
    t.size = 1000;
    t.disk_state = KVTCD_DISK_CLEAN;
    for (uint32_t i = 0; i < DISK_ONLY; i++) {
        make_key(t.key, 100000 + i);
        t.dloc.off = i;
        cr_assert_eq(kvtcd_index_insert(&f.ix, &t, NULL, 0, 1, NULL), 0);
    }
    cr_assert_null(f.ix.host_head);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(put(&f.ix, f.ns, i, 1000, 2 + i, 0), 0);
    expect_host_list(&f.ix, (const uint32_t[]){2, 1, 0}, 3);
    /* A get makes 0 the most recent host copy. */
    kvtcd_index_touch(&f.ix, get(&f.ix, f.ns, 0, 5), 5);
    expect_host_list(&f.ix, (const uint32_t[]){0, 2, 1}, 3);
    /* 1 is written to disk: the next put drops its host copy. */
    get(&f.ix, f.ns, 1, 6)->disk_state = KVTCD_DISK_CLEAN;
    cr_assert_eq(put(&f.ix, f.ns, 3, 1000, 6, 0), 0);
    cr_assert_eq(f.ix.evictions, 0);
    cr_assert_eq(f.ix.tc[KVTCD_T_HOST].demotions, 1);
    cr_assert_null(get(&f.ix, f.ns, 1, 7)->blob);
    expect_host_list(&f.ix, (const uint32_t[]){3, 0, 2}, 3);
    /* Only dirty host copies now: the least recent host chunk (2) is
     * evicted, not one of the disk-only chunks at the LRU's tail. */
    cr_assert_eq(put(&f.ix, f.ns, 4, 1000, 8, 0), 0);
    cr_assert_eq(f.ix.evictions, 1);
    cr_assert_null(get(&f.ix, f.ns, 2, 9));
    cr_assert_eq(f.ix.count, DISK_ONLY + 4);
    expect_host_list(&f.ix, (const uint32_t[]){4, 3, 0}, 3);
    /* A promotion makes a host copy again, the most recent. */
    kvtcd_blob *b = NULL;
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 0, 10));
    cr_assert_eq(kvtcd_index_reserve_copy(&f.ix, 1000, &b), 0);
    kvtcd_entry *e1 = get(&f.ix, f.ns, 1, 10);
    kvtcd_index_set_host(&f.ix, e1, b, 0);
    kvtcd_blob_unref(b);
    expect_host_list(&f.ix, (const uint32_t[]){1, 4, 3}, 3);
    /* Replacing a key keeps one host list entry; removing takes it off. */
    cr_assert_eq(put(&f.ix, f.ns, 1, 500, 11, 0), 0);
    expect_host_list(&f.ix, (const uint32_t[]){1, 4, 3}, 3);
    kvtcd_index_remove(&f.ix, get(&f.ix, f.ns, 4, 12));
    expect_host_list(&f.ix, (const uint32_t[]){1, 3}, 2);
    teardown(&f);
}

/* A promotion's buffer (kvtcd_index_reserve_copy) drops host copies that
 * a lower tier also holds, but never evicts a chunk: with only dirty host
 * copies (cache mode, disk writes queued) it is refused and every chunk
 * stays; a put (kvtcd_index_reserve) may still evict one. */
Test(daemon_evict, promotions_never_evict_a_chunk)
{
    struct fixture f;
    setup(&f, 2 * 1000);
    f.ix.lower_tiers = 1; /* a disk tier, as kvtcd_tiers_open says */
    cr_assert_eq(put(&f.ix, f.ns, 0, 1000, 0, 0), 0);
    cr_assert_eq(put(&f.ix, f.ns, 1, 1000, 1, 0), 0);
    kvtcd_blob *b = NULL;
    cr_assert_eq(kvtcd_index_reserve_copy(&f.ix, 1000, &b), KVTC_EFULL);
    cr_assert_null(b);
    cr_assert_eq(f.ix.evictions, 0);
    cr_assert_not_null(get(&f.ix, f.ns, 0, 2));
    cr_assert_not_null(get(&f.ix, f.ns, 1, 2));
    /* Key 1's host copy also lies on disk: it goes, the chunk stays. */
    kvtcd_entry *e1 = get(&f.ix, f.ns, 1, 3);
    e1->disk_state = KVTCD_DISK_CLEAN;
    cr_assert_eq(kvtcd_index_reserve_copy(&f.ix, 1000, &b), 0);
    cr_assert_not_null(b);
    cr_assert_eq(f.ix.evictions, 0);
    cr_assert_eq(f.ix.tc[KVTCD_T_HOST].demotions, 1);
    e1 = get(&f.ix, f.ns, 1, 4);
    cr_assert_not_null(e1);
    cr_assert_null(e1->blob);
    kvtcd_blob_unref(b);
    e1->disk_state = KVTCD_DISK_NONE; /* no hook here */
    kvtcd_index_remove(&f.ix, e1);
    teardown(&f);
}

/* ---- config ------------------------------------------------------------- */

Test(daemon_config, sizes_and_addresses)
{
    uint64_t v;
    cr_assert_eq(kvtcd_parse_size("512M", &v), 0);
    cr_assert_eq(v, 512ull << 20);
    cr_assert_eq(kvtcd_parse_size("4G", &v), 0);
    cr_assert_eq(v, 4ull << 30);
    cr_assert_eq(kvtcd_parse_size("64KiB", &v), 0);
    cr_assert_eq(v, 64ull << 10);
    cr_assert_eq(kvtcd_parse_size("12345", &v), 0);
    cr_assert_eq(v, 12345);
    const char *bad[] = {"", "-1", "4X", "G", "1.5G", "99999999999T", "4 G",
                         "+5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(kvtcd_parse_size(bad[i], &v), KVTC_EINVAL, "'%s'",
                     bad[i]);

    char host[64];
    uint16_t port;
    cr_assert_eq(kvtcd_parse_hostport("127.0.0.1:7700", host, sizeof host,
                                      &port), 0);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 7700);
    cr_assert_eq(kvtcd_parse_hostport("[::1]:0", host, sizeof host, &port),
                 0);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 0);
    const char *badaddr[] = {"127.0.0.1", ":80", "h:65536", "h:-1", "h:x",
                             "::1:80", "[::1]80"};
    for (size_t i = 0; i < sizeof badaddr / sizeof badaddr[0]; i++)
        cr_assert_eq(kvtcd_parse_hostport(badaddr[i], host, sizeof host,
                                          &port), KVTC_EINVAL, "'%s'",
                     badaddr[i]);
}

Test(daemon_config, defaults)
{
    kvtcd_config c;
    int action;
    char err[256];
    char *argv[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(action, KVTCD_RUN);
    cr_assert_str_eq(c.listen_host, "127.0.0.1");
    cr_assert_eq(c.listen_port, 7700);
    cr_assert_eq(c.admin_port, 7701);
    cr_assert_gt(c.host_mem, 0);
    cr_assert_leq(c.host_mem, 1ull << 30);
    cr_assert_eq(c.log_level, KVTCD_LOG_INFO);
}

/* An INI file with text, under the test temp folder (asserted). */
static char *write_ini(const char *text)
{
    char *path = kvtc_test_write_temp(text);
    cr_assert_not_null(path, "cannot write a temporary INI file");
    return path;
}

Test(daemon_config, ini_then_flags_override)
{
    char *path = write_ini("; comment\n[server]\nlisten = 0.0.0.0:9000\n"
                           "admin = 127.0.0.1:9001\n[store]\nhost_mem = 2G\n"
                           "[limits]\nmax_batch = 64\n[log]\nlevel = debug\n");
    kvtcd_config c;
    int action;
    char err[256] = "";
    /* --host-mem comes before --config on the line and still wins. */
    char *argv[] = {"kvtcd", "--host-mem", "512M", "--config", path,
                    "--listen=127.0.0.1:0", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 6, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.host_mem, 512ull << 20);
    cr_assert_str_eq(c.listen_host, "127.0.0.1");
    cr_assert_eq(c.listen_port, 0);
    cr_assert_eq(c.admin_port, 9001);
    cr_assert_eq(c.max_batch, 64);
    cr_assert_eq(c.log_level, KVTCD_LOG_DEBUG);
    /* max_chunk (default 256M) is clamped to the memory limit. */
    char *argv2[] = {"kvtcd", "--host-mem", "64M", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv2, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.max_chunk_bytes, 64ull << 20);
    unlink(path);
}

Test(daemon_config, bad_values_are_errors)
{
    kvtcd_config c;
    int action;
    char err[256];
    struct {
        int argc;
        char *argv[4];
        const char *msg;
    } cases[] = {
        {3, {"kvtcd", "--host-mem", "lots"}, "host-mem"},
        {3, {"kvtcd", "--host-mem", "1K"}, "host-mem"}, /* below minimum */
        {3, {"kvtcd", "--listen", "nohost"}, "listen"},
        {3, {"kvtcd", "--max-batch", "0"}, "max-batch"},
        {3, {"kvtcd", "--max-batch", "100000"}, "max-batch"},
        {3, {"kvtcd", "--log-level", "loud"}, "log-level"},
        {2, {"kvtcd", "--listen"}, "listen"}, /* value missing */
        {2, {"kvtcd", "--frobnicate"}, "unknown"},
        {3, {"kvtcd", "--config", "/nonexistent/kvtcd.ini"}, "cannot open"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        int rc = kvtcd_config_from_args(&c, cases[i].argc, cases[i].argv,
                                        &action, err, sizeof err);
        cr_assert_lt(rc, 0, "case %zu accepted", i);
        cr_assert_not_null(strstr(err, cases[i].msg), "case %zu: '%s'", i,
                           err);
    }
    const char *bad_ini[] = {
        "[server]\nlisten = 1.2.3.4\n",      /* no port */
        "[store]\nhost_mem = -5\n",
        "[store]\nbogus_key = 1\n",          /* typo must not pass */
        "[nosuch]\nlisten = 1.2.3.4:5\n",
        "this is not ini\n",
    };
    for (size_t i = 0; i < sizeof bad_ini / sizeof bad_ini[0]; i++) {
        char *path = write_ini(bad_ini[i]);
        kvtcd_config_defaults(&c);
        err[0] = '\0';
        cr_assert_lt(kvtcd_config_load_ini(&c, path, err, sizeof err), 0,
                     "ini %zu accepted", i);
        cr_assert_not_null(strstr(err, path), "ini %zu: '%s'", i, err);
        unlink(path);
    }
}

Test(daemon_config, tier_flags_and_keys)
{
    kvtcd_config c;
    int action;
    char err[256] = "";
    char *argv[] = {"kvtcd", "--disk-dir", "/tmp/x", "--disk-size=2G",
                    "--durability", "durable", "--disk-io", "threads",
                    "--gpu-mem", "1G", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 10, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_str_eq(c.disk_dir, "/tmp/x");
    cr_assert_eq(c.disk_size, 2ull << 30);
    cr_assert_eq(c.durability, KVTCD_DURABILITY_DURABLE);
    cr_assert_eq(c.disk_io, KVTCD_DISK_IO_THREADS);
    cr_assert_eq(c.gpu_mem, 1ull << 30);
    /* Defaults: no disk tier, no GPU tier, cache, auto. */
    char *argv0[] = {"kvtcd", "--data-dir", "/tmp/y", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv0, &action, err,
                                        sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.disk_dir, "", "--data-dir must not imply a disk tier");
    cr_assert_eq(c.disk_size, 0);
    cr_assert_eq(c.gpu_mem, 0);
    cr_assert_eq(c.durability, KVTCD_DURABILITY_CACHE);
    cr_assert_eq(c.disk_io, KVTCD_DISK_IO_AUTO);
    /* The same keys in the INI file. */
    char *path = write_ini("[store]\ndisk_dir = /tmp/z\ndisk_size = 64M\n"
                           "disk_io = uring\ndurability = cache\n"
                           "gpu_mem = 512M\ngpu_device = 1\n");
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, path, err, sizeof err), 0, "%s",
                 err);
    cr_assert_str_eq(c.disk_dir, "/tmp/z");
    cr_assert_eq(c.disk_size, 64ull << 20);
    cr_assert_eq(c.disk_io, KVTCD_DISK_IO_URING);
    cr_assert_eq(c.gpu_mem, 512ull << 20);
    cr_assert_eq(c.gpu_device, 1);
    unlink(path);
    /* Errors. */
    struct {
        int argc;
        char *argv[4];
        const char *msg;
    } bad[] = {
        {3, {"kvtcd", "--durability", "durable"}, "needs a disk tier"},
        {3, {"kvtcd", "--durability", "sometimes"}, "durability"},
        {3, {"kvtcd", "--disk-io", "aio"}, "disk-io"},
        {3, {"kvtcd", "--disk-size", "1K"}, "disk-size"},
        {3, {"kvtcd", "--disk-dir", ""}, "disk-dir"},
        {3, {"kvtcd", "--gpu-mem", "lots"}, "gpu-mem"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_lt(kvtcd_config_from_args(&c, bad[i].argc, bad[i].argv,
                                            &action, err, sizeof err), 0,
                     "case %zu accepted", i);
        cr_assert_not_null(strstr(err, bad[i].msg), "case %zu: '%s'", i, err);
    }
    cr_assert_not_null(strstr(kvtcd_usage(), "--durability"));
    cr_assert_not_null(strstr(kvtcd_usage(), "--disk-io"));
}

Test(daemon_config, host_tier_knobs)
{
    kvtcd_config c;
    int action;
    char err[256] = "";
    /* Unset by default: the host store's own default applies. */
    char *argv0[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv0, &action, err,
                                        sizeof err), 0, "%s", err);
    cr_assert_eq(c.host_prefault, -1);
    cr_assert_eq(c.host_pin, -1);
    char *argv[] = {"kvtcd", "--host-prefault", "off", "--host-pin=on", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 4, argv, &action, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.host_prefault, 0);
    cr_assert_eq(c.host_pin, 1);
    char *path = write_ini("[store]\nhost_prefault = on\nhost_pin = off\n");
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, path, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(c.host_prefault, 1);
    cr_assert_eq(c.host_pin, 0);
    /* The flag overrides the file. */
    char *argv2[] = {"kvtcd", "--config", path, "--host-pin", "1", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 5, argv2, &action, err,
                                        sizeof err), 0, "%s", err);
    cr_assert_eq(c.host_prefault, 1);
    cr_assert_eq(c.host_pin, 1);
    unlink(path);
    char *bad1[] = {"kvtcd", "--host-prefault", "maybe", NULL};
    cr_assert_lt(kvtcd_config_from_args(&c, 3, bad1, &action, err,
                                        sizeof err), 0);
    cr_assert_not_null(strstr(err, "host-prefault"), "%s", err);
    char *bad2[] = {"kvtcd", "--host-pin", "", NULL};
    cr_assert_lt(kvtcd_config_from_args(&c, 3, bad2, &action, err,
                                        sizeof err), 0);
    cr_assert_not_null(strstr(err, "host-pin"), "%s", err);
    cr_assert_not_null(strstr(kvtcd_usage(), "--host-prefault on|off"));
    cr_assert_not_null(strstr(kvtcd_usage(), "--host-pin on|off"));
}

/* --audit-interval / [store] audit_interval: seconds, 0 allowed, the
 * default a minute, a day at most. */
Test(daemon_config, audit_interval)
{
    kvtcd_config c;
    int action;
    char err[256] = "";
    char *argv0[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv0, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.audit_interval, KVTCD_DEFAULT_AUDIT_INTERVAL);
    char *argv[] = {"kvtcd", "--audit-interval", "0", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.audit_interval, 0);
    char *path = write_ini("[store]\naudit_interval = 5\n");
    char *argv2[] = {"kvtcd", "--config", path, NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv2, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.audit_interval, 5);
    unlink(path);
    char *bad[] = {"kvtcd", "--audit-interval", "86401", NULL};
    cr_assert_lt(kvtcd_config_from_args(&c, 3, bad, &action, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "audit"), "%s", err);
    cr_assert_not_null(strstr(kvtcd_usage(), "--audit-interval SEC"));
}

/* --rails / [server] rails: auto by default (none below 8 CPUs, a
 * quarter of them up to 4), or 0 to KVTCD_MAX_RAILS. */
Test(daemon_config, rails)
{
    kvtcd_config c;
    int action;
    char err[256] = "";
    char *argv0[] = {"kvtcd", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 1, argv0, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.rails, KVTCD_RAILS_AUTO);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_eq(kvtcd_rails_auto(), cpus < 8 ? 0 : cpus / 4 < 4 ? (uint32_t)(cpus / 4) : 4);
    char *argv_auto[] = {"kvtcd", "--rails", "0", "--rails", "auto", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 5, argv_auto, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.rails, KVTCD_RAILS_AUTO);
    char *argv[] = {"kvtcd", "--rails", "4", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.rails, 4);
    char *path = write_ini("[server]\nrails = 2\n");
    char *argv2[] = {"kvtcd", "--config", path, NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 3, argv2, &action, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.rails, 2);
    unlink(path);
    char *bad[] = {"kvtcd", "--rails", "17", NULL};
    cr_assert_lt(kvtcd_config_from_args(&c, 3, bad, &action, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "rails"), "%s", err);
    cr_assert_not_null(strstr(kvtcd_usage(), "--rails auto|N"));
}

Test(daemon_config, help_and_version)
{
    kvtcd_config c;
    int action;
    char err[64];
    char *h[] = {"kvtcd", "--host-mem", "bad", "--help", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 4, h, &action, err, sizeof err), 0);
    cr_assert_eq(action, KVTCD_HELP);
    char *v[] = {"kvtcd", "--version", NULL};
    cr_assert_eq(kvtcd_config_from_args(&c, 2, v, &action, err, sizeof err), 0);
    cr_assert_eq(action, KVTCD_VERSION);
    cr_assert_not_null(strstr(kvtcd_usage(), "--port-file"));
}

Test(daemon_config, example_ini_is_valid)
{
    const char *path = "deploy/kvtcd.example.ini";
    if (access(path, R_OK) != 0)
        cr_skip_test("%s not found (run from the repository root)", path);
    kvtcd_config c;
    char err[256] = "";
    kvtcd_config_defaults(&c);
    cr_assert_eq(kvtcd_config_load_ini(&c, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.listen_port, 7700);
    cr_assert_eq(c.host_mem, 1ull << 30);
    /* Every [store] knob is documented there (commented out or set). */
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *keys[] = {"host_prefault =", "host_pin =", "codec_device =",
                          "gpu_mem =", "durability ="};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert_not_null(strstr(text, keys[i]), "%s missing", keys[i]);
}
