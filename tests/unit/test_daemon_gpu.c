/* The GPU tier: its extent allocator (no GPU needed), kvtcd_gpu_open's
 * clean failure without a driver, and, where a CUDA device is present,
 * byte-exact copies through the staging pipeline (odd sizes, sizes around
 * the 8 MiB staging pieces, 100 MiB), many copies in flight, ordering of
 * copies of one extent, deferred frees, fill/free/refill with data checks,
 * and close with copies in flight. Without a device the data tests skip
 * with "no CUDA device: <reason>". Every data test also runs in suite
 * gpu_fake over a fake driver (test_daemon_gpu_fake.c: host memory, one
 * thread per stream), so the pipeline is exercised, under ASan too, on
 * machines without a GPU; those also check that close frees everything. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cuda_driver.h"
#include "extent_alloc.h"
#include "kvtc_errors.h"
#include "par_copy.h"
#include "store_gpu.h"
#include "test_daemon_gpu_fake.h"

#define MiB (1ull << 20)

#define CANARY_PC 64

/* ---- extent allocator (CPU only) ----------------------------------- */

TestSuite(gpu_extents);

Test(gpu_extents, init_rejects_bad_arguments)
{
    kvtcd_xalloc a;
    cr_assert_eq(kvtcd_xalloc_init(&a, 100, 256), KVTC_EINVAL);
    cr_assert_eq(kvtcd_xalloc_init(&a, 4096, 3), KVTC_EINVAL);
    cr_assert_eq(kvtcd_xalloc_init(&a, 1000, 256), 0);
    cr_assert_eq(a.capacity, 768, "capacity rounds down to the alignment");
    kvtcd_xalloc_fini(&a);
}

Test(gpu_extents, rounds_and_aligns)
{
    kvtcd_xalloc a;
    cr_assert_eq(kvtcd_xalloc_init(&a, 1 * MiB, 256), 0);
    kvtcd_xblock *b1, *b2, *b3;
    cr_assert_eq(kvtcd_xalloc_get(&a, 0, &b1), KVTC_EINVAL);
    cr_assert_eq(kvtcd_xalloc_get(&a, 1, &b1), 0);
    cr_assert_eq(kvtcd_xalloc_get(&a, 257, &b2), 0);
    cr_assert_eq(kvtcd_xalloc_get(&a, 256, &b3), 0);
    cr_assert_eq(b1->len, 256);
    cr_assert_eq(b2->len, 512);
    cr_assert_eq(b3->len, 256);
    cr_assert_eq(b1->off % 256, 0);
    cr_assert_eq(b2->off % 256, 0);
    cr_assert_eq(b3->off % 256, 0);
    cr_assert_eq(a.used, 1024);
    cr_assert_eq(kvtcd_xalloc_find(&a, b2->off), b2);
    cr_assert_null(kvtcd_xalloc_find(&a, b2->off + 256));
    kvtcd_xalloc_hide(&a, b2);
    cr_assert_null(kvtcd_xalloc_find(&a, b2->off), "hidden blocks are unfindable");
    cr_assert_eq(a.used, 1024, "a hidden block stays used");
    kvtcd_xalloc_put(&a, b2);
    kvtcd_xalloc_put(&a, b1);
    kvtcd_xalloc_put(&a, b3);
    cr_assert_eq(a.used, 0);
    cr_assert_eq(a.free_blocks, 1, "everything coalesced");
    cr_assert_eq(kvtcd_xalloc_largest_free(&a), 1 * MiB);
    kvtcd_xalloc_fini(&a);
}

