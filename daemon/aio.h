/* aio.h - asynchronous file I/O for the loop thread: io_uring driven from
 * libuv (an eventfd registered with the ring, watched by a uv_poll), or
 * libuv's thread pool (uv_fs_read/uv_fs_write with several buffers, i.e.
 * preadv/pwritev, and uv_fs_fdatasync) where the kernel refuses io_uring
 * (containers often do).
 *
 * Every operation completes whole or fails: short transfers are resubmitted
 * for the rest, EAGAIN/EINTR are retried, and operations beyond the queue
 * depth wait in a FIFO. Callbacks run on the loop thread from the loop,
 * never inline from the call that submitted.
 *
 * Ownership: the caller's buffers (iov[i].iov_base) must stay valid until
 * the callback; the iovec array itself is copied. Loop-thread only. */
#ifndef KVTCD_AIO_H
#define KVTCD_AIO_H

#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#define KVTCD_AIO_MAX_IOV 64

enum kvtcd_aio_mode {
    KVTCD_AIO_AUTO = 0,         /* io_uring, else the thread pool */
    KVTCD_AIO_URING = 1,        /* io_uring or KVTC_ENOTSUP */
    KVTCD_AIO_THREADS = 2       /* libuv's thread pool */
};

typedef struct kvtcd_aio kvtcd_aio;

/* status: 0 when every byte was transferred (or the sync done), else
 * KVTC_ENOSPC (no space / quota), KVTC_ENOENT (a read reached the end of
 * the file), KVTC_EINVAL (the kernel refused the arguments, e.g. a
 * misaligned O_DIRECT buffer), KVTC_ECANCELED (closed before it started),
 * KVTC_EIO (anything else). */
typedef void (*kvtcd_aio_cb)(void *arg, int status);

/* Start an engine on loop. depth: operations in flight at most (0: 64).
 * Errors: KVTC_ENOTSUP (mode URING and io_uring refused), KVTC_EINVAL,
 * KVTC_ENOMEM, KVTC_EIO. */
int kvtcd_aio_create(uv_loop_t *loop, int mode, unsigned depth,
                     kvtcd_aio **out);

/* Read/write iov (iovcnt in 1..KVTCD_AIO_MAX_IOV) at off of fd. Immediate
 * errors: KVTC_EINVAL, KVTC_ENOMEM, KVTC_ECANCELED (closing); after 0 the
 * callback runs exactly once. */
int kvtcd_aio_read(kvtcd_aio *a, int fd, const struct iovec *iov,
                   int iovcnt, uint64_t off, kvtcd_aio_cb cb, void *arg);
int kvtcd_aio_write(kvtcd_aio *a, int fd, const struct iovec *iov,
                    int iovcnt, uint64_t off, kvtcd_aio_cb cb, void *arg);
/* fdatasync(fd). Same errors and contract as the above. */
int kvtcd_aio_fdatasync(kvtcd_aio *a, int fd, kvtcd_aio_cb cb, void *arg);

/* Refuse new work; operations not yet started get KVTC_ECANCELED, those in
 * the kernel or a worker finish normally; then the engine is freed and
 * closed(arg) runs from the loop. */
void kvtcd_aio_close(kvtcd_aio *a, void (*closed)(void *arg), void *arg);

/* "io_uring" or "threadpool". */
const char *kvtcd_aio_backend(const kvtcd_aio *a);
/* Operations submitted and not yet completed (in flight + waiting). */
unsigned kvtcd_aio_pending(const kvtcd_aio *a);

/* Map a negative errno (as io_uring and libuv report them) to KVTC_E*. */
int kvtcd_aio_errno(int neg_errno);

#endif
