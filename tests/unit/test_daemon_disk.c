/* The disk tier (daemon/store_disk.c) on real files with a real libuv
 * loop, through io_uring and through the thread pool (every test runs on
 * both): round trips of many sizes from aligned and unaligned buffers,
 * sync appends, restart recovery with and without summaries, newest-wins
 * and tombstones across restarts, torn tails, flipped bits in headers and
 * payloads, capacity, release, compaction, and ENOSPC on a small tmpfs. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "kvtc_errors.h"
#include "segment.h"
#include "store_disk.h"
#include "test_util.h"
#include "wire.h"

#define MIB (1u << 20)

static uv_loop_t loop;
static char dir[512];

static void setup(void)
{
    snprintf(dir, sizeof dir, "%s/kvtc-disk-XXXXXX", kvtc_test_tmpdir());
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(uv_loop_init(&loop), 0);
}

static int rm_one(const char *p, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    return remove(p);
}

static void teardown(void)
{
    char mnt[600];
    snprintf(mnt, sizeof mnt, "%s/mnt", dir);
    umount2(mnt, MNT_DETACH); /* a failed ENOSPC test left it mounted */
    /* NOWAIT: after a failed assertion a store may still hold the loop. */
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- Helpers ------------------------------------------------------------ */

typedef struct item {
    kvtcd_disk_meta m;
    kvtcd_disk_loc loc;
} item;

typedef struct found {
    item *v;
    size_t n, cap;
} found;

static int on_recover(void *arg, const kvtcd_disk_meta *m,
                      const kvtcd_disk_loc *loc)
{
    found *f = arg;
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 64;
        f->v = realloc(f->v, f->cap * sizeof *f->v);
        cr_assert_not_null(f->v);
    }
    f->v[f->n++] = (item){*m, *loc};
    return 0;
}

static const item *find(const found *f, uint32_t id, const char *tenant)
{
    for (size_t i = 0; i < f->n; i++) {
        uint32_t k;
        memcpy(&k, f->v[i].m.key, sizeof k);
        if (k == id && strcmp(f->v[i].m.tenant, tenant) == 0)
            return &f->v[i];
    }
    return NULL;
}