Test(gpu_extents, fill_to_full_free_coalesce_refill)
{
    kvtcd_xalloc a;
    const uint64_t cap = 1 * MiB;
    const unsigned n = (unsigned)(cap / 256);
    cr_assert_eq(kvtcd_xalloc_init(&a, cap, 256), 0);
    kvtcd_xblock **b = calloc(n, sizeof *b);
    cr_assert_not_null(b);
    for (int round = 0; round < 2; round++) {
        for (unsigned i = 0; i < n; i++)
            cr_assert_eq(kvtcd_xalloc_get(&a, 200, &b[i]), 0, "block %u", i);
        kvtcd_xblock *x;
        cr_assert_eq(kvtcd_xalloc_get(&a, 1, &x), KVTC_EFULL);
        cr_assert_eq(a.used, cap);
        cr_assert_eq(kvtcd_xalloc_largest_free(&a), 0);
        /* Every other block: 256 free bytes in n/2 pieces, none adjacent. */
        for (unsigned i = 0; i < n; i += 2)
            kvtcd_xalloc_put(&a, b[i]);
        cr_assert_eq(kvtcd_xalloc_largest_free(&a), 256);
        cr_assert_eq(kvtcd_xalloc_get(&a, 512, &x), KVTC_EFULL,
                     "fragmented: no 512-byte hole");
        for (unsigned i = 1; i < n; i += 2)
            kvtcd_xalloc_put(&a, b[i]);
        cr_assert_eq(a.used, 0);
        cr_assert_eq(a.free_blocks, 1);
        cr_assert_eq(kvtcd_xalloc_get(&a, cap, &x), 0, "coalesced whole");
        cr_assert_eq(x->off, 0);
        kvtcd_xalloc_put(&a, x);
    }
    free(b);
    kvtcd_xalloc_fini(&a);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_blk(const void *x, const void *y)
{
    const kvtcd_xblock *a = *(kvtcd_xblock *const *)x;
    const kvtcd_xblock *b = *(kvtcd_xblock *const *)y;
    return a->off < b->off ? -1 : a->off > b->off;
}

Test(gpu_extents, random_churn_never_overlaps)
{
    kvtcd_xalloc a;
    const uint64_t cap = 64 * MiB;
    cr_assert_eq(kvtcd_xalloc_init(&a, cap, 256), 0);
    enum { MAXLIVE = 2048 };
    kvtcd_xblock *live[MAXLIVE], *sorted[MAXLIVE];
    unsigned nlive = 0;
    uint64_t s = 0x9e3779b97f4a7c15ull, fulls = 0;
    for (int op = 0; op < 40000; op++) {
        int want_get = nlive == 0 || (nlive < MAXLIVE && rng_next(&s) % 100 < 55);
        if (want_get) {
            /* Mixed sizes: mostly small, some large (up to 4 MiB). */
            uint64_t r = rng_next(&s);
            uint64_t len = (r & 3) == 0 ? 1 + (r >> 8) % (4 * MiB)
                                        : 1 + (r >> 8) % (64 << 10);
            kvtcd_xblock *x;
            int rc = kvtcd_xalloc_get(&a, len, &x);
            if (rc == KVTC_EFULL) {
                fulls++;
                continue;
            }
            cr_assert_eq(rc, 0);
            cr_assert_geq(x->len, len);
            cr_assert_eq(x->off % 256, 0);
            cr_assert_leq(x->off + x->len, cap);
            live[nlive++] = x;
        } else {
            unsigned i = (unsigned)(rng_next(&s) % nlive);
            kvtcd_xalloc_put(&a, live[i]);
            live[i] = live[--nlive];
        }
        if (op % 997 == 0) {
            uint64_t sum = 0;
            memcpy(sorted, live, nlive * sizeof *live);
            qsort(sorted, nlive, sizeof *sorted, cmp_blk);
            for (unsigned i = 0; i < nlive; i++) {
                sum += sorted[i]->len;
                cr_assert_eq(kvtcd_xalloc_find(&a, sorted[i]->off), sorted[i]);
                if (i)
                    cr_assert_leq(sorted[i - 1]->off + sorted[i - 1]->len,
                                  sorted[i]->off, "blocks overlap");
            }
            cr_assert_eq(sum, a.used);
        }
    }
    while (nlive)
        kvtcd_xalloc_put(&a, live[--nlive]);
    cr_assert_eq(a.used, 0);
    cr_assert_eq(a.free_blocks, 1, "all free space coalesced at the end");
    kvtcd_xalloc_fini(&a);
}

/* ---- parallel memcpy ----------------------------------------------- */

Test(gpu_pcopy, rejects_bad_helper_counts)
{
    kvtcd_pcopy *p = NULL;
    cr_assert_eq(kvtcd_pcopy_create(-1, &p), KVTC_EINVAL);
    cr_assert_eq(kvtcd_pcopy_create(KVTCD_PCOPY_MAX_HELPERS + 1, &p),
                 KVTC_EINVAL);
    cr_assert_null(p);
    kvtcd_pcopy_destroy(NULL);
    int d = kvtcd_pcopy_default_helpers();
    cr_assert(d >= 0 && d <= 4);
}

Test(gpu_pcopy, copies_exactly_at_any_size_and_offset)
{
    static const size_t sizes[] = {0, 1, 4095, (1u << 20) - 1, 1u << 20,
                                   (1u << 20) + 1, (8u << 20) + 13,
                                   (33u << 20) + 7};
    static const int helpers[] = {0, 1, 3, KVTCD_PCOPY_MAX_HELPERS};
    const size_t max = (33u << 20) + 7 + 64;
    uint8_t *src = malloc(max), *dst = malloc(max + 2 * CANARY_PC);
    cr_assert(src && dst);
    for (size_t h = 0; h < sizeof helpers / sizeof *helpers; h++) {
        kvtcd_pcopy *p = NULL;
        cr_assert_eq(kvtcd_pcopy_create(helpers[h], &p), 0);
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k], so = k % 7, dof = (k * 5) % 11;
            uint64_t s = k + 1 + h * 100;
            for (size_t i = 0; i < n + so; i++)
                src[i] = (uint8_t)rng_next(&s);
            memset(dst, 0x5A, max + 2 * CANARY_PC);
            kvtcd_pcopy_run(p, dst + CANARY_PC + dof, src + so, n);
            cr_assert(memcmp(dst + CANARY_PC + dof, src + so, n) == 0,
                      "helpers %d size %zu", helpers[h], n);
            for (size_t i = 0; i < CANARY_PC + dof; i++)
                cr_assert_eq(dst[i], 0x5A, "wrote before the range");
            for (size_t i = CANARY_PC + dof + n; i < max + 2 * CANARY_PC; i++)
                if (dst[i] != 0x5A)
                    cr_assert_fail("helpers %d size %zu: wrote past the end",
                                   helpers[h], n);
        }
        kvtcd_pcopy_destroy(p);
    }
    free(src);
    free(dst);
}

