/* aio.c - io_uring or thread-pool file I/O for the loop (see aio.h). */
#include "aio.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fifo.h"
#include "kvtc_errors.h"
#include "log.h"

enum { OP_READ, OP_WRITE, OP_FSYNC };

/* A transient error is retried this many times before it is reported: an
 * endless EAGAIN would otherwise spin the loop. */
#define MAX_RETRIES 1000

typedef struct aio_op {
    struct aio_op *next;        /* in the waiting FIFO */
    kvtcd_aio *a;
    int kind;
    int fd;
    uint64_t off;               /* of the next byte to transfer */
    struct iovec iov[KVTCD_AIO_MAX_IOV];
    int iov_first, iovcnt;      /* iov[iov_first..iovcnt) left */
    unsigned retries;
    int status;                 /* for ops failed at submission */
    kvtcd_aio_cb cb;
    void *arg;
    uv_fs_t req;                /* thread-pool mode */
} aio_op;

struct kvtcd_aio {
    uv_loop_t *loop;
    int uring;                  /* 1: io_uring, 0: thread pool */
    unsigned depth;
    unsigned inflight;          /* in the kernel or a worker */
    unsigned waiting;           /* in the FIFO */
    aio_op *wait_head, *wait_tail;
    aio_op *failed;             /* refused by uv_fs_*: reported by defer */
    struct io_uring ring;
    int efd;
    uv_poll_t poll;
    int need_submit;            /* SQEs prepared but not yet accepted */
    uv_timer_t defer;           /* cancellations and teardown off-stack */
    int closing, cancel_done;
    int handles;                /* uv handles not yet closed */
    void (*closed)(void *arg);
    void *closed_arg;
};

int kvtcd_aio_errno(int e)
{
    switch (-e) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return KVTC_ENOSPC;
    case EINVAL:
    case EBADF:
        return KVTC_EINVAL;
    default:
        return KVTC_EIO;
    }
}

static void fifo_push(kvtcd_aio *a, aio_op *op)
{
    KVTC_FIFO_PUSH(a->wait_head, a->wait_tail, op, next);
    a->waiting++;
}

static aio_op *fifo_pop(kvtcd_aio *a)
{
    aio_op *op = a->wait_head;
    if (op) {
        KVTC_FIFO_POP(a->wait_head, a->wait_tail, next);
        a->waiting--;
    }
    return op;
}

static void complete(aio_op *op, int status)
{
    kvtcd_aio_cb cb = op->cb;
    void *arg = op->arg;
    free(op);
    cb(arg, status);
}

static void maybe_finish_close(kvtcd_aio *a);
static void start(kvtcd_aio *a, aio_op *op);
static void on_fs(uv_fs_t *req);
static void on_defer(uv_timer_t *t);

/* Hand op to the kernel (ring) or a worker, or queue it when depth ops are
 * already in flight. */
static void submit(kvtcd_aio *a, aio_op *op)
{
    if (a->inflight >= a->depth) {
        fifo_push(a, op);
        return;
    }
    start(a, op);
}

static void start_threads(kvtcd_aio *a, aio_op *op)
{
    uv_buf_t bufs[KVTCD_AIO_MAX_IOV];
    int n = op->iovcnt - op->iov_first;
    for (int i = 0; i < n; i++)
        bufs[i] = uv_buf_init(op->iov[op->iov_first + i].iov_base,
                              (unsigned)op->iov[op->iov_first + i].iov_len);
    int rc;
    if (op->kind == OP_READ)
        rc = uv_fs_read(a->loop, &op->req, op->fd, bufs, (unsigned)n,
                        (int64_t)op->off, on_fs);
    else if (op->kind == OP_WRITE)
        rc = uv_fs_write(a->loop, &op->req, op->fd, bufs, (unsigned)n,
                         (int64_t)op->off, on_fs);
    else
        rc = uv_fs_fdatasync(a->loop, &op->req, op->fd, on_fs);
    if (rc < 0) {
        /* libuv only fails here on bad arguments or memory; the callback
         * must still come from the loop, never from this call. */
        KVTCD_ERROR("aio", "uv_fs submit failed err=%s", uv_strerror(rc));
        a->inflight--;
        op->status = kvtcd_aio_errno(rc);
        op->next = a->failed;
        a->failed = op;
        uv_timer_start(&a->defer, on_defer, 0, 0);
    }
}

static void start(kvtcd_aio *a, aio_op *op)
{
    a->inflight++;
    if (!a->uring) {
        op->req.data = op;
        start_threads(a, op);
        return;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&a->ring);
    if (!sqe) {
        /* Cannot happen while inflight <= depth = ring size, but the FIFO
         * is the safe answer if it ever does. */
        a->inflight--;
        fifo_push(a, op);
        return;
    }
    int n = op->iovcnt - op->iov_first;
    if (op->kind == OP_READ)
        io_uring_prep_readv(sqe, op->fd, &op->iov[op->iov_first],
                            (unsigned)n, op->off);
    else if (op->kind == OP_WRITE)
        io_uring_prep_writev(sqe, op->fd, &op->iov[op->iov_first],
                             (unsigned)n, op->off);
    else
        io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data(sqe, op);
    a->need_submit = 1;
}