static kvtcd_disk *open_store(const char *where, int mode, uint64_t cap,
                              uint64_t segb, int direct, found *f)
{
    kvtcd_disk_params p = {.dir = where, .capacity = cap,
                           .segment_bytes = segb, .io_mode = mode,
                           .direct = direct};
    kvtcd_disk *d = NULL;
    if (f)
        memset(f, 0, sizeof *f);
    int rc = kvtcd_disk_open(&loop, &p, f ? on_recover : NULL, f, &d);
    if (rc == KVTC_ENOTSUP && mode == KVTCD_DISK_IO_URING)
        cr_skip_test("io_uring refused by this kernel (io_uring_queue_init)");
    cr_assert_eq(rc, 0, "open: %s", kvtc_strerror(rc));
    return d;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void close_store(kvtcd_disk *d)
{
    int closed = 0;
    kvtcd_disk_close(d, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
}

static void fill_payload(uint8_t *p, size_t n, uint32_t seed)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static void meta_for(kvtcd_disk_meta *m, uint32_t id, const char *tenant,
                     const void *payload, size_t len)
{
    memset(m, 0, sizeof *m);
    snprintf(m->tenant, sizeof m->tenant, "%s", tenant);
    memcpy(m->key, &id, sizeof id);
    m->key[31] = 0x5a;
    m->has_parent = id > 0;
    uint32_t parent = id - 1;
    memcpy(m->parent, &parent, sizeof parent);
    m->first_pos = id * 16;
    m->n_tokens = 16;
    m->encoding = 1;
    m->size = len;
    m->checksum = kvtc_wire_checksum(payload, len);
    m->expire_unix_ms = 0;
}

struct wdone {
    int calls, status;
    kvtcd_disk_loc loc;
};

static void on_written(void *arg, int status, const kvtcd_disk_loc *loc)
{
    struct wdone *w = arg;
    w->calls++;
    w->status = status;
    if (loc)
        w->loc = *loc;
    else
        cr_assert_neq(status, 0, "success without a loc");
}

static void on_done(void *arg, int status)
{
    struct wdone *w = arg;
    w->calls++;
    w->status = status;
}

static void run_until(int *calls, int n)
{
    while (*calls < n)
        cr_assert(uv_run(&loop, UV_RUN_ONCE) || *calls >= n,
                  "loop ran dry: %d of %d", *calls, n);
}

/* Append and wait; returns the status, *loc on success. */
static int append_wait(kvtcd_disk *d, uint32_t id, const char *tenant,
                       const void *payload, size_t len, int sync,
                       kvtcd_disk_loc *loc)
{
    kvtcd_disk_meta m;
    meta_for(&m, id, tenant, payload, len);
    struct wdone w = {0};
    int rc = kvtcd_disk_append(d, &m, payload, len, sync, on_written, &w);
    if (rc < 0)
        return rc;
    cr_assert_eq(w.calls, 0, "callback ran inside append");
    run_until(&w.calls, 1);
    if (w.status == 0 && loc)
        *loc = w.loc;
    return w.status;
}

static int tomb_wait(kvtcd_disk *d, uint32_t id, const char *tenant)
{
    kvtcd_disk_meta m;
    meta_for(&m, id, tenant, NULL, 0);
    struct wdone w = {0};
    int rc = kvtcd_disk_tombstone(d, tenant, m.key, 1, on_done, &w);
    if (rc < 0)
        return rc;
    run_until(&w.calls, 1);
    return w.status;
}

static void *abuf(size_t n)
{
    void *p = NULL;
    cr_assert_eq(posix_memalign(&p, 4096, n ? n : 1), 0);
    return p;
}

/* Read loc and compare with expect (len bytes); returns the status. */
static int read_check(kvtcd_disk *d, const kvtcd_disk_loc *loc, uint32_t id,
                      const void *expect, size_t len)
{
    kvtcd_disk_meta m;
    meta_for(&m, id, "", expect, len);
    uint8_t *dst = abuf(loc->rec_len);
    struct wdone w = {0};
    int rc = kvtcd_disk_read(d, loc, dst, m.key, m.checksum, on_done, &w);
    if (rc == 0) {
        cr_assert_eq(w.calls, 0, "callback ran inside read");
        run_until(&w.calls, 1);
        rc = w.status;
    }
    if (rc == 0)
        cr_assert_eq(memcmp(dst + loc->payload_off, expect, len), 0,
                     "payload of %u differs", id);
    free(dst);
    return rc;
}

static void on_tick(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Run the loop for ms milliseconds (unlinks and seals run on the thread
 * pool; UV_RUN_ONCE alone could block on the io_uring poll forever). */
static void spin(unsigned ms)
{
    uv_timer_t t;
    int fired = 0;
    uv_timer_init(&loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_tick, ms, 0);
    while (!fired)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Wait (up to 5 s) until path is gone. */
static int gone(const char *path)
{
    for (int i = 0; i < 250 && access(path, F_OK) == 0; i++)
        spin(20);
    return access(path, F_OK) != 0;
}

static int file_exists(const char *name)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static void seg_path(char *out, size_t cap, uint32_t seg, const char *ext)
{
    cr_assert_eq(kvtcd_seg_name(out, cap, dir, seg, ext), 0);
}

/* Every test runs through io_uring and through the thread pool. */
#define BOTH(name)                                                          \
    static void name(int mode);                                             \
    Test(daemon_disk, name##_uring, .init = setup, .fini = teardown,        \
         .timeout = 120)                                                    \
    {                                                                       \
        name(KVTCD_DISK_IO_URING);                                          \
    }                                                                       \
    Test(daemon_disk, name##_threads, .init = setup, .fini = teardown,      \
         .timeout = 120)                                                    \
    {                                                                       \
        name(KVTCD_DISK_IO_THREADS);                                        \
    }                                                                       \
    static void name(int mode)

/* ---- Round trips --------------------------------------------------------- */

BOTH(roundtrip_sizes)
{
    kvtcd_disk *d = open_store(dir, mode, 512ull * MIB, 16 * MIB, 1, NULL);
    const size_t sizes[] = {1, 4095, 4096, 4097, MIB + 3, 64ull * MIB, 0};
    size_t n = sizeof sizes / sizeof *sizes;
    uint8_t *src = abuf(64 * MIB + 8192);
    kvtcd_disk_loc loc[2][8];
    /* From an aligned and from an unaligned (odd) address. */
    for (int shift = 0; shift < 2; shift++) {
        for (size_t i = 0; i < n; i++) {
            uint8_t *p = src + shift * 4097;
            fill_payload(p, sizes[i], (uint32_t)(i + 100 * shift));
            int rc = append_wait(d, (uint32_t)(i + 100 * shift), "t", p,
                                 sizes[i], (int)(i % 2), &loc[shift][i]);
            cr_assert_eq(rc, 0, "size %zu shift %d: %s", sizes[i], shift,
                         kvtc_strerror(rc));
            cr_assert_eq(loc[shift][i].rec_len % kvtcd_disk_align(d), 0);
            cr_assert_eq(read_check(d, &loc[shift][i],
                                    (uint32_t)(i + 100 * shift), p,
                                    sizes[i]), 0, "size %zu", sizes[i]);
        }
    }
    /* And again after everything was written (nothing overwrote). */
    for (int shift = 0; shift < 2; shift++)
        for (size_t i = 0; i < n; i++) {
            uint8_t *p = src + shift * 4097;
            fill_payload(p, sizes[i], (uint32_t)(i + 100 * shift));
            cr_assert_eq(read_check(d, &loc[shift][i],
                                    (uint32_t)(i + 100 * shift), p,
                                    sizes[i]), 0);
        }
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.records_written, 2 * n);
    cr_assert_eq(st.corrupt, 0);
    cr_assert_eq(st.errors, 0);
    cr_assert_eq(st.live, st.bytes_written);
    cr_assert_leq(st.used, st.capacity);
    close_store(d);
    free(src);
}

/* Many appends in flight at once, all sync: each gets its own callback,
 * and fdatasyncs are shared. */
BOTH(concurrent_sync_appends_group_commit)
{
    kvtcd_disk *d = open_store(dir, mode, 256ull * MIB, 4 * MIB, 1, NULL);
    enum { N = 200 };
    static struct wdone w[N];
    size_t len = 30000;
    uint8_t *src = malloc(N * len + 1);
    for (int i = 0; i < N; i++) {
        uint8_t *p = src + (size_t)i * len + 1;
        fill_payload(p, len, (uint32_t)i);
        kvtcd_disk_meta m;
        meta_for(&m, (uint32_t)i, "t", p, len);
        w[i] = (struct wdone){0};
        cr_assert_eq(kvtcd_disk_append(d, &m, p, len, 1, on_written, &w[i]),
                     0);
    }
    int total = 0;
    while (total < N) {
        uv_run(&loop, UV_RUN_ONCE);
        total = 0;
        for (int i = 0; i < N; i++)
            total += w[i].calls;
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(w[i].status, 0);
        cr_assert_eq(read_check(d, &w[i].loc, (uint32_t)i,
                                src + (size_t)i * len + 1, len), 0);
    }
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_log_info("%d sync appends, %llu fdatasyncs", N,
                (unsigned long long)st.syncs);
    cr_assert_lt(st.syncs, N, "no group commit: %llu syncs",
                 (unsigned long long)st.syncs);
    cr_assert_gt(st.segments, 1); /* 6 MB in 4 MiB segments rolled */
    close_store(d);
    free(src);
}

/* ---- Restart --------------------------------------------------------------- */

struct model {
    uint32_t id;
    size_t len;
    uint32_t seed;
};

static void check_survivors(kvtcd_disk *d, const found *f,
                            const struct model *mo, size_t n)
{
    cr_assert_eq(f->n, n, "%zu survivors, expected %zu", f->n, n);
    uint8_t *buf = malloc(MIB);
    for (size_t i = 0; i < n; i++) {
        const item *it = find(f, mo[i].id, "tenant-x");
        cr_assert_not_null(it, "record %u missing", mo[i].id);
        cr_assert_eq(it->m.size, mo[i].len);
        cr_assert_eq(it->m.first_pos, mo[i].id * 16);
        cr_assert_eq(it->m.has_parent, mo[i].id > 0);
        fill_payload(buf, mo[i].len, mo[i].seed);
        cr_assert_eq(read_check(d, &it->loc, mo[i].id, buf, mo[i].len), 0,
                     "record %u", mo[i].id);
    }
    /* Oldest first. */
    for (size_t i = 1; i < f->n; i++)
        cr_assert_lt(f->v[i - 1].m.seq, f->v[i].m.seq);
    free(buf);
}

BOTH(restart_with_and_without_summaries)
{
    kvtcd_disk *d = open_store(dir, mode, 256ull * MIB, MIB, 1, NULL);
    enum { N = 120 };
    struct model mo[N];
    uint8_t *buf = malloc(MIB);
    for (int i = 0; i < N; i++) {
        mo[i] = (struct model){(uint32_t)i, (size_t)(i * 997 % 60000) + 1,
                               (uint32_t)i * 3};
        fill_payload(buf, mo[i].len, mo[i].seed);
        cr_assert_eq(append_wait(d, mo[i].id, "tenant-x", buf, mo[i].len,
                                 i % 3 == 0, NULL), 0);
    }
    close_store(d);
    free(buf);
    cr_assert(file_exists("seg-00000001.sum"));

    /* 1: from summaries. */
    found f;
    d = open_store(dir, mode, 256ull * MIB, MIB, 1, &f);
    check_survivors(d, &f, mo, N);
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.recovered, N);
    cr_assert_eq(st.corrupt, 0);
    uint64_t used = st.used;
    close_store(d);
    free(f.v);

    /* 2: a deleted summary and a corrupted one: scanned instead. */
    char p[1024];
    seg_path(p, sizeof p, 1, "sum");
    cr_assert_eq(unlink(p), 0);
    seg_path(p, sizeof p, 2, "sum");
    int fd = open(p, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, 100), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, 100), 1);
    close(fd);
    d = open_store(dir, mode, 256ull * MIB, MIB, 1, &f);
    check_survivors(d, &f, mo, N);
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.corrupt, 0);
    cr_assert_eq(st.used, used);
    close_store(d);
    free(f.v);
    /* The scans wrote fresh summaries. */
    cr_assert(file_exists("seg-00000001.sum"));

    /* 3: again, and appends after a restart go to a fresh segment. */
    d = open_store(dir, mode, 256ull * MIB, MIB, 1, &f);
    check_survivors(d, &f, mo, N);
    uint8_t one = 7;
    kvtcd_disk_loc loc;
    cr_assert_eq(append_wait(d, 999, "tenant-x", &one, 1, 1, &loc), 0);
    for (size_t i = 0; i < f.n; i++)
        cr_assert_gt(loc.seg, f.v[i].loc.seg);
    close_store(d);
    free(f.v);
}