/* ---- the tier ------------------------------------------------------ */

TestSuite(gpu_tier, .timeout = 120);
TestSuite(gpu_fake, .timeout = 120);

Test(gpu_tier, open_rejects_bad_arguments)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    kvtcd_gpu *g = NULL;
    cr_assert_eq(kvtcd_gpu_open(&loop, 0, 0, &g), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_open(&loop, -1, 1 * MiB, &g), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_open(NULL, 0, 1 * MiB, &g), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_open(&loop, 0, 1 * MiB, NULL), KVTC_EINVAL);
    cr_assert_null(g);
    uv_loop_close(&loop);
}

Test(gpu_tier, open_without_driver_is_enotsup)
{
    /* Criterion runs each test in its own process: the failed load stays
     * in this one. */
    kvtcd__cuda_set_library("libcuda-kvtc-test-missing.so.1");
    uv_loop_t loop;
    uv_loop_init(&loop);
    kvtcd_gpu *g = NULL;
    cr_assert_eq(kvtcd_gpu_open(&loop, 0, 1 * MiB, &g), KVTC_ENOTSUP);
    cr_assert_null(g);
    const char *why = kvtcd_gpu_last_error();
    cr_assert(strstr(why, "no CUDA driver") != NULL, "reason: %s", why);
    cr_assert(strstr(why, "libcuda-kvtc-test-missing.so.1") != NULL,
              "reason names the library: %s", why);
    /* A second open reports the same without retrying the load. */
    cr_assert_eq(kvtcd_gpu_open(&loop, 0, 1 * MiB, &g), KVTC_ENOTSUP);
    cr_assert_eq(uv_run(&loop, UV_RUN_NOWAIT), 0, "nothing left on the loop");
    cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(gpu_tier, open_succeeds_or_fails_with_a_reason)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    kvtcd_gpu *g = NULL;
    int rc = kvtcd_gpu_open(&loop, 0, 1 * MiB, &g);
    if (rc == 0) {
        kvtcd_gpu_stats st;
        kvtcd_gpu_get_stats(g, &st);
        cr_assert_eq(st.capacity, 1 * MiB);
        cr_assert_eq(st.used, 0);
        cr_assert(st.device_name[0] != '\0');
        kvtcd_gpu_close(g, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        cr_assert_eq(rc, KVTC_ENOTSUP, "got %s", kvtc_strerror(rc));
        cr_assert_null(g);
        const char *why = kvtcd_gpu_last_error();
        cr_assert(strncmp(why, "no CUDA", 7) == 0, "reason: %s", why);
        /* No device past the last one either. */
        cr_assert_eq(kvtcd_gpu_open(&loop, 4096, 1 * MiB, &g), KVTC_ENOTSUP);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* ---- helpers for the data tests ------------------------------------ */

static int g_fake; /* this process runs the gpu_fake suite */

static void use_fake_driver(void)
{
    g_fake = 1;
    kvtcd__cuda_set_table(gpu_fake_table());
    /* CI machines have few CPUs (the default would be 0 helpers): make
     * the split staging memcpy run here too. */
    kvtcd__gpu_set_copy_helpers(3);
}

/* Each data test runs twice: on the device (gpu_tier, skipped without
 * one) and on the fake driver (gpu_fake). */
#define DATA_TEST(name)                                         \
    static void body_##name(void);                              \
    Test(gpu_tier, name) { body_##name(); }                     \
    Test(gpu_fake, name, .init = use_fake_driver) { body_##name(); } \
    static void body_##name(void)

struct fx {
    uv_loop_t loop;
    uv_timer_t guard;       /* wakes the loop so run_until can time out */
    kvtcd_gpu *g;
    int closed;
};

static void guard_tick(uv_timer_t *t)
{
    (void)t;
}

static void fx_open(struct fx *f, uint64_t capacity)
{
    memset(f, 0, sizeof *f);
    cr_assert_eq(uv_loop_init(&f->loop), 0);
    int rc = kvtcd_gpu_open(&f->loop, 0, capacity, &f->g);
    if (rc == KVTC_ENOTSUP) {
        uv_loop_close(&f->loop);
        cr_skip_test("no CUDA device: %s", kvtcd_gpu_last_error());
    }
    cr_assert_eq(rc, 0, "kvtcd_gpu_open: %s (%s)", kvtc_strerror(rc),
                 kvtcd_gpu_last_error());
    uv_timer_init(&f->loop, &f->guard);
    uv_timer_start(&f->guard, guard_tick, 50, 50);
}

/* Run the loop until *counter reaches want (60 s at most). */
static void run_until(struct fx *f, const int *counter, int want)
{
    uint64_t deadline = uv_hrtime() + 60ull * 1000000000ull;
    while (*counter < want) {
        cr_assert_lt(uv_hrtime(), deadline, "timed out: %d of %d", *counter,
                     want);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static void on_closed(void *arg)
{
    ((struct fx *)arg)->closed++;
}

static void fx_close(struct fx *f)
{
    kvtcd_gpu_close(f->g, on_closed, f);
    run_until(f, &f->closed, 1);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&f->loop), 0, "handles left on the loop");
    if (g_fake)
        cr_assert_eq(gpu_fake_live(), 0, "close left driver objects behind");
}

struct op {
    int done;
    int status;
    int calls;
    int *counter;
};

static void op_cb(void *arg, int status)
{
    struct op *o = arg;
    o->calls++;
    o->done = 1;
    o->status = status;
    if (o->counter)
        (*o->counter)++;
}

static void fill_pattern(uint8_t *p, uint64_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rng_next(&s);
        memcpy(p + i, &v, 8);
    }
    uint64_t v = rng_next(&s);
    for (; i < n; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static int sync_copy(struct fx *f, int write, const kvtcd_gpu_loc *loc,
                     void *buf, uint64_t len)
{
    struct op o = {0};
    int rc = write ? kvtcd_gpu_write(f->g, loc, buf, len, op_cb, &o)
                   : kvtcd_gpu_read(f->g, loc, buf, len, op_cb, &o);
    if (rc < 0)
        return rc;
    cr_assert_eq(o.calls, 0, "callback ran inline");
    run_until(f, &o.done, 1);
    cr_assert_eq(o.calls, 1);
    return o.status;
}

#define POISON 0xC5
#define CANARY 4096

/* Read loc into a poisoned buffer with canaries on both sides; assert the
 * bytes equal want and no byte outside [0, len) changed. */
static void read_and_check(struct fx *f, const kvtcd_gpu_loc *loc,
                           const uint8_t *want, uint64_t len)
{
    uint8_t *buf = malloc(len + 2 * CANARY);
    cr_assert_not_null(buf);
    memset(buf, POISON, len + 2 * CANARY);
    cr_assert_eq(sync_copy(f, 0, loc, buf + CANARY, len), 0);
    cr_assert(memcmp(buf + CANARY, want, len) == 0,
              "read back differs (len %llu)", (unsigned long long)len);
    for (uint64_t i = 0; i < CANARY; i++) {
        cr_assert_eq(buf[i], POISON, "canary before the buffer at %llu",
                     (unsigned long long)i);
        cr_assert_eq(buf[CANARY + len + i], POISON,
                     "canary after the buffer at %llu", (unsigned long long)i);
    }
    free(buf);
}

/* ---- data tests (skip without a device) ---------------------------- */

DATA_TEST(round_trips_are_byte_exact)
{
    static const uint64_t sizes[] = {1, 255, 256, 8 * MiB - 1, 8 * MiB + 1,
                                     100 * MiB};
    struct fx f;
    fx_open(&f, 256 * MiB);
    uint64_t total = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        uint64_t n = sizes[k];
        uint8_t *src = malloc(n);
        cr_assert_not_null(src);
        fill_pattern(src, n, k + 1);
        kvtcd_gpu_loc loc;
        cr_assert_eq(kvtcd_gpu_alloc(f.g, n, &loc), 0);
        cr_assert_eq(loc.len, n);
        cr_assert_eq(loc.off % 256, 0);
        cr_assert_eq(sync_copy(&f, 1, &loc, src, n), 0, "write %llu",
                     (unsigned long long)n);
        read_and_check(&f, &loc, src, n);
        total += n;
        if (n > 1) {
            /* A read shorter than the extent returns its head only. */
            read_and_check(&f, &loc, src, n / 2);
        }
        free(src);
        kvtcd_gpu_free(f.g, &loc);
    }
    kvtcd_gpu_stats st;
    kvtcd_gpu_get_stats(f.g, &st);
    cr_assert_eq(st.bytes_written, total);
    cr_assert_eq(st.errors, 0);
    cr_assert_eq(st.used, 0);
    fx_close(&f);
}

DATA_TEST(rejects_bad_locs_and_lengths)
{
    struct fx f;
    fx_open(&f, 4 * MiB);
    uint8_t buf[1024];
    memset(buf, 1, sizeof buf);
    kvtcd_gpu_loc loc, bogus = {.off = 512, .len = 256};
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 300, &loc), 0);
    cr_assert_eq(kvtcd_gpu_write(f.g, &loc, buf, 0, op_cb, NULL), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_write(f.g, &loc, buf, 301, op_cb, NULL), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_read(f.g, &bogus, buf, 256, op_cb, NULL),
                 KVTC_EINVAL, "not an allocated extent");
    kvtcd_gpu_loc big = loc;
    big.len = 4096;
    cr_assert_eq(kvtcd_gpu_write(f.g, &big, buf, 1024, op_cb, NULL),
                 KVTC_EINVAL, "loc longer than its extent");
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 0, &big), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 5 * MiB, &big), KVTC_EFULL);
    kvtcd_gpu_free(f.g, &bogus); /* logged and ignored */
    kvtcd_gpu_free(f.g, &loc);
    kvtcd_gpu_free(f.g, &loc); /* double free: logged and ignored */
    kvtcd_gpu_stats st;
    kvtcd_gpu_get_stats(f.g, &st);
    cr_assert_eq(st.used, 0);
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 4 * MiB, &big), 0, "all space back");
    fx_close(&f);
}

