/* The file I/O engine (daemon/aio.c) on real files, through io_uring and
 * through libuv's thread pool: O_DIRECT writes and reads of several
 * buffers, more operations than the queue depth, fdatasync, the end of a
 * file, refused buffers, callbacks never inline, close with work queued. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "aio.h"
#include "kvtc_errors.h"
#include "test_util.h"

static char path[512];
static uv_loop_t loop;

static void setup(void)
{
    snprintf(path, sizeof path, "%s/kvtc-aio-XXXXXX", kvtc_test_tmpdir());
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(uv_loop_init(&loop), 0);
}

static void teardown(void)
{
    unlink(path);
    uv_loop_close(&loop);
}

/* An engine of mode, or a skip when io_uring is refused here. */
static kvtcd_aio *engine(int mode, unsigned depth)
{
    kvtcd_aio *a = NULL;
    int rc = kvtcd_aio_create(&loop, mode, depth, &a);
    if (rc == KVTC_ENOTSUP && mode == KVTCD_AIO_URING)
        cr_skip_test("io_uring refused by this kernel (io_uring_queue_init)");
    cr_assert_eq(rc, 0);
    return a;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void close_engine(kvtcd_aio *a)
{
    int closed = 0;
    kvtcd_aio_close(a, on_closed, &closed);
    cr_assert_eq(closed, 0, "closed inline");
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
}

struct done {
    int calls, status;
    int *submitting;            /* set while the submitting call runs */
};

static void on_done(void *arg, int status)
{
    struct done *d = arg;
    if (d->submitting)
        cr_assert_eq(*d->submitting, 0, "callback ran inside the submit");
    d->calls++;
    d->status = status;
}

static void wait_for(int *calls, int n)
{
    while (*calls < n)
        cr_assert(uv_run(&loop, UV_RUN_ONCE) || *calls >= n,
                  "loop ran dry with %d of %d done", *calls, n);
}

static void *aligned(size_t n)
{
    void *p = NULL;
    cr_assert_eq(posix_memalign(&p, 4096, n), 0);
    return p;
}

static void write_read_many(int mode)
{
    kvtcd_aio *a = engine(mode, 4);
    int fd = open(path, O_RDWR | O_DIRECT);
    cr_assert(fd >= 0);
    enum { N = 48, BLK = 8192 };
    uint8_t *src = aligned((size_t)N * BLK), *dst = aligned((size_t)N * BLK);
    for (size_t i = 0; i < (size_t)N * BLK; i++)
        src[i] = (uint8_t)(i * 131 + 7);
    memset(dst, 0, (size_t)N * BLK);

    /* More writes than the depth, each of three buffers (pwritev). */
    int submitting = 1;
    struct done d[N];
    for (int i = 0; i < N; i++) {
        d[i] = (struct done){0, 1, &submitting};
        uint8_t *p = src + (size_t)i * BLK;
        struct iovec iov[3] = {{p, 4096}, {p + 4096, 2048}, {p + 6144, 2048}};
        submitting = 1;
        cr_assert_eq(kvtcd_aio_write(a, fd, iov, 3, (uint64_t)i * BLK,
                                     on_done, &d[i]), 0);
        submitting = 0;
    }
    cr_assert_geq(kvtcd_aio_pending(a), 4);
    int total = 0;
    while (total < N) {
        uv_run(&loop, UV_RUN_ONCE);
        total = 0;
        for (int i = 0; i < N; i++)
            total += d[i].calls;
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(d[i].status, 0, "write %d: %d", i, d[i].status);

    struct done s = {0, 1, &submitting};
    submitting = 1;
    cr_assert_eq(kvtcd_aio_fdatasync(a, fd, on_done, &s), 0);
    submitting = 0;
    wait_for(&s.calls, 1);
    cr_assert_eq(s.status, 0);

    /* One read of everything, as two buffers. */
    struct done r = {0, 1, &submitting};
    size_t half = (size_t)N * BLK / 2;
    struct iovec iov[2] = {{dst, half}, {dst + half, half}};
    submitting = 1;
    cr_assert_eq(kvtcd_aio_read(a, fd, iov, 2, 0, on_done, &r), 0);
    submitting = 0;
    wait_for(&r.calls, 1);
    cr_assert_eq(r.status, 0);
    cr_assert_eq(memcmp(src, dst, (size_t)N * BLK), 0);
    cr_assert_eq(kvtcd_aio_pending(a), 0);

    close(fd);
    close_engine(a);
    free(src);
    free(dst);
}

Test(daemon_aio, write_read_many_uring, .init = setup, .fini = teardown)
{
    write_read_many(KVTCD_AIO_URING);
}

Test(daemon_aio, write_read_many_threads, .init = setup, .fini = teardown)
{
    write_read_many(KVTCD_AIO_THREADS);
}

Test(daemon_aio, uring_backend_is_io_uring, .init = setup, .fini = teardown)
{
    kvtcd_aio *a = engine(KVTCD_AIO_URING, 0);
    cr_assert_str_eq(kvtcd_aio_backend(a), "io_uring");
    close_engine(a);
    a = engine(KVTCD_AIO_THREADS, 0);
    cr_assert_str_eq(kvtcd_aio_backend(a), "threadpool");
    close_engine(a);
    a = engine(KVTCD_AIO_AUTO, 0);
    cr_log_info("auto picked %s", kvtcd_aio_backend(a));
    close_engine(a);
}

/* A read across the end of the file gets the bytes there are (a short
 * read), asks for the rest, and reports KVTC_ENOENT. */
static void read_past_end(int mode)
{
    kvtcd_aio *a = engine(mode, 0);
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    char buf[5000];
    memset(buf, 'x', sizeof buf);
    cr_assert_eq(pwrite(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
    char in[8192];
    struct iovec iov = {in, sizeof in};
    struct done r = {0, 1, NULL};
    cr_assert_eq(kvtcd_aio_read(a, fd, &iov, 1, 0, on_done, &r), 0);
    wait_for(&r.calls, 1);
    cr_assert_eq(r.status, KVTC_ENOENT);
    cr_assert_eq(in[4999], 'x');
    /* Exactly up to the end is fine. */
    iov.iov_len = 5000;
    r.calls = 0;
    cr_assert_eq(kvtcd_aio_read(a, fd, &iov, 1, 0, on_done, &r), 0);
    wait_for(&r.calls, 1);
    cr_assert_eq(r.status, 0);
    close(fd);
    close_engine(a);
}

Test(daemon_aio, read_past_end_uring, .init = setup, .fini = teardown)
{
    read_past_end(KVTCD_AIO_URING);
}

Test(daemon_aio, read_past_end_threads, .init = setup, .fini = teardown)
{
    read_past_end(KVTCD_AIO_THREADS);
}

/* O_DIRECT refuses a misaligned buffer: the callback says so (EINVAL),
 * and bad arguments are refused at once. */
static void refused(int mode)
{
    kvtcd_aio *a = engine(mode, 0);
    int fd = open(path, O_RDWR | O_DIRECT);
    cr_assert(fd >= 0);
    uint8_t *p = aligned(8192);
    struct iovec iov = {p + 1, 4096};
    struct done w = {0, 1, NULL};
    cr_assert_eq(kvtcd_aio_write(a, fd, &iov, 1, 0, on_done, &w), 0);
    wait_for(&w.calls, 1);
    cr_assert_eq(w.status, KVTC_EINVAL);
    cr_assert_eq(kvtcd_aio_write(a, fd, &iov, 0, 0, on_done, &w),
                 KVTC_EINVAL);
    cr_assert_eq(kvtcd_aio_write(a, -1, &iov, 1, 0, on_done, &w),
                 KVTC_EINVAL);
    struct iovec empty = {p, 0};
    cr_assert_eq(kvtcd_aio_write(a, fd, &empty, 1, 0, on_done, &w),
                 KVTC_EINVAL);
    close(fd);
    close_engine(a);
    free(p);
}

Test(daemon_aio, refused_uring, .init = setup, .fini = teardown)
{
    refused(KVTCD_AIO_URING);
}

Test(daemon_aio, refused_threads, .init = setup, .fini = teardown)
{
    refused(KVTCD_AIO_THREADS);
}

/* Close with operations queued behind a depth of 1: every callback runs
 * once (done or canceled), then closed; new work is refused. */
static void close_with_queue(int mode)
{
    kvtcd_aio *a = engine(mode, 1);
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    static char buf[16][4096];
    struct done d[16];
    for (int i = 0; i < 16; i++) {
        d[i] = (struct done){0, 1, NULL};
        struct iovec iov = {buf[i], 4096};
        cr_assert_eq(kvtcd_aio_write(a, fd, &iov, 1, (uint64_t)i * 4096,
                                     on_done, &d[i]), 0);
    }
    int closed = 0;
    kvtcd_aio_close(a, on_closed, &closed);
    struct iovec iov = {buf[0], 4096};
    struct done late = {0, 1, NULL};
    cr_assert_eq(kvtcd_aio_write(a, fd, &iov, 1, 0, on_done, &late),
                 KVTC_ECANCELED);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(d[i].calls, 0);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    int canceled = 0;
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(d[i].calls, 1);
        cr_assert(d[i].status == 0 || d[i].status == KVTC_ECANCELED);
        canceled += d[i].status == KVTC_ECANCELED;
    }
    cr_assert_geq(canceled, 1);
    close(fd);
}

Test(daemon_aio, close_with_queue_uring, .init = setup, .fini = teardown)
{
    close_with_queue(KVTCD_AIO_URING);
}

Test(daemon_aio, close_with_queue_threads, .init = setup, .fini = teardown)
{
    close_with_queue(KVTCD_AIO_THREADS);
}

Test(daemon_aio, errno_mapping)
{
    cr_assert_eq(kvtcd_aio_errno(-ENOSPC), KVTC_ENOSPC);
    cr_assert_eq(kvtcd_aio_errno(-EDQUOT), KVTC_ENOSPC);
    cr_assert_eq(kvtcd_aio_errno(-EINVAL), KVTC_EINVAL);
    cr_assert_eq(kvtcd_aio_errno(-EIO), KVTC_EIO);
}