BOTH(newest_wins_and_tombstones_across_restarts)
{
    kvtcd_disk *d = open_store(dir, mode, 64ull * MIB, MIB, 1, NULL);
    uint8_t a[5000], b[7000];
    fill_payload(a, sizeof a, 1);
    fill_payload(b, sizeof b, 2);
    /* key 1: v1 then v2 (another segment too: fill in between). */
    cr_assert_eq(append_wait(d, 1, "t", a, sizeof a, 1, NULL), 0);
    uint8_t *big = malloc(600000);
    fill_payload(big, 600000, 9);
    cr_assert_eq(append_wait(d, 50, "t", big, 600000, 0, NULL), 0);
    cr_assert_eq(append_wait(d, 51, "t", big, 600000, 0, NULL), 0);
    cr_assert_eq(append_wait(d, 1, "t", b, sizeof b, 1, NULL), 0);
    /* key 2: written, then deleted. key 3: deleted, then written again. */
    cr_assert_eq(append_wait(d, 2, "t", a, sizeof a, 1, NULL), 0);
    cr_assert_eq(tomb_wait(d, 2, "t"), 0);
    cr_assert_eq(append_wait(d, 3, "t", a, sizeof a, 1, NULL), 0);
    cr_assert_eq(tomb_wait(d, 3, "t"), 0);
    cr_assert_eq(append_wait(d, 3, "t", b, sizeof b, 1, NULL), 0);
    /* Same key, other tenant: independent. */
    cr_assert_eq(append_wait(d, 2, "u", a, sizeof a, 1, NULL), 0);
    close_store(d);

    for (int round = 0; round < 2; round++) {
        found f;
        d = open_store(dir, mode, 64ull * MIB, MIB, 1, &f);
        cr_assert_eq(f.n, 5, "round %d: %zu survivors", round, f.n);
        const item *k1 = find(&f, 1, "t");
        cr_assert_not_null(k1);
        cr_assert_eq(k1->m.size, sizeof b);
        cr_assert_eq(read_check(d, &k1->loc, 1, b, sizeof b), 0);
        cr_assert_null(find(&f, 2, "t"));
        const item *k3 = find(&f, 3, "t");
        cr_assert_not_null(k3);
        cr_assert_eq(read_check(d, &k3->loc, 3, b, sizeof b), 0);
        const item *u2 = find(&f, 2, "u");
        cr_assert_not_null(u2);
        cr_assert_eq(read_check(d, &u2->loc, 2, a, sizeof a), 0);
        cr_assert_not_null(find(&f, 50, "t"));
        close_store(d);
        free(f.v);
        /* Second round without any summary: the scan agrees. */
        for (uint32_t s = 1; s < 10; s++) {
            char p[1024];
            seg_path(p, sizeof p, s, "sum");
            unlink(p);
        }
    }
    free(big);
}

/* ---- Damage ------------------------------------------------------------------ */

static void *slurp(const char *p, size_t *n)
{
    void *b = kvtc_test_read_file(p, n);
    cr_assert_not_null(b, "%s", p);
    return b;
}

