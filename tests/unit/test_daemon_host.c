/* The host tier as a slab (daemon/store_host.c, host_slab.c,
 * host_prefault.c): the extent allocator's placement, coalescing and
 * fragmentation, the tier's alignment, capacity and contents across reuse,
 * UCX registration of the region (a real ucp_context), prefaulting and
 * pinning, the per-blob implementation still selectable, and how often
 * mixed-size churn meets a fragmented slab. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "host_slab.h"
#include "kvtc_errors.h"
#include "log.h"
#include "store_host.h"
#include "tier.h"

#define PAGE 4096u

static void quiet(void)
{
    kvtcd_log_set_level(KVTCD_LOG_ERROR);
}

/* ---- the extent allocator alone ---- */

Test(daemon_host, slab_fills_from_the_front_and_coalesces)
{
    kvtcd_slab s;
    cr_assert_eq(kvtcd_slab_init(&s, 64), 0);
    kvtcd_extent *e[8];
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(kvtcd_slab_alloc(&s, 8, &e[i]), 0);
        cr_assert_eq(e[i]->off, (size_t)i * 8, "fresh slab fills upward");
        cr_assert_eq(e[i]->len, 8);
    }
    cr_assert_eq(s.free_pages, 0);
    kvtcd_extent *x;
    cr_assert_eq(kvtcd_slab_alloc(&s, 1, &x), KVTC_EFULL);
    cr_assert_eq(s.frag_fails, 0, "full, not fragmented");
    /* Free 1, 3, then 2 between them: one extent of 24 pages. */
    kvtcd_slab_free(&s, e[1]);
    kvtcd_slab_free(&s, e[3]);
    cr_assert_eq(s.free_extents, 2);
    kvtcd_slab_free(&s, e[2]);
    cr_assert_eq(s.free_extents, 1);
    cr_assert_eq(kvtcd_slab_largest_free(&s), 24);
    cr_assert_eq(kvtcd_slab_alloc(&s, 24, &x), 0);
    cr_assert_eq(x->off, 8);
    kvtcd_slab_free(&s, x);
    for (int i = 0; i < 8; i++)
        if (i < 1 || i > 3)
            kvtcd_slab_free(&s, e[i]);
    cr_assert_eq(s.free_extents, 1, "everything freed merges back");
    cr_assert_eq(s.free_pages, 64);
    cr_assert_eq(s.hwm, 64);
    kvtcd_slab_fini(&s);
}

Test(daemon_host, slab_reuses_freed_extents_before_the_tail)
{
    kvtcd_slab s;
    cr_assert_eq(kvtcd_slab_init(&s, 1024), 0);
    kvtcd_extent *a, *b, *c;
    cr_assert_eq(kvtcd_slab_alloc(&s, 16, &a), 0);
    cr_assert_eq(kvtcd_slab_alloc(&s, 16, &b), 0);
    kvtcd_slab_free(&s, a);
    /* Same size again: the freed (resident) extent, not the tail. */
    cr_assert_eq(kvtcd_slab_alloc(&s, 16, &c), 0);
    cr_assert_eq(c->off, 0);
    cr_assert_eq(s.hwm, 32);
    kvtcd_slab_free(&s, c);
    kvtcd_slab_free(&s, b);
    kvtcd_slab_fini(&s);
}

Test(daemon_host, slab_refuses_when_fragmented)
{
    kvtcd_slab s;
    cr_assert_eq(kvtcd_slab_init(&s, 16), 0);
    kvtcd_extent *e[16];
    for (int i = 0; i < 16; i++)
        cr_assert_eq(kvtcd_slab_alloc(&s, 1, &e[i]), 0);
    for (int i = 0; i < 16; i += 2)
        kvtcd_slab_free(&s, e[i]);
    cr_assert_eq(s.free_pages, 8);
    kvtcd_extent *x;
    cr_assert_eq(kvtcd_slab_alloc(&s, 2, &x), KVTC_EFULL);
    cr_assert_eq(s.frag_fails, 1);
    kvtcd_slab_free(&s, e[1]); /* joins 0..2 */
    cr_assert_eq(kvtcd_slab_alloc(&s, 3, &x), 0);
    cr_assert_eq(x->off, 0);
    kvtcd_slab_fini(&s);
}

