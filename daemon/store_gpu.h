/* store_gpu.h - the GPU tier: one slab of the daemon's own GPU memory,
 * carved into extents, filled and drained with asynchronous copies.
 *
 * The CUDA driver (libcuda.so.1) is loaded at run time with dlopen, so
 * kvtcd builds and runs without CUDA; kvtcd_gpu_open() then fails with
 * KVTC_ENOTSUP and the daemon serves from its other tiers. Debian's UCX
 * cannot send from device memory (DESIGN.md section 6): a chunk on the GPU
 * is copied to a host buffer before it is sent, and into the slab from the
 * host buffer it arrived in.
 *
 * Copies go through pinned staging buffers owned by the store on one CUDA
 * stream; completion is reported to the loop thread (uv_async). Host
 * buffers passed in need not be pinned.
 *
 * Loop-thread only; callbacks run on the loop thread, never inline. */
#ifndef KVTCD_STORE_GPU_H
#define KVTCD_STORE_GPU_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kvtcd_gpu kvtcd_gpu;

/* An extent of the slab. */
typedef struct kvtcd_gpu_loc {
    uint64_t off;
    uint64_t len;
} kvtcd_gpu_loc;

/* Open device `device` and allocate a slab of capacity bytes. Errors:
 * KVTC_ENOTSUP (no driver, no device: logged once by the caller),
 * KVTC_ENOMEM (the device refused the slab), KVTC_EINVAL. */
int kvtcd_gpu_open(uv_loop_t *loop, int device, uint64_t capacity,
                   kvtcd_gpu **out);
/* Why the last kvtcd_gpu_open failed ("no CUDA driver: libcuda.so.1:
 * cannot open shared object file ...", "no CUDA device: ..."), for the
 * caller's one log line; "" before any failure. Loop-thread only; the
 * string is static and overwritten by the next failing open. */
const char *kvtcd_gpu_last_error(void);
/* Wait for in-flight copies (their callbacks get KVTC_ECANCELED if not
 * yet reported), free the slab, then call closed(arg) from the loop.
 * Copies not yet started are canceled; one whose pieces are on the GPU is
 * stopped after them (KVTC_ECANCELED); one that had already completed
 * reports 0. Every callback runs before closed(). After close only
 * kvtcd_gpu_free and kvtcd_gpu_get_stats may be called (alloc, write and
 * read return KVTC_ECANCELED), and nothing once closed() has run. */
void kvtcd_gpu_close(kvtcd_gpu *g, void (*closed)(void *arg), void *arg);

/* Reserve len bytes of the slab. KVTC_EFULL when no extent fits.
 * out->len is len; the extent is len rounded up to 256 bytes, 256-aligned.
 * KVTC_EINVAL for len 0. */
int kvtcd_gpu_alloc(kvtcd_gpu *g, uint64_t len, kvtcd_gpu_loc *out);
/* Give loc back. Safe while copies of it are in flight: the extent is
 * reused only after they report. A loc that is not allocated is logged
 * and ignored. */
void kvtcd_gpu_free(kvtcd_gpu *g, const kvtcd_gpu_loc *loc);

typedef void (*kvtcd_gpu_cb)(void *arg, int status);
/* Copy len bytes host -> slab at loc (src valid until cb). len must be
 * 1..loc->len and loc one that kvtcd_gpu_alloc returned (KVTC_EINVAL).
 * Copies of one extent are ordered: a read submitted after a write of the
 * same extent sees the write's bytes (and the other way round). cb(arg,
 * status) runs on the loop thread: 0, KVTC_EIO (the driver failed; logged)
 * or KVTC_ECANCELED (closing). Errors returned here mean cb never runs. */
int kvtcd_gpu_write(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, const void *src,
                    uint64_t len, kvtcd_gpu_cb cb, void *arg);
/* Copy len bytes slab at loc -> host dst (dst valid until cb); as
 * kvtcd_gpu_write. */
int kvtcd_gpu_read(kvtcd_gpu *g, const kvtcd_gpu_loc *loc, void *dst,
                   uint64_t len, kvtcd_gpu_cb cb, void *arg);

/* Page-lock [base, base+len) for the device (cuMemHostRegister) so that
 * later copies whose host buffer lies wholly inside it skip the staging
 * buffers: one DMA straight from/to the caller's bytes, no memcpy, full
 * PCIe speed (e.g. the host tier's region, kvtcd_store_host_region).
 * Registering pins and populates every page of the range and takes time
 * (14 ms for 256 MiB on the H100 host): do it once, at start, for memory
 * that stays resident. The range must stay mapped until the tier is
 * closed (close unregisters it). At most 8 ranges. Errors: KVTC_EINVAL,
 * KVTC_ENOSPC (8 already), KVTC_ENOMEM / KVTC_EIO (the driver refused,
 * logged; copies still work through staging), KVTC_ECANCELED (closing).
 * Loop thread. */
int kvtcd_gpu_register_host(kvtcd_gpu *g, void *base, uint64_t len);

typedef struct kvtcd_gpu_stats {
    uint64_t capacity, used;
    uint64_t bytes_written, bytes_read; /* host->GPU, GPU->host */
    uint64_t errors;
    char device_name[128];
} kvtcd_gpu_stats;
void kvtcd_gpu_get_stats(const kvtcd_gpu *g, kvtcd_gpu_stats *out);

/* Internal, for tests and benchmarks: the number of memcpy helper threads
 * the next kvtcd_gpu_open starts (0: the copy worker copies alone; -1:
 * the default, a quarter of the CPUs, at most 4). Loop thread. */
void kvtcd__gpu_set_copy_helpers(int n);

#endif