static void spit(const char *p, const void *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

BOTH(torn_tail_at_random_offsets)
{
    kvtcd_disk *d = open_store(dir, mode, 64ull * MIB, 16 * MIB, 1, NULL);
    enum { N = 24 };
    struct model mo[N];
    kvtcd_disk_loc loc[N];
    uint8_t *buf = malloc(MIB);
    for (int i = 0; i < N; i++) {
        mo[i] = (struct model){(uint32_t)i, (size_t)(i * 7919 % 50000) + 1,
                               (uint32_t)i + 7};
        fill_payload(buf, mo[i].len, mo[i].seed);
        cr_assert_eq(append_wait(d, mo[i].id, "tenant-x", buf, mo[i].len, 0,
                                 &loc[i]), 0);
        cr_assert_eq(loc[i].seg, loc[0].seg);
    }
    close_store(d);
    char kvs[1024], sum[1024];
    seg_path(kvs, sizeof kvs, loc[0].seg, "kvs");
    seg_path(sum, sizeof sum, loc[0].seg, "sum");
    size_t n;
    uint8_t *file = slurp(kvs, &n);
    uint64_t end = loc[N - 1].off + loc[N - 1].rec_len;
    cr_assert_geq(n, end);
    srand(42);
    for (int round = 0; round < 10; round++) {
        size_t cut = round == 0 ? (size_t)loc[5].off + 100
                                : (size_t)rand() % (size_t)end;
        unlink(sum);
        spit(kvs, file, cut);
        found f;
        d = open_store(dir, mode, 64ull * MIB, 16 * MIB, 1, &f);
        size_t expect = 0;
        for (int i = 0; i < N; i++) {
            const item *it = find(&f, mo[i].id, "tenant-x");
            if (loc[i].off + loc[i].rec_len <= cut) {
                expect++;
                cr_assert_not_null(it, "cut %zu: record %d lost", cut, i);
                fill_payload(buf, mo[i].len, mo[i].seed);
                cr_assert_eq(read_check(d, &it->loc, mo[i].id, buf,
                                        mo[i].len), 0);
            } else {
                cr_assert_null(it, "cut %zu: torn record %d reported", cut,
                               i);
            }
        }
        cr_assert_eq(f.n, expect);
        free(f.v);
        close_store(d);
        /* The restart may have added a (sealed, empty) segment: drop
         * everything but the one under test. */
        for (uint32_t s = 1; s < 16; s++) {
            if (s == loc[0].seg)
                continue;
            char p[1024];
            seg_path(p, sizeof p, s, "kvs");
            unlink(p);
            seg_path(p, sizeof p, s, "sum");
            unlink(p);
        }
    }
    free(file);
    free(buf);
}

/* A flipped header byte: without a summary, the scan drops that record
 * (counted) and resyncs to its neighbours; with a summary, the record is
 * reported but its read fails the header check. A flipped payload byte:
 * the read says KVTC_ECORRUPT. */
BOTH(bit_flips_in_headers_and_payloads)
{
    kvtcd_disk *d = open_store(dir, mode, 64ull * MIB, 16 * MIB, 1, NULL);
    enum { N = 10 };
    struct model mo[N];
    kvtcd_disk_loc loc[N];
    uint8_t *buf = malloc(MIB);
    for (int i = 0; i < N; i++) {
        mo[i] = (struct model){(uint32_t)i, 20000 + (size_t)i * 1000,
                               (uint32_t)i};
        fill_payload(buf, mo[i].len, mo[i].seed);
        cr_assert_eq(append_wait(d, mo[i].id, "tenant-x", buf, mo[i].len, 1,
                                 &loc[i]), 0);
    }
    close_store(d);
    char kvs[1024], sum[1024];
    seg_path(kvs, sizeof kvs, loc[0].seg, "kvs");
    seg_path(sum, sizeof sum, loc[0].seg, "sum");
    int fd = open(kvs, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t b;
    /* Header of record 3 (its key), payload of record 6. */
    cr_assert_eq(pread(fd, &b, 1, (off_t)loc[3].off + 80), 1);
    b ^= 0x01;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)loc[3].off + 80), 1);
    off_t pay = (off_t)(loc[6].off + loc[6].payload_off + 12345);
    cr_assert_eq(pread(fd, &b, 1, pay), 1);
    b ^= 0x80;
    cr_assert_eq(pwrite(fd, &b, 1, pay), 1);
    close(fd);

    /* With the summary. */
    found f;
    d = open_store(dir, mode, 64ull * MIB, 16 * MIB, 1, &f);
    cr_assert_eq(f.n, N);
    for (int i = 0; i < N; i++) {
        const item *it = find(&f, mo[i].id, "tenant-x");
        cr_assert_not_null(it);
        fill_payload(buf, mo[i].len, mo[i].seed);
        int rc = read_check(d, &it->loc, mo[i].id, buf, mo[i].len);
        cr_assert_eq(rc, i == 3 || i == 6 ? KVTC_ECORRUPT : 0, "record %d",
                     i);
    }
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.corrupt, 2);
    close_store(d);
    free(f.v);

    /* Without it. */
    unlink(sum);
    d = open_store(dir, mode, 64ull * MIB, 16 * MIB, 1, &f);
    cr_assert_eq(f.n, N - 1);
    cr_assert_null(find(&f, 3, "tenant-x"));
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.corrupt, 1);
    for (int i = 0; i < N; i++) {
        if (i == 3)
            continue;
        const item *it = find(&f, mo[i].id, "tenant-x");
        cr_assert_not_null(it, "neighbour %d lost", i);
        fill_payload(buf, mo[i].len, mo[i].seed);
        cr_assert_eq(read_check(d, &it->loc, mo[i].id, buf, mo[i].len),
                     i == 6 ? KVTC_ECORRUPT : 0);
    }
    /* Wrong key or checksum asked for: corrupt, not served. */
    const item *it0 = find(&f, 0, "tenant-x");
    fill_payload(buf, mo[0].len, mo[0].seed);
    cr_assert_eq(read_check(d, &it0->loc, 1, buf, mo[0].len), KVTC_ECORRUPT);
    close_store(d);
    free(f.v);
    free(buf);
}

