/* cuda_driver.h - the few CUDA driver API entry points kvtcd uses, loaded
 * at run time from libcuda.so.1 with dlopen/dlsym.
 *
 * Why not link libcuda or include cuda.h: kvtcd must build on machines
 * without CUDA headers and run on machines without a driver; the GPU tier
 * then reports KVTC_ENOTSUP instead of the daemon failing to start. The
 * types below mirror cuda.h's ABI (CUresult is an int enum, handles are
 * pointers, CUdeviceptr is 64 bits on every 64-bit platform CUDA runs on).
 *
 * Only the _v2 (64-bit size) entry points are resolved; their ABI has been
 * stable since CUDA 4 and is what cuda.h's macros map the plain names to. */
#ifndef KVTCD_CUDA_DRIVER_H
#define KVTCD_CUDA_DRIVER_H

#include <stddef.h>
#include <stdint.h>

typedef int kvtcd_CUresult;
typedef int kvtcd_CUdevice;
typedef uint64_t kvtcd_CUdeviceptr;
typedef struct kvtcd_CUctx_st *kvtcd_CUcontext;
typedef struct kvtcd_CUstream_st *kvtcd_CUstream;
typedef struct kvtcd_CUevent_st *kvtcd_CUevent;

/* Values from cuda.h that we pass or test. */
#define KVTCD_CUDA_SUCCESS 0
#define KVTCD_CUDA_ERROR_OUT_OF_MEMORY 2
#define KVTCD_CUDA_ERROR_NOT_READY 600
#define KVTCD_CU_STREAM_NON_BLOCKING 0x1
#define KVTCD_CU_EVENT_DISABLE_TIMING 0x2
#define KVTCD_CU_MEMHOSTALLOC_PORTABLE 0x1
#define KVTCD_CU_MEMHOSTREGISTER_PORTABLE 0x1

typedef struct kvtcd_cuda {
    kvtcd_CUresult (*cuInit)(unsigned flags);
    kvtcd_CUresult (*cuDriverGetVersion)(int *version);
    kvtcd_CUresult (*cuDeviceGetCount)(int *count);
    kvtcd_CUresult (*cuDeviceGet)(kvtcd_CUdevice *dev, int ordinal);
    kvtcd_CUresult (*cuDeviceGetName)(char *name, int len, kvtcd_CUdevice dev);
    kvtcd_CUresult (*cuDevicePrimaryCtxRetain)(kvtcd_CUcontext *ctx,
                                               kvtcd_CUdevice dev);
    kvtcd_CUresult (*cuDevicePrimaryCtxRelease)(kvtcd_CUdevice dev);
    kvtcd_CUresult (*cuCtxSetCurrent)(kvtcd_CUcontext ctx);
    kvtcd_CUresult (*cuCtxPushCurrent)(kvtcd_CUcontext ctx);
    kvtcd_CUresult (*cuCtxPopCurrent)(kvtcd_CUcontext *ctx);
    kvtcd_CUresult (*cuMemAlloc)(kvtcd_CUdeviceptr *dptr, size_t bytes);
    kvtcd_CUresult (*cuMemFree)(kvtcd_CUdeviceptr dptr);
    kvtcd_CUresult (*cuMemsetD8)(kvtcd_CUdeviceptr dptr, unsigned char v,
                                 size_t n);
    kvtcd_CUresult (*cuMemcpyHtoD)(kvtcd_CUdeviceptr dst, const void *src,
                                   size_t bytes);
    kvtcd_CUresult (*cuMemcpyDtoH)(void *dst, kvtcd_CUdeviceptr src,
                                   size_t bytes);
    kvtcd_CUresult (*cuMemcpyHtoDAsync)(kvtcd_CUdeviceptr dst, const void *src,
                                        size_t bytes, kvtcd_CUstream s);
    kvtcd_CUresult (*cuMemcpyDtoHAsync)(void *dst, kvtcd_CUdeviceptr src,
                                        size_t bytes, kvtcd_CUstream s);
    kvtcd_CUresult (*cuMemHostAlloc)(void **p, size_t bytes, unsigned flags);
    kvtcd_CUresult (*cuMemFreeHost)(void *p);
    kvtcd_CUresult (*cuMemHostRegister)(void *p, size_t bytes, unsigned flags);
    kvtcd_CUresult (*cuMemHostUnregister)(void *p);
    kvtcd_CUresult (*cuStreamCreate)(kvtcd_CUstream *s, unsigned flags);
    kvtcd_CUresult (*cuStreamDestroy)(kvtcd_CUstream s);
    kvtcd_CUresult (*cuStreamSynchronize)(kvtcd_CUstream s);
    kvtcd_CUresult (*cuStreamWaitEvent)(kvtcd_CUstream s, kvtcd_CUevent e,
                                        unsigned flags);
    kvtcd_CUresult (*cuEventCreate)(kvtcd_CUevent *e, unsigned flags);
    kvtcd_CUresult (*cuEventDestroy)(kvtcd_CUevent e);
    kvtcd_CUresult (*cuEventRecord)(kvtcd_CUevent e, kvtcd_CUstream s);
    kvtcd_CUresult (*cuEventQuery)(kvtcd_CUevent e);
    kvtcd_CUresult (*cuEventSynchronize)(kvtcd_CUevent e);
    kvtcd_CUresult (*cuGetErrorString)(kvtcd_CUresult r, const char **s);
} kvtcd_cuda;

/* Load libcuda.so.1 (once per process; the handle is never closed, since
 * unloading a driver with live contexts is unsafe) and call cuInit(0).
 * On success *out points at the process-wide table (read-only, valid for
 * the life of the process). On failure returns KVTC_ENOTSUP and writes the
 * reason ("libcuda.so.1: cannot open shared object file", "cuInit:
 * CUDA_ERROR_NO_DEVICE ...") into err. Thread-safe; a failed load is
 * remembered and reported again without retrying. */
int kvtcd_cuda_load(const kvtcd_cuda **out, char *err, size_t errlen);

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)"-like text for r, for logs;
 * never NULL. cu may be NULL (then only the number). Returns buf. */
const char *kvtcd_cuda_strerror(const kvtcd_cuda *cu, kvtcd_CUresult r,
                                char *buf, size_t len);

/* Tests only: load name instead of libcuda.so.1 (a missing library tests
 * the "no driver" path where a GPU is present). Call before the first
 * kvtcd_cuda_load of the process; not thread-safe. */
void kvtcd__cuda_set_library(const char *name);
/* Tests only: serve table instead of the driver (a host-memory emulation,
 * so the copy pipeline runs on machines without a GPU). table must outlive
 * every user; NULL goes back to the driver. Not thread-safe. */
void kvtcd__cuda_set_table(const kvtcd_cuda *table);

#endif