/* Random churn against a page map: no overlap, everything in range, the
 * counters exact, and all of it merging back at the end. */
Test(daemon_host, slab_random_churn_keeps_invariants)
{
    enum { PAGES = 4096, LIVE = 64 };
    kvtcd_slab s;
    cr_assert_eq(kvtcd_slab_init(&s, PAGES), 0);
    static uint8_t owner[PAGES];
    memset(owner, 0, sizeof owner);
    kvtcd_extent *live[LIVE] = {0};
    size_t used = 0;
    srand(7);
    for (int op = 0; op < 20000; op++) {
        int i = rand() % LIVE;
        if (live[i]) {
            for (size_t p = 0; p < live[i]->len; p++)
                owner[live[i]->off + p] = 0;
            used -= live[i]->len;
            kvtcd_slab_free(&s, live[i]);
            live[i] = NULL;
        } else {
            size_t n = 1 + (size_t)(rand() % 200);
            kvtcd_extent *e;
            int rc = kvtcd_slab_alloc(&s, n, &e);
            if (rc == KVTC_EFULL)
                continue;
            cr_assert_eq(rc, 0);
            cr_assert_eq(e->len, n);
            cr_assert_leq(e->off + e->len, PAGES);
            for (size_t p = 0; p < n; p++) {
                cr_assert_eq(owner[e->off + p], 0, "overlap at page %zu",
                             e->off + p);
                owner[e->off + p] = (uint8_t)(i + 1);
            }
            used += n;
            live[i] = e;
        }
        cr_assert_eq(s.free_pages, PAGES - used);
    }
    for (int i = 0; i < LIVE; i++)
        if (live[i])
            kvtcd_slab_free(&s, live[i]);
    cr_assert_eq(s.free_pages, PAGES);
    cr_assert_eq(s.free_extents, 1);
    kvtcd_slab_fini(&s);
}

/* ---- the tier ---- */

static kvtcd_tier *make_tier(uint64_t cap, void *ucp)
{
    kvtcd_tier *t = NULL;
    cr_assert_eq(kvtcd_store_host_create(cap, ucp, &t), 0);
    return t;
}

static int inside(const kvtcd_blob *b, const uint8_t *base, size_t len)
{
    return b->data >= base && b->data + b->size <= base + len;
}

Test(daemon_host, blobs_are_page_aligned_inside_the_region, .init = quiet)
{
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    kvtcd_tier *t = make_tier(64u << 20, NULL);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    cr_assert_eq((uintptr_t)base % PAGE, 0);
    cr_assert_eq(len, 64u << 20);
    static const size_t sizes[] = {0, 1, 4095, 4096, 4097, (1u << 20) + 3,
                                   8u << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    kvtcd_blob *b[N];
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(kvtcd_tier_alloc(t, sizes[i], &b[i]), 0);
        cr_assert_eq((uintptr_t)b[i]->data % PAGE, 0, "size %zu", sizes[i]);
        cr_assert_eq(b[i]->size, sizes[i]);
        if (sizes[i] >= PAGE)
            cr_assert(inside(b[i], base, len), "size %zu", sizes[i]);
        memset(b[i]->data, (int)i + 1, sizes[i]);
    }
    for (size_t i = 0; i < N; i++) {
        for (size_t k = 0; k < sizes[i]; k += 511)
            cr_assert_eq(b[i]->data[k], (uint8_t)(i + 1));
        kvtcd_blob_unref(b[i]);
    }
    cr_assert_eq(t->used, 0);
    cr_assert_eq(t->blobs, 0);
    kvtcd_tier_destroy(t);
}