/* ---- Capacity, release, compaction ----------------------------------------------- */

BOTH(capacity_efull_and_release_unlinks)
{
    kvtcd_disk *d = open_store(dir, mode, 4 * MIB, MIB, 1, NULL);
    size_t len = 200000;
    uint8_t *buf = malloc(len);
    kvtcd_disk_loc loc[64];
    int n = 0, rc = 0;
    while (n < 64) {
        fill_payload(buf, len, (uint32_t)n);
        rc = append_wait(d, (uint32_t)n, "t", buf, len, 0, &loc[n]);
        if (rc < 0)
            break;
        n++;
    }
    cr_assert_eq(rc, KVTC_EFULL);
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_leq(st.used, st.capacity);
    cr_assert_gt(st.used + loc[0].rec_len, st.capacity);
    cr_assert_geq(n, 15);
    /* Release every record of the first segment: its file goes. */
    uint32_t first = loc[0].seg;
    char p[1024];
    seg_path(p, sizeof p, first, "kvs");
    cr_assert_eq(access(p, F_OK), 0);
    for (int i = 0; i < n; i++)
        if (loc[i].seg == first)
            kvtcd_disk_release(d, &loc[i]);
    /* A double release is ignored. */
    kvtcd_disk_release(d, &loc[0]);
    cr_assert(gone(p), "released segment still on disk");
    kvtcd_disk_stats st2;
    kvtcd_disk_get_stats(d, &st2);
    cr_assert_lt(st2.used, st.used);
    cr_assert_eq(st2.segments, st.segments - 1);
    /* Reads of a released-and-unlinked record: not found. */
    cr_assert_eq(read_check(d, &loc[0], 0, buf, len), KVTC_ENOENT);
    /* Room again. */
    fill_payload(buf, len, 1000);
    cr_assert_eq(append_wait(d, 1000, "t", buf, len, 1, NULL), 0);
    close_store(d);
    cr_assert_neq(access(p, F_OK), 0, "released segment still on disk");
    free(buf);
}

struct relocs {
    struct wdone done;          /* first: on_done gets the same arg */
    int calls;
    uint32_t keep_mask;         /* ids (< 32) the caller still holds */
    kvtcd_disk_loc *locs;       /* by id */
};

static int on_reloc(void *arg, const kvtcd_disk_meta *m,
                    const kvtcd_disk_loc *old_loc,
                    const kvtcd_disk_loc *new_loc)
{
    struct relocs *r = arg;
    uint32_t id;
    memcpy(&id, m->key, sizeof id);
    r->calls++;
    cr_assert_eq(memcmp(old_loc, &r->locs[id], sizeof *old_loc), 0);
    if (!(r->keep_mask & (1u << id)))
        return 0;
    r->locs[id] = *new_loc;
    return 1;
}

BOTH(compaction_moves_live_records_exactly)
{
    kvtcd_disk *d = open_store(dir, mode, 64ull * MIB, MIB, 1, NULL);
    enum { N = 24 };
    kvtcd_disk_loc loc[N];
    size_t len = 150001;
    uint8_t *buf = malloc(len);
    for (int i = 0; i < N; i++) {
        fill_payload(buf, len, (uint32_t)i);
        cr_assert_eq(append_wait(d, (uint32_t)i, "t", buf, len, 0, &loc[i]),
                     0);
    }
    struct relocs none = {{0}, 0, 0, loc};
    cr_assert_eq(kvtcd_disk_compact(d, 0.5, on_reloc, on_done, &none),
                 KVTC_ENOENT, "nothing is dead yet");
    /* Kill two thirds of the first segment. */
    uint32_t victim = loc[0].seg;
    uint32_t keep = 0;
    int in_victim = 0;
    for (int i = 0; i < N; i++) {
        if (loc[i].seg != victim)
            continue;
        in_victim++;
        if (i % 3 == 0)
            keep |= 1u << i;
        else
            kvtcd_disk_release(d, &loc[i]);
    }
    cr_assert_geq(in_victim, 3);
    /* One record dies while the compaction runs: its copy is dropped. */
    struct relocs r = {{0}, 0, keep & ~1u, loc};
    cr_assert_eq(kvtcd_disk_compact(d, 0.5, on_reloc, on_done, &r), 0);
    cr_assert_eq(kvtcd_disk_compact(d, 0.5, on_reloc, on_done, &r),
                 KVTC_EBUSY);
    kvtcd_disk_release(d, &loc[0]);
    run_until(&r.done.calls, 1);
    cr_assert_eq(r.done.status, 0);
    cr_assert_eq(r.calls, __builtin_popcount(keep & ~1u));
    char p[1024];
    seg_path(p, sizeof p, victim, "kvs");
    cr_assert(gone(p), "victim not unlinked");
    for (int i = 0; i < N; i++) {
        if (loc[i].seg == victim && !(r.keep_mask & (1u << i)))
            continue;
        cr_assert_neq(loc[i].seg, victim);
        fill_payload(buf, len, (uint32_t)i);
        cr_assert_eq(read_check(d, &loc[i], (uint32_t)i, buf, len), 0,
                     "record %d after compaction", i);
    }
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_eq(st.compactions, 1);
    close_store(d);

    /* After a restart exactly the live set is there (the dead copy and
     * the released records may not come back: released records of other
     * segments are still on disk and do come back, by design). */
    found f;
    d = open_store(dir, mode, 64ull * MIB, MIB, 1, &f);
    for (int i = 0; i < N; i++) {
        const item *it = find(&f, (uint32_t)i, "t");
        int live = loc[i].seg != victim || (r.keep_mask & (1u << i));
        if (i == 0 || (loc[i].seg == victim && !live))
            continue;
        cr_assert_not_null(it, "record %d lost", i);
        fill_payload(buf, len, (uint32_t)i);
        cr_assert_eq(read_check(d, &it->loc, (uint32_t)i, buf, len), 0);
    }
    close_store(d);
    free(f.v);
    free(buf);
}

/* ---- ENOSPC ------------------------------------------------------------------------ */