static void flush_submit(kvtcd_aio *a)
{
    if (!a->uring || !a->need_submit)
        return;
    int rc = io_uring_submit(&a->ring);
    if (rc >= 0 || (rc != -EAGAIN && rc != -EBUSY && rc != -EINTR)) {
        a->need_submit = 0;
        if (rc < 0)
            KVTCD_ERROR("aio", "io_uring_submit failed err=%s",
                        strerror(-rc));
        return;
    }
    /* The kernel is short of resources: try again from the loop soon
     * (completions also retry). */
    uv_timer_start(&a->defer, on_defer, 1, 0);
}

/* Advance op past res bytes; 1 when nothing is left. */
static int advance(aio_op *op, size_t res)
{
    op->off += res;
    while (op->iov_first < op->iovcnt && res >= op->iov[op->iov_first].iov_len) {
        res -= op->iov[op->iov_first].iov_len;
        op->iov_first++;
    }
    if (op->iov_first < op->iovcnt) {
        struct iovec *v = &op->iov[op->iov_first];
        v->iov_base = (char *)v->iov_base + res;
        v->iov_len -= res;
        /* A zero-length tail iovec would loop: drop it. */
        while (op->iov_first < op->iovcnt &&
               op->iov[op->iov_first].iov_len == 0)
            op->iov_first++;
    }
    return op->iov_first >= op->iovcnt;
}

/* One finished kernel/worker operation: res as read/write return it
 * (bytes, or -errno). */
static void finished(kvtcd_aio *a, aio_op *op, int64_t res)
{
    a->inflight--;
    if ((res == -EAGAIN || res == -EINTR) && op->retries++ < MAX_RETRIES) {
        submit(a, op);
        return;
    }
    if (res < 0) {
        if (res != -ENOSPC)
            KVTCD_WARN("aio", "%s failed fd=%d off=%llu err=%s",
                       op->kind == OP_READ    ? "read"
                       : op->kind == OP_WRITE ? "write"
                                              : "fdatasync",
                       op->fd, (unsigned long long)op->off,
                       strerror((int)-res));
        complete(op, kvtcd_aio_errno((int)res));
        return;
    }
    if (op->kind == OP_FSYNC) {
        complete(op, 0);
        return;
    }
    if (res == 0) {
        /* No progress: the end of the file for a read; a write that
         * cannot advance would spin. */
        complete(op, op->kind == OP_READ ? KVTC_ENOENT : KVTC_EIO);
        return;
    }
    if (advance(op, (size_t)res)) {
        complete(op, 0);
        return;
    }
    op->retries = 0;
    submit(a, op); /* short transfer: the rest */
}

static void run_fifo(kvtcd_aio *a)
{
    while (a->wait_head && a->inflight < a->depth)
        start(a, fifo_pop(a));
}