Test(daemon_host, capacity_is_never_exceeded, .init = quiet)
{
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    const uint64_t cap = 8u << 20;
    kvtcd_tier *t = make_tier(cap, NULL);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    cr_assert_leq(len, cap + PAGE - 1);
    kvtcd_blob *b[64];
    int n = 0;
    int rc;
    srand(3);
    while ((rc = kvtcd_tier_alloc(t, PAGE + (size_t)(rand() % (300 << 10)),
                                  &b[n])) == 0) {
        cr_assert(inside(b[n], base, len));
        cr_assert_leq(t->used, cap);
        n++;
        cr_assert_lt(n, 64);
    }
    cr_assert_eq(rc, KVTC_EFULL);
    cr_assert_eq(t->blobs, (uint64_t)n);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_leq(st.high_water_bytes, st.region_bytes);
    for (int i = 0; i < n; i++)
        kvtcd_blob_unref(b[i]);
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.free_extents, 1);
    cr_assert_eq(st.free_bytes, st.region_bytes);
    kvtcd_tier_destroy(t);
}

Test(daemon_host, fragmented_slab_answers_full, .init = quiet)
{
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    kvtcd_tier *t = make_tier(1u << 20, NULL); /* 256 pages */
    kvtcd_blob *b[256];
    for (int i = 0; i < 256; i++)
        cr_assert_eq(kvtcd_tier_alloc(t, PAGE, &b[i]), 0);
    for (int i = 0; i < 256; i += 2)
        kvtcd_blob_unref(b[i]);
    cr_assert_eq(t->used, 128u * PAGE);
    kvtcd_blob *x;
    /* Half the bytes free, no two adjacent pages: full for two pages. */
    cr_assert_eq(kvtcd_tier_alloc(t, 2 * PAGE, &x), KVTC_EFULL);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.frag_full, 1);
    cr_assert_eq(st.largest_free_bytes, PAGE);
    /* What the index does next: evict (here: a neighbour) and retry. */
    kvtcd_blob_unref(b[1]);
    cr_assert_eq(kvtcd_tier_alloc(t, 2 * PAGE, &x), 0);
    kvtcd_blob_unref(x);
    for (int i = 3; i < 256; i += 2)
        kvtcd_blob_unref(b[i]);
    cr_assert_eq(t->used, 0);
    kvtcd_tier_destroy(t);
}

Test(daemon_host, contents_survive_reuse_at_extent_boundaries, .init = quiet)
{
    /* Prefault on: the thread works on pages next to live blobs. */
    kvtcd_tier *t = make_tier(16u << 20, NULL);
    kvtcd_blob *a, *b, *c, *d, *e;
    cr_assert_eq(kvtcd_tier_alloc(t, 3 * PAGE, &a), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 5 * PAGE, &b), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 3 * PAGE, &c), 0);
    cr_assert_eq(b->data, a->data + 3 * PAGE, "adjacent extents");
    cr_assert_eq(c->data, b->data + 5 * PAGE);
    memset(a->data, 0xaa, a->size);
    memset(b->data, 0xbb, b->size);
    memset(c->data, 0xcc, c->size);
    kvtcd_blob_unref(b);
    /* Two smaller blobs in b's hole, written to their last byte. */
    cr_assert_eq(kvtcd_tier_alloc(t, 2 * PAGE, &d), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 3 * PAGE, &e), 0);
    cr_assert(d->data >= a->data + 3 * PAGE && d->data < c->data);
    cr_assert(e->data >= a->data + 3 * PAGE && e->data < c->data);
    memset(d->data, 0xdd, d->size);
    memset(e->data, 0xee, e->size);
    for (size_t k = 0; k < 3 * PAGE; k++) {
        cr_assert_eq(a->data[k], 0xaa, "a[%zu]", k);
        cr_assert_eq(c->data[k], 0xcc, "c[%zu]", k);
    }
    for (size_t k = 0; k < 2 * PAGE; k++)
        cr_assert_eq(d->data[k], 0xdd);
    for (size_t k = 0; k < 3 * PAGE; k++)
        cr_assert_eq(e->data[k], 0xee);
    kvtcd_blob_unref(a);
    kvtcd_blob_unref(c);
    kvtcd_blob_unref(d);
    kvtcd_blob_unref(e);
    /* One blob over all the old ones: writable end to end. */
    cr_assert_eq(kvtcd_tier_alloc(t, 11 * PAGE, &a), 0);
    memset(a->data, 0x5a, a->size);
    cr_assert_eq(a->data[11 * PAGE - 1], 0x5a);
    kvtcd_blob_unref(a);
    kvtcd_tier_destroy(t);
}