BOTH(enospc_on_small_tmpfs)
{
    char mnt[600];
    snprintf(mnt, sizeof mnt, "%s/mnt", dir);
    cr_assert_eq(mkdir(mnt, 0755), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=4m") < 0)
        cr_skip_test("cannot mount a tmpfs (%s): needs root", strerror(errno));
    /* tmpfs takes O_DIRECT on this kernel (6.6+); checked by the open. */
    kvtcd_disk *d = open_store(mnt, mode, 64ull * MIB, MIB, 1, NULL);
    size_t len = 300000;
    uint8_t *buf = malloc(len);
    kvtcd_disk_loc loc[64];
    int n = 0, rc = 0;
    while (n < 64) {
        fill_payload(buf, len, (uint32_t)n);
        rc = append_wait(d, (uint32_t)n, "t", buf, len, 1, &loc[n]);
        if (rc < 0)
            break;
        n++;
    }
    cr_assert_eq(rc, KVTC_ENOSPC, "got %s", kvtc_strerror(rc));
    cr_assert_geq(n, 5);
    kvtcd_disk_stats st;
    kvtcd_disk_get_stats(d, &st);
    cr_assert_geq(st.errors, 1);
    /* Still usable: what was written reads back; a second failure is an
     * error again, not a crash. */
    for (int i = 0; i < n; i++) {
        fill_payload(buf, len, (uint32_t)i);
        cr_assert_eq(read_check(d, &loc[i], (uint32_t)i, buf, len), 0);
    }
    rc = append_wait(d, 500, "t", buf, len, 1, NULL);
    cr_assert(rc == KVTC_ENOSPC || rc == 0, "%s", kvtc_strerror(rc));
    int extra = rc == 0;
    /* Free a segment's worth: appends work again. */
    uint32_t first = loc[0].seg;
    for (int i = 0; i < n; i++)
        if (loc[i].seg == first)
            kvtcd_disk_release(d, &loc[i]);
    char fp[1024];
    snprintf(fp, sizeof fp, "%s/seg-%08x.kvs", mnt, first);
    cr_assert(gone(fp));
    fill_payload(buf, len, 77);
    cr_assert_eq(append_wait(d, 77, "t", buf, len, 1, NULL), 0);
    close_store(d);

    /* Every acknowledged record (not released) survives; nothing failed
     * is reported. */
    found f;
    d = open_store(mnt, mode, 64ull * MIB, MIB, 1, &f);
    size_t expect = 1 + (size_t)extra;
    for (int i = 0; i < n; i++) {
        if (loc[i].seg == first)
            continue;
        expect++;
        const item *it = find(&f, (uint32_t)i, "t");
        cr_assert_not_null(it, "acknowledged record %d lost", i);
        fill_payload(buf, len, (uint32_t)i);
        cr_assert_eq(read_check(d, &it->loc, (uint32_t)i, buf, len), 0);
    }
    cr_assert_not_null(find(&f, 77, "t"));
    cr_assert_eq(f.n, expect, "%zu survivors, expected %zu", f.n, expect);
    close_store(d);
    free(f.v);
    free(buf);
    uv_run(&loop, UV_RUN_DEFAULT);
    umount2(mnt, MNT_DETACH);
}

/* ---- Misc ----------------------------------------------------------------------------- */

Test(daemon_disk, uring_backend_is_io_uring, .init = setup, .fini = teardown)
{
    kvtcd_disk *d = open_store(dir, KVTCD_DISK_IO_URING, 64ull * MIB, 0, 1,
                               NULL);
    cr_assert_str_eq(kvtcd_disk_backend(d), "io_uring");
    size_t a = kvtcd_disk_align(d);
    cr_assert(a >= 512 && (a & (a - 1)) == 0);
    close_store(d);
    d = open_store(dir, KVTCD_DISK_IO_THREADS, 64ull * MIB, 0, 1, NULL);
    cr_assert_str_eq(kvtcd_disk_backend(d), "threadpool");
    close_store(d);
}

Test(daemon_disk, bad_arguments, .init = setup, .fini = teardown)
{
    kvtcd_disk *d = NULL;
    kvtcd_disk_params p = {.dir = dir, .capacity = 0, .direct = 1};
    cr_assert_eq(kvtcd_disk_open(&loop, &p, NULL, NULL, &d), KVTC_EINVAL);
    p.capacity = 64 * MIB;
    p.io_mode = 9;
    cr_assert_eq(kvtcd_disk_open(&loop, &p, NULL, NULL, &d), KVTC_EINVAL);
    p.io_mode = 0;
    p.dir = "/proc/kvtc-no-such/dir";
    cr_assert_eq(kvtcd_disk_open(&loop, &p, NULL, NULL, &d), KVTC_EIO);
    d = open_store(dir, KVTCD_DISK_IO_THREADS, 64 * MIB, 0, 1, NULL);
    kvtcd_disk_meta m;
    uint8_t x = 1;
    meta_for(&m, 1, "t", &x, 1);
    memset(m.tenant, 'a', sizeof m.tenant); /* no terminator */
    struct wdone w = {0};
    cr_assert_eq(kvtcd_disk_append(d, &m, &x, 1, 0, on_written, &w),
                 KVTC_EINVAL);
    meta_for(&m, 1, "t", &x, 1);
    cr_assert_eq(kvtcd_disk_append(d, &m, NULL, 1, 0, on_written, &w),
                 KVTC_EINVAL);
    kvtcd_disk_loc loc;
    cr_assert_eq(append_wait(d, 1, "t", &x, 1, 0, &loc), 0);
    uint8_t *dst = abuf(loc.rec_len + 4096);
    kvtcd_disk_loc bad = loc;
    bad.rec_len += 1;
    cr_assert_eq(kvtcd_disk_read(d, &bad, dst, m.key, m.checksum, on_done,
                                 &w), KVTC_EINVAL);
    cr_assert_eq(kvtcd_disk_read(d, &loc, dst + 1, m.key, m.checksum,
                                 on_done, &w), KVTC_EINVAL);
    bad = loc;
    bad.off += kvtcd_disk_align(d);
    cr_assert_eq(kvtcd_disk_read(d, &bad, dst, m.key, m.checksum, on_done,
                                 &w), KVTC_ENOENT);
    bad = loc;
    bad.seg += 100;
    cr_assert_eq(kvtcd_disk_read(d, &bad, dst, m.key, m.checksum, on_done,
                                 &w), KVTC_ENOENT);
    free(dst);
    close_store(d);
}

/* Close with appends in flight: each callback runs once (done or
 * canceled), then closed; nothing after that. */
BOTH(close_with_appends_in_flight)
{
    kvtcd_disk *d = open_store(dir, mode, 256ull * MIB, 4 * MIB, 1, NULL);
    enum { N = 40 };
    static struct wdone w[N];
    size_t len = 500001;
    uint8_t *src = malloc(len);
    fill_payload(src, len, 5);
    for (int i = 0; i < N; i++) {
        kvtcd_disk_meta m;
        meta_for(&m, (uint32_t)i, "t", src, len);
        w[i] = (struct wdone){0};
        cr_assert_eq(kvtcd_disk_append(d, &m, src, len, i % 2, on_written,
                                       &w[i]), 0);
    }
    int closed = 0;
    kvtcd_disk_close(d, on_closed, &closed);
    for (int i = 0; i < N; i++)
        cr_assert_eq(w[i].calls, 0);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(w[i].calls, 1);
        cr_assert(w[i].status == 0 || w[i].status == KVTC_ECANCELED);
        ok += w[i].status == 0;
    }
    /* What was acknowledged is there after a restart. */
    found f;
    d = open_store(dir, mode, 256ull * MIB, 4 * MIB, 1, &f);
    cr_assert_eq((int)f.n, ok);
    for (size_t i = 0; i < f.n; i++) {
        uint32_t id;
        memcpy(&id, f.v[i].m.key, sizeof id);
        cr_assert_eq(read_check(d, &f.v[i].loc, id, src, len), 0);
    }
    close_store(d);
    free(f.v);
    free(src);
}