static void on_fs(uv_fs_t *req)
{
    aio_op *op = req->data;
    kvtcd_aio *a = op->a;
    int64_t res = req->result;
    uv_fs_req_cleanup(req);
    finished(a, op, res);
    run_fifo(a);
    maybe_finish_close(a);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    kvtcd_aio *a = h->data;
    uint64_t v;
    /* Clear the counter before reaping: a completion posted after the
     * last peek then wakes the poll again instead of being missed. */
    while (read(a->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    for (;;) {
        struct io_uring_cqe *cqe;
        if (io_uring_peek_cqe(&a->ring, &cqe) != 0)
            break;
        aio_op *op = io_uring_cqe_get_data(cqe);
        int64_t res = cqe->res;
        io_uring_cqe_seen(&a->ring, cqe);
        finished(a, op, res);
    }
    run_fifo(a);
    flush_submit(a);
    maybe_finish_close(a);
}

static void on_defer(uv_timer_t *t)
{
    kvtcd_aio *a = t->data;
    aio_op *op;
    while ((op = a->failed)) {
        a->failed = op->next;
        complete(op, op->status);
    }
    if (a->closing && !a->cancel_done) {
        /* Only what waited when close was called: resubmitted rests of
         * started operations run to their end. */
        a->cancel_done = 1;
        while ((op = fifo_pop(a)))
            complete(op, KVTC_ECANCELED);
    }
    run_fifo(a);
    flush_submit(a);
    maybe_finish_close(a);
}

static void on_handle_closed(uv_handle_t *h)
{
    kvtcd_aio *a = h->data;
    if (--a->handles > 0)
        return;
    if (a->uring) {
        io_uring_queue_exit(&a->ring);
        close(a->efd);
    }
    void (*closed)(void *) = a->closed;
    void *arg = a->closed_arg;
    free(a);
    if (closed)
        closed(arg);
}

static void maybe_finish_close(kvtcd_aio *a)
{
    if (!a->closing || !a->cancel_done || a->inflight || a->waiting ||
        a->failed || a->handles != 2 ||
        uv_is_closing((uv_handle_t *)&a->defer))
        return;
    uv_timer_stop(&a->defer);
    uv_close((uv_handle_t *)&a->defer, on_handle_closed);
    if (a->uring) {
        uv_poll_stop(&a->poll);
        uv_close((uv_handle_t *)&a->poll, on_handle_closed);
    } else {
        a->handles--; /* no poll handle in thread-pool mode */
    }
}

static int uring_init(kvtcd_aio *a)
{
    int rc = io_uring_queue_init(a->depth, &a->ring, 0);
    if (rc < 0) {
        KVTCD_INFO("aio", "io_uring refused err=%s", strerror(-rc));
        return KVTC_ENOTSUP;
    }
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0) {
        io_uring_queue_exit(&a->ring);
        return KVTC_EIO;
    }
    rc = io_uring_register_eventfd(&a->ring, a->efd);
    if (rc < 0) {
        KVTCD_INFO("aio", "io_uring eventfd refused err=%s", strerror(-rc));
        goto fail;
    }
    if (uv_poll_init(a->loop, &a->poll, a->efd) < 0)
        goto fail;
    a->poll.data = a;
    uv_poll_start(&a->poll, UV_READABLE, on_poll);
    a->uring = 1;
    return 0;
fail:
    close(a->efd);
    io_uring_queue_exit(&a->ring);
    return KVTC_ENOTSUP;
}

int kvtcd_aio_create(uv_loop_t *loop, int mode, unsigned depth,
                     kvtcd_aio **out)
{
    if (!loop || !out || mode < KVTCD_AIO_AUTO || mode > KVTCD_AIO_THREADS ||
        depth > 4096)
        return KVTC_EINVAL;
    kvtcd_aio *a = calloc(1, sizeof *a);
    if (!a)
        return KVTC_ENOMEM;
    a->loop = loop;
    a->depth = depth ? depth : 64;
    a->efd = -1;
    if (mode != KVTCD_AIO_THREADS) {
        int rc = uring_init(a);
        if (rc < 0 && mode == KVTCD_AIO_URING) {
            free(a);
            return rc;
        }
    }
    uv_timer_init(loop, &a->defer);
    a->defer.data = a;
    a->handles = 2;
    *out = a;
    return 0;
}

static int new_op(kvtcd_aio *a, int kind, int fd, const struct iovec *iov,
                  int iovcnt, uint64_t off, kvtcd_aio_cb cb, void *arg)
{
    if (!a || !cb || fd < 0)
        return KVTC_EINVAL;
    if (a->closing)
        return KVTC_ECANCELED;
    if (kind != OP_FSYNC &&
        (!iov || iovcnt < 1 || iovcnt > KVTCD_AIO_MAX_IOV || off > INT64_MAX))
        return KVTC_EINVAL;
    aio_op *op = malloc(sizeof *op);
    if (!op)
        return KVTC_ENOMEM;
    op->next = NULL;
    op->a = a;
    op->kind = kind;
    op->fd = fd;
    op->off = off;
    op->iov_first = 0;
    op->iovcnt = 0;
    op->retries = 0;
    op->cb = cb;
    op->arg = arg;
    size_t total = 0;
    for (int i = 0; kind != OP_FSYNC && i < iovcnt; i++) {
        if (iov[i].iov_len == 0)
            continue;
        if (iov[i].iov_len > UINT32_MAX) {
            free(op);
            return KVTC_EINVAL; /* uv_buf_t lengths are 32-bit here */
        }
        op->iov[op->iovcnt++] = iov[i];
        total += iov[i].iov_len;
    }
    if (kind != OP_FSYNC && total == 0) {
        free(op);
        return KVTC_EINVAL;
    }
    submit(a, op);
    flush_submit(a);
    return 0;
}

int kvtcd_aio_read(kvtcd_aio *a, int fd, const struct iovec *iov,
                   int iovcnt, uint64_t off, kvtcd_aio_cb cb, void *arg)
{
    return new_op(a, OP_READ, fd, iov, iovcnt, off, cb, arg);
}

int kvtcd_aio_write(kvtcd_aio *a, int fd, const struct iovec *iov,
                    int iovcnt, uint64_t off, kvtcd_aio_cb cb, void *arg)
{
    return new_op(a, OP_WRITE, fd, iov, iovcnt, off, cb, arg);
}

int kvtcd_aio_fdatasync(kvtcd_aio *a, int fd, kvtcd_aio_cb cb, void *arg)
{
    return new_op(a, OP_FSYNC, fd, NULL, 0, 0, cb, arg);
}

void kvtcd_aio_close(kvtcd_aio *a, void (*closed)(void *arg), void *arg)
{
    if (!a || a->closing)
        return;
    a->closing = 1;
    a->closed = closed;
    a->closed_arg = arg;
    /* Cancellations and teardown run from the loop, so no callback runs
     * inside this call. */
    uv_timer_start(&a->defer, on_defer, 0, 0);
}

const char *kvtcd_aio_backend(const kvtcd_aio *a)
{
    return a->uring ? "io_uring" : "threadpool";
}

unsigned kvtcd_aio_pending(const kvtcd_aio *a)
{
    return a->inflight + a->waiting;
}