Test(daemon_host, prefault_makes_the_front_resident, .init = quiet)
{
    kvtcd_tier *t = make_tier(64u << 20, NULL);
    cr_assert_eq(kvtcd_store_host_wait_resident(t, 32u << 20, 10000), 0);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_geq(st.resident_bytes, 32u << 20);
    cr_assert_leq(st.resident_bytes, st.region_bytes);
    cr_assert_leq(st.locked_bytes, st.resident_bytes);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    /* The kernel agrees: the pages are in. */
    size_t pages = (32u << 20) / PAGE;
    unsigned char *vec = malloc(pages);
    cr_assert_eq(mincore(base, 32u << 20, vec), 0);
    for (size_t i = 0; i < pages; i++)
        cr_assert(vec[i] & 1, "page %zu not resident", i);
    free(vec);
    kvtcd_tier_destroy(t);
}

Test(daemon_host, prefault_off_leaves_pages_to_first_use, .init = quiet)
{
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    kvtcd_tier *t = make_tier(64u << 20, NULL);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.slab, 1);
    cr_assert_eq(st.resident_bytes, 0);
    cr_assert_eq(kvtcd_store_host_wait_resident(t, 1u << 20, 10), 0);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    unsigned char vec[16];
    cr_assert_eq(mincore(base, 16 * PAGE, vec), 0);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(vec[i] & 1, 0, "reserved, not populated");
    kvtcd_tier_destroy(t);
}

/* kvtcd's --host-prefault / --host-pin reach the store as options, which
 * win over the benchmark environment variables. */
Test(daemon_host, create_ex_options_override_the_environment, .init = quiet)
{
    kvtcd_tier *t = NULL;
    kvtcd_host_stats st;
    kvtcd_host_opts bad = {.field_mask = 1u << 7};
    cr_assert_eq(kvtcd_store_host_create_ex(8u << 20, NULL, &bad, &t),
                 KVTC_EINVAL, "an unknown field_mask bit is refused");
    /* The environment says no prefault; the option says prefault, no pin. */
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    kvtcd_host_opts on = {.field_mask = KVTCD_HOST_OPT_PREFAULT |
                                        KVTCD_HOST_OPT_PIN,
                          .prefault = 1, .pin = 0};
    cr_assert_eq(kvtcd_store_host_create_ex(64u << 20, NULL, &on, &t), 0);
    cr_assert_eq(kvtcd_store_host_wait_resident(t, 32u << 20, 10000), 0);
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_geq(st.resident_bytes, 32u << 20, "prefault option ignored");
    cr_assert_eq(st.locked_bytes, 0, "pin off, yet memory was locked");
    kvtcd_tier_destroy(t);
    /* The environment allows prefault; the option turns it off. */
    unsetenv("KVTCD_HOST_PREFAULT");
    kvtcd_host_opts off = {.field_mask = KVTCD_HOST_OPT_PREFAULT,
                           .prefault = 0};
    cr_assert_eq(kvtcd_store_host_create_ex(64u << 20, NULL, &off, &t), 0);
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.resident_bytes, 0);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    unsigned char vec[16];
    cr_assert_eq(mincore(base, 16 * PAGE, vec), 0);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(vec[i] & 1, 0, "prefault off, yet populated");
    kvtcd_tier_destroy(t);
    /* No options (or none set) is kvtcd_store_host_create: prefault on. */
    kvtcd_host_opts none = {0};
    cr_assert_eq(kvtcd_store_host_create_ex(64u << 20, NULL, &none, &t), 0);
    cr_assert_eq(kvtcd_store_host_wait_resident(t, 32u << 20, 10000), 0);
    kvtcd_tier_destroy(t);
}