/* A tombstone outlives the segment it is in as long as an older segment
 * may still hold what it hides: its segment is kept (or, when compacted,
 * the tombstone is copied forward), and goes once nothing older is left. */
static int on_reloc_keep(void *arg, const kvtcd_disk_meta *m,
                         const kvtcd_disk_loc *old_loc,
                         const kvtcd_disk_loc *new_loc)
{
    (*(int *)arg)++;
    return 1;
}

BOTH(tombstones_outlive_their_segment)
{
    uint64_t cap = 64ull * MIB;
    kvtcd_disk *d = open_store(dir, mode, cap, MIB, 1, NULL);
    size_t len = 200000;
    uint8_t *buf = malloc(len);
    kvtcd_disk_loc k, f[5], g[4];
    fill_payload(buf, len, 1);
    cr_assert_eq(append_wait(d, 1, "t", buf, len, 1, &k), 0);
    /* 200 KB records take 196 KiB: A holds key 1 and f[0..3]; B f[4],
     * the tombstone and g[0..3]. */
    for (int i = 0; i < 5; i++)
        cr_assert_eq(append_wait(d, 10 + (uint32_t)i, "t", buf, len, 0,
                                 &f[i]), 0);
    /* Delete key 1: release, tombstone (in the next segment). */
    kvtcd_disk_release(d, &k);
    cr_assert_eq(tomb_wait(d, 1, "t"), 0);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(append_wait(d, 20 + (uint32_t)i, "t", buf, len, 0,
                                 &g[i]), 0);
    uint32_t segA = k.seg, segB = g[0].seg;
    cr_assert_neq(segA, segB);
    cr_assert_eq(f[3].seg, segA);
    cr_assert_eq(f[4].seg, segB);
    cr_assert_eq(g[3].seg, segB, "fillers must share the tombstone's segment");
    /* Make sure B is sealed: one more record rolls to C. */
    cr_assert_eq(append_wait(d, 30, "t", buf, len, 0, NULL), 0);
    for (int i = 0; i < 4; i++)
        kvtcd_disk_release(d, &g[i]);
    kvtcd_disk_release(d, &f[4]);
    spin(100);
    char pA[1024], pB[1024];
    seg_path(pA, sizeof pA, segA, "kvs");
    seg_path(pB, sizeof pB, segB, "kvs");
    cr_assert_eq(access(pB, F_OK), 0, "tombstone segment deleted early");
    close_store(d);

    found fd;
    d = open_store(dir, mode, cap, MIB, 1, &fd);
    cr_assert_null(find(&fd, 1, "t"), "deleted key came back");
    /* Released records without tombstones come back after a restart (by
     * design): release B's again. */
    for (size_t i = 0; i < fd.n; i++)
        if (fd.v[i].loc.seg == segB)
            kvtcd_disk_release(d, &fd.v[i].loc);
    spin(50);
    cr_assert_eq(access(pB, F_OK), 0, "tombstone segment deleted early");
    if (mode == KVTCD_DISK_IO_URING) {
        /* Compact B: its tombstone moves forward, B goes. */
        int relocs = 0;
        struct wdone w = {0};
        kvtcd_disk_stats st;
        int rc;
        do {
            w = (struct wdone){0};
            rc = kvtcd_disk_compact(d, 0.9, on_reloc_keep, on_done, &w);
            if (rc == 0) {
                run_until(&w.calls, 1);
                cr_assert_eq(w.status, 0);
            }
            (void)relocs;
        } while (rc == 0 && access(pB, F_OK) == 0);
        cr_assert(gone(pB), "compacted tombstone segment still there");
        kvtcd_disk_get_stats(d, &st);
        cr_assert_geq(st.compactions, 1);
    } else {
        /* Release all of A (the oldest): A goes, then B (now the oldest,
         * tombstones only) goes too. */
        for (size_t i = 0; i < fd.n; i++) {
            uint32_t id;
            memcpy(&id, fd.v[i].m.key, sizeof id);
            if (fd.v[i].loc.seg == segA)
                kvtcd_disk_release(d, &fd.v[i].loc);
        }
        cr_assert(gone(pA));
        cr_assert(gone(pB));
    }
    close_store(d);
    free(fd.v);
    d = open_store(dir, mode, cap, MIB, 1, &fd);
    cr_assert_null(find(&fd, 1, "t"), "deleted key came back");
    close_store(d);
    free(fd.v);
    free(buf);
}

