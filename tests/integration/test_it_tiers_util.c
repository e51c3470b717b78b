/* Helpers of the tier integration tests (test_it_tiers.h). */
#include "test_it_tiers.h"

#include "test_util.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

long tiers_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

void tiers_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

const char *tiers_disk_dir(const struct itest_daemon *d)
{
    static char dir[320];
    snprintf(dir, sizeof dir, "%s/disk", d->dir);
    return dir;
}

void tiers_setup(const char *tls)
{
    itest_setup(tls);
    char *out = NULL, *err = NULL;
    char *argv[] = {(char *)kvtc_test_build_path("bin/kvtcd"), "--help", NULL};
    itest_run(argv, &out, &err);
    int has = (out && strstr(out, "--disk-dir") && strstr(out, "--durability")) ||
              (err && strstr(err, "--disk-dir") && strstr(err, "--durability"));
    free(out);
    free(err);
    if (!has)
        cr_skip_test("this kvtcd has no disk tier (--help lacks --disk-dir/--durability): tier tests skipped");
}

void tiers_launch(struct itest_daemon *d, const struct tiers_opts *o)
{
    char disk_dir[320];
    const char *argv[40];
    int n = 0;
    snprintf(disk_dir, sizeof disk_dir, "%s", o->disk_dir ? o->disk_dir : tiers_disk_dir(d));
    argv[n++] = "--disk-dir";
    argv[n++] = disk_dir;
    argv[n++] = "--disk-size";
    argv[n++] = o->disk_size ? o->disk_size : "256M";
    argv[n++] = "--durability";
    argv[n++] = o->durability ? o->durability : "durable";
    if (o->disk_io) {
        argv[n++] = "--disk-io";
        argv[n++] = o->disk_io;
    }
    for (int i = 0; o->extra && o->extra[i] && n < 39; i++)
        argv[n++] = o->extra[i];
    argv[n] = NULL;
    itest_daemon_launch(d, o->host_mem ? o->host_mem : "64M", 0, argv);
    /* A kvtcd that parses the flags but has no disk tier behind them yet
     * exports no disk series: skip rather than fail. */
    char *body = itest_metrics_body(d);
    double cap = 0;
    int wired = itest_metric(body, TIERS_SERIES(TIERS_M_CAPACITY, "disk"), &cap) == 0 && cap > 0;
    free(body);
    if (!wired) {
        itest_daemon_stop(d);
        cr_skip_test("this kvtcd accepts --disk-dir but exports no " TIERS_M_CAPACITY
                     "{tier=\"disk\"}: disk tier not wired yet, tier tests skipped");
    }
}

void tiers_start(struct itest_daemon *d, const struct tiers_opts *o)
{
    itest_daemon_prepare(d);
    tiers_launch(d, o);
}

void tiers_require_uring(void)
{
    /* What liburing's io_uring_queue_init does first: a refusal here
     * (ENOSYS, EPERM from io_uring_disabled or seccomp) is the kernel's. */
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long fd = syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0)
        cr_skip_test("io_uring refused by this kernel (io_uring_setup: %s): "
                     "the --disk-io uring variant is skipped; the threads variant covers the rest",
                     strerror(errno));
    close((int)fd);
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

kvtc_key tiers_key(uint32_t space, uint32_t i)
{
    return itest_key(space, i);
}

size_t tiers_size(uint32_t space, uint32_t i, size_t max_size)
{
    /* Record boundaries the disk format must get right: one byte, around
     * a 4 KiB block, odd sizes spanning several blocks or bounce buffers. */
    static const size_t sizes[] = {1, 4095, 4096, 4097, 65536 + 13, 300001,
                                   (1u << 20) + 3, 12345, 2u << 20, 777777};
    size_t s = sizes[mix64(((uint64_t)space << 32) | i) % (sizeof sizes / sizeof sizes[0])];
    return s > max_size ? max_size - (i % 7) : s;
}

uint64_t tiers_seed(uint32_t space, uint32_t i)
{
    return mix64(((uint64_t)space << 32) ^ (0x5eedull << 20) ^ i);
}