/* ---- UCX registration ---- */

static ucp_context_h make_ucp(void)
{
    ucp_params_t p = {
        .field_mask = UCP_PARAM_FIELD_FEATURES,
        .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
    };
    ucp_config_t *cfg;
    cr_assert_eq(ucp_config_read(NULL, NULL, &cfg), UCS_OK);
    ucp_context_h ctx;
    ucs_status_t st = ucp_init(&p, cfg, &ctx);
    ucp_config_release(cfg);
    cr_assert_eq(st, UCS_OK, "ucp_init: %s", ucs_status_string(st));
    return ctx;
}

/* memh covers [p, p + n). */
static void assert_covers(void *memh, const uint8_t *p, size_t n)
{
    cr_assert_not_null(memh);
    ucp_mem_attr_t a = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS |
                                      UCP_MEM_ATTR_FIELD_LENGTH};
    cr_assert_eq(ucp_mem_query((ucp_mem_h)memh, &a), UCS_OK);
    cr_assert((const uint8_t *)a.address <= p);
    cr_assert((const uint8_t *)a.address + a.length >= p + n);
}

static void ucx_env(void)
{
    quiet();
    setenv("UCX_TLS", "tcp,sm,self", 1);
    setenv("UCX_NET_DEVICES", "lo", 1);
    setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 1);
}

Test(daemon_host, region_registered_once_with_ucx, .init = ucx_env)
{
    ucp_context_h ucp = make_ucp();
    /* 1 GiB reserved and registered before anything is populated. */
    kvtcd_tier *t = make_tier(1ull << 30, ucp);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.region_registered, 1);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), 0);
    kvtcd_blob *a, *b, *s;
    cr_assert_eq(kvtcd_tier_alloc(t, 4u << 20, &a), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 300000, &b), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 100, &s), 0);
    cr_assert_eq(a->memh, b->memh, "one registration for the region");
    assert_covers(a->memh, base, len);
    assert_covers(s->memh, s->data, s->size); /* small: its own */
    kvtcd_blob_unref(a);
    kvtcd_blob_unref(b);
    kvtcd_blob_unref(s);
    kvtcd_tier_destroy(t);
    ucp_cleanup(ucp);
}

Test(daemon_host, per_extent_registration_fallback, .init = ucx_env)
{
    setenv("KVTCD_HOST_REGISTER", "extent", 1);
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    ucp_context_h ucp = make_ucp();
    kvtcd_tier *t = make_tier(64u << 20, ucp);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.region_registered, 0);
    kvtcd_blob *a, *b;
    cr_assert_eq(kvtcd_tier_alloc(t, 4u << 20, &a), 0);
    cr_assert_eq(kvtcd_tier_alloc(t, 1u << 20, &b), 0);
    cr_assert_neq(a->memh, b->memh);
    assert_covers(a->memh, a->data, a->size);
    assert_covers(b->memh, b->data, b->size);
    kvtcd_blob_unref(a);
    kvtcd_blob_unref(b);
    kvtcd_tier_destroy(t);
    ucp_cleanup(ucp);
}