DATA_TEST(many_concurrent_copies)
{
    enum { N = 48 };
    struct fx f;
    fx_open(&f, 256 * MiB);
    uint8_t *src[N], *dst[N];
    kvtcd_gpu_loc loc[N];
    uint64_t len[N];
    struct op w[N], r[N];
    int wdone = 0, rdone = 0;
    uint64_t s = 12345;
    memset(w, 0, sizeof w);
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++) {
        len[i] = 1 + rng_next(&s) % (3 * MiB);
        src[i] = malloc(len[i]);
        dst[i] = malloc(len[i]);
        cr_assert(src[i] && dst[i]);
        fill_pattern(src[i], len[i], 100 + (uint64_t)i);
        memset(dst[i], POISON, len[i]);
        cr_assert_eq(kvtcd_gpu_alloc(f.g, len[i], &loc[i]), 0);
    }
    /* Every write, and every read right behind its write (not waiting for
     * the write's callback): the tier orders copies of one extent. */
    for (int i = 0; i < N; i++) {
        w[i].counter = &wdone;
        r[i].counter = &rdone;
        cr_assert_eq(kvtcd_gpu_write(f.g, &loc[i], src[i], len[i], op_cb,
                                     &w[i]), 0);
        cr_assert_eq(kvtcd_gpu_read(f.g, &loc[i], dst[i], len[i], op_cb,
                                    &r[i]), 0);
    }
    run_until(&f, &rdone, N);
    run_until(&f, &wdone, N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(w[i].calls, 1);
        cr_assert_eq(r[i].calls, 1);
        cr_assert_eq(w[i].status, 0);
        cr_assert_eq(r[i].status, 0);
        cr_assert(memcmp(src[i], dst[i], len[i]) == 0, "copy %d differs", i);
    }
    /* Reads of everything at once, then overwrite half while their reads
     * may still be in flight: each read sees the first bytes. */
    wdone = rdone = 0;
    for (int i = 0; i < N; i++) {
        memset(dst[i], POISON, len[i]);
        memset(&r[i], 0, sizeof r[i]);
        memset(&w[i], 0, sizeof w[i]);
        r[i].counter = &rdone;
        w[i].counter = &wdone;
    }
    uint8_t *junk = malloc(3 * MiB);
    cr_assert_not_null(junk);
    memset(junk, 0x11, 3 * MiB);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(kvtcd_gpu_read(f.g, &loc[i], dst[i], len[i], op_cb,
                                    &r[i]), 0);
        if (i % 2 == 0)
            cr_assert_eq(kvtcd_gpu_write(f.g, &loc[i], junk, len[i], op_cb,
                                         &w[i]), 0);
    }
    run_until(&f, &rdone, N);
    run_until(&f, &wdone, N / 2);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].status, 0);
        cr_assert(memcmp(src[i], dst[i], len[i]) == 0,
                     "read %d saw a later write", i);
        if (i % 2 == 0)
            read_and_check(&f, &loc[i], junk, len[i]);
        free(src[i]);
        free(dst[i]);
        kvtcd_gpu_free(f.g, &loc[i]);
    }
    free(junk);
    fx_close(&f);
}