/* Records carry their own alignment: a store written with one (buffered
 * I/O: 512) and reopened with another (O_DIRECT: the file-system block)
 * still finds, reads and scans every record. */
BOTH(records_keep_their_alignment_across_opens)
{
    enum { N = 12 };
    uint8_t *buf = malloc(MIB);
    kvtcd_disk *d = open_store(dir, mode, 64ull * MIB, MIB, 0, NULL);
    size_t a0 = kvtcd_disk_align(d);
    for (int i = 0; i < N; i++) {
        fill_payload(buf, (size_t)i * 1500 + 1, (uint32_t)i);
        cr_assert_eq(append_wait(d, (uint32_t)i, "t", buf,
                                 (size_t)i * 1500 + 1, 0, NULL), 0);
    }
    close_store(d);
    for (int round = 0; round < 2; round++) {
        found f;
        d = open_store(dir, mode, 64ull * MIB, MIB, 1, &f);
        cr_log_info("written with %zu, read with %zu", a0,
                    kvtcd_disk_align(d));
        cr_assert_eq(f.n, N);
        for (int i = 0; i < N; i++) {
            const item *it = find(&f, (uint32_t)i, "t");
            cr_assert_not_null(it);
            fill_payload(buf, (size_t)i * 1500 + 1, (uint32_t)i);
            cr_assert_eq(read_check(d, &it->loc, (uint32_t)i, buf,
                                    (size_t)i * 1500 + 1), 0);
        }
        close_store(d);
        free(f.v);
        /* Second round: by scanning. */
        for (uint32_t s = 1; s < 8; s++) {
            char p[1024];
            seg_path(p, sizeof p, s, "sum");
            unlink(p);
        }
    }
    free(buf);
}

/* ---- Crash ----------------------------------------------------------------------------- */

#define CRASH_SLOTS 8

struct crash_child {
    int fd;                     /* acknowledged ids go here */
    int inflight;
    uint8_t *buf[CRASH_SLOTS];  /* one payload buffer per append in flight */
    int busy[CRASH_SLOTS];
};

static size_t crash_len(uint32_t id)
{
    /* Small, multi-block and multi-piece (> 4 MiB) records. */
    return id % 7 == 3 ? (size_t)5 * MIB + id : (size_t)(id * 7919 % 90000) + 1;
}

static void crash_on_written(void *arg, int status, const kvtcd_disk_loc *l)
{
    struct crash_child *c = *(struct crash_child **)arg;
    uint32_t id = (uint32_t)(uintptr_t)((void **)arg)[1];
    c->inflight--;
    c->busy[id % CRASH_SLOTS] = 0;
    if (status == 0 && write(c->fd, &id, sizeof id) != sizeof id)
        _exit(3);
    free(arg);
}

static void crash_child_run(int mode, int fd)
{
    struct crash_child c = {.fd = fd};
    for (int i = 0; i < CRASH_SLOTS; i++)
        c.buf[i] = malloc(6 * MIB);
    uv_loop_t l;
    uv_loop_init(&l);
    kvtcd_disk_params p = {.dir = dir, .capacity = 1ull << 30,
                           .segment_bytes = 8 * MIB, .io_mode = mode,
                           .direct = 1};
    kvtcd_disk *d;
    if (kvtcd_disk_open(&l, &p, NULL, NULL, &d) < 0)
        _exit(2);
    for (uint32_t id = 0;; id++) {
        int slot = (int)(id % CRASH_SLOTS);
        while (c.busy[slot])
            uv_run(&l, UV_RUN_ONCE);
        size_t len = crash_len(id);
        uint8_t *p8 = c.buf[slot] + (id % 3); /* odd addresses too */
        fill_payload(p8, len, id);
        kvtcd_disk_meta m;
        meta_for(&m, id, "t", p8, len);
        void **arg = malloc(2 * sizeof *arg);
        arg[0] = &c;
        arg[1] = (void *)(uintptr_t)id;
        if (kvtcd_disk_append(d, &m, p8, len, 1, crash_on_written, arg) < 0)
            _exit(4);
        c.inflight++;
        c.busy[slot] = 1;
    }
}

BOTH(kill9_during_sync_appends_loses_nothing_acknowledged)
{
    srand(7);
    for (int round = 0; round < 3; round++) {
        int pfd[2];
        cr_assert_eq(pipe(pfd), 0);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            close(pfd[0]);
            crash_child_run(mode, pfd[1]);
            _exit(0);
        }
        close(pfd[1]);
        /* Let it acknowledge a varying number of records, then kill. */
        int want = 20 + rand() % 40;
        static uint8_t acked[100000];
        memset(acked, 0, sizeof acked);
        int got = 0;
        uint32_t id;
        while (got < want && read(pfd[0], &id, sizeof id) == sizeof id) {
            cr_assert_lt(id, sizeof acked);
            acked[id] = 1;
            got++;
        }
        kill(pid, SIGKILL);
        while (read(pfd[0], &id, sizeof id) == sizeof id)
            if (id < sizeof acked)
                acked[id] = 1;
        int st;
        waitpid(pid, &st, 0);
        close(pfd[0]);
        cr_assert_eq(got, want, "child died early (status %d)", st);

        found f;
        kvtcd_disk *d = open_store(dir, mode, 1ull << 30, 8 * MIB, 1, &f);
        uint8_t *buf = malloc(6 * MIB);
        size_t present = 0;
        for (uint32_t i = 0; i < sizeof acked; i++) {
            const item *it = find(&f, i, "t");
            if (acked[i])
                cr_assert_not_null(it, "round %d: acknowledged %u lost",
                                   round, i);
            if (!it)
                continue;
            present++;
            fill_payload(buf, crash_len(i), i);
            cr_assert_eq(read_check(d, &it->loc, i, buf, crash_len(i)), 0,
                         "round %d: record %u", round, i);
        }
        cr_assert_eq(present, f.n);
        close_store(d);
        free(f.v);
        free(buf);
    }
}