Test(daemon_host, per_blob_store_still_selectable, .init = ucx_env)
{
    setenv("KVTCD_HOST_SLAB", "0", 1);
    ucp_context_h ucp = make_ucp();
    kvtcd_tier *t = make_tier(16u << 20, ucp);
    void *base;
    size_t len;
    cr_assert_eq(kvtcd_store_host_region(t, &base, &len), KVTC_ENOTSUP);
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.slab, 0);
    kvtcd_blob *a;
    cr_assert_eq(kvtcd_tier_alloc(t, 4u << 20, &a), 0);
    assert_covers(a->memh, a->data, a->size);
    memset(a->data, 1, a->size);
    kvtcd_blob_unref(a);
    kvtcd_tier_destroy(t);
    ucp_cleanup(ucp);
}

/* ---- fragmentation under churn ---- */

/* Mixed KV chunk sizes (256 KiB .. 32 MiB, not page multiples) stored and
 * evicted oldest-first as the index does, in a 1 GiB tier: how often does
 * a put meet EFULL although its bytes would fit, and how much is evicted
 * beyond what the bytes alone need. Printed for docs/perf-notes.md. */
Test(daemon_host, churn_of_mixed_sizes_fragmentation, .init = quiet)
{
    setenv("KVTCD_HOST_PREFAULT", "0", 1);
    const uint64_t cap = 1ull << 30;
    kvtcd_tier *t = make_tier(cap, NULL);
    static const size_t base_sizes[] = {256u << 10, 1u << 20, 4u << 20,
                                        16u << 20, 32u << 20};
    enum { RING = 4096, PUTS = 20000 };
    static kvtcd_blob *ring[RING];
    size_t head = 0, tail = 0; /* oldest at tail */
    uint64_t frag_puts = 0, frag_evictions = 0, evictions = 0;
    double util_at_frag = 0, occupancy = 0;
    srand(11);
    for (int i = 0; i < PUTS; i++) {
        size_t s = base_sizes[rand() % 5];
        s = s / 2 + (size_t)rand() % (s / 2) + 1; /* 50..100% of a class */
        kvtcd_blob *b;
        int fragged = 0;
        int rc;
        while ((rc = kvtcd_tier_alloc(t, s, &b)) == KVTC_EFULL) {
            cr_assert_neq(head, tail, "empty tier refused %zu bytes", s);
            if (t->used + s <= cap) {
                if (!fragged)
                    util_at_frag += (double)t->used / (double)cap;
                fragged = 1;
                frag_evictions++;
            }
            kvtcd_blob_unref(ring[tail]);
            tail = (tail + 1) % RING;
            evictions++;
        }
        cr_assert_eq(rc, 0);
        frag_puts += (uint64_t)fragged;
        if (i >= PUTS / 2) /* steady state: bytes held after each put */
            occupancy += (double)t->used / (double)cap;
        ring[head] = b;
        head = (head + 1) % RING;
        cr_assert_neq(head, tail);
    }
    kvtcd_host_stats st;
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    fprintf(stderr,
            "host slab churn: %d puts, %.2f%% met EFULL with enough bytes "
            "free (mean use then %.1f%%), %llu of %llu evictions due to "
            "fragmentation, mean occupancy %.1f%%, %llu free extents now, "
            "largest %.1f MiB\n",
            PUTS, 100.0 * (double)frag_puts / PUTS,
            frag_puts ? 100.0 * util_at_frag / (double)frag_puts : 0.0,
            (unsigned long long)frag_evictions,
            (unsigned long long)evictions,
            100.0 * occupancy / (PUTS - PUTS / 2),
            (unsigned long long)st.free_extents,
            (double)st.largest_free_bytes / (1 << 20));
    /* Every put got placed; fragmentation cost evictions, not failures. */
    while (tail != head) {
        kvtcd_blob_unref(ring[tail]);
        tail = (tail + 1) % RING;
    }
    cr_assert_eq(t->used, 0);
    cr_assert_eq(kvtcd_store_host_stats(t, &st), 0);
    cr_assert_eq(st.free_extents, 1);
    kvtcd_tier_destroy(t);
}