DATA_TEST(fill_to_full_free_and_refill_keeps_data)
{
    /* 64 MiB slab in 1 MiB extents, each holding its own pattern. */
    enum { N = 64 };
    const uint64_t ext = 1 * MiB;
    struct fx f;
    fx_open(&f, N * ext);
    uint8_t *buf = malloc(ext);
    cr_assert_not_null(buf);
    kvtcd_gpu_loc loc[N];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &loc[i]), 0, "extent %d", i);
            fill_pattern(buf, ext, 1000 * (uint64_t)round + (uint64_t)i);
            cr_assert_eq(sync_copy(&f, 1, &loc[i], buf, ext), 0);
        }
        kvtcd_gpu_loc x;
        cr_assert_eq(kvtcd_gpu_alloc(f.g, 1, &x), KVTC_EFULL);
        /* Free every other: 32 holes of 1 MiB, no 2 MiB one. */
        for (int i = 0; i < N; i += 2)
            kvtcd_gpu_free(f.g, &loc[i]);
        cr_assert_eq(kvtcd_gpu_alloc(f.g, 2 * ext, &x), KVTC_EFULL);
        /* Refill the holes with new data; the others must be untouched. */
        for (int i = 0; i < N; i += 2) {
            cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &loc[i]), 0);
            fill_pattern(buf, ext, 5000 + (uint64_t)i);
            cr_assert_eq(sync_copy(&f, 1, &loc[i], buf, ext), 0);
        }
        for (int i = 0; i < N; i++) {
            fill_pattern(buf, ext, i % 2 ? 1000 * (uint64_t)round + (uint64_t)i
                                         : 5000 + (uint64_t)i);
            read_and_check(&f, &loc[i], buf, ext);
        }
        /* Free all: the slab coalesces back into one extent. */
        for (int i = 0; i < N; i++)
            kvtcd_gpu_free(f.g, &loc[i]);
        cr_assert_eq(kvtcd_gpu_alloc(f.g, N * ext, &x), 0, "coalesced");
        kvtcd_gpu_free(f.g, &x);
    }
    free(buf);
    fx_close(&f);
}