int tiers_put(kvtc_conn *c, uint32_t space, uint32_t i, size_t size, const kvtc_key *parent)
{
    uint8_t *b = malloc(size ? size : 1);
    cr_assert_not_null(b);
    itest_fill(b, size, tiers_seed(space, i));
    kvtc_put_item it = {.key = tiers_key(space, i), .data = b, .size = size};
    if (parent) {
        it.field_mask |= KVTC_PUT_FIELD_PARENT;
        it.parent = *parent;
    }
    int rc = kvtc_put_batch(c, &it, 1, NULL);
    free(b);
    return rc ? rc : it.status;
}

int tiers_get(kvtc_conn *c, uint32_t space, uint32_t i, size_t size, uint32_t *tier)
{
    /* Room for more than the chunk: a longer reply must show, not be cut. */
    size_t cap = size + 4096;
    uint8_t *b = malloc(cap);
    cr_assert_not_null(b);
    kvtc_get_item it = {.key = tiers_key(space, i), .buf = b, .capacity = cap};
    int rc;
    /* BUSY: no host room for the copy a get from disk keeps while the
     * write-behind still holds the RAM (docs/tiers.md, Promotion): again */
    for (long end = tiers_now_ms() + 10000;; tiers_sleep_ms(20)) {
        rc = kvtc_get_batch(c, &it, 1, NULL);
        if (rc == 0)
            rc = it.status;
        if (rc != KVTC_EBUSY || tiers_now_ms() > end)
            break;
    }
    if (rc == KVTC_ENOENT || rc == KVTC_ECORRUPT) {
        free(b);
        return 0;
    }
    cr_assert_eq(rc, 0, "get chunk %u: %s (%s)", i, kvtc_strerror(rc), kvtc_last_error(c));
    cr_assert_eq(it.size, size, "chunk %u came back with %zu bytes, put %zu", i, it.size, size);
    cr_assert(itest_check(b, size, tiers_seed(space, i)),
              "chunk %u (%zu B, served from tier %u) came back with different bytes", i, size,
              it.tier);
    if (tier)
        *tier = it.tier;
    free(b);
    return 1;
}

int tiers_present(kvtc_conn *c, uint32_t space, uint32_t i)
{
    kvtc_key k = tiers_key(space, i);
    size_t hits = 0;
    cr_assert_eq(kvtc_lookup(c, &k, 1, NULL, &hits, NULL), 0, "lookup: %s", kvtc_last_error(c));
    return hits == 1;
}

double tiers_metric_opt(const struct itest_daemon *d, const char *series)
{
    char *body = itest_metrics_body(d);
    double v = -1;
    if (itest_metric(body, series, &v))
        v = -1;
    free(body);
    return v;
}

double tiers_metric(const struct itest_daemon *d, const char *series)
{
    char *body = itest_metrics_body(d);
    double v = -1;
    int rc = itest_metric(body, series, &v);
    cr_assert_eq(rc, 0, "metric %s not exported; /metrics:\n%s", series, body);
    free(body);
    return v;
}

double tiers_metric_sum(const struct itest_daemon *d, const char *base)
{
    char *body = itest_metrics_body(d);
    int n = 0;
    double v = itest_metric_sum(body, base, &n);
    cr_assert_gt(n, 0, "metric %s not exported; /metrics:\n%s", base, body);
    free(body);
    return v;
}

int tiers_wait_metric(const struct itest_daemon *d, const char *series, double want, int below,
                      int timeout_ms)
{
    long end = tiers_now_ms() + timeout_ms;
    for (;;) {
        double v = tiers_metric(d, series);
        if (below ? v <= want : v >= want)
            return 1;
        if (tiers_now_ms() > end)
            return 0;
        tiers_sleep_ms(50);
    }
}

unsigned tiers_rand_seed(const char *test)
{
    const char *e = getenv("KVTC_TEST_SEED");
    unsigned seed;
    if (e && *e)
        seed = (unsigned)strtoul(e, NULL, 0);
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (unsigned)(ts.tv_nsec ^ ts.tv_sec ^ ((unsigned)getpid() << 16));
    }
    cr_log_info("%s: KVTC_TEST_SEED=%u repeats this run", test, seed);
    return seed;
}

int tiers_rounds(int dflt)
{
    const char *e = getenv("KVTC_TEST_ROUNDS");
    int n = e && *e ? atoi(e) : 0;
    return n > 0 ? n : dflt;
}