DATA_TEST(free_with_copies_in_flight_is_deferred)
{
    struct fx f;
    const uint64_t ext = 32 * MiB;
    fx_open(&f, 2 * ext);
    uint8_t *src = malloc(ext), *dst = malloc(ext);
    cr_assert(src && dst);
    fill_pattern(src, ext, 77);
    memset(dst, POISON, ext);
    kvtcd_gpu_loc a, b, c;
    cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &a), 0);
    cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &b), 0);
    cr_assert_eq(sync_copy(&f, 1, &a, src, ext), 0);
    struct op o = {0};
    cr_assert_eq(kvtcd_gpu_read(f.g, &a, dst, ext, op_cb, &o), 0);
    kvtcd_gpu_free(f.g, &a); /* while the read runs */
    cr_assert_eq(kvtcd_gpu_read(f.g, &a, dst, ext, op_cb, &o), KVTC_EINVAL,
                 "a freed loc takes no new copies");
    if (!o.done) {
        cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &c), KVTC_EFULL,
                     "the freed extent is not reused before its read reports");
    }
    run_until(&f, &o.done, 1);
    cr_assert_eq(o.status, 0);
    cr_assert(memcmp(src, dst, ext) == 0);
    cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &c), 0, "reusable after the read");
    cr_assert_eq(c.off, a.off);
    kvtcd_gpu_free(f.g, &b);
    kvtcd_gpu_free(f.g, &c);
    free(src);
    free(dst);
    fx_close(&f);
}

DATA_TEST(registered_host_memory_skips_staging)
{
    struct fx f;
    fx_open(&f, 128 * MiB);
    const uint64_t region = 48 * MiB;
    uint8_t *host = NULL;
    cr_assert_eq(posix_memalign((void **)&host, 4096, region), 0);
    memset(host, 0, region);
    cr_assert_eq(kvtcd_gpu_register_host(f.g, NULL, region), KVTC_EINVAL);
    cr_assert_eq(kvtcd_gpu_register_host(f.g, host, region), 0);
    /* Copies from inside the region (direct), and one straddling its end
     * plus a plain malloc buffer (staged): all byte-exact. */
    const uint64_t n = 20 * MiB + 3;
    uint8_t *src = host + 4096 + 1, *back = host + 24 * MiB;
    fill_pattern(src, n, 42);
    kvtcd_gpu_loc a, b;
    cr_assert_eq(kvtcd_gpu_alloc(f.g, n, &a), 0);
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 8 * MiB, &b), 0);
    int copies = gpu_fake_copies();
    cr_assert_eq(sync_copy(&f, 1, &a, src, n), 0);
    memset(back, POISON, n);
    cr_assert_eq(sync_copy(&f, 0, &a, back, n), 0);
    if (g_fake)
        cr_assert_eq(gpu_fake_copies() - copies, 2,
                     "one DMA each way, not 8 MiB staging pieces");
    cr_assert(memcmp(src, back, n) == 0, "direct round trip differs");
    read_and_check(&f, &a, src, n); /* into malloc'd memory: staged */
    uint8_t *edge = host + region - 4 * MiB;
    uint8_t *pat = malloc(8 * MiB);
    cr_assert_not_null(pat);
    fill_pattern(pat, 8 * MiB, 43);
    memcpy(edge, pat, 4 * MiB);
    /* edge + 8 MiB would leave the region: the tier must not take the
     * direct path for it, and reads only 4 MiB of it here. */
    cr_assert_eq(sync_copy(&f, 1, &b, pat, 8 * MiB), 0);
    cr_assert_eq(sync_copy(&f, 0, &b, edge, 4 * MiB), 0);
    cr_assert(memcmp(edge, pat, 4 * MiB) == 0);
    kvtcd_gpu_stats st;
    kvtcd_gpu_get_stats(f.g, &st);
    cr_assert_eq(st.errors, 0);
    kvtcd_gpu_free(f.g, &a);
    kvtcd_gpu_free(f.g, &b);
    fx_close(&f); /* unregisters before the memory goes */
    free(pat);
    free(host);
}

struct closing {
    int cbs;
    int cbs_at_closed;
    int closed;
};

static void closing_closed(void *arg)
{
    struct closing *c = arg;
    c->closed++;
    c->cbs_at_closed = c->cbs;
}

DATA_TEST(close_with_copies_in_flight)
{
    enum { N = 24 };
    const uint64_t ext = 8 * MiB + 4096;
    struct fx f;
    fx_open(&f, N * 9 * MiB);
    uint8_t *buf = malloc(N * ext);
    cr_assert_not_null(buf);
    fill_pattern(buf, N * ext, 3);
    struct op ops[2 * N];
    struct closing c = {0};
    memset(ops, 0, sizeof ops);
    kvtcd_gpu_loc loc[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(kvtcd_gpu_alloc(f.g, ext, &loc[i]), 0);
        ops[2 * i].counter = ops[2 * i + 1].counter = &c.cbs;
        cr_assert_eq(kvtcd_gpu_write(f.g, &loc[i], buf + i * ext, ext,
                                     op_cb, &ops[2 * i]), 0);
        cr_assert_eq(kvtcd_gpu_read(f.g, &loc[i], buf + i * ext, ext,
                                    op_cb, &ops[2 * i + 1]), 0);
    }
    kvtcd_gpu_close(f.g, closing_closed, &c);
    cr_assert_eq(c.cbs, 0, "no callback inline from close");
    kvtcd_gpu_loc x;
    cr_assert_eq(kvtcd_gpu_alloc(f.g, 256, &x), KVTC_ECANCELED);
    cr_assert_eq(kvtcd_gpu_write(f.g, &loc[0], buf, 1, op_cb, NULL),
                 KVTC_ECANCELED);
    run_until(&f, &c.closed, 1);
    cr_assert_eq(c.cbs_at_closed, 2 * N, "every callback before closed()");
    int ok = 0, canceled = 0;
    for (int i = 0; i < 2 * N; i++) {
        cr_assert_eq(ops[i].calls, 1, "op %d reported %d times", i,
                     ops[i].calls);
        cr_assert(ops[i].status == 0 || ops[i].status == KVTC_ECANCELED,
                  "op %d: %s", i, kvtc_strerror(ops[i].status));
        if (ops[i].status == 0)
            ok++;
        else
            canceled++;
    }
    cr_log_info("close: %d copies completed, %d canceled", ok, canceled);
    cr_assert_gt(canceled, 0, "close did not wait for all %d copies", 2 * N);
    uv_close((uv_handle_t *)&f.guard, NULL);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&f.loop), 0);
    if (g_fake)
        cr_assert_eq(gpu_fake_live(), 0, "close left driver objects behind");
    free(buf);
}

/* ---- fake driver only: failures ------------------------------------ */

Test(gpu_fake, driver_failure_is_eio_and_counted, .init = use_fake_driver)
{
    struct fx f;
    fx_open(&f, 64 * MiB);
    const uint64_t n = 40 * MiB; /* 5 staging pieces */
    uint8_t *src = malloc(n);
    cr_assert_not_null(src);
    fill_pattern(src, n, 9);
    kvtcd_gpu_loc loc;
    cr_assert_eq(kvtcd_gpu_alloc(f.g, n, &loc), 0);
    gpu_fake_fail_copy(3); /* the third piece's copy fails */
    cr_assert_eq(sync_copy(&f, 1, &loc, src, n), KVTC_EIO);
    kvtcd_gpu_stats st;
    kvtcd_gpu_get_stats(f.g, &st);
    cr_assert_eq(st.errors, 1);
    cr_assert_eq(st.bytes_written, 0);
    /* The tier keeps working after a failed copy. */
    cr_assert_eq(sync_copy(&f, 1, &loc, src, n), 0);
    read_and_check(&f, &loc, src, n);
    gpu_fake_fail_copy(1);
    uint8_t one;
    cr_assert_eq(sync_copy(&f, 0, &loc, &one, 1), KVTC_EIO);
    kvtcd_gpu_free(f.g, &loc);
    free(src);
    fx_close(&f);
}

Test(gpu_fake, slab_refused_is_enomem, .init = use_fake_driver)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    kvtcd_gpu *g = NULL;
    /* The fake has 1 GiB of "device" memory. */
    cr_assert_eq(kvtcd_gpu_open(&loop, 0, 2ull << 30, &g), KVTC_ENOMEM);
    cr_assert_null(g);
    cr_assert(strstr(kvtcd_gpu_last_error(), "cuMemAlloc") != NULL, "%s",
              kvtcd_gpu_last_error());
    cr_assert_eq(kvtcd_gpu_open(&loop, 1, 1 * MiB, &g), KVTC_ENOTSUP,
                 "no second device");
    cr_assert_eq(gpu_fake_live(), 0, "a failed open frees what it made");
    cr_assert_eq(uv_loop_close(&loop), 0);
}
